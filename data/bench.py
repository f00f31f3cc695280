"""Loader throughput against the physical floor: raw decord decoding of the same frames.

``python -m data.bench --shards GLOB --workers K --batches B [--batch-size 4 --frames-upbound 16
--fps-upbound 4 --model tiny --tokenizer tiny --decode-timeout-s S]``

Runs the loader (looping, ``K`` workers) for ``B`` batches and times it; then, in this process,
decodes exactly the frames those batches held (same samples, same sampled indices: decord
``get_batch`` on in-memory bytes (PyAV for a video decord cannot read), PIL for images) and times
that. Prints samples/s, frames/s and
``ratio = loader wall time / raw decode time`` (the raw decode is serial on one core, so with K > 1
workers the ratio can be below 1). ``steady`` excludes the loader start-up (first batch).
With ``--repeats R`` both measurements alternate R times and the fastest of each is reported, which
keeps a busy shared machine's noise out of the ratio.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data.decoders import DecodeError, DecordDecoder
from data.loader import build_loader
from data.sampling import VideoBytes, read_image, sample_video_frames
from data.shards import IMAGE_KEYS, VIDEO_KEYS, RawSample, iter_shard


@dataclass
class BenchResult:
    """Timings of one benchmark run (seconds) and what was decoded."""

    batches: int
    samples: int
    frames: int
    loader_s: float
    loader_steady_s: float
    steady_samples: int
    raw_s: float
    raw_steady_s: float
    loader_cpu_s: float  # CPU seconds of the main process and all loader workers
    raw_cpu_s: float

    def lines(self) -> list[str]:
        return [
            f"loader: {self.batches} batches, {self.samples} samples, {self.frames} frames in {self.loader_s:.3f} s "
            f"-> {self.samples / self.loader_s:.1f} samples/s, {self.frames / self.loader_s:.1f} frames/s",
            f"raw decord decode of the same frames: {self.raw_s:.3f} s "
            f"-> {self.frames / self.raw_s:.1f} frames/s",
            f"ratio loader/raw: {self.loader_s / self.raw_s:.3f} (incl. start-up), "
            f"steady {self.loader_steady_s / max(self.raw_steady_s, 1e-9):.3f} (after the first batch)",
            f"cpu: loader {self.loader_cpu_s:.3f} s (all processes), raw {self.raw_cpu_s:.3f} s, "
            f"ratio {self.loader_cpu_s / max(self.raw_cpu_s, 1e-9):.3f}",
        ]


def _raw_index(shards: Sequence[str]) -> dict[str, RawSample]:
    """Samples by json id (ids must be unique for the benchmark to match them)."""
    out: dict[str, RawSample] = {}
    for shard in shards:
        for raw in iter_shard(shard):
            if "json" not in raw.members:
                continue
            sid = str(json.loads(raw.members["json"])["id"])
            if sid in out:
                raise ValueError(f"{shard}:{raw.key}: duplicate sample id {sid!r}; the benchmark needs unique ids")
            out[sid] = raw
    return out


def _raw_decode(raw: RawSample, frames_upbound: int, fps_upbound: float | None, expect: int) -> int:
    """Decode the frames the loader used for this sample; returns the frame count."""
    rec = json.loads(raw.members["json"])
    if "video" in rec:
        data = next(raw.members[k] for k in VIDEO_KEYS if k in raw.members)
        try:  # decord alone, without the loader's decoder chain: the floor the loader is measured against
            video: Any = DecordDecoder().open(data, raw.key)
        except DecodeError:
            video = VideoBytes(data, raw.key)
        sample = sample_video_frames(video.num_frames, video.avg_fps, frames_upbound=frames_upbound,
                                     fps_upbound=fps_upbound, scale=rec.get("scale"))
        unique = np.unique(np.asarray(sample.indices[:expect], dtype=np.int64))
        frames = video.read(unique.tolist())
        if frames.shape[0] != unique.shape[0]:
            raise RuntimeError(f"sample {raw.key}: decoded {frames.shape[0]} frames for {unique.shape[0]} indices")
        return len(sample.indices[:expect])
    if "image" in rec:
        read_image(next(raw.members[k] for k in IMAGE_KEYS if k in raw.members), raw.key)
        return expect
    return 0


def run_bench(shards_glob: str, workers: int, batches: int, batch_size: int, frames_upbound: int,
              fps_upbound: float | None, model: str, tokenizer: str,
              decode_timeout_s: float | None = None) -> BenchResult:
    """Time the loader (with ``data.decode_timeout_s = decode_timeout_s``), then the raw decode of the
    same frames."""
    from model import build_preset, load_tokenizer

    cfg = {"root": "", "train": [{"shards": shards_glob}], "shuffle_buffer": 64, "decode_timeout_s": decode_timeout_s}
    loader = build_loader(cfg, load_tokenizer(tokenizer), build_preset(model), split="train",
                          batch_size=batch_size, num_workers=workers, frames_upbound=frames_upbound,
                          fps_upbound=fps_upbound, max_length=None, loop=True)
    consumed: list[list[tuple[str, int]]] = []
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    t_first = t0
    stream = iter(loader)
    for batch in stream:
        consumed.append(list(zip(batch["sample_ids"], batch["frame_counts"].tolist(), strict=True)))
        if len(consumed) == 1:
            t_first = time.perf_counter()
        if len(consumed) == batches:
            break
    t_end = time.perf_counter()
    stream.close()  # shuts the workers down so that their CPU time is accounted to this process
    del stream
    gc.collect()
    loader_cpu = _cpu_seconds() - cpu0
    if len(consumed) < batches:
        raise RuntimeError(f"loader stopped after {len(consumed)} batches (skipped: {loader.skipped})")
    index = _raw_index(sorted({s for src in loader.plan.sources for s in src.shards}))
    per_batch: list[float] = []
    frames = 0
    raw_cpu0 = time.process_time()
    for items in consumed:
        tb = time.perf_counter()
        for sid, count in items:
            got = _raw_decode(index[sid], frames_upbound, fps_upbound, count)
            if got != count:
                raise RuntimeError(f"sample {sid}: loader had {count} frames, raw decode {got}")
            frames += count
        per_batch.append(time.perf_counter() - tb)
    raw_cpu = time.process_time() - raw_cpu0
    return BenchResult(batches=batches, samples=sum(len(b) for b in consumed), frames=frames,
                       loader_s=t_end - t0, loader_steady_s=t_end - t_first,
                       steady_samples=sum(len(b) for b in consumed[1:]), raw_s=sum(per_batch),
                       raw_steady_s=sum(per_batch[1:]), loader_cpu_s=loader_cpu, raw_cpu_s=raw_cpu)


def _cpu_seconds() -> float:
    """CPU time of this process plus its waited-for children (finished loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(results: Sequence[BenchResult]) -> BenchResult:
    """Fastest loader run and fastest raw decode of ``results`` (same samples in every run)."""
    fast_loader = min(results, key=lambda r: r.loader_s)
    fast_raw = min(results, key=lambda r: r.raw_s)
    return BenchResult(batches=fast_loader.batches, samples=fast_loader.samples, frames=fast_loader.frames,
                       loader_s=fast_loader.loader_s, loader_steady_s=min(r.loader_steady_s for r in results),
                       steady_samples=fast_loader.steady_samples, raw_s=fast_raw.raw_s,
                       raw_steady_s=min(r.raw_steady_s for r in results),
                       loader_cpu_s=min(r.loader_cpu_s for r in results), raw_cpu_s=min(r.raw_cpu_s for r in results))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="shard glob")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--frames-upbound", type=int, default=16)
    p.add_argument("--fps-upbound", type=float, default=None)
    p.add_argument("--model", default="tiny", help="model preset (image_size, tokens per group)")
    p.add_argument("--tokenizer", default="tiny")
    p.add_argument("--repeats", type=int, default=3, help="alternate both measurements; report the best")
    p.add_argument("--decode-timeout-s", type=float, default=None,
                   help="the loader's data.decode_timeout_s (default: none)")
    args = p.parse_args(argv)
    if not any(os.path.isfile(f) for f in glob.glob(args.shards)):
        p.error(f"--shards: glob {args.shards!r} matches no shard file")
    from model.presets import load_preset_dict

    try:
        load_preset_dict(args.model)
    except (FileNotFoundError, ValueError) as exc:
        p.error(f"--model: {exc}")
    runs = [run_bench(args.shards, args.workers, args.batches, args.batch_size, args.frames_upbound,
                      args.fps_upbound, args.model, args.tokenizer, args.decode_timeout_s)
            for _ in range(max(1, args.repeats))]
    res = best_of(runs)
    print(f"loader {len(runs)} runs: " + ", ".join(f"{r.loader_s:.3f}" for r in runs) + " s; raw: "
          + ", ".join(f"{r.raw_s:.3f}" for r in runs) + " s")
    for line in res.lines():
        print(line)
    return vars(res)


if __name__ == "__main__":
    main()
