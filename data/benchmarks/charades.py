"""Charades-STA temporal grounding: the release's text lines and lmms-eval's parquet.

Release (github.com/jiyanggao/TALL, ``charades_sta_test.txt``): lines ``VIDEOID START END##sentence``
(seconds, one decimal); video lengths come from the Charades release's ``Charades_v1_test.csv``
(columns ``id`` and ``length``, seconds); videos ``Charades_v1_480/<VIDEOID>.mp4``.

lmms-eval copy (HF dataset ``lmms-lab/charades_sta``): parquet rows ``video`` (file name with
extension), ``caption``, ``timestamp`` ([start, end] stored as float16, so 24.3 arrives as 24.296875).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from data.benchmarks.common import (
    AnnotationError,
    BenchmarkRead,
    Collector,
    EvalSample,
    RowSkip,
    VideoResolver,
    need,
    number_or_none,
    read_table,
    set_video,
    table_files,
    table_kind,
)

# Release annotations have 0.1 s resolution. float16 spacing is <= 1/16 s below 128 s, so rounding the
# parquet's values to 0.1 s gives back the release's numbers there; from 128 s to 256 s the spacing
# is 1/8 s and the rounded value can differ from the release by 0.1 s.
TIMESTAMP_DECIMALS = 1
VIDEO_FOLDER = "Charades_v1_480"


def read_charades_durations(path: str | Path) -> dict[str, float]:
    """Video lengths (seconds) by id from the Charades ``Charades_v1_test.csv`` (columns ``id``, ``length``).

    Read with the standard csv module: a pandas-backed reader (as `datasets` uses for csv) would
    type an id such as ``12E34`` as a number. Raises AnnotationError naming the file, line and field.
    """
    path = Path(path)
    out: dict[str, float] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for col in ("id", "length"):
                if col not in (reader.fieldnames or []):
                    raise AnnotationError(path, "header", col, "missing column")
            for n, row in enumerate(reader, start=2):
                try:
                    out[row["id"]] = float(row["length"])
                except (TypeError, ValueError) as exc:
                    raise AnnotationError(path, f"line {n}", "length", f"not a number: {row['length']!r}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, None, None, f"cannot read ({exc})") from exc
    return out


def _grounding(vid: str, sentence: str, start: float, end: float, duration: float | None,
               video: tuple[str, bool]) -> EvalSample:
    """A grounding sample with its span checked against itself and the video length."""
    if start < 0:
        raise RowSkip("span_negative", f"start {start} < 0")
    if end < start:
        raise RowSkip("span_reversed", f"end {end} before start {start}")
    if end == start:
        raise RowSkip("span_empty", f"start == end == {start}")
    meta: dict[str, Any] = {"video_id": vid}
    if duration is not None:
        if start >= duration:
            raise RowSkip("span_after_video_end", f"span [{start}, {end}] starts at or after the video's end {duration}")
        if end > duration:  # a moment overrunning the video: scored on its part inside the video
            meta["span_clipped_from"] = end
            end = duration
    sample = EvalSample(sample_id="", video="", task="grounding", question=sentence.strip().rstrip("."),
                        source="charades", span=(start, end), duration=duration, metadata=meta)
    return set_video(sample, video)


def _release_line(line: str) -> tuple[str, float, float, str]:
    head, sep, sentence = line.partition("##")
    fields = head.split()
    if not sep or not sentence.strip() or len(fields) != 3:
        raise RowSkip("malformed_line", "expected 'VIDEOID START END##sentence'")
    try:
        return fields[0], float(fields[1]), float(fields[2]), sentence
    except ValueError:
        raise RowSkip("malformed_line", f"start/end are not numbers: {fields[1:]}") from None


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False,
         durations: str | Path | dict[str, float] | None = None) -> BenchmarkRead:
    """Read Charades-STA from the release text file or the lmms-eval parquet (or a folder of either).

    `durations`: path of ``Charades_v1_test.csv`` or an ``{id: seconds}`` dict; without it spans
    cannot be checked against the video's end and ``duration`` is None (the parquet's own
    ``duration`` column is used when present). Sample id ``charades/<VIDEOID>/<line or row + 1>``.
    Parquet timestamps are rounded to 0.1 s (`TIMESTAMP_DECIMALS`); the raw values stay in
    ``metadata["timestamp_raw"]``. A span ending after the video is clipped to its length
    (``metadata["span_clipped_from"]``). Excluded rows: ``span_reversed``, ``span_empty``,
    ``span_negative``, ``span_after_video_end`` (starts at/after the end), ``malformed_line``,
    ``missing_field``, ``bad_field``. Raises AnnotationError for an unreadable file.
    """
    path = Path(path)
    lengths = durations if isinstance(durations, dict) else read_charades_durations(durations) if durations else {}
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    files = table_files(path, ("*.parquet",)) if path.is_dir() and any(path.glob("*.parquet")) else \
        table_files(path, ("*.txt",))
    coll: Collector | None = None
    for f in files:
        layout = _layout(f)
        if coll is None:
            coll = Collector("charades", layout, str(path), strict)
        elif coll.layout != layout:
            raise AnnotationError(f, None, None, f"{layout} rows in a folder of {coll.layout} files")
        if layout == "release":
            _read_release(f, lengths, videos, coll)
        else:
            _read_parquet(f, lengths, videos, coll)
    assert coll is not None
    return coll.result()


def _layout(f: Path) -> str:
    try:
        return "lmms-eval" if table_kind(f) in ("parquet", "json") else "release"
    except AnnotationError:
        if f.stat().st_size == 0:
            raise
        return "release"  # plain text lines


def _read_release(f: Path, lengths: dict[str, float], videos: VideoResolver, coll: Collector) -> None:
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f, None, None, f"cannot read as text ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        vid = line.split()[0] if line.split() else "?"
        sid = f"charades/{vid}/{lineno}"
        try:
            vid, start, end, sentence = _release_line(line)
            video = videos.resolve(f"{vid}.mp4", Path(VIDEO_FOLDER) / f"{vid}.mp4")
            sample = _grounding(vid, sentence, start, end, lengths.get(vid), video)
        except RowSkip as skip:
            coll.exclude(f, sid, skip)
            continue
        sample.sample_id = sid
        coll.add(sample)


def _read_parquet(f: Path, lengths: dict[str, float], videos: VideoResolver, coll: Collector) -> None:
    rows = read_table(f)
    if not any("caption" in r and "timestamp" in r for r in rows[:50]):
        raise AnnotationError(f, None, None, "not Charades-STA rows ('video', 'caption', 'timestamp')")
    for i, row in enumerate(rows):
        name = row.get("video") if isinstance(row.get("video"), str) else "?"
        vid = Path(name).stem
        sid = f"charades/{vid}/{i + 1}"
        try:
            need(row, "video")
            caption = need(row, "caption")
            ts = need(row, "timestamp", (list, tuple))
            raw = [number_or_none(t) for t in ts]
            if len(raw) != 2 or None in raw:
                raise RowSkip("bad_field", f"field 'timestamp' is {ts!r}, expected [start, end]")
            start, end = (round(float(t), TIMESTAMP_DECIMALS) for t in raw)
            duration = number_or_none(row.get("duration"))
            video = videos.resolve(name, Path(VIDEO_FOLDER) / name)
            sample = _grounding(vid, caption, start, end, duration if duration is not None else lengths.get(vid), video)
        except RowSkip as skip:
            coll.exclude(f, sid, skip)
            continue
        sample.sample_id = sid
        sample.metadata["timestamp_raw"] = raw
        coll.add(sample)
