"""The generated default dataset: WebDataset shards of rendered scene videos and stills with questions.

    python -m data.synth --out DIR --videos N --seed S [--images M --min-frames 16 --max-frames 48
        --size 64 --fps 1 --val-frac 0.1 --test-frac 0.1 --shard-size 64 --needle-prob 0.3]

Writes ``DIR/{train,val,test}-NNNNNN.tar`` and ``DIR/manifest.json``. Every video yields one sample per
task (``caption``, ``mcq``, ``grounding``, for videos with a needle ``needle``, and when asked for the
multi-turn ``qa`` conversation of every question family) sharing the same
mp4 bytes; every still yields one ``image_caption`` sample with a png. Each video and still is drawn
from its own seed (``seed``, split, index), so splits never share content, and output is identical
for identical arguments. Event times are whole seconds aligned to ``quantum`` seconds (default 4 = one
4-frame group at 1 fps).

``frame_seconds`` (``--frame-seconds 4 10``) makes time-lapse videos: each video draws k from the list and
shows one frame every k seconds (1/k fps), so the same 16..48 frames span k times as many seconds, with
event times on a grid of ``quantum * k`` seconds (still whole groups) and timestamps in the hundreds of
seconds. The draw has its own seed, so a set without it is unchanged.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data import synth_questions as questions
from data.scenes import Scene, encode_mp4, encode_png, render_frame, render_video, sample_scene, sample_still
from data.shards import ShardWriter

SPLITS: tuple[str, ...] = ("train", "val", "test")
VIDEO_TASKS: tuple[str, ...] = ("caption", "mcq", "grounding", "needle")
# optional video tasks (not generated unless asked for): "qa" is a multi-turn training conversation
EXTRA_TASKS: tuple[str, ...] = ("qa",)
OPTION_ORDERS: tuple[str, ...] = ("shuffled", "canonical")
CHOICE_TASKS: frozenset[str] = frozenset({"mcq", "needle", "qa"})  # tasks whose options have an order
COUNT_TASKS: frozenset[str] = frozenset({"mcq", "qa"})  # tasks that may ask how many objects a video holds
_TASK_FNS: dict[str, Callable[..., tuple[list[dict[str, str]], dict[str, Any]]]] = {
    "caption": questions.caption,
    "mcq": questions.mcq,
    "grounding": questions.grounding,
    "needle": questions.needle,
    "qa": questions.session,
    "image_caption": questions.image_caption,
}


@dataclass(frozen=True)
class SynthConfig:
    """Arguments of one generation run (see the module docstring)."""

    out: str
    videos: int
    seed: int = 0
    images: int | None = None  # default: videos // 2
    min_frames: int = 16
    max_frames: int = 48
    size: int = 64
    fps: int = 1
    val_frac: float = 0.1
    test_frac: float = 0.1
    shard_size: int = 64
    quantum: int = 4
    max_objects: int = 2
    object_scale: float = 0.2  # object half side, as a fraction of the frame side
    object_speed: float = 1.0 / 16.0  # object speed, frame sides per second (0: objects stand still)
    needle_prob: float = 0.3
    tasks: tuple[str, ...] = VIDEO_TASKS
    option_order: str = "shuffled"  # shuffled | canonical (options always listed in one fixed order)
    frame_seconds: tuple[int, ...] = ()  # time-lapse: each video shows a frame every k seconds, k drawn from these

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        checks = [
            ("videos", self.videos >= 0), ("images", self.images is None or self.images >= 0),
            ("size", self.size >= 16 and self.size % 2 == 0), ("fps", self.fps >= 1), ("quantum", self.quantum >= 1),
            ("min_frames", self.min_frames >= 1), ("max_frames", self.max_frames >= self.min_frames),
            ("val_frac", 0.0 <= self.val_frac < 1.0), ("test_frac", 0.0 <= self.test_frac < 1.0),
            ("val_frac + test_frac", self.val_frac + self.test_frac < 1.0 or self.videos == 0),
            ("shard_size", self.shard_size >= 1), ("max_objects", 1 <= self.max_objects <= 4),
            ("object_scale", 0.0 < self.object_scale < 0.5), ("object_speed", self.object_speed >= 0.0),
            ("needle_prob", 0.0 <= self.needle_prob <= 1.0),
            ("tasks", bool(self.tasks) and set(self.tasks) <= set(VIDEO_TASKS + EXTRA_TASKS)),
            ("option_order", self.option_order in OPTION_ORDERS),
            ("frame_seconds", all(int(k) >= 1 for k in self.frame_seconds) and (not self.frame_seconds
                                                                                or self.fps == 1)),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}: invalid value in {self}")
        if self.videos == 0 and not self.images:  # images default to videos // 2
            raise ValueError("videos, images: both 0, nothing to write")
        if not self.durations():
            raise ValueError(f"min_frames/max_frames: no duration that is a multiple of quantum={self.quantum} s "
                             f"gives {self.min_frames}..{self.max_frames} frames at {self.fps} fps")

    def settings(self) -> dict[str, Any]:
        """The fields other than ``out``, json-ready (tuples as lists): what ``manifest.json`` records as
        ``config``, and what a reader compares to decide whether a set on disk was made with these settings."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "out"}

    def durations(self) -> list[int]:
        """Allowed video durations in seconds."""
        return [d for d in range(self.quantum, self.max_frames // self.fps + 1, self.quantum)
                if self.min_frames <= d * self.fps <= self.max_frames]


def split_counts(total: int, val_frac: float, test_frac: float) -> dict[str, int]:
    """How many items go to each split (val and test get at least one when their fraction > 0)."""
    val = max(1 if val_frac > 0 and total >= 3 else 0, round(total * val_frac))
    test = max(1 if test_frac > 0 and total >= 3 else 0, round(total * test_frac))
    return {"train": total - val - test, "val": val, "test": test}


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _record(key: str, media: str, task: str, conv: list[dict[str, str]], answer: dict[str, Any],
            scene: Scene, source_id: str) -> bytes:
    rec: dict[str, Any] = {"id": key, media: f"{key}.{'mp4' if media == 'video' else 'png'}",
                           "conversations": conv, "task": task, "answer": answer, "source_id": source_id,
                           "scene": scene.to_json()}
    if media == "video":
        rec["duration"] = float(scene.duration)
        rec["fps"] = float(scene.fps)
    return json.dumps(rec, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _write_split(cfg: SynthConfig, split: str, n_videos: int, n_images: int) -> dict[str, Any]:
    split_code = SPLITS.index(split)
    durations = cfg.durations()
    tasks: Counter[str] = Counter()
    needles = 0
    with ShardWriter(cfg.out, cfg.shard_size, prefix=split) as writer:
        for i in range(n_videos):
            rng = _rng(cfg.seed, split_code, 0, i)
            duration = durations[int(rng.integers(len(durations)))]
            fps: float = cfg.fps
            quantum = cfg.quantum
            if cfg.frame_seconds:  # a time-lapse video: the same frames over k times the seconds
                k = int(cfg.frame_seconds[int(_rng(cfg.seed, split_code, 4, i).integers(len(cfg.frame_seconds)))])
                fps, duration, quantum = 1.0 / k, duration * k, quantum * k
            scene = sample_scene(rng, cfg.size, fps, duration, quantum, cfg.max_objects, cfg.needle_prob,
                                 cfg.object_scale, cfg.object_speed)
            needles += scene.needle is not None
            mp4 = encode_mp4(render_video(scene), scene.fps)
            vid = f"{split}_v{i:06d}"
            for t, task in enumerate(cfg.tasks):
                if task == "needle" and scene.needle is None:
                    continue
                kwargs = {"shuffle": cfg.option_order == "shuffled"} if task in CHOICE_TASKS else {}
                if task in COUNT_TASKS:  # with one object per video the count would be a constant answer
                    kwargs["count"] = cfg.max_objects > 1
                conv, answer = _TASK_FNS[task](scene, _rng(cfg.seed, split_code, 1, i, t), **kwargs)
                key = f"{vid}_{task}"
                writer.write(key, {"mp4": mp4, "json": _record(key, "video", task, conv, answer, scene, vid)})
                tasks[task] += 1
        for i in range(n_images):
            rng = _rng(cfg.seed, split_code, 2, i)
            scene = sample_still(rng, cfg.size)
            conv, answer = questions.image_caption(scene, _rng(cfg.seed, split_code, 3, i))
            key = f"{split}_i{i:06d}_image_caption"
            png = encode_png(render_frame(scene, 0.0))
            writer.write(key, {"png": png, "json": _record(key, "image", "image_caption", conv, answer, scene,
                                                          f"{split}_i{i:06d}")})
            tasks["image_caption"] += 1
    shards = [Path(s).name for s in writer.shards]
    return {"videos": n_videos, "images": n_images, "needle_videos": needles,
            "samples": sum(tasks.values()), "tasks": dict(sorted(tasks.items())), "shards": shards}


def generate(cfg: SynthConfig) -> dict[str, Any]:
    """Write all shards and manifest.json under ``cfg.out``; returns the manifest."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for s in SPLITS for p in out.glob(f"{s}-*.tar")]
    if stale:
        raise ValueError(f"out: {out} already holds shards ({', '.join(sorted(stale)[:3])}, ...); use an empty directory")
    videos = split_counts(cfg.videos, cfg.val_frac, cfg.test_frac)
    images = split_counts(cfg.videos // 2 if cfg.images is None else cfg.images, cfg.val_frac, cfg.test_frac)
    manifest: dict[str, Any] = {"config": cfg.settings(), "splits": {}}
    for split in SPLITS:
        manifest["splits"][split] = _write_split(cfg, split, videos[split], images[split])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m data.synth", description="Generate the synthetic scene dataset as WebDataset shards.")
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=None, help="still images (default: videos // 2)")
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=48)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fps", type=int, default=1)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    p.add_argument("--quantum", type=int, default=4, help="event times are multiples of this many seconds")
    p.add_argument("--max-objects", type=int, default=2)
    p.add_argument("--object-scale", type=float, default=0.2, help="object half side / frame side")
    p.add_argument("--object-speed", type=float, default=1.0 / 16.0, help="frame sides per second (0: still)")
    p.add_argument("--needle-prob", type=float, default=0.3)
    p.add_argument("--frame-seconds", type=int, nargs="*", default=[],
                   help="time-lapse: each video shows one frame every k seconds, k drawn from these")
    p.add_argument("--option-order", default="shuffled", choices=OPTION_ORDERS,
                   help="canonical: multiple-choice options always in one fixed order")
    p.add_argument("--tasks", default=",".join(VIDEO_TASKS),
                   help=f"comma list of video tasks ({', '.join(VIDEO_TASKS + EXTRA_TASKS)})")
    a = p.parse_args(argv)
    cfg = SynthConfig(out=a.out, videos=a.videos, seed=a.seed, images=a.images, min_frames=a.min_frames,
                      max_frames=a.max_frames, size=a.size, fps=a.fps, val_frac=a.val_frac,
                      test_frac=a.test_frac, shard_size=a.shard_size, quantum=a.quantum,
                      max_objects=a.max_objects, object_scale=a.object_scale,
                      object_speed=a.object_speed, needle_prob=a.needle_prob, option_order=a.option_order,
                      frame_seconds=tuple(a.frame_seconds),
                      tasks=tuple(t for t in a.tasks.split(",") if t))
    try:
        manifest = generate(cfg)
    except ValueError as exc:  # a bad setting, or an output folder already holding shards
        p.error(str(exc))
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['videos']} videos, {info['images']} images, {info['samples']} samples "
              f"{info['tasks']} in {len(info['shards'])} shards")
    return manifest


if __name__ == "__main__":
    main()
