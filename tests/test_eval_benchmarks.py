"""`python -m evaluation` end to end on every benchmark format, in the release layout and the lmms-eval
copy, under both protocols (chunked prefill + bi-level decoding included), with a tiny random model.

Each file is written here with a few questions whose answers, categories, one excluded row and one
missing video are planted, so every expected number is computed from what was planted."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from data.benchmarks import AnnotationError
from data.niah import write_mp4
from evaluation.answers import extractor_for
from evaluation.runner import run

REPO = Path(__file__).resolve().parent.parent
LETTERS = "ABCDE"


@dataclass
class Planted:
    """One benchmark file: what was written into it."""

    fmt: str
    data: Path
    video_root: Path
    rows: int                                   # annotation rows written
    excluded: dict[str, int]                    # reason -> rows planted to be excluded
    truth: dict[str, Any]                       # question -> letter (mcq) or (start, end) s (grounding)
    options: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # question -> aggregation categories
    missing: str = ""                           # the question whose video was not written
    extra: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random-weight checkpoint and one encoded 4 s clip (8 frames at 2 fps) to copy under video names."""
    import torch

    from model import VideoXL2ForCausalLM, build_preset, load_tokenizer

    root = tmp_path_factory.mktemp("evalbench")
    torch.manual_seed(0)
    VideoXL2ForCausalLM(build_preset("tiny")).save_pretrained(root / "ckpt")
    load_tokenizer("tiny").save_pretrained(root / "ckpt")
    write_mp4(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), root / "clip.mp4", 2.0)
    return {"ckpt": root / "ckpt", "clip": root / "clip.mp4"}


def _videos(clip: Path, root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, root / name)


def _embedded(question: str, opts: list[str]) -> str:
    return question + "".join(f"\n({LETTERS[i]}) {o}" for i, o in enumerate(opts))


COLOURS = ["red", "green", "blue", "white"]
ANIMALS = ["a man", "a woman", "a dog", "a cat"]
THINGS = ["a ball", "a cup", "a key", "a hat"]


# --------------------------------------------------------------------------------------- MLVU
def mlvu_release(root: Path, clip: Path) -> Planted:
    ann = root / "json"
    ann.mkdir()
    plot = [{"video": "plotQA_1.mp4", "duration": 4.0, "question": "What colour is the car?", "candidates": COLOURS,
             "answer": "blue", "question_type": "plotQA"},
            {"video": "plotQA_2.mp4", "duration": 4.0, "question": "Who opens the door?", "candidates": ANIMALS,
             "answer": "a woman", "question_type": "plotQA"}]
    needle = [{"video": "needle_5.mp4", "duration": 4.0, "question": "What is in the needle?", "candidates": THINGS,
               "answer": "a hat", "question_type": "findNeedle"},
              {"video": "needle_6.mp4", "duration": 4.0, "question": "Needle colour?", "candidates": COLOURS,
               "answer": "purple", "question_type": "findNeedle"}]
    (ann / "1_plotQA.json").write_text(json.dumps(plot))
    (ann / "2_needle.json").write_text(json.dumps(needle))
    _videos(clip, root / "video", ["1_plotQA/plotQA_1.mp4", "1_plotQA/plotQA_2.mp4", "2_needle/needle_6.mp4"])
    return Planted("mlvu", ann, root / "video", 4, {"answer_not_in_candidates": 1},
                   {"What colour is the car?": "C", "Who opens the door?": "B", "What is in the needle?": "D"},
                   {"What colour is the car?": COLOURS, "Who opens the door?": ANIMALS, "What is in the needle?": THINGS},
                   {"What colour is the car?": {"task_type": "plotQA"}, "Who opens the door?": {"task_type": "plotQA"},
                    "What is in the needle?": {"task_type": "findNeedle"}}, missing="What is in the needle?")


