"""Benchmark readers on small files written in each layout (release and lmms-eval copy), faults included.

Each file is built from a list of cases ``(row, expected exclusion reason or None)`` so the expected
counts come from how the file was built, not from the reader's output.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.benchmarks import AnnotationError, BenchmarkRead, read_benchmark

Case = tuple[dict[str, Any], str | None]


def _touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def _expect(read: BenchmarkRead, cases: list[Case], missing: int) -> None:
    """Counts of `read` against the cases' expected reasons and the number of videos not created."""
    want_excluded = Counter(reason for _, reason in cases if reason is not None)
    summary = read.summary()
    assert summary["samples"] == sum(reason is None for _, reason in cases)
    assert summary["excluded"] == dict(want_excluded)
    assert summary["missing_videos"] == missing
    assert len({e.sample_id for e in read.excluded}) == len(read.excluded)  # every exclusion named once
    for s in read.samples:
        assert Path(s.video).is_absolute()
        assert Path(s.video).is_file() != bool(s.metadata.get("video_missing"))


# ------------------------------------------------------------------------------ MLVU
def _mlvu_release(root: Path) -> tuple[Path, Path, dict[str, list[Case]]]:
    ann, vids = root / "json", root / "video"
    ann.mkdir()
    opts = ["Yellow", "Red", "Green", "Blue"]
    files: dict[str, list[Case]] = {
        "1_plotQA": [
            ({"video": "m1.mp4", "duration": 246.5, "question": "Car colour?", "candidates": opts,
              "answer": "Green", "question_type": "plotQA"}, None),
            ({"video": "m2.mp4", "duration": 100, "question": "Who?", "candidates": ["a man", "a dog"],
              "answer": "a dog", "question_type": "plotQA"}, None),
            ({"video": "m3.mp4", "duration": 80, "question": "Dup?", "candidates": ["x", "y", "x", "z"],
              "answer": "y", "question_type": "plotQA"}, "duplicate_candidates"),
            ({"video": "m3.mp4", "duration": 80, "question": "Empty?", "candidates": ["x", "", "z"],
              "answer": "x", "question_type": "plotQA"}, "empty_candidate"),
            ({"video": "m4.mp4", "duration": 80, "question": "Missing video?", "candidates": opts,
              "answer": "Blue", "question_type": "plotQA"}, None),
        ],
        "2_needle": [
            ({"video": "n1.mp4", "duration": 300, "question": "Needle colour?", "candidates": opts,
              "answer": "Purple", "question_type": "findNeedle"}, "answer_not_in_candidates"),
            ({"video": "n1.mp4", "duration": 300, "question": "Needle object?", "candidates": ["cup", "ball"],
              "answer": " Ball ", "question_type": "findNeedle"}, None),
            ({"video": "n2.mp4", "duration": 300, "question": "No answer?", "candidates": ["cup", "ball"],
              "question_type": "findNeedle"}, "no_answer"),
        ],
        "8_sub_scene": [  # open-ended task file in the same folder: no candidates
            ({"video": "s1.mp4", "duration": 500, "question": "Describe the scene.", "answer": "A long caption.",
              "question_type": "subPlot"}, "no_candidates_open_ended"),
            ({"video": "s2.mp4", "duration": 500, "question": "Describe again.", "answer": "Another caption.",
              "question_type": "subPlot"}, "no_candidates_open_ended"),
        ],
    }
    for stem, cases in files.items():
        (ann / f"{stem}.json").write_text(json.dumps([row for row, _ in cases]))
    _touch(vids, "1_plotQA/m1.mp4")
    _touch(vids, "m2.MP4")          # flat, upper-case extension
    _touch(vids, "2_needle/n1.webm")
    return ann, vids, files


