"""MLVU dev multiple-choice questions: the release's per-task json files and the lmms-eval parquet.

Release (github.com/JUNJIE99/MLVU, ``MLVU/json/<n>_<task>.json``): one json list per task with
``video`` (file name), ``duration`` (seconds), ``question``, ``candidates`` (option texts),
``answer`` (the correct option's *text*) and ``question_type``; the open-ended tasks (sub-scene
captioning, summarisation) sit in the same folder without ``candidates``. Videos live in per-task
folders ``MLVU/video/<n>_<task>/`` or flat.

lmms-eval copy (HF dataset ``sy1998/MLVU_dev``): parquet rows ``video_name, duration, question,
candidates, answer, task_type, question_id`` where ``question`` already embeds the options as
``(A) ...`` lines and ``answer`` is a letter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.benchmarks.common import (
    LETTERS,
    AnnotationError,
    BenchmarkRead,
    Collector,
    EvalSample,
    RowSkip,
    VideoResolver,
    answer_index_of_text,
    answer_letter,
    check_options,
    need,
    number_or_none,
    read_table,
    set_video,
    split_embedded_options,
    table_files,
)


def _layout_of(rows: list[dict[str, Any]]) -> str:
    keys = set().union(*(r.keys() for r in rows[:50]))
    if "video_name" in keys:
        return "lmms-eval"
    if "video" in keys:
        return "release"
    return ""


def _release_row(row: dict[str, Any], stem: str, videos: VideoResolver) -> EvalSample:
    video = need(row, "video")
    question = need(row, "question")
    qtype = row.get("question_type") if isinstance(row.get("question_type"), str) else stem.split("_", 1)[-1]
    cands = row.get("candidates")
    if cands is None:
        raise RowSkip("no_candidates_open_ended", f"no 'candidates' (open-ended '{qtype}' question)")
    if not isinstance(cands, list):
        raise RowSkip("bad_field", f"field 'candidates' is {type(cands).__name__}, expected a list")
    options = check_options(cands)
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        raise RowSkip("no_answer", "no 'answer'")
    idx = answer_index_of_text(str(answer), options)
    sample = EvalSample(
        sample_id="", video="", task="mcq", question=question.strip(), source="mlvu", options=options,
        answer=LETTERS[idx], duration=number_or_none(row.get("duration")),
        metadata={"task_type": qtype, "task_file": stem},
    )
    return set_video(sample, videos.resolve(Path(stem) / video, video, deep=True))


def _lmms_row(row: dict[str, Any], videos: VideoResolver) -> EvalSample:
    video = need(row, "video_name")
    question, embedded = split_embedded_options(need(row, "question"))
    cands = row.get("candidates")
    qtype = row.get("task_type") if isinstance(row.get("task_type"), str) else ""
    raw = list(cands) if isinstance(cands, (list, tuple)) and len(cands) else embedded
    if not raw:
        raise RowSkip("no_candidates_open_ended", f"no candidates in 'candidates' or the question ('{qtype}')")
    options = check_options(raw)
    answer = row.get("answer")
    try:
        letter = answer_letter(answer, len(options))
    except RowSkip:
        if not (isinstance(answer, str) and len(answer.strip()) > 1):
            raise
        letter = LETTERS[answer_index_of_text(answer, options)]  # some copies give the option text
    sample = EvalSample(
        sample_id="", video="", task="mcq", question=question, source="mlvu", options=options, answer=letter,
        duration=number_or_none(row.get("duration")), metadata={"task_type": qtype},
    )
    return set_video(sample, videos.resolve(video, deep=True))


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False) -> BenchmarkRead:
    """Read MLVU dev from a task json, a folder of task jsons (all of them, open-ended ones included) or parquet.

    Sample ids: release ``mlvu/<task file stem>/<row>``, lmms-eval ``mlvu/<question_id>``.
    Excluded rows: ``no_candidates_open_ended``, ``answer_not_in_candidates`` (the needle file
    has answers that match none of their candidates; an answer is matched exactly, then stripped
    and case-folded if that is unique), ``duplicate_candidates``, ``empty_candidate``,
    ``too_few_candidates``, ``too_many_candidates``, ``no_answer``, ``missing_field``, ``bad_field``.
    Videos: ``video_root/<task stem>/<video>``, ``video_root/<video>``, then one folder level down.
    Raises AnnotationError for an unreadable file or a folder mixing the two layouts.
    """
    path = Path(path)
    files = table_files(path, ("*.json", "*.parquet"))
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    coll: Collector | None = None
    for f in files:
        rows = read_table(f)
        layout = _layout_of(rows)
        if not layout:
            raise AnnotationError(f, None, None, "neither MLVU release rows ('video') nor lmms-eval rows ('video_name')")
        if coll is None:
            coll = Collector("mlvu", layout, str(path), strict)
        elif coll.layout != layout:
            raise AnnotationError(f, None, None, f"{layout} rows in a folder of {coll.layout} files")
        for i, row in enumerate(rows):
            qid = row.get("question_id")
            sid = f"mlvu/{qid}" if layout == "lmms-eval" and qid not in (None, "") else f"mlvu/{f.stem}/{i}"
            try:
                sample = _release_row(row, f.stem, videos) if layout == "release" else _lmms_row(row, videos)
            except RowSkip as skip:
                coll.exclude(f, sid, skip)
                continue
            sample.sample_id = sid
            coll.add(sample)
    assert coll is not None  # table_files returned at least one file
    return coll.result()
