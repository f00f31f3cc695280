"""The one ChatML sequence builder shared by training, data loading and inference.

A LLaVA conversation (:func:`parse_conversation`: an optional leading system turn, then human/gpt
turns) becomes ChatML token ids; the ``<image>`` tag, in whichever human turn holds it, is replaced by
the visual block (per group: ``Time {t:.1f}s:`` text, then ``tokens_per_group``
``<|vision_pad|>`` ids). Every token also gets a kind (:class:`TokenKind`), a label and a group id.
Text segments are tokenised one by one (role names, newlines, contents, timestamps), so the ids of a
generation prompt are exactly the prefix of the ids used in training.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"
SYSTEM_ROLE = "system"
_ROLES = {"human": "user", "gpt": "assistant"}


class TokenKind(IntEnum):
    """What a token of a built sequence is (used by chunked prefill and bi-level decoding)."""

    TEXT = 0
    SYSTEM = 1
    TIMESTAMP = 2
    VISUAL = 3
    QUESTION = 4


class EmptyAnswer(ValueError):
    """Raised when an assistant turn of a conversation is empty or whitespace only."""


class NoSupervisedTokens(ValueError):
    """Raised when truncation (or an empty answer) leaves a training sequence nothing to learn."""


@dataclass(frozen=True)
class BuiltSequence:
    """Token ids, labels, token kinds and group ids of one sample, all LongTensor[L]."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    token_kind: torch.Tensor
    group_index: torch.Tensor
    num_groups: int
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def format_timestamp(t: float) -> str:
    """The timestamp text that precedes a group: ``Time {t:.1f}s:``."""
    return f"Time {t:.1f}s:"


def timestamps_for_groups(frame_times: Sequence[float], frames_per_group: int) -> list[float]:
    """Time of each group's first frame; a trailing partial group counts (it is padded later)."""
    if frames_per_group < 1:
        raise ValueError(f"frames_per_group must be >= 1, got {frames_per_group}")
    return [float(frame_times[i]) for i in range(0, len(frame_times), frames_per_group)]


@dataclass(frozen=True)
class _ChatIds:
    im_start: int
    im_end: int
    newline: int
    vision_pad: int