def test_mlvu_release_folder(tmp_path: Path) -> None:
    ann, vids, files = _mlvu_release(tmp_path)
    read = read_benchmark("mlvu", ann, vids)
    cases = [c for stem in sorted(files) for c in files[stem]]
    _expect(read, cases, missing=1)  # m4.mp4 was not created
    assert read.layout == "release"
    by_q = {s.question: s for s in read.samples}
    assert by_q["Car colour?"].answer == "C" and by_q["Car colour?"].video == str(vids / "1_plotQA" / "m1.mp4")
    assert by_q["Who?"].answer == "B" and by_q["Who?"].video == str(vids / "m2.MP4")
    assert by_q["Needle object?"].answer == "B" and by_q["Needle object?"].video == str(vids / "2_needle" / "n1.webm")
    assert by_q["Needle object?"].metadata["task_type"] == "findNeedle"
    assert by_q["Car colour?"].duration == 246.5 and by_q["Who?"].duration == 100.0
    assert by_q["Missing video?"].metadata["video_missing"]
    assert all(s.metadata["benchmark"] == "mlvu" and s.metadata["layout"] == "release" for s in read.samples)
    assert {e.sample_id for e in read.excluded if e.reason == "no_candidates_open_ended"} == {
        "mlvu/8_sub_scene/0", "mlvu/8_sub_scene/1"}
    # one task file alone; strict turns the first exclusion into an error naming file and row
    assert read_benchmark("mlvu", ann / "1_plotQA.json", vids).summary()["samples"] == 3
    with pytest.raises(AnnotationError, match=r"1_plotQA\.json: mlvu/1_plotQA/2: duplicate_candidates"):
        read_benchmark("mlvu", ann, vids, strict=True)


def test_mlvu_lmms_eval_parquet(tmp_path: Path) -> None:
    def q(text: str, opts: list[str]) -> str:
        return text + "\n" + "\n".join(f"({'ABCDEFGH'[i]}) {o}" for i, o in enumerate(opts))

    o4 = ["red", "green", "blue", "white"]
    cases: list[Case] = [
        ({"video_name": "a.mp4", "duration": 120.0, "question": q("Car colour?", o4), "candidates": o4,
          "answer": "B", "task_type": "plotQA", "question_id": "q1"}, None),
        ({"video_name": "b.mp4", "duration": 60.0, "question": q("Needle?", o4), "candidates": o4,
          "answer": "(D)", "task_type": "findNeedle", "question_id": "q2"}, None),
        ({"video_name": "c.mp4", "duration": 60.0, "question": q("Out of range?", o4), "candidates": o4,
          "answer": "E", "task_type": "plotQA", "question_id": "q3"}, "answer_not_in_candidates"),
        ({"video_name": "c.mp4", "duration": 60.0, "question": q("Dup?", ["x", "x", "y"]),
          "candidates": ["x", "x", "y"], "answer": "A", "task_type": "plotQA", "question_id": "q4"},
         "duplicate_candidates"),
        ({"video_name": "d.mp4", "duration": 60.0, "question": "Summarise the video.", "candidates": [],
          "answer": "", "task_type": "summary", "question_id": "q5"}, "no_candidates_open_ended"),
    ]
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([r for r, _ in cases]), path)
    vids = tmp_path / "videos"
    _touch(vids, "1_plotQA/a.mp4")  # found one folder level down
    read = read_benchmark("mlvu", path, vids)
    _expect(read, cases, missing=1)  # b.mp4 not created
    assert read.layout == "lmms-eval"
    s = {x.sample_id: x for x in read.samples}
    assert s["mlvu/q1"].question == "Car colour?" and s["mlvu/q1"].options == o4 and s["mlvu/q1"].answer == "B"
    assert s["mlvu/q2"].answer == "D" and s["mlvu/q2"].metadata["task_type"] == "findNeedle"
    assert s["mlvu/q1"].video == str(vids / "1_plotQA" / "a.mp4") and s["mlvu/q2"].metadata["video_missing"]


