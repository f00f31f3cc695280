"""Convert LLaVA-style annotation files and their media into WebDataset tar shards.

``python -m data.make_shards --annotations A.json[,B.jsonl] --media-root DIR --out DIR --shard-size N``

Each record (``id``, ``video`` | ``image`` (path relative to ``--media-root``), ``conversations``,
optional ``scale``/``task``/...) becomes one sample: ``<key>.json`` (the record, with the media field
rewritten to ``<key>.<ext>``) and ``<key>.<ext>`` (the media's raw bytes). Keys are
``<file index>_<record index>`` so they are unique and free of dots. Records that cannot be used
(missing media file, non-object record, missing/mistyped fields, media that does not decode) are
reported on stderr with file and reason, counted, and listed in the summary; nothing is dropped
silently. An annotation file that is not valid JSON / JSONL is a hard error naming the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.faults import BAD_JSON, BAD_RECORD, MISSING_KEY, MISSING_MEDIA, SampleFault
from data.sampling import VideoBytes, read_image
from data.shards import IMAGE_KEYS, VIDEO_KEYS, ShardWriter


@dataclass
class ConvertReport:
    """What a conversion wrote and what it rejected (reason -> count, plus one line per record)."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def reject(self, where: str, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        line = f"{where}: {reason}: {detail}"
        self.problems.append(line)
        print(f"make_shards: skipped {line}", file=sys.stderr)

    def summary(self) -> str:
        total = self.written + sum(self.rejected.values())
        lines = [f"make_shards: {self.written}/{total} records written to {len(self.shards)} shards"]
        lines += [f"  skipped {n} x {reason}" for reason, n in sorted(self.rejected.items())]
        return "\n".join(lines)


def read_annotations(path: str) -> Iterator[tuple[int, Any]]:
    """(record index, record) pairs of a .json list or .jsonl file; bad JSON -> error naming the file."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, SampleFault(BAD_JSON, f"line {i + 1}: {exc}")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: top level must be a list of records, got {type(data).__name__}")
    yield from enumerate(data)


def _check_record(rec: Any) -> tuple[str, str]:
    """(media field, relative path) of a usable record; raises SampleFault otherwise."""
    if not isinstance(rec, dict):
        raise SampleFault(BAD_JSON, f"record is {type(rec).__name__}, expected an object")
    for key in ("id", "conversations"):
        if key not in rec:
            raise SampleFault(MISSING_KEY, f"missing field {key!r}")
    if not isinstance(rec["conversations"], list) or not rec["conversations"]:
        raise SampleFault(BAD_RECORD, "field 'conversations' must be a non-empty list")
    media = [k for k in ("video", "image") if k in rec]
    if len(media) != 1:
        raise SampleFault(MISSING_KEY if not media else BAD_RECORD,
                          "needs exactly one of 'video' / 'image'")
    rel = rec[media[0]]
    if not isinstance(rel, str) or not rel:
        raise SampleFault(BAD_RECORD, f"field {media[0]!r} must be a path string")
    scale = rec.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0):
        raise SampleFault(BAD_RECORD, f"field 'scale' must be a number > 0, got {scale!r}")
    return media[0], rel


def _load_media(kind: str, path: Path, where: str) -> tuple[str, bytes]:
    ext = path.suffix.lower().lstrip(".")
    allowed = VIDEO_KEYS if kind == "video" else IMAGE_KEYS
    if ext not in allowed:
        raise SampleFault(BAD_RECORD, f"{kind} extension {ext!r} not in {list(allowed)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SampleFault(MISSING_MEDIA, f"no such file {path}") from exc
    except IsADirectoryError as exc:
        raise SampleFault(MISSING_MEDIA, f"{path} is a directory") from exc
    if kind == "video":
        VideoBytes(data, where)  # opens the container: raises SampleFault when unreadable
    else:
        read_image(data, where)
    return ext, data


def convert(annotations: Sequence[str], media_root: str, out_dir: str, shard_size: int,
            task: str | None = None) -> ConvertReport:
    """Write shards for every usable record of ``annotations``; returns the report."""
    report = ConvertReport()
    root = Path(media_root)
    with ShardWriter(out_dir, shard_size) as writer:
        for f_idx, ann in enumerate(annotations):
            for r_idx, rec in read_annotations(ann):
                where = f"{ann}[{r_idx}]"
                try:
                    if isinstance(rec, SampleFault):
                        raise rec
                    kind, rel = _check_record(rec)
                    ext, data = _load_media(kind, root / rel, where)
                except SampleFault as fault:
                    report.reject(where, fault.reason, str(fault).split(": ", 1)[-1])
                    continue
                key = f"{f_idx:03d}_{r_idx:09d}"
                record = dict(rec)
                record[kind] = f"{key}.{ext}"
                record.setdefault("source", f"{os.path.basename(ann)}:{rel}")
                if task is not None:
                    record.setdefault("task", task)
                writer.write(key, {"json": json.dumps(record).encode("utf-8"), ext: data})
                report.written += 1
        report.shards = writer.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="comma-separated .json / .jsonl files")
    parser.add_argument("--media-root", required=True, help="directory the media paths are relative to")
    parser.add_argument("--out", required=True, help="output directory for shard-NNNNNN.tar")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--task", default=None, help="task name for records without a 'task' field")
    args = parser.parse_args(argv)
    files = [a for a in args.annotations.split(",") if a]
    for f in files:
        if not os.path.isfile(f):
            parser.error(f"--annotations: no such file {f}")
    if not os.path.isdir(args.media_root):
        parser.error(f"--media-root: no such directory {args.media_root}")
    try:
        report = convert(files, args.media_root, args.out, args.shard_size, args.task)
    except ValueError as exc:
        print(f"make_shards: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
