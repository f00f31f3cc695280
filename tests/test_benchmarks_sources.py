"""Readers on files laid out as the public releases and lmms-eval's HF copies lay them out.

Each test writes one benchmark's questions in the release layout and, converted the way the copy
was made, in the lmms-eval layout (column names and parquet types from the copies' dataset cards,
see the reader modules' docstrings for the sources), then checks that both layouts read to the same
normalised questions. Expected values are computed from the written rows, not from reader output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.benchmarks import LETTERS, BenchmarkRead, read_benchmark


def _touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def _mcq_view(read: BenchmarkRead, *meta: str) -> list[tuple[Any, ...]]:
    return sorted((s.question, tuple(s.options), s.answer, *(str(s.metadata.get(k)) for k in meta))
                  for s in read.samples)


# ------------------------------------------------------------------------------ MLVU
# Release task files (name -> question_type), as in JUNJIE99/MLVU data/.
_MLVU_MCQ = {"1_plotQA": "plotQA", "2_needle": "findNeedle", "3_ego": "ego", "4_count": "count",
             "5_order": "order", "6_anomaly_reco": "anomaly_reco", "7_topic_reasoning": "topic_reasoning"}
# The MLVU paper's task codes (README table), as the pre-2025 lmms-eval copy stored them.
_PAPER_CODES = {"plotQA": "PQA", "needle": "NQA", "ego": "ER", "count": "AC", "order": "AO",
                "anomaly_reco": "AR", "topic_reasoning": "TR"}
_MLVU_SCHEMA = pa.schema([("video_name", pa.string()), ("duration", pa.float64()), ("question", pa.string()),
                          ("candidates", pa.list_(pa.string())), ("answer", pa.string()),
                          ("task_type", pa.string()), ("question_id", pa.string())])


def _mlvu_release_rows() -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for n, (stem, qtype) in enumerate(_MLVU_MCQ.items()):
        task = stem.split("_", 1)[1]
        files[stem] = [
            {"video": f"{task}_{k}.mp4", "duration": 300 + k if k % 2 else 412.5 + k,  # int and float seconds
             "question": f"{task} question {k}?", "candidates": [f"{task} option {j}" for j in range(4)],
             "answer": f"{task} option {(n + k) % 4}", "question_type": qtype}
            for k in range(2)]
    files["8_sub_scene"] = [{"video": "subPlot_1.mp4", "duration": 5632.8, "question": "Describe the scene.",
                             "answer": "A caption.", "question_type": "subPlot", "scoring_points": ["a", "b"]}]
    files["9_summary"] = [{"video": "217.mp4", "duration": 480.0, "question": "Summarise the video.",
                           "answer": "A summary.", "question_type": "summary"}]
    return files


def _mlvu_lmms_rows(files: dict[str, list[dict[str, Any]]], task_names: dict[str, str]) -> list[dict[str, Any]]:
    """The MCQ rows as the lmms-eval copy holds them: options embedded as ``(A) ...`` lines, letter answers."""
    rows = []
    for stem in _MLVU_MCQ:
        task = stem.split("_", 1)[1]
        for r in files[stem]:
            lines = "".join(f"({LETTERS[j]}) {c}\n" for j, c in enumerate(r["candidates"]))
            rows.append({"video_name": r["video"], "duration": float(r["duration"]),
                         "question": f"{r['question']}\n{lines}", "candidates": r["candidates"],
                         "answer": LETTERS[r["candidates"].index(r["answer"])],
                         "task_type": task_names.get(task, task), "question_id": f"Q{len(rows)}"})
    return rows


def test_mlvu_release_and_lmms_eval_copies_agree(tmp_path: Path) -> None:
    files = _mlvu_release_rows()
    ann = tmp_path / "json"
    ann.mkdir()
    for stem, rows in files.items():
        (ann / f"{stem}.json").write_text(json.dumps(rows))
    scorer_vids = tmp_path / "video"  # the authors' scorer: video/<task without number>/<file>
    for stem in _MLVU_MCQ:
        for r in files[stem]:
            _touch(scorer_vids, f"{stem.split('_', 1)[1]}/{r['video']}")
    release = read_benchmark("mlvu", ann, scorer_vids)
    n_mcq = sum(len(files[s]) for s in _MLVU_MCQ)
    assert release.summary() == {"samples": n_mcq, "excluded": {"no_candidates_open_ended": 2},
                                 "missing_videos": 0, "layout": "release"}
    for s in release.samples:
        assert Path(s.video).parent.name == s.metadata["task_file"].split("_", 1)[1]

    # lmms-eval's current copy (task names ``needle``, ``plotQA``...) and the older one (paper codes)
    for names, raw_needle in (({}, "needle"), (_PAPER_CODES, "NQA")):
        path = tmp_path / f"mlvu-{raw_needle}.parquet"
        pq.write_table(pa.Table.from_pylist(_mlvu_lmms_rows(files, names), schema=_MLVU_SCHEMA), path)
        copy = read_benchmark("mlvu", path, scorer_vids)
        assert copy.layout == "lmms-eval" and copy.summary()["missing_videos"] == 0
        assert _mcq_view(copy, "task_type") == _mcq_view(release, "task_type")
        assert {s.metadata["task_type"] for s in copy.samples} == set(_MLVU_MCQ.values())
        needle = [s for s in copy.samples if s.metadata["task_type"] == "findNeedle"]
        assert len(needle) == len(files["2_needle"]) and {s.metadata["task_type_raw"] for s in needle} == {raw_needle}
        assert sorted(s.duration for s in copy.samples) == sorted(float(r["duration"]) for s in _MLVU_MCQ
                                                                  for r in files[s])


# ---------------------------------------------------------------------------- LVBench
def test_lvbench_release_and_lmms_eval_copy_agree(tmp_path: Path) -> None:
    opts = [["1636", "1366", "1363", "1633"], ["a cat", "a king", "a dog", "nobody"], ["up", "down", "left", "right"]]
    qas = [{"uid": str(100 + i), "question": f"Question {i}?" + "".join(f"\n({LETTERS[j]}) {o}" for j, o in enumerate(op)),
            "answer": LETTERS[i], "question_type": [["key information retrieval"], ["entity recognition", "reasoning"],
                                                     ["temporal grounding"]][i],
            "time_reference": ["105:07-106:10", None, "00:10-00:20"][i]} for i, op in enumerate(opts)]
    info = {"duration_minutes": 118.5, "fps": 30.0, "resolution": {"width": 640, "height": 360}}
    release_path = tmp_path / "video_info.meta.jsonl"
    release_path.write_text(json.dumps({"key": "ikuA3O2bqRw", "type": "cartoon", "video_info": info, "qa": qas}) + "\n")
    _touch(tmp_path, "all_videos/ikuA3O2bqRw.mp4")
    release = read_benchmark("lvbench", release_path, tmp_path)
    assert release.summary()["samples"] == len(qas) and release.summary()["missing_videos"] == 0
    assert {s.video for s in release.samples} == {str(tmp_path / "all_videos" / "ikuA3O2bqRw.mp4")}
    assert {s.duration for s in release.samples} == {info["duration_minutes"] * 60}

    # a flat copy: one row per question, bare question + ``options`` list (lmms-eval's current utils.py)
    rows = [{**{k: v for k, v in qa.items() if k != "question"}, "question": qa["question"].split("\n")[0],
             "options": [ln[4:] for ln in qa["question"].split("\n")[1:]],  # "(A) 1636" -> "1636"
             "time_reference": qa["time_reference"] or "None", "video_path": "videos/ikuA3O2bqRw.mp4",
             "video_info": info} for qa in qas]
    copy_path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), copy_path)
    _touch(tmp_path, "videos/ikuA3O2bqRw.mkv")
    copy = read_benchmark("lvbench", copy_path, tmp_path)
    assert copy.layout == "lmms-eval" and copy.summary()["missing_videos"] == 0
    assert _mcq_view(copy, "question_types", "time_reference") == _mcq_view(release, "question_types", "time_reference")
    assert {s.duration for s in copy.samples} == {info["duration_minutes"] * 60}
    assert sorted(s.sample_id for s in copy.samples) == sorted(f"lvbench/{qa['uid']}" for qa in qas)


# --------------------------------------------------------------------- LongVideoBench
_LVB_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("id", pa.string()), ("video_path", pa.string()), ("subtitle_path", pa.string()),
    ("correct_choice", pa.int64()), ("question", pa.string()),
    *[(f"option{k}", pa.string()) for k in range(5)],
    ("duration", pa.float64()), ("duration_group", pa.int64()), ("question_category", pa.string()),
    ("topic_category", pa.string()), ("starting_timestamp_for_subtitles", pa.float64())])


def test_longvideobench_json_and_parquet_agree(tmp_path: Path) -> None:
    groups, cats = [15, 60, 600, 3600], ["S2E", "T3O", "O3O", "TOS"]
    rows = [{"video_id": vid, "id": f"{vid}_{i}", "video_path": f"{vid}.mp4", "subtitle_path": f"{vid}_en.json",
             "question": f"Question {i}?", "candidates": [f"c{i}{j}" for j in range(4 + i % 2)],
             "correct_choice": (3 * i) % (4 + i % 2), "duration": 8.0 + 900 * i, "duration_group": groups[i],
             "question_category": cats[i], "topic_category": "NP-News-Programs", "level": "L2-Relation",
             "starting_timestamp_for_subtitles": 0, "question_wo_referring_query": "Q?", "position": [854, 948],
             "view_count": 259852, "type": "local"}
            for i, vid in enumerate(["86CxyhFV9MI", "@jonnyjonnyjonnyjon1", "-ab3_cd4EFg", "XyZ0123abcd"])]
    json_path = tmp_path / "lvb_val.json"
    json_path.write_text(json.dumps(rows))
    for r in rows:
        _touch(tmp_path, f"videos/{r['video_path']}")
    release = read_benchmark("longvideobench", json_path, tmp_path)
    assert release.summary() == {"samples": len(rows), "excluded": {}, "missing_videos": 0, "layout": "release"}

    flat = [{**{k: v for k, v in r.items() if k in _LVB_SCHEMA.names},
             **{f"option{k}": (r["candidates"] + ["N/A"] * 5)[k] for k in range(5)}} for r in rows]
    parquet_path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(flat, schema=_LVB_SCHEMA), parquet_path)
    copy = read_benchmark("longvideobench", parquet_path, tmp_path)
    assert copy.layout == "lmms-eval" and copy.summary()["missing_videos"] == 0
    view = ("duration_group", "question_category")
    assert _mcq_view(copy, *view) == _mcq_view(release, *view)
    assert sorted(_mcq_view(copy, *view)) == sorted(
        (f"Question {i}?", tuple(r["candidates"]), LETTERS[r["correct_choice"]], str(r["duration_group"]),
         r["question_category"]) for i, r in enumerate(rows))


# -------------------------------------------------------------------------- Video-MME
def test_videomme_both_card_schemas(tmp_path: Path) -> None:
    cols = ["video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type",
            "question", "options", "answer"]
    rows = [{"video_id": f"{v:03d}", "duration": ["short", "medium", "long"][v % 3], "domain": "Knowledge",
             "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid,
             "question_id": f"{v:03d}-{q}", "task_type": "Counting Problem", "question": f"Q {v}-{q}?",
             "options": [f"{LETTERS[j]}. answer {j}" for j in range(4)], "answer": LETTERS[(v + q) % 4]}
            for v, vid in enumerate(["fFjv93ACGo8", "-Jb0nFtiXAo"]) for q in (1, 2, 3)]
    reads = []
    for extra in ([], ["language"]):  # the card's 11 columns; an earlier upload added ``language``
        names = cols[:5] + extra + cols[5:]
        schema = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in names])
        path = tmp_path / f"test{len(names)}.parquet"
        pq.write_table(pa.Table.from_pylist([{**r, "language": "English"} for r in rows], schema=schema), path)
        reads.append(read_benchmark("videomme", path, tmp_path))
    view = ("duration_category", "domain", "sub_category", "task_type")
    assert _mcq_view(reads[0], *view) == _mcq_view(reads[1], *view)
    assert sorted(_mcq_view(reads[0], *view)) == sorted(
        (r["question"], tuple(o[3:] for o in r["options"]), r["answer"], r["duration"], r["domain"],
         r["sub_category"], r["task_type"]) for r in rows)
    assert reads[1].samples[0].metadata["language"] == "English"


# ------------------------------------------------------------------------ Charades-STA
def test_charades_release_lines_and_parquet_agree(tmp_path: Path) -> None:
    lines = [("3MSZA", 24.3, 30.4, "person turn a light on."), ("AO8RW", 0.0, 6.9, "a person is putting a book on a shelf."),
             ("Y8K2Q", 11.7, 19.2, "person opens the door."), ("Y8K2Q", 1.5, 7.3, "Person sits down.")]
    txt = tmp_path / "charades_sta_test.txt"
    txt.write_text("".join(f"{v} {s} {e}##{c}\n" for v, s, e, c in lines))
    schema = pa.schema([("video", pa.string()), ("caption", pa.string()), ("timestamp", pa.list_(pa.float16()))])
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"video": f"{v}.mp4", "caption": c, "timestamp": [s, e]}
                                         for v, s, e, c in lines], schema=schema), parquet)
    release, copy = read_benchmark("charades", txt, tmp_path), read_benchmark("charades", parquet, tmp_path)
    assert copy.layout == "lmms-eval" and release.layout == "release"
    assert [(s.question, s.span) for s in copy.samples] == [(s.question, s.span) for s in release.samples]
    assert [s.span for s in release.samples] == [(s, e) for _, s, e, _ in lines]
    assert [s.metadata["timestamp_raw"] for s in copy.samples] == [
        [float(np.float16(s)), float(np.float16(e))] for _, s, e, _ in lines]