# -------------------------------------------------------------------------- Video-MME
def test_videomme_parquet(tmp_path: Path) -> None:
    def row(qid: str, vid: str, options: list[str], answer: str, dur: str = "short") -> dict[str, Any]:
        return {"video_id": qid[:3], "duration": dur, "domain": "Knowledge", "sub_category": "History",
                "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
                "task_type": "Counting Problem", "question": f"Question {qid}?", "options": options, "answer": answer}

    good = ["A. 1.", "B. 2.", "C. 3.", "D. 4."]
    cases: list[Case] = [
        (row("001-1", "-dashID_1", good, "C"), None),
        (row("001-2", "-dashID_1", good, "A", "short"), None),
        (row("002-1", "missingV", good, "D", "long"), None),
        (row("003-1", "vid3", ["1", "2", "3", "4"], "A"), "bad_option_prefix"),
        (row("003-2", "vid3", good, "E"), "answer_not_in_candidates"),
        (row("003-3", "vid3", ["A. x", "B. ", "C. y", "D. z"], "A"), "empty_candidate"),
        (row("003-4", "vid3", ["A. x", "B. x", "C. y", "D. z"], "A"), "duplicate_candidates"),
    ]
    path = tmp_path / "test-00000-of-00001.parquet"
    table = pa.Table.from_pylist([r for r, _ in cases])
    assert table.num_columns == 11 and all(
        pa.types.is_string(t) for n, t in zip(table.column_names, table.schema.types, strict=True) if n != "options")
    pq.write_table(table, path)
    vids = tmp_path / "data"
    _touch(vids, "-dashID_1.mkv")
    read = read_benchmark("videomme", path, vids)
    _expect(read, cases, missing=1)
    s = {x.sample_id: x for x in read.samples}
    assert s["videomme/001-1"].video == str(vids / "-dashID_1.mkv") and s["videomme/001-1"].options == ["1.", "2.", "3.", "4."]
    assert s["videomme/001-1"].answer == "C" and s["videomme/002-1"].metadata["duration_category"] == "long"
    assert {k: s["videomme/001-1"].metadata[k] for k in ("domain", "sub_category", "task_type")} == {
        "domain": "Knowledge", "sub_category": "History", "task_type": "Counting Problem"}


# ---------------------------------------------------------------------------- LVBench
def _lv_q(text: str, opts: list[str]) -> str:
    return text + "".join(f"\n({'ABCD'[i]}) {o}" for i, o in enumerate(opts))


def test_lvbench_release_jsonl(tmp_path: Path) -> None:
    o4 = ["1636", "1366", "1363", "1633"]
    lines = [
        {"key": "ikuA3O2bqRw", "type": "cartoon", "video_info": {"duration_minutes": 118.5},
         "qa": [
             ({"uid": "007", "question": _lv_q("Year in the caption?", o4), "answer": "D",
               "question_type": ["key information retrieval"], "time_reference": "105:07-106:10"}, None),
             ({"uid": 12, "question": _lv_q("Who enters?", ["a cat", "a king", "a dog", "nobody"]), "answer": "B",
               "question_type": ["entity recognition", "reasoning"], "time_reference": None}, None),
             ({"uid": 13, "question": "Which option? none given", "answer": "A",
               "question_type": ["reasoning"], "time_reference": "00:10-00:20"}, "no_candidates"),
         ]},
        {"key": "-otherVid", "type": "documentary", "video_info": {"duration_minutes": 70},
         "qa": [
             ({"uid": "20", "question": _lv_q("What falls?", o4), "answer": "A",
               "question_type": ["event understanding"], "time_reference": "None"}, None),
             ({"uid": "21", "question": _lv_q("Bad answer?", o4), "answer": "F",
               "question_type": ["reasoning"], "time_reference": "01:00-01:05"}, "answer_not_in_candidates"),
             ({"uid": "22", "question": _lv_q("Dup?", ["a", "b", "a", "c"]), "answer": "B",
               "question_type": ["reasoning"], "time_reference": "01:00-01:05"}, "duplicate_candidates"),
         ]},
    ]
    path = tmp_path / "video_info.meta.jsonl"
    path.write_text("\n".join(json.dumps({**ln, "qa": [qa for qa, _ in ln["qa"]]}) for ln in lines) + "\n")
    cases = [c for ln in lines for c in ln["qa"]]
    _touch(tmp_path / "videos", "ikuA3O2bqRw.MP4")
    read = read_benchmark("lvbench", path, tmp_path / "videos")
    _expect(read, cases, missing=1)  # -otherVid's one scorable question
    assert read.layout == "release"
    s = {x.sample_id: x for x in read.samples}
    assert set(s) == {"lvbench/007", "lvbench/12", "lvbench/20"}  # "007" stays a string id
    assert s["lvbench/007"].question == "Year in the caption?" and s["lvbench/007"].options == o4
    assert s["lvbench/007"].metadata["time_reference_s"] == [105 * 60 + 7, 106 * 60 + 10]
    assert s["lvbench/12"].metadata["time_reference"] is None and s["lvbench/20"].metadata["time_reference"] is None
    assert s["lvbench/12"].metadata["question_types"] == ["entity recognition", "reasoning"]
    assert s["lvbench/007"].duration == pytest.approx(118.5 * 60)
    assert s["lvbench/20"].video == str(tmp_path / "videos" / "-otherVid.mp4") and s["lvbench/20"].metadata["video_missing"]


