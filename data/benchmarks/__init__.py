"""Readers that normalise evaluation annotations into one `EvalSample` type.

``read_benchmark(fmt, path, video_root, strict=..., **opts) -> BenchmarkRead`` for
fmt in `FORMATS`; one module per benchmark, each reading both the original release files and the
lmms-eval copies on the HF hub (the file type and the layout are detected):

* ``mlvu``           — `data.benchmarks.mlvu` (release task jsons / lmms-eval parquet),
* ``videomme``       — `data.benchmarks.videomme` (parquet),
* ``lvbench``        — `data.benchmarks.lvbench` (release ``video_info.meta.jsonl`` / lmms-eval parquet),
* ``longvideobench`` — `data.benchmarks.longvideobench` (``lvb_val.json`` / parquet),
* ``charades``       — `data.benchmarks.charades` (release ``VIDEOID START END##sentence`` lines / lmms-eval parquet),
* ``synth``, ``records`` — this project's generated shards and record lists (`data.benchmarks.synth`).

Rows that cannot be scored are excluded and listed (`Exclusion`: id + reason); ``strict=True``
turns the first exclusion into an `AnnotationError`. ``python -m data.benchmarks`` prints a summary.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.benchmarks import charades, longvideobench, lvbench, mlvu, videomme
from data.benchmarks.charades import read_charades_durations
from data.benchmarks.common import (
    DEFAULT_GROUNDING_TEMPLATE,
    DEFAULT_MCQ_TEMPLATE,
    EVAL_TASKS,
    LETTERS,
    VIDEO_EXTENSIONS,
    AnnotationError,
    BenchmarkRead,
    EvalSample,
    Exclusion,
    format_prompt,
)
from data.benchmarks.synth import read_records, read_synth_shards, record_to_sample

BENCHMARK_READERS: dict[str, Callable[..., BenchmarkRead]] = {
    "mlvu": mlvu.read,
    "videomme": videomme.read,
    "lvbench": lvbench.read,
    "longvideobench": longvideobench.read,
    "charades": charades.read,
}
FORMATS: tuple[str, ...] = (*BENCHMARK_READERS, "synth", "records")


def read_benchmark(fmt: str, path: str | Path, video_root: str | Path | None = None, *, strict: bool = False,
                   **opts: Any) -> BenchmarkRead:
    """Read `path` as benchmark `fmt` (one of `FORMATS`) into a `BenchmarkRead`.

    `video_root`: folder of the videos (default: the annotation's folder; for ``synth`` the folder
    the shard videos are extracted to, default a new temporary folder). `opts`: ``durations=``
    (charades: path of ``Charades_v1_test.csv`` or an ``{id: seconds}`` dict), ``split=`` (synth).
    Raises AnnotationError when a file cannot be read (or, with `strict`, at the first excluded
    row), ValueError for an unknown format or option.
    """
    if fmt in BENCHMARK_READERS:
        allowed = {"durations"} if fmt == "charades" else set()
        if set(opts) - allowed:
            raise ValueError(f"format {fmt!r} takes no option(s) {sorted(set(opts) - allowed)}")
        return BENCHMARK_READERS[fmt](path, video_root, strict=strict, **opts)
    if fmt == "synth":
        if set(opts) - {"split"}:
            raise ValueError(f"format 'synth' takes no option(s) {sorted(set(opts) - {'split'})}")
        extract = video_root if video_root is not None else tempfile.mkdtemp(prefix="synth-videos-")
        samples = read_synth_shards(path, extract, split=str(opts.get("split", "test")))
        layout = "synth"
    elif fmt == "records":
        if opts:
            raise ValueError(f"format 'records' takes no options, got {sorted(opts)}")
        samples, layout = read_records(path, video_root), "records"
    else:
        raise ValueError(f"unknown benchmark format {fmt!r} (one of {', '.join(FORMATS)})")
    for s in samples:
        s.video = str(Path(s.video).absolute())
        s.metadata.setdefault("benchmark", fmt)
        s.metadata.setdefault("layout", layout)
        if not Path(s.video).is_file():
            s.metadata["video_missing"] = True
    return BenchmarkRead(samples, [], str(path), layout)


# ---------------------------------------------------------------- list-returning readers
def read_mlvu(path: str | Path, video_root: str | Path | None = None) -> list[EvalSample]:
    """`read_benchmark("mlvu", ..., strict=True).samples` (raises at the first unscorable row)."""
    return mlvu.read(path, video_root, strict=True).samples


def read_videomme(path: str | Path, video_root: str | Path | None = None) -> list[EvalSample]:
    """`read_benchmark("videomme", ..., strict=True).samples`."""
    return videomme.read(path, video_root, strict=True).samples


def read_lvbench(path: str | Path, video_root: str | Path | None = None) -> list[EvalSample]:
    """`read_benchmark("lvbench", ..., strict=True).samples`."""
    return lvbench.read(path, video_root, strict=True).samples


def read_longvideobench(path: str | Path, video_root: str | Path | None = None) -> list[EvalSample]:
    """`read_benchmark("longvideobench", ..., strict=True).samples`."""
    return longvideobench.read(path, video_root, strict=True).samples


def read_charades_sta(path: str | Path, video_root: str | Path | None = None,
                      durations: dict[str, float] | None = None) -> list[EvalSample]:
    """`read_benchmark("charades", ..., strict=True, durations=...).samples`."""
    return charades.read(path, video_root, strict=True, durations=durations).samples


__all__ = [
    "BENCHMARK_READERS", "DEFAULT_GROUNDING_TEMPLATE", "DEFAULT_MCQ_TEMPLATE", "EVAL_TASKS", "FORMATS", "LETTERS",
    "VIDEO_EXTENSIONS", "AnnotationError", "BenchmarkRead", "EvalSample", "Exclusion", "format_prompt",
    "read_benchmark", "read_charades_durations", "read_charades_sta", "read_longvideobench", "read_lvbench",
    "read_mlvu", "read_records", "read_synth_shards", "read_videomme", "record_to_sample",
]
