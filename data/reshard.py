"""Remap the train loader's saved position to another world size (or loader worker count).

A saved loader state (data/loader.py) describes progress per *logical worker* ``g`` of
``n = world_size * num_workers``: per source, the source-epoch it is in and ``pos``, the number of
samples it took from its shuffled share of that epoch. Every share is a pure function of the plan,
so the set of samples consumed so far is recomputable: for each old worker and source, its whole
share of every epoch between the slowest worker's epoch and its own, plus the first ``pos`` samples
of its own epoch, plus whatever an earlier remap had excluded. Only tar headers are read
(:func:`shard_keys`), never sample bytes.

The new layout starts every source at the slowest old worker's epoch; each new worker carries,
per epoch, the ids (``"<shard index>:<key>"``) of *its* share that were already consumed
(``exclude``), and its stream leaves them out before shuffling. Within every epoch no sample is
seen twice and none is skipped. A same-world-size resume never comes here and stays bit-exact.
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data.faults import REASONS, FaultCounter, merge_counts
from data.loader import STATE_VERSION, StreamPlan, source_epoch
from data.shards import _split_name


@dataclass(frozen=True)
class _Tagged:
    """A sample as far as the stream order needs it: its key, and its id for the consumed set."""

    key: str
    sid: str


def shard_keys(path: str) -> Iterator[str]:
    """Keys of ``path`` in the order and grouping of :func:`data.shards.iter_shard`, from tar headers
    only (a key is yielded when its run of consecutive members starts; members whose name has no
    key or no suffix are not samples)."""
    last: str | None = None
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            prefix, suffix = _split_name(info.name)
            if prefix is None or suffix is None:
                continue
            if prefix != last:
                last = prefix
                yield prefix


def _kept_keys(plan: StreamPlan, src_idx: int) -> Any:
    """A header-only reader of source ``src_idx``'s kept samples: the keys and order of
    ``ResolvedSource.kept_samples``, each tagged with its id ``"<shard index>:<key>"``."""
    src = plan.sources[src_idx]
    index = {shard: i for i, shard in enumerate(src.shards)}

    def read(shard: str) -> Iterator[_Tagged]:
        kept = None if src.keep is None else src.keep.get(shard, frozenset())
        if kept is not None and not kept:
            return
        for key in shard_keys(shard):
            if kept is None or key in kept:
                yield _Tagged(key, f"{index[shard]}:{key}")
    return read


def _ids(plan: StreamPlan, src_idx: int, epoch: int, worker: int, exclude: frozenset[str] = frozenset(),
         limit: int | None = None) -> set[str]:
    """Sample ids of ``worker``'s share of ``epoch`` (its first ``limit`` in stream order when given)."""
    src = plan.sources[src_idx]
    out: set[str] = set()
    stream = source_epoch(plan, src_idx, epoch, worker, FaultCounter(), exclude, read=_kept_keys(plan, src_idx))
    for taken, item in enumerate(stream):
        if limit is not None and taken >= limit:
            break
        out.add(item.sid)
    if limit is not None and len(out) < limit:
        raise RuntimeError(f"loader remap: source {src.name} epoch {epoch} has only {len(out)} samples for "
                           f"worker {worker} of rank {plan.rank}, the checkpoint says {limit}; the shards "
                           "changed since the checkpoint")
    return out


def _old_plan(plan: StreamPlan, state: Mapping[str, Any], rank: int, world: int) -> StreamPlan:
    """The plan that wrote ``state`` (rank ``rank`` of ``world``); the rest must equal ``plan``'s."""
    old = dataclasses.replace(plan, rank=rank, world_size=world, num_workers=len(state["workers"]))
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"loader state of rank {rank}: version {state.get('version')!r}, expected {STATE_VERSION}")
    if state.get("fingerprint") != old.fingerprint:
        raise ValueError(f"loader state of rank {rank}: fingerprint mismatch — the data mix, seed, batch size or "
                         "sampling options differ from the checkpoint (only the world size and the loader "
                         "worker count may change on resume)")
    return old


def consumed_ids(plan: StreamPlan, old_states: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[int, set[str]]]]:
    """Per source: (the slowest old worker's epoch, {epoch: sample ids consumed in it}) over all old
    ranks' loader states (``old_states[r]`` = rank ``r``'s state)."""
    world = len(old_states)
    olds = [_old_plan(plan, st, r, world) for r, st in enumerate(old_states)]
    out = []
    for i in range(len(plan.sources)):
        active = [(old, w, ws["sources"][i]) for old, st in zip(olds, old_states, strict=True)
                  for w, ws in enumerate(st["workers"]) if ws["sources"][i]["active"]]
        if not active:
            raise ValueError(f"loader remap: source {plan.sources[i].name} is exhausted on every old worker")
        first = min(int(s["epoch"]) for _, _, s in active)
        used: dict[int, set[str]] = {}
        for old, w, s in active:
            epoch = int(s["epoch"])
            exclude = {int(e): set(ids) for e, ids in s.get("exclude", {}).items()}
            for e, ids in exclude.items():
                if e >= first:
                    used.setdefault(e, set()).update(ids)
            for e in range(first, epoch):  # epochs this worker finished: its whole share
                used.setdefault(e, set()).update(_ids(old, i, e, w))
            mine = frozenset(exclude.get(epoch, ()))
            used.setdefault(epoch, set()).update(_ids(old, i, epoch, w, mine, limit=int(s["pos"])))
        out.append((first, used))
    return out


def remap_state(plan: StreamPlan, old_states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The loader state for ``plan`` (this rank of the new layout) that continues where the old
    ranks' states (``old_states[r]`` = rank ``r``'s :meth:`VideoLoader.state_dict`) stopped.

    Fault counts of all old ranks go to new rank 0 (metrics sum them over ranks). Raises
    ``ValueError`` (one line) for a non-looping loader or a state from another data plan.
    """
    if not plan.loop:
        raise ValueError("loader remap: only the looping train loader can be remapped to another world size")
    used = consumed_ids(plan, old_states)
    n_new = plan.world_size * plan.num_workers
    workers = []
    for w in range(plan.num_workers):
        sources = []
        for i, (first, ids) in enumerate(used):
            taken = sum(int(ws["sources"][i]["taken"]) for st in old_states for ws in st["workers"])
            exclude = {}
            for e in sorted(ids):
                mine = _ids(plan, i, e, w) & ids[e]
                if mine:
                    exclude[str(e)] = sorted(mine)
            sources.append({"epoch": first, "pos": 0, "taken": taken // n_new, "active": True, "exclude": exclude})
        workers.append({"done": False, "sources": sources})
    skipped = dict.fromkeys(REASONS, 0)
    if plan.rank == 0:
        for st in old_states:
            merge_counts(skipped, {str(k): int(v) for k, v in st["skipped"].items()})
    batches = sum(int(st["batches"]) for st in old_states) // plan.world_size
    return {"version": STATE_VERSION, "fingerprint": plan.fingerprint, "epoch": int(old_states[0]["epoch"]),
            "batches": batches, "next": 0, "done": [False] * plan.num_workers, "workers": workers,
            "skipped": skipped}