def test_lvbench_lmms_eval_parquet(tmp_path: Path) -> None:
    o4 = ["left", "right", "up", "down"]
    cases: list[Case] = [
        ({"uid": "1", "video_path": "k1.mp4", "question": _lv_q("Direction?", o4), "answer": "B",
          "question_type": ["reasoning", "temporal grounding"], "time_reference": "100:01-100:30"}, None),
        ({"uid": "2", "video_path": "k2.mp4", "question": _lv_q("Again?", o4), "answer": "A",
          "question_type": ["reasoning"], "time_reference": "None"}, None),
        ({"uid": "3", "video_path": "k2.mp4", "question": _lv_q("Empty?", ["x", " ", "y", "z"]), "answer": "A",
          "question_type": ["reasoning"], "time_reference": "00:01-00:02"}, "empty_candidate"),
        ({"uid": "4", "video_path": "k2.mp4", "question": _lv_q("No answer?", o4), "answer": "",
          "question_type": ["reasoning"], "time_reference": "00:01-00:02"}, "no_answer"),
    ]
    path = tmp_path / "lvbench.parquet"
    pq.write_table(pa.Table.from_pylist([r for r, _ in cases]), path)
    _touch(tmp_path, "k1.webm")
    read = read_benchmark("lvbench", path)  # videos default to the annotation's folder
    _expect(read, cases, missing=1)
    assert read.layout == "lmms-eval"
    s = {x.sample_id: x for x in read.samples}
    assert s["lvbench/1"].video == str(tmp_path / "k1.webm") and s["lvbench/1"].answer == "B"
    assert s["lvbench/1"].metadata["question_types"] == ["reasoning", "temporal grounding"]
    assert s["lvbench/1"].metadata["time_reference_s"] == [6001.0, 6030.0]
    assert s["lvbench/2"].metadata["time_reference"] is None


# --------------------------------------------------------------------- LongVideoBench
def _lvb_row(i: int, cands: list[str], choice: Any, group: int = 600) -> dict[str, Any]:
    return {"id": f"v{i}_0", "video_id": f"v{i}", "question": f"Question {i}?", "candidates": cands,
            "correct_choice": choice, "duration_group": group, "question_category": "T3O",
            "video_path": f"v{i}.mp4", "duration": 512.3}


def test_longvideobench_json(tmp_path: Path) -> None:
    cases: list[Case] = [
        (_lvb_row(0, ["a", "b", "c", "d"], 2, 15), None),
        (_lvb_row(1, ["a", "b", "c", "d", "e"], 4, 3600), None),
        (_lvb_row(2, ["a", "b", "c", "d", "e"], 5), "answer_not_in_candidates"),
        (_lvb_row(3, ["a", "b", "b", "d"], 0), "duplicate_candidates"),
        (_lvb_row(4, ["a", "", "c", "d"], 0), "empty_candidate"),
        (_lvb_row(5, ["a", "b", "c", "d"], None), "no_answer"),
    ]
    path = tmp_path / "lvb_val.json"
    path.write_text(json.dumps([r for r, _ in cases]))
    _touch(tmp_path, "videos/v0.mp4")
    read = read_benchmark("longvideobench", path)
    _expect(read, cases, missing=1)
    assert read.layout == "release"
    s = {x.sample_id: x for x in read.samples}
    assert s["longvideobench/v0_0"].answer == "C" and s["longvideobench/v1_0"].answer == "E"
    assert s["longvideobench/v0_0"].video == str(tmp_path / "videos" / "v0.mp4")
    assert s["longvideobench/v1_0"].metadata["duration_group"] == 3600 and s["longvideobench/v0_0"].duration == 512.3
    assert s["longvideobench/v0_0"].metadata["question_category"] == "T3O"


