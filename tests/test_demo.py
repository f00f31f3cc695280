"""`python -m demo` end to end at 2 steps per stage on a handful of generated videos, and the
report helpers on the numbers that run produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.report import (
    eval_summary,
    gaps,
    goals,
    long_video_goals,
    read_losses,
    render_markdown,
    stage_table,
    with_val_losses,
)

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["data.videos=14", "data.images=4", "data.test_frac=0.3", "data.val_frac=0.1", "data.needle_prob=1.0",
         "short_data.videos=6", "short_data.images=6", "train_data.long_train.videos=4", "train_data.long_needle.videos=4",
         "long_data.videos=4",
         "long_data.test_frac=0.5",
         "stages.dts.stage.steps=2", "stages.align.stage.steps=2", "stages.sft.stage.steps=2",
         "stages.long.stage.steps=2", "common.loop.micro_batch_size=2", "common.loop.loader_workers=0",
         "common.logging.tqdm=false", "sweep.frames=[16,32]", "sweep.videos_per_length=2"]


def run_demo(out: Path, *extra: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "demo", f"out={out}", *SMALL, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "| mode | MCQ acc" in proc.stdout and "seed 1234" in proc.stdout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    run_demo(out)
    return out


def test_outputs_and_plots(demo_out: Path) -> None:
    m = json.loads((demo_out / "metrics.json").read_text())
    assert [s["stage"] for s in m["stages"]] == ["dts", "align", "sft", "long"]
    assert all(s["steps"] == 2 and s["final_loss"] is not None for s in m["stages"])
    # trained by demo/demo.yaml's `ranks` processes: the global batch is ranks x the per-rank micro-batch
    assert all(s["ranks"] == m["settings"]["ranks"] > 1 for s in m["stages"])
    settings = m["settings"]
    for s in m["stages"]:
        micro = settings["stages"][s["stage"]].get("loop", {}).get("micro_batch_size",
                                                                  settings["common"]["loop"]["micro_batch_size"])
        assert s["batch"] == micro * settings["ranks"], s["stage"]
    assert m["stages"][0]["trainable"] == ["dts", "dts_decoder"] and m["stages"][1]["trainable"] == ["projector", "llm"]
    assert set(m["eval"]) == {"full", "sparse"} and m["seed"] == 1234
    for mode in m["eval"].values():
        assert 0.0 <= mode["mcq_accuracy"] <= 1.0 and 0.0 <= mode["grounding_miou"] <= 1.0
        assert 0.0 < mode["pair_density"] <= 1.0 and 0.0 < mode["kv_kept_ratio"] <= 1.0
    assert m["eval"]["full"]["pair_density"] == 1.0 and m["eval"]["full"]["kv_kept_ratio"] == 1.0
    assert {(r["frames"], r["mode"]) for r in m["sweep"]} == {(f, k) for f in (16, 32) for k in ("full", "sparse")}
    for f in (16, 32):  # the sweep asks its questions the way the training data did
        sweep_data = json.loads((demo_out / "sweep" / "data" / f"frames_{f}" / "manifest.json").read_text())
        for key in ("option_order", "size", "max_objects", "object_scale", "object_speed"):
            assert sweep_data["config"][key] == m["settings"]["data"][key], key
    for name in m["plots"]:
        assert (demo_out / name).read_bytes()[:8] == PNG_MAGIC
    report = (demo_out / "report.md").read_text()
    assert all(f"]({name})" in report for name in m["plots"])
    assert "| dts | 2 |" in report and "Seed **1234**" in report


def test_losses_come_from_the_stage_logs(demo_out: Path) -> None:
    m = json.loads((demo_out / "metrics.json").read_text())
    for s in m["stages"]:
        steps, losses = read_losses(s["output_dir"])
        assert steps == [1, 2] and losses[-1] == pytest.approx(s["final_loss"])
        val_steps, val = read_losses(s["output_dir"], "val/loss")
        validates = m["settings"]["stages"][s["stage"]].get("loop", {}).get("eval_every_steps") is not None
        assert val_steps == ([2] if validates else [])  # the lm stages validate at their last step
        assert s["final_val_loss"] == (val[-1] if validates else None)
    assert sum(s["final_val_loss"] is not None for s in m["stages"]) == 3


def write_metrics(stage_dir: Path, records: list[dict]) -> None:
    stage_dir.mkdir(parents=True)
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_val_loss_is_plotted_beside_the_training_loss(tmp_path: Path) -> None:
    from demo.plots import plot_losses

    train = [{"step": i, "time": 0.0, "loss": 3.0 / i, "grad_norm": 1.0} for i in range(1, 11)]
    val = [{"step": i, "time": 0.0, "val/loss": 3.5 / i, "val/tokens": 100.0, "val/samples": 9.0} for i in (5, 10)]
    event = {"event": "projector_calibrated", "step": 0, "time": 0.0}
    write_metrics(tmp_path / "with" / "sft", [event, *train[:5], val[0], *train[5:], val[1]])
    write_metrics(tmp_path / "without" / "sft", [event, *train])
    assert read_losses(tmp_path / "with" / "sft") == read_losses(tmp_path / "without" / "sft") == (
        list(range(1, 11)), [r["loss"] for r in train])
    assert read_losses(tmp_path / "with" / "sft", "val/loss") == ([5, 10], [0.7, 0.35])
    assert read_losses(tmp_path / "without" / "sft", "val/loss") == ([], [])
    stages = [{"stage": "sft", "steps": 10, "batch": 16, "frames_upbound": 12, "trainable": ["llm"], "lr": {"llm": 1e-3},
               "first_loss": 3.0, "final_loss": 0.3, "wall_s": 1.0, "output_dir": str(tmp_path / kind / "sft")}
              for kind in ("with", "without")]
    rows = with_val_losses(stages)
    assert [r["final_val_loss"] for r in rows] == [0.35, None]
    assert stage_table(rows)[2].endswith("| 0.300 | 0.350 | 1.0 |") and stage_table(rows)[3].endswith("| – | 1.0 |")
    packed = {**stages[0], "batch": 10, "packed_tokens": 704, "samples": 176}
    assert stage_table([packed])[2].startswith("| sft | 10 | 10 rows ≤ 704 tokens, 17.6 samples | 12 |")
    pngs = []
    for kind, stage in zip(("with", "without"), stages, strict=True):
        (tmp_path / kind / "plots").mkdir()
        name = plot_losses(tmp_path / kind / "plots", [stage])
        pngs.append((tmp_path / kind / "plots" / name).read_bytes())
    assert all(p[:8] == PNG_MAGIC for p in pngs) and pngs[0] != pngs[1]  # the val curve is drawn


def test_summary_matches_the_eval_files(demo_out: Path) -> None:
    m = json.loads((demo_out / "metrics.json").read_text())
    per = {b: json.loads((demo_out / "eval" / f"{b}_sparse.json").read_text()) for b in ("mcq", "grounding", "niah")}
    s = eval_summary(per)
    assert s["mcq_accuracy"] == m["eval"]["sparse"]["mcq_accuracy"]
    assert s["needle_accuracy"] == per["niah"]["metrics"]["accuracy"]
    rows = [json.loads(line) for line in (demo_out / "eval" / "niah_sparse.predictions.jsonl").read_text().splitlines()]
    kept, full = sum(r["stats"]["kept_kv_bytes"] for r in rows), sum(r["stats"]["full_kv_bytes"] for r in rows)
    assert s["kv_kept_ratio"] < 1.0 or kept == full
    assert s["n"]["niah"] == len(rows)


def test_stage_overrides_reach_the_stage_config(demo_out: Path) -> None:
    """Demo stage settings (incl. keys the base recipe lacks, lists of source mappings) arrive typed."""
    m = json.loads((demo_out / "metrics.json").read_text())
    want = m["settings"]["stages"]["sft"]["stage"]  # demo/demo.yaml as the demo read it
    sft = next(s for s in m["stages"] if s["stage"] == "sft")
    assert sft["trainable"] == want["trainable"] and sft["tasks"] == want["data"]["tasks"]
    assert sft["lr"]["llm"] == pytest.approx(want["lr"]["llm"]) and sft["frames_upbound"] == want["frames_upbound"]
    assert want["data"]["tasks"] != m["settings"]["data"]["tasks"]  # a list the base recipe does not have
    assert sft["frames_upbound"] == m["settings"]["short_data"]["max_frames"]
    align = next(s for s in m["stages"] if s["stage"] == "align")
    events = [json.loads(line) for line in (Path(align["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if "event" in e] == ["parameters", "projector_calibrated"]


def test_hydra_values_quote_and_nest() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from demo.overrides import flatten

    tree = {"stage": {"data": {"train": [{"shards": "short/train-*.tar", "weight": 1.0}]}, "name": "it's x"}}
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(flatten(tree))}
    assert parsed == {"stage.data.train": [{"shards": "short/train-*.tar", "weight": 1.0}], "stage.name": "it's x"}


def test_gaps_and_goals() -> None:
    evals = {"full": {"mcq_accuracy": 0.95, "grounding_miou": 0.6, "needle_accuracy": 0.9},
             "sparse": {"mcq_accuracy": 0.92, "grounding_miou": 0.61, "needle_accuracy": 0.9}}
    g = gaps(evals)
    assert g["sparse"]["mcq_accuracy"] == pytest.approx(3.0) and g["sparse"]["grounding_miou"] == pytest.approx(-1.0)
    met = goals(evals, g)
    assert met["mcq_accuracy"]["met"] and met["needle_accuracy"]["met"] and met["grounding_miou"]["met"]
    assert not met["sparse_gap_points"]["met"] and met["sparse_gap_points"]["worst"] == pytest.approx(3.0)
    evals["sparse"]["needle_accuracy"] = 0.5
    assert not goals(evals, gaps(evals))["needle_accuracy"]["met"]


def test_long_video_goals() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"eval": {"modes": {"full": {"prefill": "full", "decode": "full"},
                                               "sparse": {"prefill": "chunked", "decode": "bilevel"}}}})
    summary = {m: {"n": {"mcq": 600, "grounding": 600, "niah": 520}} for m in ("full", "sparse")}
    long_summary = {"full": {"grounding_miou": 0.3}, "sparse": {"grounding_miou": 0.55}}

    def row(frames: int, mode: str, acc: float, density: float, kept: float) -> dict[str, float | int | str]:
        return {"frames": frames, "mode": mode, "accuracy": acc, "pair_density": density, "kv_kept_ratio": kept}

    sweep = [row(256, "sparse", 0.95, 0.5, 0.6), row(512, "sparse", 0.91, 0.30, 0.39), row(512, "full", 0.5, 1.0, 1.0)]
    met = long_video_goals(cfg, summary, long_summary, sweep)
    # only the chunked mode counts: full attention's 50% at 512 frames and 0.3 mIoU do not fail these goals
    assert met["sweep_needle_accuracy"] == {"goal": 0.9, "worst": 0.91, "met": True}
    assert met["pair_density_at_512_frames"]["met"] and met["kv_kept_ratio_at_512_frames"]["met"]
    assert met["long_grounding_miou"]["worst"] == 0.55 and met["long_grounding_miou"]["met"]
    assert met["test_samples_per_bench"] == {"goal": ">= 500", "worst": 520, "met": True}
    sweep[1]["kv_kept_ratio"] = 0.41
    summary["sparse"]["n"]["niah"] = 499
    met = long_video_goals(cfg, summary, long_summary, sweep)
    assert not met["kv_kept_ratio_at_512_frames"]["met"] and not met["test_samples_per_bench"]["met"]


def test_markdown_renders_from_metrics(demo_out: Path) -> None:
    m = json.loads((demo_out / "metrics.json").read_text())
    text = render_markdown(m)
    assert text == (demo_out / "report.md").read_text()
    # the main test split and the long videos' test split: one row per mode each
    assert text.count("\n| full |") == 2 and text.count("\n| sparse |") == 2
    assert set(m["eval_long"]) == {"full", "sparse"} and "grounding_miou" in m["eval_long"]["sparse"]
    assert "long_grounding_miou" in m["goals"] and "pair_density_at_32_frames" in m["goals"]


def test_rerun_reuses_data_and_starts_stages_fresh(tmp_path: Path) -> None:
    """Also the in-process path (ranks=1)."""
    run_demo(tmp_path, "ranks=1")
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert [s["ranks"] for s in first["stages"]] == [1] * 4
    manifests = [tmp_path / "data" / name / "manifest.json" for name in ("", "short", "long")]
    mtimes = [p.stat().st_mtime_ns for p in manifests]
    # the rerun evaluates the modes one after the other in this process (eval.workers=1) instead of at once
    # in spawned processes: the same training gives the same scores either way; it evaluates no long bench
    run_demo(tmp_path, "ranks=1", "eval.workers=1", "eval.long_benches=[]")
    assert [p.stat().st_mtime_ns for p in manifests] == mtimes
    second = json.loads((tmp_path / "metrics.json").read_text())
    assert [s["final_loss"] for s in second["stages"]] == [s["final_loss"] for s in first["stages"]]
    assert second["eval"] == first["eval"] and first["eval_long"] and not second["eval_long"]
    assert "long_grounding_miou" in first["goals"] and "long_grounding_miou" not in second["goals"]
    assert [(r["frames"], r["mode"], r["accuracy"]) for r in second["sweep"]] \
        == [(r["frames"], r["mode"], r["accuracy"]) for r in first["sweep"]]
    for stage in ("dts", "align", "sft", "long"):
        assert read_losses(tmp_path / "runs" / stage)[0] == [1, 2]
