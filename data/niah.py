"""Needle-in-a-video-haystack (NIAH) builder.

A haystack video is sampled at `fps`, looped (too short) or uniformly resampled (too long)
to exactly `length` frames, and a needle — `needle_frames` consecutive frames that are one
solid colour (``style="solid"``) or carry a solid-colour square in their centre
(``style="patch"``, a caption-less visual cue on the haystack content) — replaces the frames
starting at index ``round(depth * (length - needle_frames))``. The question asks for the needle's
colour among 4 shuffled colour options. One mp4 (H.264, `data.scenes.encode_mp4`) per sample and an
``annotations.json`` list of records in the synth schema (``task: "needle"``,
``answer: {"letter", "depth"}``, plus ``length`` and ``needle``) readable by
`data.benchmarks.read_records`.

Note: when evaluating, the frame sampler must keep every frame of the needle video (e.g. fps 1
and frames upbound >= length for videos written at 1 fps); otherwise a 1-frame needle can be skipped.

    python -m data.niah --haystack VIDEO --out DIR --lengths 32,64,128 --depths 0,0.25,0.5,0.75,1 --seed S
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from data.benchmarks import DEFAULT_MCQ_TEMPLATE, LETTERS
from data.scenes import encode_mp4

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 40),
    "blue": (30, 60, 230),
    "yellow": (245, 230, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
}
QUESTION = {
    "solid": "One short moment of this video shows only a single solid colour. What colour is it?",
    "patch": "At one moment a solid coloured square appears in the middle of the video. What colour is it?",
}


@dataclass
class NeedleSpec:
    """Where and what the needle is."""

    length: int
    depth: float
    color: str
    style: str = "solid"
    needle_frames: int = 1

    @property
    def start(self) -> int:
        """First needle frame index."""
        return int(round(self.depth * (self.length - self.needle_frames)))


def read_frames(path: str | Path, fps: float, max_frames: int | None = None,
                size: int | None = None) -> np.ndarray:
    """Decode `path` with PyAV, keeping the first frame at or after each multiple of 1/`fps` seconds.

    `size` (optional) resizes so the short side is `size` (even dimensions). Returns uint8 [N, H, W, 3].
    Raises ValueError naming `path` when it is missing, not a video PyAV can decode, or has no frames.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    try:
        return _decode_at_fps(path, fps, max_frames, size)
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot read it as a video ({type(exc).__name__}: {exc})") from exc


def _decode_at_fps(path: str | Path, fps: float, max_frames: int | None, size: int | None) -> np.ndarray:
    frames: list[np.ndarray] = []
    next_t = 0.0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if size:
            scale = size / min(w, h)
            w, h = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
        else:
            w, h = w - w % 2, h - h % 2
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 1)
            if t + 1e-6 < next_t:
                continue
            frames.append(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())
            next_t += 1.0 / fps
            while next_t <= t:
                next_t += 1.0 / fps
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(frames)


def fit_length(frames: np.ndarray, length: int) -> np.ndarray:
    """Loop (if shorter) or uniformly resample (if longer) `frames` to exactly `length` frames."""
    n = len(frames)
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    if n >= length:
        idx = np.linspace(0, n - 1, length).round().astype(np.int64)
    else:
        idx = np.arange(length) % n
    return frames[idx]


