"""LVBench: the release's ``video_info.meta.jsonl`` and lmms-eval's flat parquet.

Release (HF dataset ``THUDM/LVBench``, github.com/THUDM/LVBench): one line per video with
``key`` (YouTube id, video ``<key>.mp4``), ``type``, ``video_info`` and ``qa``, a list of
``{uid, question, answer, question_type, time_reference}``; ``uid`` is a string or an int,
``question`` embeds four options as ``\\n(A) ...`` lines, ``answer`` is a letter,
``question_type`` a list of strings, ``time_reference`` ``"MM:SS-MM:SS"`` (minutes go past 99) or null.

lmms-eval copy (HF dataset named in lmms-eval's ``lvbench.yaml``): one row per question with the
same question fields plus ``video_path`` (relative to the video root).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from data.benchmarks.common import (
    AnnotationError,
    BenchmarkRead,
    Collector,
    EvalSample,
    RowSkip,
    VideoResolver,
    answer_letter,
    check_options,
    need,
    number_or_none,
    parse_time_range,
    read_table,
    set_video,
    split_embedded_options,
    table_files,
)


def question_types(val: Any) -> list[str]:
    """``question_type`` as a list of strings: a list, a single string, or a list written as a string."""
    if isinstance(val, (list, tuple)):
        return [str(v) for v in val if v is not None]
    if isinstance(val, str):
        text = val.strip()
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):  # json '["a"]' or a Python repr "['a']"
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list):
                    return [str(v) for v in parsed]
        return [text] if text else []
    return []


def _question(qa: dict[str, Any], video: tuple[str, bool], duration: float | None) -> EvalSample:
    question, raw_opts = split_embedded_options(need(qa, "question"))
    if isinstance(qa.get("options"), (list, tuple)) and len(qa["options"]):  # a copy with a separate column
        raw_opts = list(qa["options"])
    if not raw_opts:
        raise RowSkip("no_candidates", "no '(A) ...' options in the question")
    options = check_options(raw_opts)
    letter = answer_letter(qa.get("answer"), len(options))
    ref = qa.get("time_reference")
    ref = ref.strip() if isinstance(ref, str) and ref.strip() and ref.strip() != "None" else None
    meta: dict[str, Any] = {"question_types": question_types(qa.get("question_type")), "time_reference": ref}
    if ref is not None:
        try:
            meta["time_reference_s"] = list(parse_time_range(ref))
        except ValueError:
            meta["time_reference_unparsed"] = True
    sample = EvalSample(sample_id="", video="", task="mcq", question=question, source="lvbench",
                        options=options, answer=letter, duration=duration, metadata=meta)
    return set_video(sample, video)


def _release_duration(row: dict[str, Any]) -> float | None:
    info = row.get("video_info")
    if not isinstance(info, dict):
        return None
    minutes = number_or_none(info.get("duration_minutes"))
    return minutes * 60 if minutes is not None else number_or_none(info.get("duration"))


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False) -> BenchmarkRead:
    """Read LVBench from the release jsonl, the lmms-eval parquet, or a folder of either.

    Sample id ``lvbench/<uid>``. ``metadata``: ``question_types`` (list[str]; a question counts in
    each), ``time_reference`` (str or None; ``"None"`` is read as None), ``time_reference_s``
    ([start, end] seconds when it parses), ``video_type``. Excluded rows: ``no_candidates``,
    ``answer_not_in_candidates``, ``no_answer``, ``duplicate_candidates``, ``empty_candidate``,
    ``too_few_candidates``, ``missing_field``, ``bad_field``. Videos: release
    ``video_root/<key>.<ext>``, lmms-eval ``video_root/<video_path>``. Raises AnnotationError for an
    unreadable file or rows of neither layout.
    """
    path = Path(path)
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    coll: Collector | None = None
    for f in table_files(path):
        rows = read_table(f)  # the release's uid mixes strings and ints: read_table keeps them as written
        layout = "release" if "qa" in rows[0] else "lmms-eval" if "video_path" in rows[0] else ""
        if not layout:
            raise AnnotationError(f, "row 0", None, "neither an LVBench release line ('qa') nor an lmms-eval row ('video_path')")
        if coll is None:
            coll = Collector("lvbench", layout, str(path), strict)
        elif coll.layout != layout:
            raise AnnotationError(f, None, None, f"{layout} rows in a folder of {coll.layout} files")
        for i, row in enumerate(rows):
            if layout == "release":
                _release_line(f, i, row, videos, coll)
                continue
            sid = f"lvbench/{row['uid']}" if row.get("uid") not in (None, "") else f"lvbench/{f.stem}/{i}"
            try:
                video = videos.resolve(need(row, "video_path"))
                sample = _question(row, video, number_or_none(row.get("duration")))
            except RowSkip as skip:
                coll.exclude(f, sid, skip)
                continue
            sample.sample_id = sid
            if isinstance(row.get("type"), str):
                sample.metadata["video_type"] = row["type"]
            coll.add(sample)
    assert coll is not None
    return coll.result()


def _release_line(f: Path, i: int, row: dict[str, Any], videos: VideoResolver, coll: Collector) -> None:
    """Add the questions of one release line (one video) to `coll`."""
    key = row.get("key")
    qas = row.get("qa")
    if not isinstance(key, str) or not key or not isinstance(qas, list):
        coll.exclude(f, f"lvbench/line{i + 1}", RowSkip("bad_field", "line needs a string 'key' and a 'qa' list"))
        return
    video, duration = videos.resolve(f"{key}.mp4"), _release_duration(row)
    for j, qa in enumerate(qas):
        uid = qa.get("uid") if isinstance(qa, dict) else None
        sid = f"lvbench/{uid}" if uid not in (None, "") else f"lvbench/{key}/{j}"
        try:
            if not isinstance(qa, dict):
                raise RowSkip("bad_field", f"qa[{j}] is {type(qa).__name__}, expected an object")
            sample = _question(qa, video, duration)
        except RowSkip as skip:
            coll.exclude(f, sid, skip)
            continue
        sample.sample_id = sid
        sample.metadata["video_type"] = row.get("type")
        coll.add(sample)
