"""evaluation.runner (entry points `python -m evaluation` / `python -m train.evaluate`): sample loading,
rank gathering, and end-to-end runs on a tiny random model over the generated data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data.benchmarks import AnnotationError, read_benchmark
from data.faults import SampleFault
from data.niah import build_grid, write_mp4
from data.sampling import sample_video_frames
from evaluation.config import parse_eval_config
from evaluation.runner import load_samples, read_video
from helpers import bar_index, free_port, indexed_video, subprocess_env

REPO = Path(__file__).resolve().parent.parent


def test_gather_records_over_gloo(tmp_path: Path) -> None:
    """Two ranks with different record counts: rank 0 receives all of them, intact and rank-ordered."""
    script = textwrap.dedent("""
        import json, os, sys
        import torch.distributed as dist
        from train.engine import read_dist_env
        from evaluation.runner import gather_records
        info = read_dist_env()
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
        recs = [{"id": f"r{info.rank}-{i}", "text": "é" * (i + 3 * info.rank), "x": [i, 0.5]}
                for i in range(2 + 3 * info.rank)]
        merged = gather_records(recs, info)
        if info.rank == 0:
            open(sys.argv[1], "w").write(json.dumps(merged))
        else:
            assert merged is None
        dist.destroy_process_group()
    """)
    out = tmp_path / "merged.json"
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=REPO,
                              env=subprocess_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    merged = json.loads(out.read_text())
    expected = [{"id": f"r{r}-{i}", "text": "é" * (i + 3 * r), "x": [i, 0.5]} for r in range(2) for i in range(2 + 3 * r)]
    assert merged == expected


def _cfg(**kw: object):
    base = {"ckpt": "unused", "data": "unused", "format": "records", "limit": None,
            "bench": {"name": "niah", "task": "needle", "max_new_tokens": 8, "template": "{question}"},
            "setting": {"name": "niah", "frames_upbound": 8}}
    base.update(kw)
    return parse_eval_config(base)


def test_load_samples_filters_and_limits(tmp_path: Path) -> None:
    import numpy as np

    hay = tmp_path / "hay.mp4"
    write_mp4(np.full((4, 16, 16, 3), 90, dtype=np.uint8), hay, 2.0)
    build_grid(hay, tmp_path / "niah", [4, 8], [0.0, 1.0], seed=0)
    ann = tmp_path / "niah" / "annotations.json"
    loaded = load_samples(_cfg(data=str(ann)), tmp_path)
    assert len(loaded.samples) == 4 and all(s.task == "needle" for s in loaded.samples)
    assert loaded.read == 4 and loaded.excluded == []
    assert len(load_samples(_cfg(data=str(ann), limit=3), tmp_path).samples) == 3
    mcq = {"name": "mcq", "task": "mcq", "max_new_tokens": 8, "template": "{question}"}
    with pytest.raises(AnnotationError, match=r"no 'mcq' samples \(format=records\): the file's tasks are \['needle'\]"):
        load_samples(_cfg(data=str(ann), bench=mcq), tmp_path)


def test_no_scorable_row_is_an_annotation_error_with_the_reasons(tmp_path: Path) -> None:
    """A benchmark file whose every row is excluded fails as AnnotationError (one line, exit 2 in the CLI)
    that names the file and counts the exclusion reasons, instead of a bare ValueError traceback."""
    bad = tmp_path / "1_plotQA.json"
    rows = [{"video": 3, "duration": 5, "question": "q?", "candidates": ["a", "b"], "answer": "a"},
            {"video": "v.mp4", "duration": 5, "question": "q?", "candidates": ["a", "b"], "answer": "c"},
            {"video": "w.mp4", "duration": 5, "question": "q?", "candidates": ["a", "b"], "answer": "d"}]
    bad.write_text(json.dumps(rows))
    mcq = {"name": "mcq", "task": "mcq", "max_new_tokens": 8, "template": "{question}"}
    with pytest.raises(AnnotationError) as err:
        load_samples(_cfg(data=str(bad), format="mlvu", video_root=str(tmp_path), bench=mcq), tmp_path)
    text = str(err.value)
    assert text.startswith(f"{bad}: no 'mcq' samples (format=mlvu): 3 rows excluded ("), text
    assert "answer_not_in_candidates 2, " in text and "python -m data.benchmarks" in text
    details = {e.reason: e.detail for e in read_benchmark("mlvu", bad, tmp_path).excluded}
    assert details["bad_field"] == "field 'video' is int, expected str"


def test_read_video_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(str(tmp_path / "missing.mp4"), 8, 4, 4)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(SampleFault, match="broken.mp4: cannot decode the video"):
        read_video(str(bad), 8, 4, 4)


def test_read_video_falls_back_to_pyav_for_av1(tmp_path: Path) -> None:
    """An AV1 mp4 (decord 0.6.0 cannot open it) is read through PyAV: every sampled frame is the one asked for."""
    path = tmp_path / "clip.mp4"
    indexed_video(24, 8, codec="libsvtav1", path=path)
    frames, timestamps, duration = read_video(str(path), 8, None, 4)
    picked = sample_video_frames(24, 8.0, frames_upbound=8, fps_upbound=None, group=4)
    assert [bar_index(f) for f in frames] == list(picked.indices)
    assert duration == pytest.approx(3.0) and timestamps == picked.group_timestamps(4)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random-weight checkpoint (+ tokenizer) and a data.synth test split (mcq, grounding, needle)."""
    import torch

    from data.synth import main as synth_main
    from model import VideoXL2ForCausalLM, build_preset, load_tokenizer

    root = tmp_path_factory.mktemp("eval")
    ckpt = root / "ckpt"
    torch.manual_seed(0)
    VideoXL2ForCausalLM(build_preset("tiny")).save_pretrained(ckpt)
    load_tokenizer("tiny").save_pretrained(ckpt)
    shards = root / "shards"
    # 3 test videos of 20..32 s at 1 fps (>= 5 groups of 4 frames), shards of 4 samples
    synth_main(["--out", str(shards), "--videos", "10", "--seed", "5", "--images", "0", "--val-frac", "0",
                "--test-frac", "0.3", "--min-frames", "20", "--max-frames", "32", "--size", "32",
                "--shard-size", "4", "--needle-prob", "0.7"])
    return {"ckpt": ckpt, "shards": shards, "root": root}