def mlvu_lmms(root: Path, clip: Path) -> Planted:
    rows = [("q1", "plotQA_1.mp4", "What colour is the car?", COLOURS, "C", "plotQA"),
            ("q2", "count_3.mp4", "Who opens the door?", ANIMALS, "A", "count"),
            ("q3", "ego_4.mp4", "What is in the needle?", THINGS, "B", "ego"),
            ("q4", "ego_4.mp4", "Out of range?", THINGS, "E", "ego")]
    table = [{"video_name": v, "duration": 4.0, "question": _embedded(q, o), "candidates": o, "answer": a,
              "task_type": t, "question_id": i} for i, v, q, o, a, t in rows]
    path = root / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(table), path)
    _videos(clip, root / "mlvu", ["plotQA_1.mp4", "ego_4.mp4"])
    scored = rows[:3]
    return Planted("mlvu", path, root / "mlvu", 4, {"answer_not_in_candidates": 1},
                   {q: a for _, _, q, _, a, _ in scored}, {q: o for _, _, q, o, _, _ in scored},
                   {q: {"task_type": t} for _, _, q, _, _, t in scored}, missing="Who opens the door?")


# ---------------------------------------------------------------------------------- Video-MME
def videomme(root: Path, clip: Path) -> Planted:
    def row(qid: str, vid: str, q: str, opts: list[str], answer: str, dur: str) -> dict[str, Any]:
        return {"video_id": qid[:3], "duration": dur, "domain": "Knowledge", "sub_category": "History",
                "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
                "task_type": "Counting Problem", "question": q,
                "options": [f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)], "answer": answer}

    rows = [row("001-1", "-dashID_1AB", "What colour is the car?", COLOURS, "D", "short"),
            row("002-1", "fJ9rUzIMcZQ", "Who opens the door?", ANIMALS, "A", "long"),
            row("003-1", "missingVid0", "What is in the needle?", THINGS, "C", "medium"),
            row("003-2", "missingVid0", "Bad answer?", THINGS, "E", "medium")]
    path = root / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    _videos(clip, root / "data", ["-dashID_1AB.mp4", "fJ9rUzIMcZQ.mp4"])
    scored = rows[:3]
    opts = {"What colour is the car?": COLOURS, "Who opens the door?": ANIMALS, "What is in the needle?": THINGS}
    return Planted("videomme", path, root / "data", 4, {"answer_not_in_candidates": 1},
                   {r["question"]: r["answer"] for r in scored}, opts,
                   {r["question"]: {"duration_category": r["duration"]} for r in scored}, missing="What is in the needle?")


# ------------------------------------------------------------------------------------ LVBench
def lvbench_release(root: Path, clip: Path) -> Planted:
    qas = {"ikuA3O2bqRw": [("007", "What colour is the car?", COLOURS, "A", ["entity recognition", "reasoning"]),
                           ("8", "Who opens the door?", ANIMALS, "C", ["reasoning"]),
                           ("9", "Bad answer?", ANIMALS, "F", ["reasoning"])],
           "-otherVid00": [("10", "What is in the needle?", THINGS, "B", ["event understanding"])]}
    lines = [{"key": key, "type": "cartoon", "video_info": {"duration_minutes": 4.0 / 60},
              "qa": [{"uid": uid, "question": _embedded(q, o), "answer": a, "question_type": t,
                      "time_reference": "00:01-00:03"} for uid, q, o, a, t in qa]} for key, qa in qas.items()]
    path = root / "video_info.meta.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    _videos(clip, root / "videos", ["ikuA3O2bqRw.mp4"])
    scored = [x for qa in qas.values() for x in qa if x[3] != "F"]
    return Planted("lvbench", path, root / "videos", 4, {"answer_not_in_candidates": 1},
                   {q: a for _, q, _, a, _ in scored}, {q: o for _, q, o, _, _ in scored},
                   {q: {"question_types": t} for _, q, _, _, t in scored}, missing="What is in the needle?")