def test_longvideobench_parquet(tmp_path: Path) -> None:
    def flat(row: dict[str, Any], opts: list[str]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "candidates"}
        out.update({f"option{k}": (opts + ["N/A"] * 5)[k] for k in range(5)})
        return out

    cases: list[Case] = [
        (flat(_lvb_row(0, [], 3), ["a", "b", "c", "d"]), None),           # fifth option "N/A"
        (flat(_lvb_row(1, [], 4), ["a", "b", "c", "d", "e"]), None),
        (flat(_lvb_row(2, [], 4), ["a", "b", "c", "d"]), "answer_not_in_candidates"),
        (flat(_lvb_row(3, [], 0), ["a", "b", "N/A", "d"]), "empty_candidate"),
    ]
    path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([r for r, _ in cases]), path)
    _touch(tmp_path, "v1.mkv")
    read = read_benchmark("longvideobench", path, tmp_path)
    _expect(read, cases, missing=1)
    assert read.layout == "lmms-eval"
    s = {x.sample_id: x for x in read.samples}
    assert s["longvideobench/v0_0"].options == ["a", "b", "c", "d"] and s["longvideobench/v0_0"].answer == "D"
    assert s["longvideobench/v1_0"].video == str(tmp_path / "v1.mkv")


# ------------------------------------------------------------------------ Charades-STA
_CSV_HEAD = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def test_charades_release(tmp_path: Path) -> None:
    lengths = {"3MSZA": 31.0, "AO8RW": 20.5, "Y8K2Q": 15.0}
    lines: list[tuple[str, str | None]] = [
        ("3MSZA 24.3 30.4##person turn a light on.", None),
        ("AO8RW 0.0 6.9##a person is putting a book on a shelf.", None),
        ("AO8RW 18.0 22.4##person opens the door.", None),          # ends after the video: clipped, kept
        ("Y8K2Q 9.0 4.5##person sits down.", "span_reversed"),
        ("Y8K2Q 16.0 19.0##person leaves.", "span_after_video_end"),  # starts after the 15 s video
        ("Y8K2Q 3.0 3.0##person sneezes.", "span_empty"),
        ("Y8K2Q 3.0##no end time", "malformed_line"),
    ]
    path = tmp_path / "charades_sta_test.txt"
    path.write_text("\n".join(text for text, _ in lines) + "\n\n")
    csv = tmp_path / "Charades_v1_test.csv"
    csv.write_text(_CSV_HEAD + "".join(f"{k},s,Kitchen,6,7,Yes,x,y,z,c001 0 5,{v}\n" for k, v in lengths.items()))
    vids = tmp_path / "v"
    _touch(vids, "Charades_v1_480/3MSZA.mp4")
    _touch(vids, "AO8RW.webm")
    read = read_benchmark("charades", path, vids, durations=csv)
    _expect(read, [({}, r) for _, r in lines], missing=0)
    assert read.summary()["clipped_spans"] == 1
    s = {x.sample_id: x for x in read.samples}
    assert s["charades/3MSZA/1"].span == (24.3, 30.4) and s["charades/3MSZA/1"].question == "person turn a light on"
    assert s["charades/3MSZA/1"].video == str(vids / "Charades_v1_480" / "3MSZA.mp4") and s["charades/3MSZA/1"].duration == 31.0
    assert s["charades/AO8RW/3"].span == (18.0, 20.5) and s["charades/AO8RW/3"].metadata["span_clipped_from"] == 22.4
    assert s["charades/AO8RW/2"].video == str(vids / "AO8RW.webm")
    # without the lengths nothing can be checked against the video's end
    no_len = read_benchmark("charades", path, vids)
    assert no_len.summary()["samples"] == sum(r is None for _, r in lines) + 1 and no_len.samples[0].duration is None


