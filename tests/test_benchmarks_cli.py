"""``python -m data.benchmarks``: the summary JSON as last line (exit 0); unreadable file / strict -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.benchmarks.__main__ import main
from helpers import REPO, subprocess_env


def _lvbench_release(tmp_path: Path) -> tuple[Path, dict]:
    """Two videos, five questions: one without options, one with answer E; one video present as .mkv."""
    def q(text: str) -> str:
        return text + "\n(A) a\n(B) b\n(C) c\n(D) d"

    lines = [
        {"key": "vidA", "type": "sports", "video_info": {"duration_minutes": 65},
         "qa": [{"uid": 1, "question": q("One?"), "answer": "A", "question_type": ["reasoning"], "time_reference": "64:00-64:10"},
                {"uid": 2, "question": "Two? no options", "answer": "B", "question_type": ["reasoning"], "time_reference": None}]},
        {"key": "vidB", "type": "vlog", "video_info": {"duration_minutes": 120},
         "qa": [{"uid": "3", "question": q("Three?"), "answer": "C", "question_type": ["summarization"], "time_reference": "None"},
                {"uid": "4", "question": q("Four?"), "answer": "E", "question_type": ["reasoning"], "time_reference": "119:00-119:30"},
                {"uid": "5", "question": q("Five?"), "answer": "D", "question_type": ["reasoning"], "time_reference": "110:00-110:05"}]},
    ]
    path = tmp_path / "video_info.meta.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "vidA.mkv").write_bytes(b"\x00")
    # scorable: uids 1, 3, 5; excluded: 2 (no options), 4 (answer E); vidB's two scorable questions lack a video
    want = {"samples": 3, "excluded": {"answer_not_in_candidates": 1, "no_candidates": 1}, "missing_videos": 2}
    return path, want


def test_cli_last_line_summary(tmp_path: Path) -> None:
    path, want = _lvbench_release(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "data.benchmarks", "--format", "lvbench", "--data", str(path),
                           "--video-root", str(tmp_path / "videos")],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert {k: summary[k] for k in want} == want and summary["layout"] == "release"
    assert sum(line.startswith("excluded lvbench/") for line in lines) == 2
    assert sum(line.startswith("missing video lvbench/") for line in lines) == 2


def test_cli_unreadable_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "test-00000-of-00001.parquet"
    bad.write_bytes(b"PAR1" + b"\x00" * 64)  # parquet magic, no valid footer
    proc = subprocess.run([sys.executable, "-m", "data.benchmarks", "--format", "videomme", "--data", str(bad)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_cli_strict_and_durations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _lvbench_release(tmp_path)
    assert main(["--format", "lvbench", "--data", str(path), "--strict"]) == 2
    assert "lvbench/2: no_candidates" in capsys.readouterr().err
    ann = tmp_path / "charades_sta_test.txt"
    ann.write_text("AAAAA 1.0 5.0##a\nAAAAA 2.0 12.0##b\nBBBBB 4.0 2.0##c\n")
    csv = tmp_path / "Charades_v1_test.csv"
    csv.write_text("id,length\nAAAAA,10.0\nBBBBB,8.0\n")
    assert main(["--format", "charades", "--data", str(ann), "--durations", str(csv)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == 2 and summary["excluded"] == {"span_reversed": 1}
    assert summary["clipped_spans"] == 1 and summary["missing_videos"] == 2
