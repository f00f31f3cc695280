"""The streaming video loader: sharded tar samples -> shuffled, decoded, collated batches.

Data flow per *logical worker* ``g`` of ``n = world_size * num_workers`` (``g = rank * num_workers
+ worker``), per source and per source-epoch:

1. the source's shards are permuted with a seed shared by all workers (``seed``, source, epoch);
2. with at least ``n`` shards, worker ``g`` reads shards ``g::n`` (node + worker splitting by
   shard); with fewer shards every worker reads all of them and keeps the samples whose running
   ordinal ``% n == g`` (splitting by sample), so a tiny split never leaves a rank empty-handed
   because of shard counts alone;
3. raw samples (bytes, undecoded) pass a seeded shuffle buffer; sources are interleaved
   deterministically in proportion to their weights;
4. only then is a sample decoded (:func:`data.collate.decode_sample`; videos by decord, else PyAV,
   see :mod:`data.decoders`), within ``data.decode_timeout_s`` seconds when that is set
   (:mod:`data.watchdog`); broken or timed-out ones are skipped and counted; batches are collated
   inside the worker.

Exact resume: a worker's stream is a pure function of (plan, epoch), so its state is, per source,
``{epoch, pos, taken, active}`` (``pos`` raw samples consumed in that source-epoch). Each batch
carries its worker's state; the main process keeps the latest one per worker plus the round-robin
position (PyTorch hands out worker batches round-robin, dropping a worker when it ends). Resuming
rebuilds each stream and fast-forwards ``pos`` raw samples without decoding them, and rotates the
worker roles so the next batch comes from the right worker. A state remapped to another world size or
worker count (data/reshard.py) also carries, per source, ``exclude``: for each epoch, the ids
``"<shard index>:<key>"`` of this worker's share that the earlier layout already consumed; they are
left out before the shuffle, and dropped once the worker has moved past that epoch.

Packing (``packing=N``): a worker packs its decoded samples into micro-batches of ``batch_size`` rows
of at most N tokens (:mod:`data.packing`). A micro-batch that closes because the next sample does not
fit carries the worker state from before that sample, so a resume re-reads it: resume stays exact.

Fault counts: each batch (and a final per-worker end marker) carries the worker's count deltas; the
main process adds them to :attr:`VideoLoader.skipped` (reason -> count for every reason of
:data:`data.faults.REASONS`, zeros included, always in that order, so that ranks can all-reduce the
values list element-wise) and to :attr:`VideoLoader.decoded` (decoder name -> samples whose frames it
read, for every decoder of the chain); both are part of the state dict. Counts are per rank.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.collate import DecodedSample, SampleOptions, collate, decode_sample
from data.decoders import DEFAULT_DECODERS, VideoDecoder
from data.faults import (
    BAD_SHARD,
    DECODER_PREFIX,
    REASONS,
    UNKNOWN_KEY,
    FaultCounter,
    SampleFault,
    decoder_key,
)
from data.frame_cache import DecodedFrameCache
from data.mix import DataConfig, ResolvedSource, resolve_split
from data.packing import RowPacker, collate_packed
from data.shards import SHARD_READ_ERRORS, RawSample
from data.watchdog import call_with_timeout
from model.sequence import ChatTokenizer

STATE_VERSION = 1


@dataclass(frozen=True)
class StreamPlan:
    """Everything that determines the sample streams of one rank (picklable for workers)."""

    sources: tuple[ResolvedSource, ...]
    seed: int
    rank: int
    world_size: int
    num_workers: int  # logical workers per rank (1 when loading in the main process)
    shuffle_buffer: int
    batch_size: int
    loop: bool
    pad_token_id: int
    options: SampleOptions
    decode_timeout_s: float | None = None  # per-sample decode limit (data.decode_timeout_s); None: none
    packing: int | None = None  # max tokens of a packed row (data/packing.py); None: right-padded batches
    # bytes of decoded frames each loader process memoises (data/frame_cache.py); 0: off. The samples are the
    # same either way, so it is not part of the fingerprint
    frame_cache_bytes: int = 0

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the fields a resume must agree on (computed once)."""
        o = self.options

        def kept(keep: dict[str, frozenset[str]] | None) -> str | None:
            if keep is None:
                return None
            digest = hashlib.sha256()
            for shard in sorted(keep):
                digest.update(shard.encode() + b"\0" + "\0".join(sorted(keep[shard])).encode() + b"\1")
            return digest.hexdigest()

        desc = {
            "sources": [[s.shards, s.weight, kept(s.keep)] for s in self.sources],
            "seed": self.seed, "rank": self.rank, "world": self.world_size, "workers": self.num_workers,
            "buffer": self.shuffle_buffer, "batch": self.batch_size, "loop": self.loop,
            "frames": [o.frames_upbound, o.fps_upbound, o.max_length, o.image_size, o.tokens_per_group,
                       o.frames_per_group], "tasks": sorted(o.tasks) if o.tasks is not None else None,
        }
        if self.packing is not None:  # only when set, so that unpacked runs keep their fingerprint
            desc["packing"] = self.packing
        if any(s.tasks is not None for s in self.sources):  # likewise for per-source task filters
            desc["source_tasks"] = [sorted(s.tasks) if s.tasks is not None else None for s in self.sources]
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _shuffle(items: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """Seeded shuffle buffer of ``size`` raw samples."""
    buf: list[RawSample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], item
        yield out
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


def source_epoch(plan: StreamPlan, src_idx: int, epoch: int, worker: int, faults: FaultCounter,
                 exclude: frozenset[str] = frozenset(),
                 read: Callable[[str], Iterator[Any]] | None = None) -> Iterator[Any]:
    """Shuffled raw samples of source ``src_idx`` for logical worker ``worker`` in ``epoch``.

    ``exclude``: ids ``"<index into src.shards>:<key>"`` (world-size independent; the plan fingerprint
    pins the shard list) left out of this worker's share before the shuffle: samples that ranks of
    an earlier world size already consumed in this epoch (data/reshard.py).
    ``read``: how a shard's kept samples are read (default ``src.kept_samples``); data/reshard.py
    passes a header-only reader that yields the same keys in the same order.
    """
    src = plan.sources[src_idx]
    n = plan.world_size * plan.num_workers
    g = plan.rank * plan.num_workers + worker
    order = np.random.default_rng([plan.seed, src_idx, epoch]).permutation(len(src.shards))
    shards = [src.shards[int(i)] for i in order]
    by_shard = len(shards) >= n
    reader = src.kept_samples if read is None else read

    def raw() -> Iterator[Any]:
        ordinal = 0
        for pos, shard in enumerate(shards):
            owner = pos % n == g
            if by_shard and not owner:
                continue
            prefix = f"{int(order[pos])}:"
            try:
                for sample in reader(shard):
                    if not by_shard:
                        mine = ordinal % n == g
                        ordinal += 1
                        if not mine:
                            continue
                    if exclude and prefix + sample.key in exclude:
                        continue
                    yield sample
            except SHARD_READ_ERRORS as exc:
                if owner:
                    faults.add(BAD_SHARD, shard, f"{type(exc).__name__}: {exc}")

    rng = np.random.default_rng([plan.seed, src_idx, epoch, g, 1])
    return _shuffle(raw(), plan.shuffle_buffer, rng)


def initial_worker_state(plan: StreamPlan, epoch: int) -> dict[str, Any]:
    """State of a worker that has consumed nothing of ``epoch``."""
    return {"done": False,
            "sources": [{"epoch": epoch, "pos": 0, "taken": 0, "active": True} for _ in plan.sources]}


class WorkerStream:
    """The raw-sample stream of one logical worker; ``state`` always describes what was consumed."""

    def __init__(self, plan: StreamPlan, worker: int, state: dict[str, Any], faults: FaultCounter) -> None:
        self.plan, self.worker, self.faults = plan, worker, faults
        self.state = copy.deepcopy(state)
        self._iters: dict[int, Iterator[RawSample]] = {}
        self.source = -1  # index into plan.sources of the sample yielded last

    def _excluded(self, i: int) -> frozenset[str]:
        """Samples of source ``i``'s current epoch consumed before a world-size change."""
        st = self.state["sources"][i]
        return frozenset(st.get("exclude", {}).get(str(st["epoch"]), ()))

    def _open(self, i: int) -> Iterator[RawSample]:
        st = self.state["sources"][i]
        it = source_epoch(self.plan, i, st["epoch"], self.worker, self.faults, self._excluded(i))
        for skipped in range(st["pos"]):  # fast-forward: raw samples are skipped, never decoded
            if next(it, None) is None:
                raise RuntimeError(f"resume: source {self.plan.sources[i].name} epoch {st['epoch']} has only "
                                   f"{skipped} samples for worker {self.worker}, state says {st['pos']}; "
                                   "the shards changed since the checkpoint")
        return it

    def fast_forward(self) -> None:
        """Open every active source at its saved position."""
        for i, st in enumerate(self.state["sources"]):
            if st["active"]:
                self._iters[i] = self._open(i)

    def _raise_empty(self) -> None:
        """Fail for a looping stream that has no sample at all for this worker."""
        plan = self.plan
        splits = sorted({s.name.split("[", 1)[0] for s in plan.sources})
        raise RuntimeError(
            f"data: split {'/'.join(splits)} has no samples for rank {plan.rank} (worker {self.worker} of "
            f"{plan.num_workers}): its sources {[s.name for s in plan.sources]} hold fewer samples (or shards "
            f"with selected samples) than world_size x num_workers = {plan.world_size * plan.num_workers}; "
            "use more data, fewer ranks or fewer loader workers")

    def with_prior_state(self) -> Iterator[tuple[RawSample, dict[str, Any], Counter[str]]]:
        """The raw samples, each with copies of the state and of the fault totals from just before it was
        read (a packed micro-batch that ends before a sample carries that state, so a resume re-reads it)."""
        items = iter(self)
        while True:
            before, counts = copy.deepcopy(self.state), self.faults.seen.copy()
            item = next(items, None)
            if item is None:
                return
            yield item, before, counts

    def __iter__(self) -> Iterator[RawSample]:
        weights = [s.weight for s in self.plan.sources]
        while True:
            active = [i for i, st in enumerate(self.state["sources"]) if st["active"]]
            if not active:
                if self.plan.loop:  # an endless stream must not end: the trainer's next() would stop one rank
                    self._raise_empty()
                return
            i = min(active, key=lambda k: ((self.state["sources"][k]["taken"] + 1) / weights[k], k))
            st = self.state["sources"][i]
            if i not in self._iters:
                self._iters[i] = self._open(i)
            item = next(self._iters[i], None)
            if item is None:
                del self._iters[i]
                if self.plan.loop and (st["pos"] > 0 or self._excluded(i)):
                    st["epoch"], st["pos"] = st["epoch"] + 1, 0
                    if "exclude" in st:  # exclusions of finished epochs are no longer needed
                        st["exclude"] = {e: ids for e, ids in st["exclude"].items() if int(e) >= st["epoch"]}
                else:  # single pass done, or nothing at all for this worker in a whole epoch
                    st["active"] = False
                continue
            st["pos"] += 1
            st["taken"] += 1
            self.source = i
            yield item


class ShardStreamDataset(IterableDataset):
    """Iterable over worker messages: ``{"worker", "state", "skipped", "batch" | "end": True}``."""

    def __init__(self, plan: StreamPlan) -> None:
        super().__init__()
        self.plan = plan
        self.assignment: list[int] = list(range(plan.num_workers))  # physical -> logical worker
        self.states: list[dict[str, Any]] = [initial_worker_state(plan, 0) for _ in range(plan.num_workers)]
        self.frame_cache: DecodedFrameCache | None = None  # VideoLoader's (data/frame_cache.py)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = self.assignment[info.id if info is not None else 0]
        state = self.states[worker]
        if state["done"]:
            return
        faults = FaultCounter()
        stream = WorkerStream(self.plan, worker, state, faults)
        stream.fast_forward()
        faults.reset()  # anything met while fast-forwarding was counted before the checkpoint
        opts = self.plan.options
        pending: list[DecodedSample] = []
        packer = RowPacker(self.plan.packing, self.plan.batch_size) if self.plan.packing else None
        sent: Counter[str] = Counter()  # counts already reported in a message
        # epochs whose share other ranks partly consumed before a world-size change may pass empty
        epochs_at_last_keep = [max([st["epoch"], *map(int, st.get("exclude", {}))])
                               for st in stream.state["sources"]]
        for raw, before, counts_before in stream.with_prior_state():
            if self.plan.loop and all(st["epoch"] >= e + 2 or not st["active"] for st, e in
                                      zip(stream.state["sources"], epochs_at_last_keep, strict=True)):
                raise RuntimeError(f"data: worker {worker} of rank {self.plan.rank} went through a whole epoch of "
                                   "every source without one usable sample (task filter "
                                   f"{sorted(opts.tasks) if opts.tasks is not None else None}, per source "
                                   f"{[sorted(s.tasks) if s.tasks else None for s in self.plan.sources]}, skipped so far "
                                   f"{faults.total}); the looping stream would never yield a batch")
            if raw.ignored:
                faults.add(UNKNOWN_KEY, f"{raw.shard}:{raw.key}", f"ignored members {raw.ignored}")
            try:
                sample = call_with_timeout(functools.partial(decode_sample, raw, opts,
                                                             self.plan.sources[stream.source].tasks,
                                                             self.frame_cache),
                                           self.plan.decode_timeout_s, f"{raw.shard}:{raw.key}")
            except SampleFault as fault:
                faults.add(fault.reason, f"{raw.shard}:{raw.key}", str(fault))
                continue
            if sample is None:
                continue
            if sample.decoder is not None:
                faults.note(decoder_key(sample.decoder))
            epochs_at_last_keep = [st["epoch"] for st in stream.state["sources"]]
            if packer is None:
                pending.append(sample)
                if len(pending) == self.plan.batch_size:
                    yield self._message(worker, stream.state, faults.seen, sent, [pending])
                    pending = []
                continue
            if packer.oversize(sample) or not packer.add(sample):
                if not packer.empty:  # ends before this sample: a resume from it re-reads the sample
                    yield self._message(worker, before, counts_before, sent, packer.take())
                if packer.oversize(sample):  # trained alone, counted (the batch's `oversize`)
                    yield self._message(worker, stream.state, faults.seen, sent, [[sample]])
                    continue
                packer.add(sample)
        rows = [pending] if pending else (packer.take() if packer is not None and not packer.empty else None)
        if rows:
            yield self._message(worker, stream.state, faults.seen, sent, rows)
        stream.state["done"] = True
        yield {"worker": worker, "state": copy.deepcopy(stream.state), "skipped": _new_counts(faults.seen, sent),
               "end": True}

    def _message(self, worker: int, state: dict[str, Any], totals: Counter[str], sent: Counter[str],
                 rows: list[list[DecodedSample]]) -> dict[str, Any]:
        """A batch message: the rows (one plain micro-batch, or packed rows), the worker state after them and
        the fault counts not yet reported up to that state."""
        plan = self.plan
        if plan.packing:
            batch = collate_packed(rows, plan.pad_token_id, plan.options.image_size, plan.packing)
        else:
            batch = collate(rows[0], plan.pad_token_id, plan.options.image_size)
        return {"worker": worker, "state": copy.deepcopy(state), "skipped": _new_counts(totals, sent),
                "batch": batch}


def _new_counts(totals: Counter[str], sent: Counter[str]) -> dict[str, int]:
    """Counts in ``totals`` beyond ``sent`` (then marked as sent)."""
    delta = {reason: n - sent[reason] for reason, n in totals.items() if n > sent[reason]}
    sent.update(delta)
    return delta


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class VideoLoader:
    """Iterates contract batches; ``state_dict``/``load_state_dict`` for exact resume; ``skipped``
    (reason -> samples skipped) and ``decoded`` (video decoder -> samples it read); :attr:`counts`.

    ``loop=True``: endless stream (each source loops over its own epochs). ``loop=False``: one pass
    over epoch :attr:`epoch`; a completed pass moves to the next epoch (new shuffle).
    """

    def __init__(self, plan: StreamPlan, num_workers: int) -> None:
        self.plan = plan
        self.num_workers = num_workers
        self.skipped: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.decoded: dict[str, int] = dict.fromkeys((d.name for d in plan.options.decoders), 0)
        self.epoch = 0
        self.batches = 0
        # the decoded-frame cache: in-process loading (num_workers=0) fills this one, kept across passes (validation
        # loss reads its split once per evaluation); each worker process gets an empty copy per pass (this process
        # decodes nothing then)
        self.frame_cache = DecodedFrameCache(plan.frame_cache_bytes) if plan.frame_cache_bytes else None
        self._reset_pass()

    def _reset_pass(self) -> None:
        k = self.plan.num_workers
        self._states = [initial_worker_state(self.plan, self.epoch) for _ in range(k)]
        self._done = [False] * k
        self._next = 0

    def _order(self) -> list[int]:
        k = self.plan.num_workers
        rotated = [(self._next + j) % k for j in range(k)]
        return [w for w in rotated if not self._done[w]] + [w for w in rotated if self._done[w]]

    def _advance(self, worker: int) -> None:
        k = self.plan.num_workers
        for j in range(1, k + 1):
            cand = (worker + j) % k
            if not self._done[cand]:
                self._next = cand
                return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = ShardStreamDataset(self.plan)
        dataset.assignment = self._order()
        dataset.states = copy.deepcopy(self._states)
        dataset.frame_cache = self.frame_cache
        if self.num_workers == 0:
            messages: Any = iter(dataset)
        else:
            messages = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                       worker_init_fn=_worker_init, persistent_workers=False))
        for msg in messages:
            w = int(msg["worker"])
            self._merge(msg["skipped"])
            self._states[w] = msg["state"]
            if msg.get("end"):
                self._done[w] = True
            self._advance(w)
            if not msg.get("end"):
                self.batches += 1
                yield msg["batch"]
        if not self.plan.loop:
            self.epoch += 1
            self._reset_pass()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of this rank's stream (plus fault counts)."""
        return {"version": STATE_VERSION, "fingerprint": self.plan.fingerprint, "epoch": self.epoch,
                "batches": self.batches, "next": self._next, "done": list(self._done),
                "workers": copy.deepcopy(self._states), "skipped": dict(self.counts)}

    @property
    def counts(self) -> Mapping[str, int]:
        """Live read-only view: ``skipped``, then ``decoder/<name>`` -> samples that decoder read (the
        keys every rank logs; it follows the loader as batches are drawn)."""
        return _CountsView(self)

    def _merge(self, delta: Mapping[str, int]) -> None:
        """Add count deltas (fault reasons and ``decoder/<name>`` keys) to ``skipped`` / ``decoded``."""
        for key, n in delta.items():
            if key.startswith(DECODER_PREFIX):
                name = key[len(DECODER_PREFIX):]
                self.decoded[name] = self.decoded.get(name, 0) + int(n)
            else:
                self.skipped[key] = self.skipped.get(key, 0) + int(n)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the plan (shards, seed, ranks, workers, ...) must match."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state: version {state.get('version')!r}, expected {STATE_VERSION}")
        if state.get("fingerprint") != self.plan.fingerprint:
            raise ValueError("loader state: fingerprint mismatch — the data mix, seed, rank/world size, "
                             "worker count, batch size or sampling options differ from the checkpoint")
        workers = state["workers"]
        if len(workers) != self.plan.num_workers or len(state["done"]) != self.plan.num_workers:
            raise ValueError(f"loader state: {len(workers)} worker states, expected {self.plan.num_workers}")
        self.epoch = int(state["epoch"])
        self.batches = int(state["batches"])
        self._next = int(state["next"])
        self._done = [bool(d) for d in state["done"]]
        self._states = copy.deepcopy(list(workers))
        self.skipped = dict.fromkeys(REASONS, 0)
        self.decoded = dict.fromkeys((d.name for d in self.plan.options.decoders), 0)
        self._merge({str(k): int(v) for k, v in state["skipped"].items()})