def test_charades_lmms_eval_parquet(tmp_path: Path) -> None:
    spans = [(24.3, 30.4), (0.0, 6.9), (150.3, 170.1), (9.0, 4.5)]
    reasons: list[str | None] = [None, None, None, "span_reversed"]
    rows = [{"video": f"V{i}.mp4", "caption": f"person does thing {i}.", "timestamp": list(sp)} for i, sp in enumerate(spans)]
    schema = pa.schema([("video", pa.string()), ("caption", pa.string()), ("timestamp", pa.list_(pa.float16()))])
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    _touch(tmp_path, "Charades_v1_480/V0.mp4")
    read = read_benchmark("charades", path, tmp_path)
    _expect(read, [({}, r) for r in reasons], missing=2)
    assert read.layout == "lmms-eval"
    s = {x.sample_id: x for x in read.samples}
    raw = s["charades/V0/1"].metadata["timestamp_raw"]
    assert raw[0] == float(np.float16(24.3)) != 24.3  # what the file holds
    assert s["charades/V0/1"].span == (24.3, 30.4) and s["charades/V1/2"].span == (0.0, 6.9)
    long_span = s["charades/V2/3"].span  # above 128 s float16 steps are 1/8 s: within 0.1 s of the release
    assert all(abs(a - b) <= 0.1 + 1e-9 for a, b in zip(long_span, spans[2], strict=True))
    # lengths given: the third video is 160 s long, so its span is clipped
    clipped = read_benchmark("charades", path, tmp_path, durations={"V2": 160.0})
    assert clipped.summary()["clipped_spans"] == 1


# ------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("fmt,name,data", [
    ("mlvu", "x.parquet", b"PAR1 truncated"),
    ("videomme", "x.json", b"[{\"videoID\": "),
    ("longvideobench", "lvb_val.json", b"\x89PNG\r\n"),
    ("lvbench", "video_info.meta.jsonl", b""),
    ("lvbench", "video_info.meta.jsonl", b'{"key": "k", "qa": []}\n{"key": "\xff\xfe"}\n'),
    ("mlvu", "1_plotQA.json", b"[]"),
])
def test_unreadable_file_names_it(tmp_path: Path, fmt: str, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AnnotationError) as info:
        read_benchmark(fmt, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_lvbench_question_type_and_time_forms() -> None:
    from data.benchmarks.common import parse_time_range
    from data.benchmarks.lvbench import question_types

    assert question_types(["a", "b"]) == ["a", "b"]
    assert question_types("['key information retrieval', 'reasoning']") == ["key information retrieval", "reasoning"]
    assert question_types('["a"]') == ["a"] and question_types("reasoning") == ["reasoning"] and question_types(None) == []
    assert parse_time_range("105:07-106:10") == (6307.0, 6370.0)
    assert parse_time_range("1:02:03-1:02:10") == (3723.0, 3730.0)
    for bad in ("None", "12:3x-13:00", "10:00"):
        with pytest.raises(ValueError):
            parse_time_range(bad)


def test_records_through_read_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = {"id": "r0", "video": "r0.mp4", "task": "mcq", "answer": {"letter": "B"},
           "conversations": [{"from": "human", "value": "<image>\nQ?\nA. x\nB. y"}, {"from": "gpt", "value": "B"}]}
    (tmp_path / "ann.json").write_text(json.dumps([rec]))
    monkeypatch.chdir(tmp_path)
    read = read_benchmark("records", "ann.json", ".")
    assert read.summary() == {"samples": 1, "excluded": {}, "missing_videos": 1, "layout": "records"}
    assert read.samples[0].video == str(tmp_path / "r0.mp4") and read.samples[0].answer == "B"
    with pytest.raises(ValueError, match="unknown benchmark format 'egoschema'"):
        read_benchmark("egoschema", "ann.json")
