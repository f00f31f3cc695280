"""The four stages on the tiny preset with 2 processes (gloo): ZeRO-3 under torchrun and ZeRO-2 under
the deepspeed launcher. Checks falling losses, declared trainable sets, exact stage chaining
(stage n+1 starts from stage n's export), the decoder-free export, and the wandb offline run."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port, subprocess_env

REPO = Path(__file__).resolve().parents[1]
STAGES = ("dts", "align", "sft", "long")
DECLARED = {"dts": {"dts", "dts_decoder"}, "align": {"projector"},
            "sft": {"vision_tower", "dts", "projector", "llm"}, "long": {"vision_tower", "dts", "projector", "llm"}}
pytestmark = pytest.mark.slow


def common(synth: Path, root: Path) -> list[str]:
    return ["model=tiny", "data=synth", f"data.root={synth}", "preset=tiny", f"output_root={root}",
            "loop.max_steps=6", "checkpoint.every_steps=3", "logging.tqdm=false", "loop.loader_workers=0"]


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def metrics(stage_dir: Path) -> list[dict]:
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def module_of(key: str) -> str:
    return key.split(".", 1)[0]


def check_stages(root: Path) -> None:
    exports = {s: load_file(str(root / s / "export" / "model.safetensors")) for s in STAGES}
    for s in STAGES:
        recs = metrics(root / s)
        losses = [r["loss"] for r in recs]
        assert [r["step"] for r in recs] == list(range(1, 7)), s
        assert sum(losses[-2:]) < sum(losses[:2]), (s, losses)
        assert {k[3:] for k in recs[0] if k.startswith("lr/")} == DECLARED[s]
        assert all(r["tokens_per_s"] > 0 and "mfu" in r and "grad_norm" in r for r in recs)
        assert not any(k.startswith("dts_decoder") for k in exports[s])
        info = json.loads((root / s / "export" / "export_info.json").read_text())
        assert set(info["trainable"]) == DECLARED[s] and info["step"] == 6
        assert (root / s / "export" / "tokenizer.json").is_file()
        assert (root / s / "export" / "train_config.yaml").is_file()
    # preset=tiny calibrates the fresh projector before align's first step, from both ranks' batches
    events = [json.loads(line) for line in (root / "align" / "metrics.jsonl").read_text().splitlines()]
    calibrated = [e for e in events if e.get("event") == "projector_calibrated"]
    assert len(calibrated) == 1 and calibrated[0]["step"] == 0 and calibrated[0]["tokens"] > 0, calibrated
    for prev, nxt in zip(STAGES, STAGES[1:], strict=False):
        a, b = exports[prev], exports[nxt]
        assert a.keys() == b.keys()
        trained = DECLARED[nxt]
        for key in a:
            if module_of(key) not in trained:  # frozen: carried over bit for bit from the previous export
                assert torch.equal(a[key], b[key]), (nxt, key)
        for mod in trained - {"dts_decoder"}:
            assert any(not torch.equal(a[k], b[k]) for k in a if module_of(k) == mod), (nxt, mod)


def test_pipeline_zero3_torchrun(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "z3"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "-m", "train.pipeline", *common(synth, root), "deepspeed=zero3"])
    check_stages(root)
    # wandb offline run dir of each stage holds the logged losses
    for s in STAGES:
        runs = glob.glob(str(root / s / "wandb_runs" / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(runs) == 1, s
        blob = Path(runs[0]).read_bytes()
        for r in metrics(root / s):
            assert json.dumps(r["loss"]).encode() in blob
        assert b"tokens_per_s" in blob and b"grad_norm" in blob
    # stage n+1 is built from exactly stage n's export
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.build import build_train_module, check_run
    from train.config import parse_run_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[*common(synth, root), "stage=long",
                                                       f"stage.init_from={root / 'sft' / 'export'}"])
    run_cfg = parse_run_config(OmegaConf.to_container(cfg, resolve=True))
    mcfg, _ = check_run(run_cfg)
    loaded = build_train_module(run_cfg, mcfg).train_module.model.state_dict()
    exported = load_file(str(root / "sft" / "export" / "model.safetensors"))
    assert set(exported) <= set(loaded)
    for key, value in exported.items():
        assert torch.equal(loaded[key].to(value.dtype), value), key


def test_pipeline_zero2_deepspeed_launcher(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "z2"
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    run([launcher, "--no_local_rank", "--num_gpus", "2", "--master_port", str(free_port()),
         "--module", "train.pipeline", *common(synth, root), "deepspeed=zero2",
         "loop.activation_checkpointing=true", "loop.grad_accum=2"])
    check_stages(root)


def test_torchrun_multinode_script_two_nodes(synth: Path, tmp_path: Path) -> None:
    """launch/torchrun_multinode.sh as two single-process "nodes" on this machine."""
    root = tmp_path / "mn"
    port = str(free_port())
    args = [*common(synth, root), "stage=align", "stage.init_from=null", "loop.max_steps=3"]
    procs = []
    for node in (1, 0):
        node_env = {**subprocess_env(), "NNODES": "2", "NODE_RANK": str(node), "NPROC_PER_NODE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHON": sys.executable}
        procs.append(subprocess.Popen(["bash", str(REPO / "launch" / "torchrun_multinode.sh"), *args], cwd=REPO,
                                      env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-4000:]
    ck = root / "align" / "checkpoints" / "step-00000003"
    assert (ck / "COMPLETE").is_file()
    assert (ck / "rank00000.json").is_file() and (ck / "rank00001.json").is_file()
    assert [r["step"] for r in metrics(root / "align")] == [1, 2, 3]