def lvbench_lmms(root: Path, clip: Path) -> Planted:
    rows = [("1", "k1.mp4", "What colour is the car?", COLOURS, "B", ["reasoning", "temporal grounding"]),
            ("2", "k2.mp4", "Who opens the door?", ANIMALS, "D", ["reasoning"]),
            ("3", "k3.mp4", "What is in the needle?", THINGS, "A", ["summarization"]),
            ("4", "k1.mp4", "No answer?", THINGS, "", ["reasoning"])]
    table = [{"uid": u, "video_path": v, "question": _embedded(q, o), "answer": a, "question_type": t,
              "time_reference": "None"} for u, v, q, o, a, t in rows]
    path = root / "lvbench.parquet"
    pq.write_table(pa.Table.from_pylist(table), path)
    _videos(clip, root / "videos", ["k1.mp4", "k2.mp4"])
    scored = rows[:3]
    return Planted("lvbench", path, root / "videos", 4, {"no_answer": 1}, {q: a for _, _, q, _, a, _ in scored},
                   {q: o for _, _, q, o, _, _ in scored}, {q: {"question_types": t} for _, _, q, _, _, t in scored},
                   missing="What is in the needle?")


# ----------------------------------------------------------------------------- LongVideoBench
_LVB = [("86CxyhFV9MI", "What colour is the car?", COLOURS + ["black"], 4, 15, "T3O"),
        ("nDJTYpTPxQA", "Who opens the door?", ANIMALS, 1, 600, "S2E"),
        ("mIssIngVid0", "What is in the needle?", THINGS, 2, 600, "T3O"),
        ("nDJTYpTPxQA", "Bad choice?", THINGS, 4, 600, "S2E")]


def _lvb_planted(path: Path, root: Path) -> Planted:
    scored = _LVB[:3]
    return Planted("longvideobench", path, root, 4, {"answer_not_in_candidates": 1},
                   {q: LETTERS[c] for _, q, _, c, _, _ in scored}, {q: o for _, q, o, _, _, _ in scored},
                   {q: {"duration_group": g, "question_category": k} for _, q, _, _, g, k in scored},
                   missing="What is in the needle?")


def longvideobench_release(root: Path, clip: Path) -> Planted:
    rows = [{"id": f"{v}_{i}", "video_id": v, "question": q, "candidates": o, "correct_choice": c, "duration_group": g,
             "question_category": k, "video_path": f"{v}.mp4", "duration": 4.0} for i, (v, q, o, c, g, k) in enumerate(_LVB)]
    path = root / "lvb_val.json"
    path.write_text(json.dumps(rows))
    _videos(clip, root / "videos", ["86CxyhFV9MI.mp4", "nDJTYpTPxQA.mp4"])
    return _lvb_planted(path, root / "videos")


def longvideobench_lmms(root: Path, clip: Path) -> Planted:
    rows = [{"id": f"{v}_{i}", "video_id": v, "question": q, "correct_choice": c, "duration_group": g,
             "question_category": k, "video_path": f"{v}.mp4", "duration": 4.0,
             **{f"option{j}": (o + ["N/A"] * 5)[j] for j in range(5)}} for i, (v, q, o, c, g, k) in enumerate(_LVB)]
    path = root / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    _videos(clip, root / "videos", ["86CxyhFV9MI.mp4", "nDJTYpTPxQA.mp4"])
    return _lvb_planted(path, root / "videos")


# ------------------------------------------------------------------------------- Charades-STA
_STA = [("3MSZA", 0.5, 2.5, "person turns a light on"), ("AO8RW", 1.0, 3.5, "person opens the door"),
        ("Y8K2Q", 0.0, 2.0, "person sits down"), ("AO8RW", 3.0, 1.0, "person leaves")]


def _sta_planted(path: Path, root: Path, extra: list[str]) -> Planted:
    scored = _STA[:3]
    return Planted("charades", path, root, 4, {"span_reversed": 1}, {q: (a, b) for _, a, b, q in scored},
                   missing="person sits down", extra=extra)


