"""Sample packing: whole decoded samples -> rows of at most ``max_tokens`` tokens -> one packed batch.

A packed micro-batch has ``rows`` rows (``loop.micro_batch_size``). Samples arrive in stream order and
go, first fit, into the first row of the open micro-batch with room for them; when no row has room the
micro-batch is complete and the sample starts the next one. A sample longer than ``max_tokens`` is
never split or dropped: it becomes a micro-batch of its own (one row of its own length) and is counted
(``oversize`` in the batch). Everything is a function of the sample order, so packing is deterministic.

The packed batch keeps every sample whole: its tokens sit contiguously in one row, its frames are
concatenated in the order its visual tokens appear (rows first, then position in the row, as
``VideoXL2ForCausalLM.embed_inputs`` fills them), ``segment_ids`` names the sample of every token
(-1 on padding) and ``position_ids`` restart at 0 for every sample (model/packing.py builds the
per-sample attention from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from data.collate import DecodedSample, collate
from model.sequence import IGNORE_INDEX, TokenKind


@dataclass
class RowPacker:
    """First-fit packing of whole samples into ``rows`` rows of at most ``max_tokens`` tokens."""

    max_tokens: int
    rows: int
    _rows: list[list[DecodedSample]] = field(default_factory=list)
    _used: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if self.rows < 1:
            raise ValueError(f"rows: must be >= 1, got {self.rows}")

    @property
    def empty(self) -> bool:
        return not self._rows

    def oversize(self, sample: DecodedSample) -> bool:
        """True when the sample alone exceeds ``max_tokens`` (it is then trained alone)."""
        return int(sample.input_ids.numel()) > self.max_tokens

    def add(self, sample: DecodedSample) -> bool:
        """Place the sample in the first row with room (or a new row); False when the micro-batch is full."""
        n = int(sample.input_ids.numel())
        for i, used in enumerate(self._used):
            if used + n <= self.max_tokens:
                self._rows[i].append(sample)
                self._used[i] += n
                return True
        if len(self._rows) < self.rows and n <= self.max_tokens:
            self._rows.append([sample])
            self._used.append(n)
            return True
        return False

    def take(self) -> list[list[DecodedSample]]:
        """The packed rows so far (and start an empty micro-batch)."""
        rows, self._rows, self._used = self._rows, [], []
        return rows


def collate_packed(rows: list[list[DecodedSample]], pad_token_id: int, image_size: int,
                   max_tokens: int) -> dict[str, Any]:
    """Packed rows -> the batch of :func:`data.collate.collate` plus ``position_ids`` and ``segment_ids``.

    Returns the keys of ``collate`` (``input_ids``/``labels``/``attention_mask``/``token_kind``/
    ``group_index`` LongTensor[R, L] with L the longest row, ``pixel_values`` [F, 3, S, S] in the order
    of the visual tokens, per-sample lists in packed order) and: ``position_ids`` LongTensor[R, L]
    (0.. per sample, 0.. again over the padding), ``segment_ids`` LongTensor[R, L] (the sample's index in
    its row, -1 on padding), ``sample_lengths`` LongTensor[S] and ``oversize`` (samples longer than
    ``max_tokens``). The first token of every sample is never a target (it already is not, unpacked).
    """
    samples = [s for row in rows for s in row]
    if not samples:
        raise ValueError("collate_packed: no samples")
    length = max(sum(int(s.input_ids.numel()) for s in row) for row in rows)
    flat = collate(samples, pad_token_id, image_size)  # per-sample tensors, frames and lists in packed order
    bsz = len(rows)
    out: dict[str, Any] = {k: flat[k] for k in ("pixel_values", "frame_counts", "timestamps", "sample_ids", "tasks")}
    fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0,
             "token_kind": int(TokenKind.TEXT), "group_index": -1}  # the padding of data.collate.collate
    for key, fill in fills.items():
        out[key] = torch.full((bsz, length), fill, dtype=torch.long)
    position_ids = torch.zeros((bsz, length), dtype=torch.long)
    segment_ids = torch.full((bsz, length), -1, dtype=torch.long)
    k = 0
    for r, row in enumerate(rows):
        offset = 0
        for j, s in enumerate(row):
            n = int(s.input_ids.numel())
            span = slice(offset, offset + n)
            for key in fills:
                out[key][r, span] = flat[key][k, :n]
            out["labels"][r, offset] = IGNORE_INDEX
            position_ids[r, span] = torch.arange(n)
            segment_ids[r, span] = j
            offset += n
            k += 1
        position_ids[r, offset:] = torch.arange(length - offset)
    out["position_ids"] = position_ids
    out["segment_ids"] = segment_ids
    out["sample_lengths"] = torch.tensor([int(s.input_ids.numel()) for s in samples], dtype=torch.long)
    out["oversize"] = sum(int(s.input_ids.numel()) > max_tokens for s in samples)
    return out
