"""Benchmark annotation readers on small files written in each published format."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from data.benchmarks import (
    DEFAULT_GROUNDING_TEMPLATE,
    DEFAULT_MCQ_TEMPLATE,
    AnnotationError,
    format_prompt,
    read_charades_durations,
    read_charades_sta,
    read_lvbench,
    read_mlvu,
    read_records,
    read_synth_shards,
    read_videomme,
)


def test_mlvu(tmp_path: Path) -> None:
    rows = [
        {"video": "movie_1.mp4", "duration": 246.5, "question": "What colour is the car?",
         "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Green", "question_type": "plotQA"},
        {"video": "movie_2.mp4", "duration": 100, "question": "Who speaks first?",
         "candidates": ["a man", "a woman", "a child"], "answer": "a man", "question_type": "plotQA"},
    ]
    ann = tmp_path / "json"
    ann.mkdir()
    (ann / "1_plotQA.json").write_text(json.dumps(rows))
    (tmp_path / "video" / "1_plotQA").mkdir(parents=True)
    (tmp_path / "video" / "1_plotQA" / "movie_1.mp4").write_bytes(b"")
    samples = read_mlvu(ann, tmp_path / "video")
    assert [s.answer for s in samples] == ["C", "A"]
    assert samples[0].video == str(tmp_path / "video" / "1_plotQA" / "movie_1.mp4")
    # missing video: the release's per-task path is kept and flagged
    assert samples[1].video == str(tmp_path / "video" / "1_plotQA" / "movie_2.mp4")
    assert samples[1].metadata["video_missing"] and "video_missing" not in samples[0].metadata
    assert samples[0].duration == 246.5 and samples[1].letters == "ABC"
    prompt = format_prompt(samples[0], DEFAULT_MCQ_TEMPLATE, DEFAULT_GROUNDING_TEMPLATE)
    assert "What colour is the car?\nA. Yellow\nB. Red\nC. Green\nD. Blue\n" in prompt

    rows[1]["answer"] = "a dog"
    (ann / "1_plotQA.json").write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"1_plotQA\.json: mlvu/1_plotQA/1: answer_not_in_candidates"):
        read_mlvu(ann, tmp_path)
    del rows[0]["candidates"]
    (ann / "1_plotQA.json").write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"mlvu/1_plotQA/0: no_candidates_open_ended"):
        read_mlvu(ann / "1_plotQA.json", tmp_path)


def _videomme_rows() -> list[dict]:
    return [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
         "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
         "task_type": "Counting Problem", "question": "How many red socks are in the video?",
         "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "C"},
        {"video_id": "002", "duration": "long", "domain": "Film", "sub_category": "Drama",
         "url": "", "videoID": "abcDEF", "question_id": "002-3", "task_type": "Action Reasoning",
         "question": "Why does she leave?", "options": ["A. tired", "B. angry", "C. late", "D. bored"],
         "answer": "B"},
    ]


@pytest.mark.parametrize("suffix", [".parquet", ".json", ".jsonl"])
def test_videomme(tmp_path: Path, suffix: str) -> None:
    rows = _videomme_rows()
    path = tmp_path / f"test{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples = read_videomme(path, "/videos")
    assert [s.answer for s in samples] == ["C", "B"]
    assert samples[0].options == ["1.", "2.", "3.", "4."]
    assert samples[0].video == "/videos/fFjv93ACGo8.mp4"
    assert samples[1].metadata["duration_category"] == "long" and samples[1].sample_id == "videomme/002-3"


def test_videomme_errors(tmp_path: Path) -> None:
    rows = _videomme_rows()
    rows[1]["answer"] = "E"
    path = tmp_path / "vm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(AnnotationError, match=r"vm\.jsonl: videomme/002-3: answer_not_in_candidates"):
        read_videomme(path, tmp_path)
    rows = _videomme_rows()
    rows[0]["options"] = ["1", "2", "3", "4"]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(AnnotationError, match=r"videomme/001-1: bad_option_prefix"):
        read_videomme(path, tmp_path)


def test_lvbench(tmp_path: Path) -> None:
    line = {
        "key": "ikuA3O2bqRw", "type": "cartoon",
        "video_info": {"duration_minutes": 118.5, "fps": 30.0, "resolution": {"width": 640, "height": 360}},
        "qa": [
            {"uid": "1", "question": "What year appears in the opening caption?\n(A) 1636\n(B) 1366\n(C) 1363\n(D) 1633",
             "answer": "D", "question_type": ["key information retrieval"], "time_reference": "00:15-00:19"},
            {"uid": "2", "question": "Who enters the room?\n(A) a cat\n(B) the king\n(C) nobody\n(D) a guard",
             "answer": "B", "question_type": ["entity recognition"], "time_reference": "1:02:03-1:02:10"},
        ],
    }
    path = tmp_path / "video_info.meta.jsonl"
    path.write_text(json.dumps(line) + "\n\n")
    samples = read_lvbench(path, tmp_path)
    assert [s.answer for s in samples] == ["D", "B"]
    assert samples[0].question == "What year appears in the opening caption?"
    assert samples[0].options == ["1636", "1366", "1363", "1633"]
    assert samples[0].metadata["time_reference_s"] == [15.0, 19.0]
    assert samples[1].metadata["time_reference_s"] == [3723.0, 3730.0]
    assert samples[0].duration == pytest.approx(118.5 * 60)
    assert samples[0].video == str(tmp_path / "ikuA3O2bqRw.mp4")

    line["qa"][1]["question"] = "Who enters the room? a cat or the king"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(AnnotationError, match=r"video_info\.meta\.jsonl: lvbench/2: no_candidates"):
        read_lvbench(path, tmp_path)
    path.write_text("{not json\n")
    with pytest.raises(AnnotationError, match=r"video_info\.meta\.jsonl: line 1: invalid JSON"):
        read_lvbench(path, tmp_path)


def test_charades(tmp_path: Path) -> None:
    path = tmp_path / "charades_sta_test.txt"
    path.write_text("3MSZA 24.3 30.4##person turn a light on.\nAO8RW 0.0 6.9##a person is putting a book on a shelf.\n")
    csv = tmp_path / "Charades_v1_test.csv"
    csv.write_text("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
                   "3MSZA,s1,Kitchen,6,7,Yes,x,y,z,c001 0 5,31.0\nAO8RW,s2,Bedroom,6,7,Yes,x,y,z,c002 0 5,20.5\n")
    samples = read_charades_sta(path, "/v", read_charades_durations(csv))
    assert [s.span for s in samples] == [(24.3, 30.4), (0.0, 6.9)]
    assert samples[0].question == "person turn a light on" and samples[0].task == "grounding"
    assert samples[1].duration == 20.5 and samples[0].video == "/v/3MSZA.mp4"
    assert '"person turn a light on"' in format_prompt(samples[0], DEFAULT_MCQ_TEMPLATE, DEFAULT_GROUNDING_TEMPLATE)
    path.write_text("3MSZA 24.3 30.4##ok\n3MSZA 24.3 x##bad\n")
    with pytest.raises(AnnotationError, match=r"charades_sta_test\.txt: charades/3MSZA/2: malformed_line"):
        read_charades_sta(path, "/v")
    path.write_text("3MSZA 24.3 30.4 person\n")
    with pytest.raises(AnnotationError, match=r"charades/3MSZA/1: malformed_line"):
        read_charades_sta(path, "/v")


def _synth_record(key: str, task: str, answer: dict, question: str) -> dict:
    return {"id": key, "video": f"{key}.mp4", "task": task, "answer": answer, "duration": 12.0, "fps": 2.0,
            "conversations": [{"from": "human", "value": "<image>\n" + question},
                              {"from": "gpt", "value": "x"}]}


def test_synth_shards_and_records(tmp_path: Path) -> None:
    recs = [
        _synth_record("s0", "mcq", {"letter": "B"}, "What moves?\nA. a ball\nB. a box\nC. a cup\nD. a pen"),
        _synth_record("s1", "grounding", {"span": [2.0, 6.5]}, "When does the ball appear?"),
        _synth_record("s2", "caption", {}, "Describe the video."),
        _synth_record("s3", "needle", {"letter": "A", "depth": 0.25}, "Colour?\nA. red\nB. blue\nC. green\nD. cyan"),
    ]
    shard = tmp_path / "test-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for rec in recs:
            for ext, data in (("mp4", f"video-{rec['id']}".encode()), ("json", json.dumps(rec).encode())):
                info = tarfile.TarInfo(f"{rec['id']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = read_synth_shards(tmp_path, tmp_path / "videos", "test")
    assert [s.task for s in samples] == ["mcq", "grounding", "needle"]
    assert samples[0].answer == "B" and samples[0].options == ["a ball", "a box", "a cup", "a pen"]
    assert samples[0].prompt.startswith("What moves?") and "<image>" not in samples[0].prompt
    assert samples[1].span == (2.0, 6.5) and samples[2].metadata["depth"] == 0.25
    assert Path(samples[2].video).read_bytes() == b"video-s3"
    with pytest.raises(FileNotFoundError):
        read_synth_shards(tmp_path, tmp_path / "v", "val")

    bad = [_synth_record("r0", "grounding", {"span": [1.0]}, "When?")]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(AnnotationError, match=r"ann\.json: row 0: field 'answer\.span'"):
        read_records(path)


def test_synth_shards_read_only_known_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown members (a pickle here) are skipped unread; a damaged shard is an error naming it."""
    rec = _synth_record("s0", "mcq", {"letter": "A"}, "Q?\nA. x\nB. y\nC. z\nD. w")
    shard = tmp_path / "test-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("s0.pyd", b"\x80\x04K\x01."), ("s0.json", json.dumps(rec).encode()),
                           ("s0.mp4", b"video-s0"), ("s0.pickle", b"\x80\x04K\x02.")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    read: list[str] = []
    extract = tarfile.TarFile.extractfile

    def spy(self: tarfile.TarFile, member: str | tarfile.TarInfo) -> object:
        read.append(member if isinstance(member, str) else member.name)
        return extract(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    samples = read_synth_shards(tmp_path, tmp_path / "videos", "test")
    assert [s.sample_id for s in samples] == ["s0"] and Path(samples[0].video).read_bytes() == b"video-s0"
    assert sorted(read) == ["s0.json", "s0.mp4"]
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside the second member
    with pytest.raises(ValueError, match=r"test-000000\.tar: unreadable tar shard"):
        read_synth_shards(tmp_path, tmp_path / "videos", "test")


def test_read_table_prints_no_progress_bar(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """An evaluation reading annotation files through `datasets` shows no "Generating train split" bar
    per file, and the caller's progress-bar setting is left as it was."""
    import datasets

    from data.benchmarks.common import read_table

    path = tmp_path / "rows.json"
    rows = [{"video": "a.mp4", "question": "q?", "answer": "x"}]
    path.write_text(json.dumps(rows))
    datasets.enable_progress_bars()
    capfd.readouterr()
    assert read_table(path) == rows
    err = capfd.readouterr().err
    assert "Generating" not in err, err
    assert datasets.is_progress_bar_enabled()