def _evaluate(args: list[str], nproc: int = 1) -> None:
    """Run the evaluation: in this process (nproc=1, composed Hydra config) or under torchrun."""
    if nproc == 1:
        from hydra import compose, initialize_config_dir

        from evaluation.runner import run

        with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
            run(compose("evaluate", overrides=args))
        return
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}",
                "-m", "train.evaluate"]
    proc = subprocess.run(launcher + args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _ground_truth(shards: Path) -> dict[str, dict]:
    import tarfile

    truth = {}
    for shard in sorted(shards.glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    rec = json.loads(tar.extractfile(m).read())
                    truth[rec["id"]] = rec
    return truth


def _read(out: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads(out.read_text())
    preds = [json.loads(line) for line in Path(metrics["predictions"]).read_text().splitlines()]
    return metrics, preds


@pytest.mark.parametrize(("prefill", "decode"), [("full", "full"), ("chunked", "bilevel")])
def test_end_to_end_mcq(eval_data: dict[str, Path], tmp_path: Path, prefill: str, decode: str) -> None:
    from evaluation.answers import parse_choice
    from model import load_tokenizer

    out = tmp_path / "mcq.json"
    _evaluate([f"ckpt={eval_data['ckpt']}", "bench=mcq", f"data={eval_data['shards']}", f"prefill={prefill}",
               f"decode={decode}", f"out={out}", "setting.frames_upbound=32", "setting.inference.chunk_groups=1",
               "setting.inference.prev_chunks=1", "setting.inference.top_k=1", "setting.inference.kv_pool=3"])
    metrics, preds = _read(out)
    truth = _ground_truth(eval_data["shards"])
    mcq_ids = sorted(k for k, r in truth.items() if r["task"] == "mcq")
    assert [p["id"] for p in preds] == mcq_ids
    tok = load_tokenizer(str(eval_data["ckpt"]))
    hits = []
    for p in preds:
        assert p["prediction"] == tok.decode(p["token_ids"], skip_special_tokens=True)
        assert 0 < len(p["token_ids"]) <= 8 and p["num_frames"] % 4 == 0 and p["num_frames"] <= 32
        hits.append(parse_choice(p["prediction"]) == truth[p["id"]]["answer"]["letter"])
    m = metrics["metrics"]
    assert m["task"] == "mcq" and m["n"] == len(mcq_ids)
    assert m["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert sum(v["n"] for v in m["by_length"].values()) == len(mcq_ids)
    density = [p["stats"]["pair_density"] for p in preds]
    assert m["inference"]["pair_density"] == pytest.approx(sum(density) / len(density))
    s = metrics["settings"]
    assert (s["prefill"], s["decode"], s["setting"]["frames_upbound"], s["bench"]["task"]) == (prefill, decode, 32, "mcq")
    assert metrics["protocol"]["name"] == "official" and metrics["protocol"]["extraction"] == "project.parse_choice"
    assert metrics["excluded"] == [] and metrics["denominators"]["scored"] == len(mcq_ids)
    # the test shards hold every task's samples: those of the other eval tasks are read and counted apart (the
    # training-only ones, captions, are no eval samples)
    den, evaluated = metrics["denominators"], [r for r in truth.values() if r["task"] in ("mcq", "grounding", "needle")]
    assert den["other_tasks"] == len(evaluated) - len(mcq_ids) > 0 and den["rows_read"] == len(evaluated)
    assert s["setting"]["inference"]["chunk_groups"] == 1 and "Answer with" in s["bench"]["template"]
    if prefill == "chunked":  # >= 5 groups in 1-group chunks seeing 1 previous chunk; top-1 + first + last dense
        assert all(d < 1.0 for d in density)
        assert all(p["stats"]["kept_kv_bytes"] < p["stats"]["full_kv_bytes"] for p in preds)
    else:
        assert all(d == 1.0 for d in density)


def test_end_to_end_grounding_two_ranks(eval_data: dict[str, Path], tmp_path: Path) -> None:
    """torchrun with 2 ranks gives the same predictions as one process; mIoU recomputes from them."""
    from evaluation.answers import parse_span
    from evaluation.scoring import temporal_iou

    common = [f"ckpt={eval_data['ckpt']}", "bench=grounding", f"data={eval_data['shards']}",
              "setting.frames_upbound=8", "bench.max_new_tokens=6"]
    _evaluate(common + [f"out={tmp_path / 'one.json'}"])
    _evaluate(common + [f"out={tmp_path / 'two.json'}"], nproc=2)
    one, preds_one = _read(tmp_path / "one.json")
    two, preds_two = _read(tmp_path / "two.json")
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert [(p["id"], p["token_ids"]) for p in preds_two] == [(p["id"], p["token_ids"]) for p in preds_one]
    truth = _ground_truth(eval_data["shards"])
    assert [p["id"] for p in preds_one] == sorted(k for k, r in truth.items() if r["task"] == "grounding")
    ious = [temporal_iou(parse_span(p["prediction"]), truth[p["id"]]["answer"]["span"]) for p in preds_two]
    m = two["metrics"]
    assert m["miou"] == pytest.approx(sum(ious) / len(ious))
    assert m["R@0.5"] == pytest.approx(sum(i >= 0.5 for i in ious) / len(ious))
    assert m["n_unparsed"] == sum(parse_span(p["prediction"]) is None for p in preds_two)


def test_niah_in_process(eval_data: dict[str, Path], tmp_path: Path) -> None:
    """bench=niah over data.niah records through the composed Hydra config; grid cells recompute."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from evaluation.answers import parse_choice
    from evaluation.runner import run

    write_mp4(np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), tmp_path / "hay.mp4", 2.0)
    records = build_grid(tmp_path / "hay.mp4", tmp_path / "niah", [8, 12], [0.0, 1.0], seed=3)
    with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={eval_data['ckpt']}", "bench=niah", "setting=niah",
                                             "format=records", f"data={tmp_path / 'niah' / 'annotations.json'}",
                                             f"out={tmp_path / 'niah.json'}"])
    metrics = run(cfg)
    assert metrics == json.loads((tmp_path / "niah.json").read_text())
    preds = [json.loads(x) for x in Path(metrics["predictions"]).read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in records]
    assert [p["num_frames"] for p in preds] == [r["length"] for r in records]  # every needle frame kept
    cells = {(float(r["length"]), r["answer"]["depth"]): float(parse_choice(p["prediction"]) == r["answer"]["letter"])
             for p, r in zip(preds, records, strict=True)}
    grid = metrics["metrics"]["needle_grid"]["cells"]
    assert {(c["length"], c["depth"]): c["accuracy"] for c in grid} == cells
    assert metrics["settings"]["setting"]["name"] == "niah" and metrics["settings"]["bench"]["task"] == "needle"

    # the synth test split's needle samples go through the same path (cells keyed by video duration)
    with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={eval_data['ckpt']}", "bench=niah", f"data={eval_data['shards']}",
                                             f"out={tmp_path / 'synth_niah.json'}"])
    synth = run(cfg)
    truth = {k: r for k, r in _ground_truth(eval_data["shards"]).items() if r["task"] == "needle"}
    assert synth["num_samples"] == len(truth) > 0
    depths = sorted(c["depth"] for c in synth["metrics"]["needle_grid"]["cells"])
    assert depths == sorted(round(r["answer"]["depth"], 4) for r in truth.values())


def test_unreadable_videos_are_recorded_as_failed(eval_data: dict[str, Path], tmp_path: Path) -> None:
    """A missing and an undecodable video give records with ``error`` (scored wrong, counted as failed)."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from evaluation.runner import run

    write_mp4(np.full((4, 32, 32, 3), 60, dtype=np.uint8), tmp_path / "hay.mp4", 1.0)
    records = build_grid(tmp_path / "hay.mp4", tmp_path / "niah", [4], [0.0, 0.5, 1.0], seed=2)
    (tmp_path / "niah" / records[1]["video"]).write_bytes(b"not a video at all")
    (tmp_path / "niah" / records[2]["video"]).unlink()
    with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={eval_data['ckpt']}", "bench=niah", "setting=niah",
                                             "format=records", f"data={tmp_path / 'niah' / 'annotations.json'}",
                                             f"out={tmp_path / 'out.json'}", "bench.max_new_tokens=2"])
    metrics = run(cfg)
    preds = [json.loads(x) for x in Path(metrics["predictions"]).read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in records]
    assert "error" not in preds[0] and preds[0]["num_frames"] == 4
    assert preds[1]["error"].startswith("SampleFault: bad_video: ") and "cannot decode the video" in preds[1]["error"]
    assert preds[1]["video"].endswith(".mp4")
    assert preds[2]["error"].startswith("FileNotFoundError: video not found")
    assert all(p["parsed"] is None and p["correct"] is False and p["token_ids"] == [] for p in preds[1:])
    m = metrics["metrics"]
    assert m["failed"] == 2 and m["n"] == 3 and m["n_unparsed"] >= 2


def test_device_is_the_local_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from evaluation.runner import resolve_device, setup_device
    from train.engine import DistEnv

    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    env = DistEnv(rank=3, world_size=4, local_rank=1)
    assert setup_device("auto", env) == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]
    assert setup_device("cuda", env) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)
    current.clear()
    assert setup_device("cpu", env) == torch.device("cpu") and current == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 1) == torch.device("cpu")