def charades_release(root: Path, clip: Path) -> Planted:
    path = root / "charades_sta_test.txt"
    path.write_text("".join(f"{v} {a} {b}##{q}.\n" for v, a, b, q in _STA))
    csv = root / "Charades_v1_test.csv"
    csv.write_text("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
                   + "".join(f"{v},s,Kitchen,6,7,Yes,x,y,z,c001 0 5,4.0\n" for v in ("3MSZA", "AO8RW", "Y8K2Q")))
    _videos(clip, root / "Charades_v1_480", ["3MSZA.mp4", "AO8RW.mp4"])
    return _sta_planted(path, root / "Charades_v1_480", [f"durations={csv}"])


def charades_lmms(root: Path, clip: Path) -> Planted:
    schema = pa.schema([("video", pa.string()), ("caption", pa.string()), ("timestamp", pa.list_(pa.float16()))])
    rows = [{"video": f"{v}.mp4", "caption": f"{q}.", "timestamp": [a, b]} for v, a, b, q in _STA]
    path = root / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    _videos(clip, root / "Charades_v1_480", ["3MSZA.mp4", "AO8RW.mp4"])
    return _sta_planted(path, root, [])


# --------------------------------------------------------------------------------- the runs
def _prompt_fragment(fmt: str, protocol: str, q: str, opts: list[str]) -> str:
    """A piece of the user prompt each (benchmark, protocol) must contain, written from its source."""
    paren = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))
    dotted = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return {
        ("mlvu", "official"): f"Question: {q}\nOptions:\n{paren}\nOnly give the best option.",
        ("mlvu", "lmms-eval"): f"{q}\n{paren}\nOnly give the best option.\n\nBest option: (",
        ("videomme", "official"): f"{q}\n{dotted}\nThe best answer is:",
        ("videomme", "lmms-eval"): f"{q}\n" + str([f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)]),
        ("lvbench", "official"): f"{q}\n{paren}\nAnswer with the option's letter",
        ("lvbench", "lmms-eval"): f"{q}\n{dotted}\nAnswer with the option's letter",
        ("longvideobench", "official"): f"Question: {q}\n{dotted}\nAnswer with the option's letter",
        ("longvideobench", "lmms-eval"): f"{q}\n{dotted}\nAnswer with the option's letter",
        ("charades", "official"): f'Give the query: "{q}", when does',
        ("charades", "lmms-eval"): f"textual sentence: {q}. Please return its start time and end time.",
    }[(fmt, protocol)]


def _iou(p: tuple[float, float] | None, g: tuple[float, float]) -> float:
    if p is None:
        return 0.0
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = max(p[1], g[1]) - min(p[0], g[0])
    return inter / union if union > 0 else float(p == g)


BREAKDOWN_KEYS = {"mlvu": ["task_type"], "videomme": ["duration_category"], "lvbench": ["question_types"],
                  "longvideobench": ["duration_group", "question_category"], "charades": []}
CASES = [  # (builder, protocol, prefill/decode): each format under both protocols and both layouts
    (mlvu_release, "official", "full"), (mlvu_lmms, "lmms-eval", "chunked"),
    (videomme, "official", "chunked"), (videomme, "lmms-eval", "full"),
    (lvbench_release, "lmms-eval", "full"), (lvbench_lmms, "official", "chunked"),
    (longvideobench_release, "official", "chunked"), (longvideobench_lmms, "lmms-eval", "full"),
    (charades_release, "official", "full"), (charades_lmms, "lmms-eval", "chunked"),
]


