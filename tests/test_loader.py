"""Shards -> loader: round trip, labels, rank/worker splitting, mixes, task filter, exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data.loader import build_loader
from data.mix import DataConfig, parse_strategy
from data.shards import ShardWriter
from helpers import grey_mp4
from model import build_preset, load_tokenizer
from model.sequence import build_sequence

FPS = 10


def record(i: int, task: str = "caption", media: str = "video") -> dict[str, Any]:
    return {"id": f"{task}-{i}", media: f"k{i}.mp4", "task": task,
            "conversations": [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                              {"from": "gpt", "value": f"It is grey {i}."}]}


def write_dataset(out: Path, n: int, shard_size: int, task: str = "caption", frames: int = 25) -> list[str]:
    """n video samples; sample i has frames + i frames and base level 3 i. Returns the ids."""
    ids = []
    with ShardWriter(out, shard_size) as writer:
        for i in range(n):
            rec = record(i, task)
            ids.append(rec["id"])
            writer.write(f"k{i:05d}", {"json": json.dumps(rec).encode(), "mp4": grey_mp4([(3 * i + 8 * f) % 256 for f in range(frames + i)], fps=FPS)})
    return ids


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def mcfg() -> Any:
    return build_preset("tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("ds")
    ids = write_dataset(root / "a", 14, shard_size=3)
    return root, ids


def cfg_for(root: Path, *sources: dict[str, Any], buffer: int = 4) -> dict[str, Any]:
    return {"root": str(root), "train": list(sources), "val": list(sources), "shuffle_buffer": buffer}


def collect(loader: Any, limit: int | None = None) -> list[dict[str, Any]]:
    out = []
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def test_round_trip_labels_frames_timestamps(dataset: tuple[Path, list[str]], tok: Any, mcfg: Any) -> None:
    root, ids = dataset
    loader = build_loader(cfg_for(root, {"shards": "a/*.tar"}), tok, mcfg, split="val", batch_size=3,
                          num_workers=0, frames_upbound=8, fps_upbound=None)
    batches = collect(loader)
    seen = [s for b in batches for s in b["sample_ids"]]
    assert sorted(seen) == sorted(ids) and not any(loader.skipped.values())
    t = mcfg.tokens_per_group
    for b in batches:
        ii, lab, am = b["input_ids"], b["labels"], b["attention_mask"]
        assert ii.shape == lab.shape == am.shape
        assert int(b["frame_counts"].sum()) == b["pixel_values"].shape[0]
        offsets = np.cumsum([0] + b["frame_counts"].tolist())
        for r, sid in enumerate(b["sample_ids"]):
            i = int(sid.split("-")[1])
            n = int(am[r].sum())
            assert am[r, :n].all() and not am[r, n:].any()  # right padding
            assert (lab[r, n:] == -100).all() and (ii[r, n:] == tok.pad_token_id).all()
            sup = lab[r, :n] != -100
            assert (lab[r, :n][sup] == ii[r, :n][sup]).all()
            assert not (ii[r, :n][sup] == mcfg.vision_pad_token_id).any()
            answer = tok.decode(ii[r, :n][sup].tolist())
            assert f"It is grey {i}." in answer and "What colour" not in answer
            # 1 fps at 10 fps: indices 0, 10, 20, ... of a (25 + i)-frame video, padded to 4.
            idx = list(range(0, 25 + i, FPS))
            idx += [idx[-1]] * (-len(idx) % 4)
            assert int(b["frame_counts"][r]) == len(idx)
            assert b["timestamps"][r] == [round(j / FPS, 1) for j in idx][::4]
            assert int((ii[r] == mcfg.vision_pad_token_id).sum()) == len(idx) // 4 * t
            px = b["pixel_values"][offsets[r]:offsets[r + 1]]
            levels = torch.tensor([((3 * i + 8 * j) % 256) / 255.0 * 2 - 1 for j in idx])
            assert (px.mean(dim=(1, 2, 3)) - levels).abs().max() < 0.04


def test_truncation_keeps_whole_groups_and_counts_skips(dataset: tuple[Path, list[str]], tok: Any,
                                                        mcfg: Any) -> None:
    root, _ = dataset
    # fps_upbound 4, frames_upbound 64: step round(10 / 4) = 2, so sample i (25 + i frames) has
    # ceil((25 + i) / 2) frames -> 4 groups for i <= 7, 5 groups for i >= 8.
    conv = record(0)["conversations"]
    len4 = build_sequence(tok, conv, [0.0] * 4, 4, mcfg.tokens_per_group).input_ids.numel()
    max_len = len4 - 3  # 4-group samples lose the answer's tail only; 5-group ones lose their answer
    loader = build_loader(cfg_for(root, {"shards": "a/*.tar"}), tok, mcfg, split="val", batch_size=2,
                          num_workers=0, frames_upbound=64, fps_upbound=4, max_length=max_len)
    batches = collect(loader)
    kept = sorted(int(s.split("-")[1]) for b in batches for s in b["sample_ids"])
    assert kept == list(range(8))
    assert {k: v for k, v in loader.skipped.items() if v} == {"no_supervised_tokens": 6}
    for b in batches:
        assert b["input_ids"].shape[1] <= max_len
        pads = (b["input_ids"] == mcfg.vision_pad_token_id).sum(dim=1)
        assert torch.equal(pads, b["frame_counts"] // 4 * mcfg.tokens_per_group)
        assert b["frame_counts"].tolist() == [16] * len(b["sample_ids"])


@pytest.mark.parametrize("shard_size", [1, 5])  # 14 shards (split by shard) / 3 shards (split by sample)
def test_ranks_and_workers_partition_the_dataset(tmp_path: Path, tok: Any, mcfg: Any, shard_size: int) -> None:
    ids = write_dataset(tmp_path / "p", 14, shard_size=shard_size, frames=8)
    cfg = cfg_for(tmp_path, {"shards": "p/*.tar"})
    per_rank = []
    for rank in range(2):
        loader = build_loader(cfg, tok, mcfg, split="train", loop=False, batch_size=2, num_workers=2,
                              rank=rank, world_size=2, seed=5, frames_upbound=4)
        per_rank.append([s for b in collect(loader) for s in b["sample_ids"]])
    assert not set(per_rank[0]) & set(per_rank[1])
    allseen = per_rank[0] + per_rank[1]
    assert len(allseen) == len(set(allseen)) and sorted(allseen) == sorted(ids)


def batch_signature(b: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(b["sample_ids"]), b["input_ids"].tolist(), b["frame_counts"].tolist(),
            round(float(b["pixel_values"].sum()), 3))


@pytest.mark.parametrize(("loop", "workers", "k"), [(True, 2, 3), (False, 2, 5), (False, 2, 7), (True, 0, 2)])
def test_exact_resume(dataset: tuple[Path, list[str]], tok: Any, mcfg: Any, loop: bool, workers: int,
                      k: int) -> None:
    root, _ = dataset
    cfg = cfg_for(root, {"shards": "a/*.tar"}, buffer=3)

    def make() -> Any:
        return build_loader(cfg, tok, mcfg, split="train", loop=loop, batch_size=2, num_workers=workers,
                            seed=11, frames_upbound=4)

    total = 9 if loop else None
    reference = [batch_signature(b) for b in collect(make(), total)]
    first = make()
    head = [batch_signature(b) for b in collect(first, k)]
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    tail = [batch_signature(b) for b in collect(resumed, None if total is None else total - k)]
    assert head + tail == reference
    # a second pass of a finite loader moves on to a new epoch with a new order, same samples
    if not loop:
        again = [batch_signature(b) for b in collect(resumed)]
        assert sorted(s for sig in again for s in sig[0]) == sorted(s for sig in reference for s in sig[0])


def test_resume_rejects_a_different_plan(dataset: tuple[Path, list[str]], tok: Any, mcfg: Any) -> None:
    root, _ = dataset
    cfg = cfg_for(root, {"shards": "a/*.tar"})
    a = build_loader(cfg, tok, mcfg, batch_size=2, num_workers=0, seed=1)
    b = build_loader(cfg, tok, mcfg, batch_size=2, num_workers=0, seed=2)
    with pytest.raises(ValueError, match="fingerprint"):
        b.load_state_dict(a.state_dict())


def test_task_filter_and_weighted_mix(tmp_path: Path, tok: Any, mcfg: Any) -> None:
    write_dataset(tmp_path / "cap", 6, shard_size=2, task="caption", frames=8)
    write_dataset(tmp_path / "mcq", 6, shard_size=2, task="mcq", frames=8)
    cfg = cfg_for(tmp_path, {"shards": "cap/*.tar", "weight": 3.0}, {"shards": "mcq/*.tar", "weight": 1.0})
    only = build_loader(cfg, tok, mcfg, split="val", batch_size=4, num_workers=0, tasks=["caption"],
                        frames_upbound=4)
    tasks = [t for b in collect(only) for t in b["tasks"]]
    assert tasks == ["caption"] * 6
    nothing = build_loader(cfg, tok, mcfg, split="train", batch_size=4, num_workers=0, tasks=["grounding"],
                           frames_upbound=4)
    with pytest.raises(RuntimeError, match="without one usable sample"):
        next(iter(nothing))  # a looping stream that can never yield fails instead of spinning
    mixed = build_loader(cfg, tok, mcfg, split="train", batch_size=4, num_workers=0, frames_upbound=4)
    tasks = [t for b in collect(mixed, 10) for t in b["tasks"]]
    assert tasks.count("caption") == 30 and tasks.count("mcq") == 10


def test_source_tasks_filter_only_their_source(tmp_path: Path, tok: Any, mcfg: Any) -> None:
    """A source's `tasks` keeps only those tasks of that source; the other sources and the stage's own filter
    (`tasks=`) act as before, and the filter is part of the plan a resume must agree on."""
    for src in ("a", "b"):
        write_dataset(tmp_path / src / "cap", 6, shard_size=2, task="caption", frames=8)
        write_dataset(tmp_path / src / "mcq", 6, shard_size=2, task="mcq", frames=8)
    plain = {"shards": "a/*/*.tar"}
    cfg = cfg_for(tmp_path, plain, {"shards": "b/*/*.tar", "tasks": ["mcq"]})
    loader = build_loader(cfg, tok, mcfg, split="val", batch_size=4, num_workers=0, frames_upbound=4)
    tasks = [t for b in collect(loader) for t in b["tasks"]]
    assert sorted(tasks) == ["caption"] * 6 + ["mcq"] * 12  # b's captions are left out
    only = build_loader(cfg, tok, mcfg, split="val", batch_size=4, num_workers=0, tasks=["caption"],
                        frames_upbound=4)
    assert [t for b in collect(only) for t in b["tasks"]] == ["caption"] * 6  # both filters apply
    unfiltered = build_loader(cfg_for(tmp_path, plain, {"shards": "b/*/*.tar"}), tok, mcfg, split="val",
                              batch_size=4, num_workers=0, frames_upbound=4)
    assert len([t for b in collect(unfiltered) for t in b["tasks"]]) == 24
    assert unfiltered.plan.fingerprint != loader.plan.fingerprint
    with pytest.raises(ValueError, match=r"data\.train\[0\]\.tasks: must be a non-empty list"):
        DataConfig.from_mapping({"train": [{"shards": "a/*.tar", "tasks": "mcq"}]})


def test_strategies_select_in_stored_order(tmp_path: Path, tok: Any, mcfg: Any) -> None:
    ids = write_dataset(tmp_path / "s", 10, shard_size=3, frames=8)  # stored order == ids order

    def ids_for(strategy: str) -> list[str]:
        cfg = cfg_for(tmp_path, {"shards": "s/*.tar", "strategy": strategy})
        loader = build_loader(cfg, tok, mcfg, split="val", batch_size=5, num_workers=0, frames_upbound=4)
        return sorted(s for b in collect(loader) for s in b["sample_ids"])

    assert ids_for("first:4") == sorted(ids[:4])
    assert ids_for("end:3") == sorted(ids[-3:])
    assert ids_for("first:30%") == sorted(ids[:3])
    picked = ids_for("random:4")
    assert len(picked) == 4 and set(picked) <= set(ids)
    assert len(ids_for("50%")) == 5 and ids_for("all") == sorted(ids)


def test_config_validation_names_the_field(tmp_path: Path, tok: Any, mcfg: Any) -> None:
    with pytest.raises(ValueError, match=r"data\.train\[1\]\.strategy"):
        DataConfig.from_mapping({"train": [{"shards": "a/*.tar"}, {"shards": "b/*.tar", "strategy": "firs:3"}]})
    with pytest.raises(ValueError, match=r"data\.val\[0\]\.weight"):
        DataConfig.from_mapping({"val": [{"shards": "a/*.tar", "weight": 0}]})
    with pytest.raises(ValueError, match="count"):
        parse_strategy("first:0", "x")
    with pytest.raises(FileNotFoundError, match=r"nothing-here/\*\.tar"):
        build_loader({"root": str(tmp_path), "train": [{"shards": "nothing-here/*.tar"}]}, tok, mcfg,
                     batch_size=1, num_workers=0)


def test_indexing_warning_counts_the_damaged_shards_own_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import tarfile

    import data.mix as mix

    for name in ("a.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")

    def fake_keys(shard: str) -> Any:
        yield from ("k0", "k1", "k2") if shard.endswith("a.tar") else ("k3",)
        if shard.endswith("b.tar"):
            raise tarfile.ReadError("truncated")

    monkeypatch.setattr(mix, "iter_shard_keys", fake_keys)
    cfg = DataConfig.from_mapping({"root": str(tmp_path), "val": [{"shards": "*.tar", "strategy": "first:10"}]})
    with caplog.at_level("WARNING", logger="data.mix"):
        (src,) = mix.resolve_split(cfg, "val", 0)
    assert sum(len(k) for k in (src.keep or {}).values()) == 4  # keys read before the damage are kept
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == [
        f"data.val[0]: shard {tmp_path / 'b.tar'} is unreadable past 1 samples while indexing (truncated)"]


@pytest.mark.parametrize("workers", [0, 2])
def test_looping_stream_without_samples_for_a_rank_fails_naming_split_and_rank(tmp_path: Path, tok: Any, mcfg: Any,
                                                                              workers: int) -> None:
    write_dataset(tmp_path / "tiny", 2, shard_size=2, frames=8)  # 2 samples, 1 shard, 3 ranks
    cfg = cfg_for(tmp_path, {"shards": "tiny/*.tar"})
    ok = build_loader(cfg, tok, mcfg, split="train", batch_size=1, num_workers=0, rank=1, world_size=3,
                      frames_upbound=4)
    assert len(collect(ok, 3)) == 3  # rank 1 holds one sample and loops over it
    empty = build_loader(cfg, tok, mcfg, split="train", batch_size=1, num_workers=workers, rank=2, world_size=3,
                         frames_upbound=4)
    with pytest.raises(RuntimeError, match=r"split train has no samples for rank 2"):
        next(iter(empty))
