"""The demo's generated video sets: which sets a run reads, and generating them (or reusing them) in parallel.

Every set is `data.synth` output in its own directory under ``<out>/data``; its ``manifest.json`` records the
SynthConfig it was made with, so a rerun with the same settings reuses it. This module imports no torch, so
the spawned generation processes start quickly.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.synth import SynthConfig, generate

__all__ = ["check_sets", "data_sets", "generate_all", "generate_data"]


def _synth_config(fields: dict[str, Any], out: Path) -> SynthConfig:
    args = dict(fields)
    for key in ("tasks", "frame_seconds"):
        if key in args:
            args[key] = tuple(args[key])
    return SynthConfig(out=str(out), **args)


def _reusable(synth: SynthConfig) -> dict[str, Any] | None:
    """The manifest in ``synth.out`` when it was written with the same settings, else None."""
    path = Path(synth.out) / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("config") == synth.settings() else None


def generate_data(fields: dict[str, Any], out: Path) -> dict[str, Any]:
    """Generate one set (SynthConfig fields) into `out` unless its manifest shows the same settings (then it
    is reused); returns the manifest. A stale set's own files (its shards and manifest) are removed first;
    the sets in sub-directories are left to their own manifests. Raises ValueError naming a bad field."""
    synth = _synth_config(fields, out)
    manifest = _reusable(synth)
    if manifest is not None:
        return manifest
    for stale in [*out.glob("*-*.tar"), out / "manifest.json"]:
        stale.unlink(missing_ok=True)
    return generate(synth)


def data_sets(cfg: DictConfig, out: Path) -> list[tuple[dict[str, Any], Path]]:
    """(SynthConfig fields, directory) of every set a demo run reads, the main set first: `data` in
    <out>/data; `short_data`, each `train_data` entry and (when eval.long_benches is set) `long_data` are
    `data` with their fields replaced, in <out>/data/short, <out>/data/<name> and <out>/data/long."""
    def fields(extra: Any = None) -> dict[str, Any]:
        merged = cfg.data if extra is None else OmegaConf.merge(cfg.data, extra)
        container = OmegaConf.to_container(merged, resolve=True)
        assert isinstance(container, dict)
        return {str(k): v for k, v in container.items()}

    root = out / "data"
    sets = [(fields(), root)]
    if cfg.get("short_data"):  # short videos for the stages before `long`
        sets.append((fields(cfg.short_data), root / "short"))
    for name, extra in (cfg.get("train_data") or {}).items():  # more training sets, named by the stages' shards
        sets.append((fields(extra), root / str(name)))
    if cfg.get("long_data") and cfg.eval.get("long_benches"):  # long videos, only read by the evaluation
        sets.append((fields(cfg.long_data), root / "long"))
    return sets


def check_sets(sets: list[tuple[dict[str, Any], Path]]) -> None:
    """Validate every set's SynthConfig before any is generated. Raises ValueError naming the set's folder and
    the field."""
    for fields, out in sets:
        try:
            _synth_config(fields, out).validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"video set {out}: {exc}") from None


def generate_all(sets: list[tuple[dict[str, Any], Path]], workers: int) -> list[dict[str, Any]]:
    """Generate (or reuse) every set of `data_sets`, up to `workers` at a time in spawned processes (1: one
    after the other in this process); returns their manifests in order. Every video follows from its set's
    seed, split and index: the output does not depend on `workers`.

    Raises ValueError if `workers` < 1 or a set has a bad field."""
    if workers < 1:
        raise ValueError(f"data_workers: must be >= 1, got {workers}")
    if workers == 1:
        return [generate_data(f, d) for f, d in sets]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(generate_data, f, d) for f, d in sets]
        return [f.result() for f in futures]
