"""LongVideoBench (validation set, without subtitles): ``lvb_val.json`` and its parquet.

Both come with HF dataset ``longvideobench/LongVideoBench``. ``lvb_val.json`` is a list of rows
with ``id``, ``video_id``, ``question``, ``candidates`` (4 or 5 option texts, no letters),
``correct_choice`` (0-based int), ``duration_group`` (15 / 60 / 600 / 3600), ``question_category``,
``video_path`` (file name under ``videos/``) and ``duration`` (seconds). The parquet that lmms-eval
reads (``validation-*.parquet``) has the same fields with ``option0`` .. ``option4`` instead of
``candidates``, a missing fifth option given as the string ``"N/A"``.
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
    check_options,
    need,
    number_or_none,
    read_table,
    set_video,
    table_files,
)

NOT_AVAILABLE = "N/A"


def _options(row: dict[str, Any], layout: str) -> list[str]:
    if layout == "release":
        return check_options(list(need(row, "candidates", (list, tuple))))
    raw = [row.get(f"option{k}") for k in range(len(LETTERS)) if f"option{k}" in row]
    while raw and (raw[-1] is None or raw[-1] == NOT_AVAILABLE):  # only trailing slots may be unused
        raw.pop()
    if any(o is None or o == NOT_AVAILABLE for o in raw):
        k = next(k for k, o in enumerate(raw) if o is None or o == NOT_AVAILABLE)
        raise RowSkip("empty_candidate", f"option{k} is {NOT_AVAILABLE} before a later option")
    return check_options(raw)


def _row(row: dict[str, Any], layout: str, videos: VideoResolver) -> EvalSample:
    question = need(row, "question")
    options = _options(row, layout)
    choice = row.get("correct_choice")
    if choice is None:
        raise RowSkip("no_answer", "no 'correct_choice'")
    if isinstance(choice, str) and choice.strip().isdigit():
        choice = int(choice)
    if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < len(options):
        raise RowSkip("answer_not_in_candidates", f"correct_choice {choice!r} is not in 0..{len(options) - 1}")
    group = number_or_none(row.get("duration_group"))
    meta: dict[str, Any] = {
        "duration_group": int(group) if group is not None else None,
        "question_category": row.get("question_category"),
    }
    for key in ("video_id", "topic_category", "level"):
        if row.get(key) is not None:
            meta[key] = row[key]
    video = row.get("video_path") or (f"{row['video_id']}.mp4" if isinstance(row.get("video_id"), str) else None)
    if not isinstance(video, str) or not video:
        raise RowSkip("missing_field", "field 'video_path' (and 'video_id') is missing")
    sample = EvalSample(sample_id="", video="", task="mcq", question=question.strip(), source="longvideobench",
                        options=options, answer=LETTERS[choice], duration=number_or_none(row.get("duration")),
                        metadata=meta)
    return set_video(sample, videos.resolve(video, Path("videos") / video))


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False) -> BenchmarkRead:
    """Read LongVideoBench from ``lvb_val.json`` (layout ``release``) or its parquet (``lmms-eval``).

    Sample id ``longvideobench/<id>``. ``metadata``: ``duration_group`` (int), ``question_category``.
    Excluded rows: ``answer_not_in_candidates`` (correct_choice out of range), ``no_answer``,
    ``empty_candidate`` (incl. an ``"N/A"`` option before a real one), ``duplicate_candidates``,
    ``too_few_candidates``, ``missing_field``, ``bad_field``. Videos:
    ``video_root/<video_path>`` or ``video_root/videos/<video_path>``. Raises AnnotationError for
    an unreadable file or rows of neither layout.
    """
    path = Path(path)
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    coll: Collector | None = None
    for f in table_files(path):
        rows = read_table(f)
        keys = set().union(*(r.keys() for r in rows[:50]))
        layout = "release" if "candidates" in keys else "lmms-eval" if "option0" in keys else ""
        if not layout or "correct_choice" not in keys:
            raise AnnotationError(f, None, None, "not LongVideoBench rows ('candidates' or 'option0..4', 'correct_choice')")
        if coll is None:
            coll = Collector("longvideobench", layout, str(path), strict)
        elif coll.layout != layout:
            raise AnnotationError(f, None, None, f"{layout} rows in a folder of {coll.layout} files")
        for i, row in enumerate(rows):
            rid = row.get("id")
            sid = f"longvideobench/{rid}" if rid not in (None, "") else f"longvideobench/{f.stem}/{i}"
            try:
                sample = _row(row, layout, videos)
            except RowSkip as skip:
                coll.exclude(f, sid, skip)
                continue
            sample.sample_id = sid
            coll.add(sample)
    assert coll is not None
    return coll.result()
