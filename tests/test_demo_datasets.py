"""The demo's video sets (demo/datasets.py): which sets a run reads, parallel generation, reuse."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from demo.datasets import data_sets, generate_all

BASE = {"videos": 4, "images": 0, "seed": 0, "min_frames": 8, "max_frames": 12, "size": 32, "val_frac": 0.0,
        "test_frac": 0.5, "shard_size": 4, "needle_prob": 0.5, "tasks": ["mcq", "grounding"]}


def config(**extra):
    return OmegaConf.create({"data": BASE, "short_data": {"videos": 3, "seed": 1, "test_frac": 0.0},
                             "train_data": {"lapse": {"videos": 2, "frame_seconds": [2, 5], "test_frac": 0.0}},
                             "long_data": {"videos": 3, "seed": 2, "min_frames": 16, "max_frames": 16},
                             "eval": {"long_benches": ["grounding"]}, **extra})


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_sets_of_a_run() -> None:
    sets = data_sets(config(), Path("out"))
    assert [d for _, d in sets] == [Path("out/data"), Path("out/data/short"), Path("out/data/lapse"),
                                    Path("out/data/long")]
    main, short, lapse, long = (f for f, _ in sets)
    assert main["videos"] == 4 and short["videos"] == 3 and short["size"] == 32  # `data` with fields replaced
    assert lapse["frame_seconds"] == [2, 5] and long["min_frames"] == 16
    no_long = data_sets(config(eval={"long_benches": []}), Path("out"))
    assert [d.name for _, d in no_long] == ["data", "short", "lapse"]


def _generate_in_fresh_process(sets: list, workers: int) -> list:
    """generate_all in a spawned interpreter: the comparison below must not depend on what earlier tests left
    in this process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(generate_all, sets, workers).result()


def test_parallel_generation_writes_what_one_process_writes(tmp_path: Path) -> None:
    sets_one = data_sets(config(), tmp_path / "one")
    sets_two = data_sets(config(), tmp_path / "two")
    manifests = _generate_in_fresh_process(sets_one, 1)
    assert _generate_in_fresh_process(sets_two, 2) == manifests
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) > 8 and one == two


def test_reuse_and_a_changed_set(tmp_path: Path) -> None:
    sets = data_sets(config(), tmp_path)
    generate_all(sets, 2)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.tar")}
    generate_all(sets, 2)  # same settings: nothing is written
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.tar")} == before
    changed = data_sets(config(data={**BASE, "seed": 9}), tmp_path)
    manifests = generate_all(changed, 2)
    assert manifests[0]["config"]["seed"] == 9
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.tar")}
    main = [p for p in before if p.parent == tmp_path / "data"]
    assert main and all(after[p] != before[p] for p in main)  # the main set was regenerated in place,
    for name, regenerated in (("lapse", True), ("short", False), ("long", False)):  # and the set that keeps
        shards = [p for p in before if p.parent.name == name]  # `data`'s seed; the others set their own
        assert shards and all((after[p] != before[p]) == regenerated for p in shards), name


def test_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="data_workers"):
        generate_all([], 0)
