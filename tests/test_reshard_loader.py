"""Loader position remapped to another world size (data/reshard.py): within every epoch each
sample is seen exactly once across the old and the new ranks; a remapped state resumes exactly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from data.faults import REASONS
from data.loader import VideoLoader, build_loader
from data.reshard import remap_state
from data.shards import ShardWriter
from model import build_preset, load_tokenizer

N = 11  # samples; shards of 2 -> 6 shards (split by shard for <= 6 logical workers)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reshard")
    with ShardWriter(out / "a", 2) as writer:  # image samples: cheap to decode
        for i in range(N):
            rec = {"id": f"s{i}", "image": f"k{i}.png", "task": "caption",
                   "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                     {"from": "gpt", "value": f"Picture {i}."}]}
            writer.write(f"k{i:05d}", {"json": json.dumps(rec).encode(), "png": _png(i)})
    return out


def _png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (7 * i % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def parts() -> tuple[Any, Any]:
    return load_tokenizer("tiny"), build_preset("tiny")


def loader(root: Path, parts: tuple[Any, Any], rank: int, world: int, workers: int = 0) -> VideoLoader:
    tok, mcfg = parts
    cfg = {"root": str(root), "train": [{"shards": "a/*.tar"}], "val": [{"shards": "a/*.tar"}],
           "shuffle_buffer": 3}
    return build_loader(cfg, tok, mcfg, split="train", batch_size=1, num_workers=workers, rank=rank,
                        world_size=world, seed=5, frames_upbound=4)


def take(ld: VideoLoader, n: int) -> list[tuple[str, int]]:
    """(sample id, source-epoch it was drawn in) of the next `n` samples (batch size 1)."""
    out = []
    it = iter(ld)
    for _ in range(n):
        batch = next(it)
        out.append((batch["sample_ids"][0], _epoch_of(ld)))
    return out


def _epoch_of(ld: VideoLoader) -> int:
    state = ld.state_dict()
    last = (state["next"] - 1) % len(state["workers"])  # the worker that produced the latest batch
    return int(state["workers"][last]["sources"][0]["epoch"])


def until_epoch(ld: VideoLoader, stop: int) -> list[tuple[str, int]]:
    """Samples drawn until one of epoch `stop` comes (that one excluded)."""
    out = []
    for _ in range(10 * N):
        got = take(ld, 1)[0]
        if got[1] >= stop:
            return out
        out.append(got)
    raise AssertionError("epoch never ended")


def check_epochs(seen: list[tuple[str, int]], complete: list[int]) -> None:
    per = Counter((e, sid) for sid, e in seen)
    assert max(per.values()) == 1, [k for k, v in per.items() if v > 1]  # no sample twice in an epoch
    for e in complete:
        assert sorted(sid for (ep, sid) in per if ep == e) == sorted(f"s{i}" for i in range(N))


@pytest.mark.parametrize(("old_world", "new_world", "old_takes"), [(2, 1, (4, 2)), (1, 2, (8,)), (1, 3, (15,))])
def test_remap_sees_each_sample_once_per_epoch(root: Path, parts: Any, old_world: int, new_world: int,
                                               old_takes: tuple[int, ...]) -> None:
    seen: list[tuple[str, int]] = []
    states = []
    for rank in range(old_world):
        ld = loader(root, parts, rank, old_world)
        seen += take(ld, old_takes[rank])
        states.append(ld.state_dict())
    last = max(e for _, e in seen)
    for rank in range(new_world):
        ld = loader(root, parts, rank, new_world)
        ld.load_state_dict(remap_state(ld.plan, states))
        seen += until_epoch(ld, last + 1)
    check_epochs(seen, list(range(last + 1)))


def test_remapped_state_resumes_exactly_and_remaps_again(root: Path, parts: Any) -> None:
    seen: list[tuple[str, int]] = []
    states = []
    for rank, n in enumerate((3, 1)):
        ld = loader(root, parts, rank, 2)
        seen += take(ld, n)
        states.append(ld.state_dict())
    a = loader(root, parts, 0, 1)
    a.load_state_dict(remap_state(a.plan, states))
    seen += take(a, 2)
    saved = a.state_dict()
    b = loader(root, parts, 0, 1)
    b.load_state_dict(json.loads(json.dumps(saved)))
    assert take(a, 3) == take(b, 3)  # same world size: the saved exclusions replay exactly
    c = loader(root, parts, 0, 1)
    c.load_state_dict(json.loads(json.dumps(saved)))
    seen += take(c, 1)
    again = [c.state_dict()]
    for rank in range(2):  # a second world-size change keeps the first one's exclusions
        ld = loader(root, parts, rank, 2)
        ld.load_state_dict(remap_state(ld.plan, again))
        seen += until_epoch(ld, 1)
    check_epochs(seen, [0])


def test_worker_count_change_and_fault_counts(root: Path, parts: Any) -> None:
    ld = loader(root, parts, 0, 1, workers=2)
    seen = take(ld, 5)
    state = ld.state_dict()
    state["skipped"][REASONS[0]] = 3
    out = []
    for rank in range(2):
        new = loader(root, parts, rank, 2)
        remapped = remap_state(new.plan, [state])
        new.load_state_dict(remapped)
        assert sum(new.skipped.values()) == (sum(state["skipped"].values()) if rank == 0 else 0)
        out += until_epoch(new, 1)
    check_epochs(seen + out, [0])


def test_remap_refuses_another_data_plan(root: Path, parts: Any, tmp_path: Path) -> None:
    ld = loader(root, parts, 0, 2)
    take(ld, 1)
    state = ld.state_dict()
    tok, mcfg = parts
    other = build_loader({"root": str(root), "train": [{"shards": "a/*.tar"}], "val": [{"shards": "a/*.tar"}],
                          "shuffle_buffer": 3}, tok, mcfg, split="train", batch_size=1, num_workers=0, seed=6,
                         frames_upbound=4)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        remap_state(other.plan, [state, state])