def _single_id(tokenizer: Any, token: str, what: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tokenizer.convert_ids_to_tokens(tid) != token:
        raise ValueError(f"tokenizer: lacks the {what} token {token!r}")
    return int(tid)


def _chat_ids(tokenizer: Any) -> _ChatIds:
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    if len(newline) != 1:
        raise ValueError(f"tokenizer: '\\n' must be one token, got {newline}")
    return _ChatIds(
        im_start=_single_id(tokenizer, "<|im_start|>", "ChatML start"),
        im_end=_single_id(tokenizer, "<|im_end|>", "ChatML end"),
        newline=int(newline[0]),
        vision_pad=_single_id(tokenizer, "<|vision_pad|>", "vision pad"),
    )


class ChatTokenizer:
    """A tokenizer prepared for :func:`build_sequence`: the ChatML ids and special tokens resolved once,
    and text pieces (roles, system prompt, timestamps, repeated questions) encoded once each.

    Pass one to every ``build_sequence`` call of a data stream: building a sample then costs a few
    dictionary look-ups instead of a dozen tokenizer calls. ``max_cached`` bounds the pieces kept
    (the cache is cleared when it is full).
    """

    def __init__(self, tokenizer: Any, max_cached: int = 16384) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached: must be >= 1, got {max_cached}")
        self.tokenizer = tokenizer
        self.ids = _chat_ids(tokenizer)
        self.special_tokens = tuple([t for t in tokenizer.all_special_tokens if t] + ["<|vision_pad|>"])
        self.max_cached = max_cached
        self._pieces: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without special tokens added (do not modify the returned list)."""
        ids = self._pieces.get(text)
        if ids is None:
            if len(self._pieces) >= self.max_cached:
                self._pieces.clear()
            ids = self._pieces[text] = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return ids


class _Buffer:
    """Parallel per-token lists being assembled."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.supervised: list[bool] = []
        self.answer: list[bool] = []
        self.kind: list[int] = []
        self.group: list[int] = []

    def add(self, ids: Sequence[int], kind: TokenKind, supervised: bool = False,
            answer: bool = False, group: int = -1) -> None:
        n = len(ids)
        self.ids.extend(int(i) for i in ids)
        self.supervised.extend([supervised] * n)
        self.answer.extend([answer] * n)
        self.kind.extend([int(kind)] * n)
        self.group.extend([group] * n)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Conversation:
    """A checked conversation: the optional leading system turn's text and the human/gpt turns."""

    system: str | None  # the sample's system prompt (None: use the caller's default)
    turns: list[dict[str, str]]  # alternating human/gpt, starting with human
    media_turn: int | None  # index into ``turns`` of the human turn holding the <image> tag


def parse_conversation(conversations: Any, *, has_media: bool, for_generation: bool = False,
                       special_tokens: Sequence[str] = ()) -> Conversation:
    """Check a LLaVA conversation; errors name the turn (``conversations[i]`` of the input list).

    Rules: an optional leading ``{"from": "system", "value": text}`` turn sets the sample's system
    prompt; then turns alternate ``human``/``gpt``, starting with ``human``; with media, exactly one
    ``<image>`` tag stands in one human turn (any of them), without media there is none; no value
    contains one of ``special_tokens``. A training conversation ends with a gpt turn; for generation a
    final gpt turn is dropped. A kept gpt turn that is empty or whitespace only raises
    :class:`EmptyAnswer`; every other violation raises ``ValueError``.
    """
    if not isinstance(conversations, list | tuple) or not conversations:
        raise ValueError("conversations: must be a non-empty list of {'from', 'value'} turns")
    system: str | None = None
    offset = 0
    first = conversations[0]
    if isinstance(first, dict) and first.get("from") == SYSTEM_ROLE:
        value = first.get("value")
        if not isinstance(value, str):
            raise ValueError(f"conversations[0].value: the system turn must be a string, got {type(value).__name__}")
        system, offset = value, 1
        if IMAGE_TAG in value:
            raise ValueError(f"conversations[0].value: the system turn may not hold the {IMAGE_TAG!r} tag")
        for tok in special_tokens:
            if tok in value:
                raise ValueError(f"conversations[0].value: contains the special token {tok!r}")
    turns: list[dict[str, str]] = []
    tags: list[int] = []  # input indices of the turns holding the tag
    media_turn: int | None = None
    for i in range(offset, len(conversations)):
        turn = conversations[i]
        if not isinstance(turn, dict):
            raise ValueError(f"conversations[{i}]: must be a dict, got {type(turn).__name__}")
        role, value = turn.get("from"), turn.get("value")
        if role == SYSTEM_ROLE:
            raise ValueError(f"conversations[{i}].from: a 'system' turn may only come first")
        if role not in _ROLES:
            raise ValueError(f"conversations[{i}].from: must be 'system' (first turn only), 'human' or 'gpt', "
                             f"got {role!r}")
        expected = "human" if (i - offset) % 2 == 0 else "gpt"
        if role != expected:
            raise ValueError(f"conversations[{i}].from: turns must alternate human/gpt starting with "
                             f"human; expected {expected!r}, got {role!r}")
        if not isinstance(value, str):
            raise ValueError(f"conversations[{i}].value: must be a string, got {type(value).__name__}")
        for tok in special_tokens:
            if tok in value:
                raise ValueError(f"conversations[{i}].value: contains the special token {tok!r}")
        n_tags = value.count(IMAGE_TAG)
        if n_tags and role == "gpt":
            raise ValueError(f"conversations[{i}].value: a gpt turn may not hold the {IMAGE_TAG!r} tag")
        if n_tags:
            tags.extend([i] * n_tags)
            media_turn = len(turns)
        turns.append({"from": role, "value": value})
    if not turns:
        raise ValueError("conversations: a system turn alone; needs human/gpt turns after it")
    if has_media and len(tags) != 1:
        raise ValueError(f"conversations: the media needs exactly one {IMAGE_TAG!r} tag in a human turn, found "
                         f"{len(tags)}" + (f" (in turns {sorted(set(tags))})" if tags else ""))
    if not has_media and tags:
        raise ValueError(f"conversations[{tags[0]}].value: unexpected {IMAGE_TAG!r} tag (the sample has no media)")
    if for_generation:
        if turns[-1]["from"] == "gpt":
            turns = turns[:-1]
        if not turns:
            raise ValueError("conversations: nothing left to prompt with after dropping the gpt turn")
    elif turns[-1]["from"] != "gpt":
        raise ValueError(f"conversations[{len(conversations) - 1}].from: a training conversation must end with "
                         "a 'gpt' turn")
    for j, turn in enumerate(turns):
        if turn["from"] == "gpt" and not turn["value"].strip():
            raise EmptyAnswer(f"conversations[{j + offset}].value: the answer is empty")
    return Conversation(system=system, turns=turns, media_turn=media_turn if has_media else None)


def _validate_visual(timestamps: Sequence[float] | None, num_groups: int, tokens_per_group: int) -> None:
    if not isinstance(num_groups, int) or num_groups < 0:
        raise ValueError(f"num_groups: must be an int >= 0, got {num_groups!r}")
    if not isinstance(tokens_per_group, int) or tokens_per_group < 1:
        raise ValueError(f"tokens_per_group: must be an int >= 1, got {tokens_per_group!r}")
    if timestamps is None:
        return
    if len(timestamps) != num_groups:
        raise ValueError(f"timestamps: has {len(timestamps)} entries but num_groups is {num_groups}")
    for i, t in enumerate(timestamps):
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"timestamps[{i}]: must be a finite number >= 0, got {t!r}")