class _CountsView(Mapping[str, int]):
    """:attr:`VideoLoader.counts`: the loader's ``skipped`` then ``decoded`` (as ``decoder/<name>``)."""

    def __init__(self, loader: VideoLoader) -> None:
        self._loader = loader

    def __getitem__(self, key: str) -> int:
        if key.startswith(DECODER_PREFIX):
            return self._loader.decoded[key[len(DECODER_PREFIX):]]
        return self._loader.skipped[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._loader.skipped
        yield from (decoder_key(name) for name in self._loader.decoded)

    def __len__(self) -> int:
        return len(self._loader.skipped) + len(self._loader.decoded)


def _model_field(model_cfg: Any, name: str) -> Any:
    if not hasattr(model_cfg, name):
        raise ValueError(f"model_cfg: lacks field {name!r}")
    return getattr(model_cfg, name)


def build_loader(
    data_cfg: DataConfig | Mapping[str, Any] | DictConfig,
    tokenizer: Any,
    model_cfg: Any,
    *,
    split: str = "train",
    batch_size: int,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    frames_upbound: int = 16,
    fps_upbound: float | None = None,
    max_length: int | None = None,
    loop: bool | None = None,
    tasks: Sequence[str] | None = None,
    decoders: Sequence[VideoDecoder] = DEFAULT_DECODERS,
    packing: int | None = None,
    frame_cache_bytes: int = 0,
) -> VideoLoader:
    """Build the loader of ``split`` for one rank (see the module docstring for the data flow).

    ``model_cfg`` supplies image_size, tokens_per_group, frames_per_group, image_mean/std and
    vision_pad_token_id (checked against the tokenizer). ``loop`` defaults to True for train.
    ``tasks``: keep only samples whose json ``task`` is listed (e.g. ``["caption"]`` for alignment).
    ``decoders``: the video decoder chain (:mod:`data.decoders`; objects with ``name`` and ``open``,
    picklable for loader worker processes); the time limit is ``data_cfg.decode_timeout_s``.
    ``packing``: pack whole samples into ``batch_size`` rows of at most this many tokens (data/packing.py).
    ``frame_cache_bytes``: memoise up to this many bytes of decoded frames per loader process, so a video read
    again is not decoded again (data/frame_cache.py; 0 = off).
    """
    cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_mapping(data_cfg)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers: must be >= 0, got {num_workers}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: need 0 <= rank < world_size, got {rank}/{world_size}")
    if frames_upbound < 1:
        raise ValueError(f"frames_upbound: must be >= 1, got {frames_upbound}")
    if packing is not None and packing < 1:
        raise ValueError(f"packing: max tokens per row must be >= 1, got {packing}")
    if frame_cache_bytes < 0:
        raise ValueError(f"frame_cache_bytes: must be >= 0 (0 = off), got {frame_cache_bytes}")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ValueError("tokenizer: has no pad_token_id")
    pad_vision = tokenizer.convert_tokens_to_ids("<|vision_pad|>")
    if pad_vision != _model_field(model_cfg, "vision_pad_token_id"):
        raise ValueError(f"model_cfg.vision_pad_token_id ({model_cfg.vision_pad_token_id}) differs from the "
                         f"tokenizer's <|vision_pad|> id ({pad_vision})")
    options = SampleOptions(
        tokenizer=ChatTokenizer(tokenizer),
        image_size=int(_model_field(model_cfg, "image_size")),
        tokens_per_group=int(_model_field(model_cfg, "tokens_per_group")),
        frames_per_group=int(_model_field(model_cfg, "frames_per_group")),
        mean=tuple(float(x) for x in _model_field(model_cfg, "image_mean")),  # type: ignore[arg-type]
        std=tuple(float(x) for x in _model_field(model_cfg, "image_std")),  # type: ignore[arg-type]
        frames_upbound=int(frames_upbound),
        fps_upbound=fps_upbound,
        max_length=max_length,
        tasks=frozenset(tasks) if tasks is not None else None,
        decoders=tuple(decoders),
    )
    if not options.decoders:
        raise ValueError("decoders: need at least one video decoder")
    plan = StreamPlan(
        sources=tuple(resolve_split(cfg, split, seed)), seed=int(seed), rank=int(rank),
        world_size=int(world_size), num_workers=max(1, num_workers), shuffle_buffer=cfg.shuffle_buffer,
        batch_size=int(batch_size), loop=(split == "train") if loop is None else bool(loop),
        pad_token_id=int(pad_id), options=options, decode_timeout_s=cfg.decode_timeout_s,
        packing=None if packing is None else int(packing), frame_cache_bytes=int(frame_cache_bytes),
    )
    return VideoLoader(plan, num_workers)