def insert_needle(frames: np.ndarray, spec: NeedleSpec) -> np.ndarray:
    """Copy of `frames` with the needle of `spec` written over frames [start, start + needle_frames)."""
    if len(frames) != spec.length:
        raise ValueError(f"haystack has {len(frames)} frames, spec expects {spec.length}")
    if not 0.0 <= spec.depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {spec.depth}")
    if not 1 <= spec.needle_frames <= spec.length:
        raise ValueError(f"needle_frames must be in [1, {spec.length}], got {spec.needle_frames}")
    out = frames.copy()
    rgb = np.array(PALETTE[spec.color], dtype=np.uint8)
    sl = slice(spec.start, spec.start + spec.needle_frames)
    if spec.style == "solid":
        out[sl] = rgb
    elif spec.style == "patch":
        h, w = frames.shape[1:3]
        side = max(2, min(h, w) // 2)
        top, left = (h - side) // 2, (w - side) // 2
        out[sl, top:top + side, left:left + side] = rgb
    else:
        raise ValueError(f"unknown needle style {spec.style!r} (solid | patch)")
    return out


def write_mp4(frames: np.ndarray, path: str | Path, fps: float) -> None:
    """Write uint8 [N, H, W, 3] frames (even H, W) as an H.264 mp4 at `fps` (`data.scenes.encode_mp4`, crf 18)."""
    Path(path).write_bytes(encode_mp4(frames, fps, crf=18))


def needle_record(spec: NeedleSpec, sample_id: str, video_name: str, fps: float,
                  rng: random.Random, num_options: int = 4) -> dict[str, Any]:
    """Synth-schema record (question with shuffled colour options, ground-truth letter) for `spec`."""
    distractors = rng.sample([c for c in PALETTE if c != spec.color], num_options - 1)
    options = distractors + [spec.color]
    rng.shuffle(options)
    letter = LETTERS[options.index(spec.color)]
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    prompt = DEFAULT_MCQ_TEMPLATE.format(question=QUESTION[spec.style], options=opts)
    return {
        "id": sample_id,
        "video": video_name,
        "conversations": [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": f"{letter}."}],
        "task": "needle",
        "answer": {"letter": letter, "depth": spec.depth},
        "duration": spec.length / fps,
        "fps": fps,
        "length": spec.length,
        "needle": {"color": spec.color, "style": spec.style, "start_frame": spec.start,
                   "num_frames": spec.needle_frames},
    }


def build_grid(haystack: str | Path, out_dir: str | Path, lengths: list[int], depths: list[float],
               seed: int, fps: float = 1.0, style: str = "solid", needle_frames: int = 1,
               samples_per_cell: int = 1, size: int | None = None) -> list[dict[str, Any]]:
    """Write one needle video per (length, depth, repeat) cell and ``annotations.json``; return the records."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    source = read_frames(haystack, fps, max_frames=max(lengths) * 4, size=size)
    records = []
    for length in lengths:
        base = fit_length(source, length)
        for depth in depths:
            for rep in range(samples_per_cell):
                spec = NeedleSpec(length, float(depth), rng.choice(sorted(PALETTE)), style, needle_frames)
                name = f"niah_L{length}_d{depth:g}_r{rep}"
                write_mp4(insert_needle(base, spec), out / f"{name}.mp4", fps)
                records.append(needle_record(spec, name, f"{name}.mp4", fps, rng))
    (out / "annotations.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return records


def _floats(text: str) -> list[float]:
    """Parse ``"0,0.5,1"``."""
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--haystack", required=True, help="source video")
    ap.add_argument("--out", required=True, help="output folder (videos + annotations.json)")
    ap.add_argument("--lengths", default="32,64,128", help="frames per needle video")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=1.0, help="haystack sampling rate and output frame rate")
    ap.add_argument("--style", choices=["solid", "patch"], default="solid")
    ap.add_argument("--needle-frames", type=int, default=1)
    ap.add_argument("--samples-per-cell", type=int, default=1)
    ap.add_argument("--size", type=int, default=None, help="resize short side (even)")
    args = ap.parse_args(argv)
    if not Path(args.haystack).is_file():
        ap.error(f"--haystack: no such file {args.haystack}")
    try:
        records = build_grid(args.haystack, args.out, [int(x) for x in _floats(args.lengths)], _floats(args.depths),
                             args.seed, args.fps, args.style, args.needle_frames, args.samples_per_cell, args.size)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"wrote {len(records)} needle samples to {args.out}/annotations.json")


if __name__ == "__main__":
    main()
