#!/usr/bin/env bash
# Multi-node launch with torchrun. Run the same command on every node:
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node0 host> MASTER_PORT=29500 NPROC_PER_NODE=8 \
#     launch/torchrun_multinode.sh stage=sft model=videoxl2_7b data=mix_example deepspeed=zero3
# Any arguments are Hydra overrides for `python -m train` (or set ENTRY=train.pipeline).
set -euo pipefail
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
: "${NPROC_PER_NODE:=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
: "${ENTRY:=train}"
: "${PYTHON:=python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export WANDB_MODE="${WANDB_MODE:-offline}"
cd "$(dirname "$0")/.."
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m "$ENTRY" "$@"