def build_sequence(
    tokenizer: Any,
    conversations: list[dict[str, str]],
    timestamps: Sequence[float] | None,
    num_groups: int,
    tokens_per_group: int,
    for_generation: bool = False,
    system_prompt: str = "You are a helpful assistant.",
    supervise_chatml_tokens: bool = True,
    max_length: int | None = None,
    require_answer: bool = True,
) -> BuiltSequence:
    """Build ChatML ids, labels, token kinds and group ids for one sample.

    ``tokenizer``: a Hugging Face tokenizer, or a :class:`ChatTokenizer` shared by the calls of a stream.
    Labels supervise assistant contents with their ``<|im_end|>\\n``; with
    ``supervise_chatml_tokens`` (released behaviour) every ``<|im_start|>``, ``<|im_end|>`` and
    ``\\n`` token is supervised too. ``for_generation`` drops a final gpt turn, ends with
    ``<|im_start|>assistant\\n``, marks tokens after the visual block ``QUESTION`` and leaves all
    labels at -100. ``system_prompt`` is the system text unless the conversation starts with a
    ``system`` turn, whose text replaces it. Conversation rules: :func:`parse_conversation`
    (``ValueError``; :class:`EmptyAnswer` for an empty answer).

    ``max_length`` (counted after the visual block is inserted): in training the tail is cut and a cut
    inside the visual block moves back to the previous group boundary; :class:`NoSupervisedTokens` is
    raised when no supervised token (with ``require_answer``: no assistant token) survives. For
    generation whole groups are dropped from the end of the visual block until the prompt fits.
    ``num_groups`` of the result says how many groups survived (always the first ones).
    """
    _validate_visual(timestamps, num_groups, tokens_per_group)
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length: must be a positive int or None, got {max_length!r}")
    if not isinstance(system_prompt, str):
        raise ValueError(f"system_prompt: must be a string, got {type(system_prompt).__name__}")
    chat = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
    ids = chat.ids
    conv = parse_conversation(conversations, has_media=num_groups > 0, for_generation=for_generation,
                              special_tokens=chat.special_tokens)
    turns = conv.turns
    system = conv.system if conv.system is not None else system_prompt
    tok = chat.encode

    buf = _Buffer()
    buf.add([ids.im_start], TokenKind.SYSTEM)
    buf.add(tok("system") + [ids.newline] + tok(system) + [ids.im_end, ids.newline], TokenKind.SYSTEM)

    group_starts: list[int] = []
    visual_end = -1
    after_visual = False

    def text_kind() -> TokenKind:
        return TokenKind.QUESTION if (for_generation and after_visual) else TokenKind.TEXT

    for i, turn in enumerate(turns):
        is_answer = turn["from"] == "gpt"
        buf.add([ids.im_start] + tok(_ROLES[turn["from"]]) + [ids.newline], text_kind())
        value = turn["value"]
        if i == conv.media_turn:
            before, after = value.split(IMAGE_TAG, 1)
            after = after[1:] if after.startswith("\n") else after
            if before:
                buf.add(tok(before), text_kind())
            for g in range(num_groups):
                group_starts.append(len(buf))
                if timestamps is not None:
                    buf.add(tok(format_timestamp(float(timestamps[g]))), TokenKind.TIMESTAMP, group=g)
                buf.add([ids.vision_pad] * tokens_per_group, TokenKind.VISUAL, group=g)
            visual_end = len(buf)
            after_visual = True
            value = after
        if value:
            buf.add(tok(value), text_kind(), supervised=is_answer, answer=is_answer)
        buf.add([ids.im_end, ids.newline], text_kind(), supervised=is_answer, answer=is_answer)
    if for_generation:
        buf.add([ids.im_start] + tok("assistant") + [ids.newline], text_kind())

    input_ids = torch.tensor(buf.ids, dtype=torch.long)
    token_kind = torch.tensor(buf.kind, dtype=torch.long)
    group_index = torch.tensor(buf.group, dtype=torch.long)
    answer = torch.tensor(buf.answer, dtype=torch.bool)
    supervised = torch.tensor(buf.supervised, dtype=torch.bool)
    if for_generation:
        supervised[:] = False
    elif supervise_chatml_tokens:
        chatml = torch.tensor([ids.im_start, ids.im_end, ids.newline], dtype=torch.long)
        supervised |= torch.isin(input_ids, chatml)
    labels = torch.where(supervised, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    kept_groups, truncated = num_groups, False
    length = input_ids.numel()
    if max_length is not None and length > max_length:
        truncated = True
        if for_generation:
            keep = _generation_keep(group_starts, visual_end, length, max_length)
            kept_groups = sum(1 for s in group_starts if keep[s])
        else:
            cut = max_length
            if group_starts and group_starts[0] < cut < visual_end:
                group_ends = group_starts[1:] + [visual_end]
                kept_groups = sum(1 for e in group_ends if e <= cut)
                cut = group_starts[kept_groups] if kept_groups < num_groups else visual_end
            elif group_starts and cut <= group_starts[0]:
                kept_groups = 0
            keep = torch.zeros(length, dtype=torch.bool)
            keep[:cut] = True
        input_ids, labels, token_kind, group_index = (t[keep] for t in (input_ids, labels, token_kind,
                                                                         group_index))
        answer = answer[keep]
    if not for_generation:
        if not bool((labels != IGNORE_INDEX).any()):
            raise NoSupervisedTokens(f"no supervised token left (length {length}, max_length {max_length})")
        if require_answer and not bool(answer.any()):
            raise NoSupervisedTokens(f"no assistant token left (length {length}, max_length {max_length})")
    return BuiltSequence(input_ids=input_ids, labels=labels, token_kind=token_kind,
                         group_index=group_index, num_groups=kept_groups, truncated=truncated)


def _generation_keep(group_starts: list[int], visual_end: int, length: int, max_length: int) -> torch.Tensor:
    """Mask keeping the first groups of a generation prompt so it fits max_length."""
    if not group_starts:
        raise ValueError(f"max_length: the prompt has {length} tokens > {max_length} and no visual group "
                         "to drop")
    group_ends = group_starts[1:] + [visual_end]
    kept = len(group_starts)
    total = length
    while kept > 0 and total > max_length:
        kept -= 1
        total -= group_ends[kept] - group_starts[kept]
    if total > max_length:
        raise ValueError(f"max_length: {max_length} is shorter than the prompt without any visual group "
                         f"({total} tokens)")
    keep = torch.ones(length, dtype=torch.bool)
    drop_from = group_starts[kept] if kept < len(group_starts) else visual_end
    keep[drop_from:visual_end] = False
    return keep
