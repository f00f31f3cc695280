#!/usr/bin/env bash
# Multi-node launch with the DeepSpeed launcher (passwordless ssh/pdsh from this node to the hosts).
#   HOSTFILE=launch/hostfile.example MASTER_ADDR=node0 launch/deepspeed_hostfile.sh stage=long model=videoxl2_7b
# `--no_local_rank`: ranks come from the environment (Hydra rejects a --local_rank argument).
set -euo pipefail
: "${HOSTFILE:=launch/hostfile.example}"
: "${MASTER_ADDR:=$(head -n1 "$HOSTFILE" | awk '{print $1}')}"
: "${MASTER_PORT:=29500}"
: "${ENTRY:=train}"
: "${DEEPSPEED:=deepspeed}"
cd "$(dirname "$0")/.."
exec "$DEEPSPEED" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --no_local_rank --module "$ENTRY" "$@"
