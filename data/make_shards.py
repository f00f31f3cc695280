"""Convert LLaVA-style annotation files and their media into WebDataset tar shards.

``python -m data.make_shards --annotations A.json[,B.jsonl] --media-root DIR --out DIR --shard-size N
[--check-frames 150 --check-fps-upbound 4]``

Each record (``id``, ``video`` | ``image`` (path relative to ``--media-root``), ``conversations``,
optional ``scale``/``task``/...) becomes one sample: ``<key>.json`` (the record, with the media field
rewritten to ``<key>.<ext>``) and ``<key>.<ext>`` (the media's raw bytes). Keys are
``<file index>_<record index>`` so they are unique and free of dots. Records that cannot be used
(missing media file, non-object record, missing/mistyped fields, a conversation that breaks
:func:`model.sequence.parse_conversation`'s rules (``bad_conversation``) or has an empty answer
(``empty_answer``), media that does not decode) are reported on stderr with file and reason, counted,
and listed in the summary; nothing is dropped silently. An annotation file that is not valid JSON /
JSONL is a hard error naming the file.

Videos are opened with the loader's decoder chain (decord, else PyAV: :mod:`data.decoders`). With
``--check-frames N`` (default 150, the long stage's ``frames_upbound``; 0 = only open the container)
the frames the sampler would pick with ``frames_upbound = N`` and ``fps_upbound =
--check-fps-upbound`` (default 4) are decoded too, so a file whose header promises frames it does not
hold is rejected here rather than at training time. The summary counts rejections per reason, the
rejected videos per codec, and the written videos per codec and decoder.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.decoders import probe_codec
from data.faults import (
    BAD_CONVERSATION,
    BAD_JSON,
    BAD_RECORD,
    EMPTY_ANSWER,
    MISSING_KEY,
    MISSING_MEDIA,
    SampleFault,
)
from data.sampling import VideoBytes, read_image, sample_video_frames
from data.shards import IMAGE_KEYS, VIDEO_KEYS, ShardWriter
from model.sequence import EmptyAnswer, parse_conversation

CHECK_FRAMES = 150  # conf/stage/long.yaml frames_upbound: the largest frame budget of the stage recipes
CHECK_FPS_UPBOUND = 4.0  # conf/stage/long.yaml fps_upbound


@dataclass
class ConvertReport:
    """What a conversion wrote and what it rejected (reason -> count, plus one line per record)."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    rejected_codecs: Counter[str] = field(default_factory=Counter)  # codec of each rejected video file
    written_codecs: Counter[str] = field(default_factory=Counter)  # "codec/decoder" of each written video

    def reject(self, where: str, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        line = f"{where}: {reason}: {detail}"
        self.problems.append(line)
        print(f"make_shards: skipped {line}", file=sys.stderr)

    def summary(self) -> str:
        total = self.written + sum(self.rejected.values())
        lines = [f"make_shards: {self.written}/{total} records written to {len(self.shards)} shards"]
        lines += [f"  skipped {n} x {reason}" for reason, n in sorted(self.rejected.items())]
        if self.rejected_codecs:
            lines.append("  videos rejected, by codec: "
                         + ", ".join(f"{c} {n}" for c, n in sorted(self.rejected_codecs.items())))
        if self.written_codecs:
            lines.append("  videos written, by codec/decoder: "
                         + ", ".join(f"{c} {n}" for c, n in sorted(self.written_codecs.items())))
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
    try:
        parse_conversation(rec["conversations"], has_media=True)
    except EmptyAnswer as exc:
        raise SampleFault(EMPTY_ANSWER, str(exc)) from exc
    except ValueError as exc:
        raise SampleFault(BAD_CONVERSATION, str(exc)) from exc
    return media[0], rel


@dataclass(frozen=True)
class FrameCheck:
    """Which frames to decode per video: those the sampler picks under these bounds (0: none)."""

    frames_upbound: int = CHECK_FRAMES
    fps_upbound: float | None = CHECK_FPS_UPBOUND


def _check_video(data: bytes, path: Path, check: FrameCheck) -> str:
    """Open the video (and decode the sampled frames when ``check.frames_upbound > 0``); returns the
    decoder that read it; SampleFault naming the file otherwise."""
    video = VideoBytes(data, str(path))
    if check.frames_upbound > 0:
        sample = sample_video_frames(video.num_frames, video.avg_fps, frames_upbound=check.frames_upbound,
                                     fps_upbound=check.fps_upbound)
        video.read_unique(sample.indices)
    return video.decoder


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
    if kind == "image":
        read_image(data, where)
    return ext, data


def convert(annotations: Sequence[str], media_root: str, out_dir: str, shard_size: int,
            task: str | None = None, check: FrameCheck | None = None) -> ConvertReport:
    """Write shards for every usable record of ``annotations``; returns the report.

    ``check``: which frames of each video to decode before accepting it (default :class:`FrameCheck`:
    the sampled frames at 150 frames / 4 fps; ``FrameCheck(0)`` only opens the container).
    """
    check = FrameCheck() if check is None else check
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
                if kind == "video":
                    codec = probe_codec(data) or "unknown"
                    try:
                        decoder = _check_video(data, root / rel, check)
                    except SampleFault as fault:
                        report.reject(where, fault.reason, str(fault).split(": ", 1)[-1])
                        report.rejected_codecs[codec] += 1
                        continue
                    report.written_codecs[f"{codec}/{decoder}"] += 1
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
    parser = argparse.ArgumentParser(prog="python -m data.make_shards", description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="comma-separated .json / .jsonl files")
    parser.add_argument("--media-root", required=True, help="directory the media paths are relative to")
    parser.add_argument("--out", required=True, help="output directory for shard-NNNNNN.tar")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--task", default=None, help="task name for records without a 'task' field")
    parser.add_argument("--check-frames", type=int, default=CHECK_FRAMES, metavar="N",
                        help="decode the frames the sampler picks with frames_upbound N before accepting a "
                             f"video (default {CHECK_FRAMES}; 0: only open it)")
    parser.add_argument("--check-fps-upbound", type=float, default=CHECK_FPS_UPBOUND, metavar="F",
                        help=f"fps_upbound of that sampling (default {CHECK_FPS_UPBOUND}; 0: none)")
    args = parser.parse_args(argv)
    if args.check_frames < 0:
        parser.error(f"--check-frames: must be >= 0, got {args.check_frames}")
    if not args.check_fps_upbound >= 0:
        parser.error(f"--check-fps-upbound: must be >= 0, got {args.check_fps_upbound}")
    files = [a for a in args.annotations.split(",") if a]
    for f in files:
        if not os.path.isfile(f):
            parser.error(f"--annotations: no such file {f}")
    if not os.path.isdir(args.media_root):
        parser.error(f"--media-root: no such directory {args.media_root}")
    old = sorted(glob.glob(os.path.join(glob.escape(args.out), "shard-*.tar")))
    if old:  # a smaller rewrite would leave the old run's last shards to be read as data
        parser.error(f"--out: {args.out} already holds {len(old)} shard-*.tar files from an earlier run; "
                     "choose another folder or delete them")
    try:
        report = convert(files, args.media_root, args.out, args.shard_size, args.task,
                         FrameCheck(args.check_frames, args.check_fps_upbound or None))
    except ValueError as exc:
        print(f"make_shards: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