def _evaluate(tiny: dict[str, Any], planted: Planted, out: Path, protocol: str, mode: str,
              *extra: str, cli: bool = False) -> dict[str, Any] | None:
    """Evaluate in this process (composed Hydra config) or, with `cli`, as `python -m train.evaluate`."""
    bench = "grounding" if planted.fmt == "charades" else "mcq"
    overrides = [f"ckpt={tiny['ckpt']}", f"bench={bench}", f"format={planted.fmt}", f"setting={planted.fmt}",
                 f"setting.protocol={protocol}", f"data={planted.data}", f"video_root={planted.video_root}",
                 f"out={out}", "setting.frames_upbound=8", "bench.max_new_tokens=4", "device=cpu",
                 f"prefill={mode}", f"decode={'bilevel' if mode == 'chunked' else 'full'}",
                 "setting.inference.chunk_groups=1", "setting.inference.prev_chunks=0",
                 "setting.inference.top_k=1", "setting.inference.kv_pool=2", *planted.extra, *extra]
    if cli:
        import subprocess
        import sys

        from helpers import subprocess_env

        proc = subprocess.run([sys.executable, "-m", "train.evaluate", *overrides], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())
    with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
        return run(compose("evaluate", overrides=overrides))


@pytest.mark.parametrize(("build", "protocol", "mode"), CASES,
                         ids=[f"{b.__name__}-{p}-{m}" for b, p, m in CASES])
