"""Fault kinds of the data pipeline and their per-process counter.

A broken sample is skipped and counted under one reason; the first occurrence of each reason is
logged (once per process). The counter also counts, under ``decoder/<name>``, which video decoder read
each sample (:meth:`FaultCounter.note`). Counts travel from loader workers to the main process as the
growth of :attr:`FaultCounter.seen` since the worker's previous message (data/loader.py), where
:func:`merge_counts` aggregates them.
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger(__name__)

# Reasons a sample (or a whole shard) is skipped.
BAD_SHARD = "bad_shard"  # unreadable / truncated tar shard (counted once per shard)
MISSING_JSON = "missing_json"  # sample has no .json member
BAD_JSON = "bad_json"  # .json is not valid UTF-8 JSON or not an object
MISSING_KEY = "missing_key"  # a required field (id, conversations) is absent
BAD_RECORD = "bad_record"  # a field has the wrong type / value
MISSING_MEDIA = "missing_media"  # json names a video/image but the shard holds no such bytes
EMPTY_MEDIA = "empty_media"  # zero-byte video or image
BAD_VIDEO = "bad_video"  # bytes no decoder can open/decode (truncated mp4, non-video bytes)
UNSUPPORTED_CODEC = "unsupported_codec"  # a video whose codec none of the decoders has
DECODE_TIMEOUT = "decode_timeout"  # decoding the sample took longer than data.decode_timeout_s
BAD_IMAGE = "bad_image"  # bytes that PIL cannot decode
BAD_CONVERSATION = "bad_conversation"  # build_sequence rejected the conversations
EMPTY_ANSWER = "empty_answer"  # an assistant turn is empty or whitespace only
NO_SUPERVISED_TOKENS = "no_supervised_tokens"  # truncation left nothing to learn
# Not a skip: a member under a key outside the known set was ignored (never read nor decoded).
UNKNOWN_KEY = "unknown_key"

REASONS: tuple[str, ...] = (BAD_SHARD, MISSING_JSON, BAD_JSON, MISSING_KEY, BAD_RECORD, MISSING_MEDIA,
                            EMPTY_MEDIA, BAD_VIDEO, UNSUPPORTED_CODEC, DECODE_TIMEOUT, BAD_IMAGE,
                            BAD_CONVERSATION, EMPTY_ANSWER, NO_SUPERVISED_TOKENS, UNKNOWN_KEY)

# Not skips either: how many samples each video decoder read (``decoder/<name>``).
DECODER_PREFIX = "decoder/"


def decoder_key(name: str) -> str:
    """The count key of samples whose video decoder ``name`` read (``decoder/pyav``)."""
    return DECODER_PREFIX + name


def metric_name(key: str) -> str:
    """The logged metric of a count key: ``skipped/<reason>``, or the key itself for ``decoder/*``."""
    return key if key.startswith(DECODER_PREFIX) else f"skipped/{key}"


class SampleFault(Exception):
    """A sample cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown fault reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class FaultCounter:
    """Counts faults by reason (``total``) and, with decoder notes, everything reported (``seen``); logs
    the first fault of each reason."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()  # faults by reason
        self.seen: Counter[str] = Counter()  # faults and ``note``d keys: what the loader reports
        self._logged: set[str] = set()

    def add(self, reason: str, where: str, detail: str = "") -> None:
        """Count one fault of ``reason`` at ``where`` (shard/sample) and log it if it is the first."""
        if reason not in REASONS:
            raise ValueError(f"unknown fault reason {reason!r}")
        self.total[reason] += 1
        self.seen[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning("data fault %s at %s: %s (further %s faults are counted, not logged)",
                           reason, where, detail, reason)

    def note(self, key: str) -> None:
        """Count one sample under a non-fault key (``decoder/<name>``); nothing is logged."""
        if not key.startswith(DECODER_PREFIX):
            raise ValueError(f"unknown count key {key!r}")
        self.seen[key] += 1  # not in ``total``, which counts faults only

    def reset(self) -> None:
        """Forget all counts (used after a resume fast-forward re-read already-counted data)."""
        self.total.clear()
        self.seen.clear()


def merge_counts(into: dict[str, int], delta: dict[str, int]) -> None:
    """Add ``delta`` counts into ``into`` in place."""
    for reason, n in delta.items():
        into[reason] = into.get(reason, 0) + int(n)
