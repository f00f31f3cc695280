"""Video-MME (without subtitles): the parquet of HF dataset ``lmms-lab/Video-MME`` (``videomme/test-*.parquet``).

This one file is both the release and what lmms-eval reads. Columns (all strings except
``options``): ``video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
question, options, answer`` (newer copies add ``language``); ``options`` is a list of strings already
prefixed ``"A. "``, ``answer`` a letter, ``duration`` the category ``short|medium|long``; the video
file is ``<videoID>.mp4`` (YouTube ids may start with ``-``). Json-list / jsonl dumps of the same
rows are read too.
"""

from __future__ import annotations

import re
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
    answer_letter,
    check_options,
    need,
    read_table,
    set_video,
    table_files,
)

_PREFIX = re.compile(r"^\s*\(?([A-J])[.):]\s*")
_META = ("duration", "domain", "sub_category", "task_type", "video_id", "url", "language")


def _row(row: dict[str, Any], videos: VideoResolver) -> EvalSample:
    vid = need(row, "videoID")
    question = need(row, "question")
    raw = need(row, "options", (list, tuple))
    options = []
    for j, opt in enumerate(raw):
        m = _PREFIX.match(opt) if isinstance(opt, str) else None
        if m is None or j >= len(LETTERS) or m.group(1) != LETTERS[j]:
            raise RowSkip("bad_option_prefix", f"option {j} {opt!r} does not start with '{LETTERS[min(j, 9)]}.'")
        options.append(opt[m.end():])
    options = check_options(options)
    letter = answer_letter(row.get("answer"), len(options))
    meta = {k: row[k] for k in _META if isinstance(row.get(k), str)}
    if "duration" in meta:
        meta["duration_category"] = meta.pop("duration")
    sample = EvalSample(sample_id="", video="", task="mcq", question=question.strip(), source="videomme",
                        options=options, answer=letter, metadata=meta)
    return set_video(sample, videos.resolve(f"{vid}.mp4", Path("data") / f"{vid}.mp4"))


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False) -> BenchmarkRead:
    """Read Video-MME rows from a parquet / json / jsonl file or a folder of them.

    Sample id ``videomme/<question_id>``. ``metadata``: ``duration_category`` (short/medium/long),
    ``domain``, ``sub_category``, ``task_type``. Excluded rows: ``bad_option_prefix``,
    ``answer_not_in_candidates``, ``no_answer``, ``duplicate_candidates``, ``empty_candidate``,
    ``too_few_candidates``, ``missing_field``, ``bad_field``. Videos: ``video_root/<videoID>.<ext>``
    or ``video_root/data/<videoID>.<ext>``. Raises AnnotationError for an unreadable file or one
    without a ``videoID`` column.
    """
    path = Path(path)
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    coll = Collector("videomme", "release", str(path), strict)
    for f in table_files(path):
        rows = read_table(f)
        if not any("videoID" in r for r in rows[:50]):
            raise AnnotationError(f, None, "videoID", "missing: not a Video-MME file")
        for i, row in enumerate(rows):
            qid = row.get("question_id")
            sid = f"videomme/{qid}" if qid not in (None, "") else f"videomme/{f.stem}/{i}"
            try:
                sample = _row(row, videos)
            except RowSkip as skip:
                coll.exclude(f, sid, skip)
                continue
            sample.sample_id = sid
            coll.add(sample)
    return coll.result()