def test_benchmark_end_to_end(tiny: dict[str, Any], tmp_path: Path, build: Any, protocol: str, mode: str) -> None:
    planted = build(tmp_path, tiny["clip"])
    # one format goes through the command line (`python -m train.evaluate`), the others in-process
    cli = build is longvideobench_release
    metrics = _evaluate(tiny, planted, tmp_path / "out.json", protocol, mode, cli=cli)
    assert metrics == json.loads((tmp_path / "out.json").read_text())
    preds = [json.loads(x) for x in Path(metrics["predictions"]).read_text().splitlines()]
    fmt, grounding = planted.fmt, planted.fmt == "charades"

    # every scorable row evaluated once, with its planted ground truth and the protocol's prompt
    assert sorted(p["question"] for p in preds) == sorted(planted.truth)
    for p in preds:
        truth = planted.truth[p["question"]]
        if grounding:
            assert p["span"] == pytest.approx(list(truth), abs=0.01)  # float16 in the lmms-eval copy
        else:
            assert p["answer"] == truth
        assert _prompt_fragment(fmt, protocol, p["question"], planted.options.get(p["question"], [])) in p["prompt"]
    assert metrics["protocol"]["name"] == protocol and metrics["protocol"]["prompt"]["user"]
    assert metrics["protocol"]["extraction"] == extractor_for(protocol, fmt, "grounding" if grounding else "mcq").name

    # exclusions listed with their reasons; the missing video is a failed (wrong) sample; denominators
    assert {e["reason"] for e in metrics["excluded"]} == set(planted.excluded)
    assert len(metrics["excluded"]) == sum(planted.excluded.values())
    failed = [p for p in preds if p.get("error")]
    assert [p["question"] for p in failed] == [planted.missing]
    assert failed[0]["error"].startswith("FileNotFoundError") and failed[0]["parsed"] is None
    assert metrics["failed"] == [{"id": failed[0]["id"], "error": failed[0]["error"]}]
    assert metrics["denominators"]["rows_read"] == planted.rows
    assert metrics["denominators"]["scored"] == len(planted.truth) == metrics["metrics"]["n"]
    m = metrics["metrics"]
    assert m["failed"] == 1

    # scores recomputed from the outputs with the protocol's parser and the planted truth
    parse = extractor_for(protocol, fmt, "grounding" if grounding else "mcq").parse
    if grounding:
        ious = [_iou(None if p.get("error") else parse(p["prediction"]), planted.truth[p["question"]]) for p in preds]
        assert m["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-3)
        for t in (0.3, 0.5, 0.7):
            assert m[f"R@{t:g}"] == pytest.approx(sum(i >= t - 1e-9 for i in ious) / len(ious), abs=1e-9)
    else:
        hit = {p["question"]: (not p.get("error")) and parse(p["prediction"], p["letters"]) == planted.truth[p["question"]]
               for p in preds}
        assert m["accuracy"] == pytest.approx(sum(hit.values()) / len(hit))
        for key in BREAKDOWN_KEYS[fmt]:
            groups: dict[str, list[bool]] = {}
            for q, cats in planted.meta.items():
                values = cats[key] if isinstance(cats[key], list) else [cats[key]]
                for v in values:
                    groups.setdefault(str(v), []).append(hit[q])
            assert m[f"by_{key}"] == {k: {"score": pytest.approx(sum(v) / len(v)), "n": len(v)} for k, v in groups.items()}
        if fmt == "mlvu":
            per_task = {}
            for q, cats in planted.meta.items():
                per_task.setdefault(cats["task_type"], []).append(hit[q])
            assert m["m_avg"] == pytest.approx(sum(sum(v) / len(v) for v in per_task.values()) / len(per_task))
    if mode == "chunked":  # 2 groups in 1-group chunks that see no previous chunk: sparser than causal
        assert all(p["stats"]["pair_density"] < 1.0 for p in preds if not p.get("error"))


def test_strict_turns_exclusions_and_missing_videos_into_errors(tiny: dict[str, Any], tmp_path: Path) -> None:
    planted = mlvu_release(tmp_path, tiny["clip"])
    with pytest.raises(AnnotationError, match="answer_not_in_candidates"):
        _evaluate(tiny, planted, tmp_path / "out.json", "official", "full", "strict=true")
    # no exclusion left but a missing video: still an error under strict
    rows = json.loads((planted.data / "2_needle.json").read_text())
    (planted.data / "2_needle.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(AnnotationError, match=r"no video at .*needle_5\.mp4 \(1 missing; strict=true\)"):
        _evaluate(tiny, planted, tmp_path / "out.json", "official", "full", "strict=true")


def test_a_missing_data_path_or_split_is_a_config_error_naming_it(tiny: dict[str, Any], tmp_path: Path) -> None:
    """`data` or `video_root` that is not there, or synth shards without the asked split, fail with the field
    named, before the weights are read (the CLI prints it as one line and exits 2)."""
    from train.config import ConfigError

    def evaluate(*overrides: str) -> None:
        with initialize_config_dir(config_dir=str(REPO / "conf" / "eval"), version_base="1.3"):
            run(compose("evaluate", overrides=[f"ckpt={tiny['ckpt']}", "bench=mcq", f"out={tmp_path / 'o.json'}",
                                               "device=cpu", *overrides]))

    with pytest.raises(ConfigError) as err:
        evaluate("format=records", f"data={tmp_path / 'absent.json'}")
    assert err.value.field == "data" and "absent.json" in str(err.value)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "test-000000.tar").write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        evaluate("format=synth", f"data={tmp_path / 'shards'}", "split=val")
    assert err.value.field == "split" and "no shards val-*.tar" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a folder without any shard: the folder is what is wrong
        evaluate("format=synth", f"data={tmp_path}", "split=test")
    assert err.value.field == "data" and "no shards test-*.tar" in str(err.value)
    (tmp_path / "rows.json").write_text("[]")
    with pytest.raises(ConfigError) as err:
        evaluate("format=records", f"data={tmp_path / 'rows.json'}", f"video_root={tmp_path / 'absent'}")
    assert err.value.field == "video_root" and "absent" in str(err.value)


@pytest.mark.parametrize(("build", "protocol", "outputs", "expected"), [
    # MLVU under lmms-eval: "C) blue" is read as C (right), "A) a ball" as A (wrong), the third video is missing
    (mlvu_lmms, "lmms-eval", {"What colour is the car?": "C) blue", "What is in the needle?": "A) a ball"},
     {"accuracy": 1 / 3, "by_task_type": {"plotQA": 1.0, "count": 0.0, "ego": 0.0}, "m_avg": 1 / 3}),
    # Video-MME under lmms-eval reads the article of a preamble; official reads the stated answer
    (videomme, "lmms-eval", {"What colour is the car?": "A car drives by. The answer is D",
                             "Who opens the door?": "A"},
     {"accuracy": 1 / 3, "by_duration_category": {"short": 0.0, "long": 1.0, "medium": 0.0}}),
    (videomme, "official", {"What colour is the car?": "A car drives by. The answer is D",
                            "Who opens the door?": "A"},
     {"accuracy": 2 / 3, "by_duration_category": {"short": 1.0, "long": 1.0, "medium": 0.0}}),
    # Charades-STA: exact span (IoU 1), "between 1 s and 2 s" against (1.0, 3.5) (IoU 0.4), missing video (0)
    (charades_release, "official", {"person turns a light on": "From 0.5 to 2.5 seconds.",
                                    "person opens the door": "between 1 s and 2 s"},
     {"miou": 1.4 / 3, "R@0.3": 2 / 3, "R@0.5": 1 / 3, "R@0.7": 1 / 3}),
    (charades_release, "lmms-eval", {"person turns a light on": "From 0.5 to 2.5 seconds.",
                                     "person opens the door": "between 1 s and 2 s"},  # lmms-eval: unparsed
     {"miou": 1 / 3, "R@0.3": 1 / 3, "R@0.5": 1 / 3, "R@0.7": 1 / 3, "n_unparsed": 2}),
], ids=["mlvu-lmms", "videomme-lmms", "videomme-official", "charades-official", "charades-lmms"])
def test_scores_of_scripted_outputs(tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    build: Any, protocol: str, outputs: dict[str, str], expected: dict) -> None:
    """The model's answer is scripted per question (generation replaced, everything else real), so the
    metrics take known non-zero values, computed by hand from the planted truth."""
    import torch

    import model.inference
    from model import load_tokenizer
    from model.inference.generate import GenerationResult

    tok = load_tokenizer(str(tiny["ckpt"]))

    def scripted(_model: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> GenerationResult:
        prompt = tok.decode(input_ids[0].tolist())
        (text,) = [t for q, t in outputs.items() if q in prompt]
        return GenerationResult(torch.tensor(tok.encode(text, add_special_tokens=False)), {})

    monkeypatch.setattr(model.inference, "generate_video", scripted)
    planted = build(tmp_path, tiny["clip"])
    m = _evaluate(tiny, planted, tmp_path / "out.json", protocol, "full")["metrics"]
    assert m["n"] == 3 and m["failed"] == 1
    for key, want in expected.items():
        if key.startswith("by_"):
            assert {k: v["score"] for k, v in m[key].items()} == pytest.approx(want)
        else:
            assert m[key] == pytest.approx(want)


def test_system_prompt_and_answer_prefix_reach_the_model_input(tiny: dict[str, Any]) -> None:
    """MLVU official: the authors' system prompt, and the answer forced to start with "Best Option: (";
    the prefix tokens are question tokens after the assistant header, outside every visual group."""
    from data.benchmarks import EvalSample
    from evaluation.config import SettingConfig
    from evaluation.prompts import prompt_spec, render
    from evaluation.runner import build_inputs
    from model import VideoXL2ForCausalLM, load_tokenizer

    tok = load_tokenizer(str(tiny["ckpt"]))
    model_cfg = VideoXL2ForCausalLM.config_class.from_pretrained(str(tiny["ckpt"]))
    sample = EvalSample("s", str(tiny["clip"]), "mcq", "What colour is the car?", "mlvu", options=COLOURS, answer="C")
    spec = prompt_spec("mlvu", "official", "unused")
    video = (np.zeros((8, 32, 32, 3), dtype=np.uint8), [0.0, 2.0], 4.0)
    ids, pixels, layout, info = build_inputs(sample, render(spec, sample), tok, model_cfg,
                                             SettingConfig("mlvu", 8), video, spec)
    text = tok.decode(ids[0].tolist())
    assert text.endswith("<|im_start|>assistant\nBest Option: (")
    assert "<|im_start|>system\nCarefully watch this video and pay attention to every detail." in text
    assert info["prompt_tokens"] == ids.shape[1] and pixels.shape[0] == 8
    plain, _, _, _ = build_inputs(sample, render(spec, sample), tok, model_cfg, SettingConfig("mlvu", 8), video)
    assert tok.decode(plain[0].tolist()).endswith("<|im_start|>assistant\n")


def test_a_records_system_turn_reaches_the_model_input(tiny: dict[str, Any], tmp_path: Path) -> None:
    """format=records: a record's leading system turn (which set its system prompt in training) is its
    system prompt at evaluation too; a record without one gets the default; a protocol's own system
    prompt wins over it."""
    from data.benchmarks import read_benchmark
    from evaluation.config import SettingConfig
    from evaluation.prompts import prompt_spec, render
    from evaluation.runner import build_inputs
    from model import VideoXL2ForCausalLM, load_tokenizer

    tok = load_tokenizer(str(tiny["ckpt"]))
    model_cfg = VideoXL2ForCausalLM.config_class.from_pretrained(str(tiny["ckpt"]))
    question = {"from": "human", "value": "<image>\nWhich colour?\nA. red\nB. blue"}
    recs = [{"id": "sys", "video": "v.mp4", "task": "mcq", "answer": {"letter": "B"},
             "conversations": [{"from": "system", "value": "Answer like a pirate."}, question,
                               {"from": "gpt", "value": "B"}]},
            {"id": "plain", "video": "v.mp4", "task": "mcq", "answer": {"letter": "A"},
             "conversations": [question, {"from": "gpt", "value": "A"}]}]
    ann = tmp_path / "records.json"
    ann.write_text(json.dumps(recs))
    with_sys, plain = read_benchmark("records", ann, tmp_path).samples
    video = (np.zeros((8, 32, 32, 3), dtype=np.uint8), [0.0, 2.0], 4.0)
    setting = SettingConfig("synth", 8)

    def text(sample: Any, spec: Any = None) -> str:
        ids = build_inputs(sample, sample.prompt, tok, model_cfg, setting, video, spec)[0]
        return tok.decode(ids[0].tolist())

    assert text(with_sys).startswith("<|im_start|>system\nAnswer like a pirate.<|im_end|>")
    assert text(plain).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    spec = prompt_spec("mlvu", "official", "unused")
    assert text(with_sys, spec).startswith(f"<|im_start|>system\n{spec.system}")
    assert render(spec, with_sys)  # the record renders under a protocol as well


def test_records_read_option_lines_in_each_labelling(tmp_path: Path) -> None:
    """A records question's options may be labelled "A. ", "A) " or "(A) " (MLVU's style); the answer
    letter is checked against how many there are."""
    from data.benchmarks import read_benchmark

    def rec(i: int, lines: list[str], letter: str) -> dict[str, Any]:
        human = {"from": "human", "value": "<image>\nWhat colour is the box?\n" + "\n".join(lines)}
        return {"id": f"r{i}", "video": "v.mp4", "task": "mcq", "answer": {"letter": letter},
                "conversations": [human, {"from": "gpt", "value": letter}]}

    labels = [["A. white", "B. red"], ["A) white", "B) red"], ["(A) white", "(B) red"]]
    ann = tmp_path / "records.json"
    ann.write_text(json.dumps([rec(i, lines, "B") for i, lines in enumerate(labels)]))
    samples = read_benchmark("records", ann, tmp_path).samples
    assert [s.options for s in samples] == [["white", "red"]] * 3
    ann.write_text(json.dumps([rec(0, labels[2], "C")]))
    with pytest.raises(AnnotationError, match="answer.letter"):
        read_benchmark("records", ann, tmp_path)
