"""Raw shard sample -> :class:`DecodedSample` -> batch (the data/ -> train/ contract).

``decode_sample`` parses only the ``json`` member and the media member the record names, checks the
record, samples frame indices, builds the token sequence with ``model.sequence.build_sequence``
(which truncates to ``max_length`` at a group boundary), then decodes only the frames of the groups
that survived and preprocesses them with ``model.processing.preprocess_frames``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data.decoders import DEFAULT_DECODERS, VideoDecoder
from data.faults import (
    BAD_CONVERSATION,
    BAD_JSON,
    BAD_RECORD,
    EMPTY_ANSWER,
    MISSING_JSON,
    MISSING_KEY,
    MISSING_MEDIA,
    NO_SUPERVISED_TOKENS,
    SampleFault,
)
from data.frame_cache import CachedVideo, DecodedFrameCache
from data.sampling import FrameSample, VideoBytes, read_image, sample_image_frames, sample_video_frames
from data.shards import IMAGE_KEYS, VIDEO_KEYS, RawSample
from model.processing import preprocess_frames
from model.sequence import (
    IGNORE_INDEX,
    ChatTokenizer,
    EmptyAnswer,
    NoSupervisedTokens,
    TokenKind,
    build_sequence,
)


@dataclass
class DecodedSample:
    """One sample ready for batching: token ids/labels, its frames and their group timestamps."""

    sample_id: str
    task: str
    input_ids: torch.Tensor  # LongTensor[L]
    labels: torch.Tensor  # LongTensor[L]
    pixel_values: torch.Tensor  # FloatTensor[F, 3, S, S], F a multiple of 4 (0 for text-only)
    timestamps: list[float]  # one per group ([] for images and text-only)
    token_kind: torch.Tensor  # LongTensor[L] of model.sequence.TokenKind
    group_index: torch.Tensor  # LongTensor[L]: visual group of each token (-1 outside)
    decoder: str | None = None  # the video decoder that read the frames ("decord", "pyav"); None otherwise


def collate(samples: list[DecodedSample], pad_token_id: int, image_size: int) -> dict[str, Any]:
    """Right-pad ids (``pad_token_id``) and labels (-100); concatenate all frames in sample order."""
    if not samples:
        raise ValueError("collate: empty sample list")
    length = max(int(s.input_ids.numel()) for s in samples)
    bsz = len(samples)
    input_ids = torch.full((bsz, length), pad_token_id, dtype=torch.long)
    labels = torch.full((bsz, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((bsz, length), dtype=torch.long)
    token_kind = torch.full((bsz, length), int(TokenKind.TEXT), dtype=torch.long)
    group_index = torch.full((bsz, length), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        n = int(s.input_ids.numel())
        input_ids[i, :n] = s.input_ids
        labels[i, :n] = s.labels
        attention_mask[i, :n] = 1
        token_kind[i, :n] = s.token_kind
        group_index[i, :n] = s.group_index
    frames = [s.pixel_values for s in samples if s.pixel_values.shape[0] > 0]
    if frames:
        pixel_values = torch.cat(frames, dim=0)
    else:
        pixel_values = torch.zeros((0, 3, image_size, image_size), dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "token_kind": token_kind,
        "group_index": group_index,
        "frame_counts": torch.tensor([int(s.pixel_values.shape[0]) for s in samples], dtype=torch.long),
        "timestamps": [list(s.timestamps) for s in samples],
        "sample_ids": [s.sample_id for s in samples],
        "tasks": [s.task for s in samples],
    }


@dataclass(frozen=True)
class SampleOptions:
    """Everything ``decode_sample`` needs besides the raw sample (picklable for loader workers)."""

    tokenizer: ChatTokenizer
    image_size: int
    tokens_per_group: int
    frames_per_group: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frames_upbound: int
    fps_upbound: float | None
    max_length: int | None
    tasks: frozenset[str] | None  # keep only these tasks (None keeps all)
    decoders: tuple[VideoDecoder, ...] = DEFAULT_DECODERS  # tried in order (data.sampling.VideoBytes)


def parse_record(raw: RawSample) -> dict[str, Any]:
    """The sample's json record, checked for the fields the loader reads."""
    where = f"{raw.shard}:{raw.key}.json"
    if "json" not in raw.members:
        raise SampleFault(MISSING_JSON, f"{raw.shard}:{raw.key}: no json member")
    try:
        rec = json.loads(raw.members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleFault(BAD_JSON, f"{where}: {exc}") from exc
    if not isinstance(rec, dict):
        raise SampleFault(BAD_JSON, f"{where}: top level is {type(rec).__name__}, expected an object")
    for key in ("id", "conversations"):
        if key not in rec:
            raise SampleFault(MISSING_KEY, f"{where}: missing field {key!r}")
    if not isinstance(rec["id"], str | int):
        raise SampleFault(BAD_RECORD, f"{where}: field 'id' must be a string, got {type(rec['id']).__name__}")
    if "task" in rec and not isinstance(rec["task"], str):
        raise SampleFault(BAD_RECORD, f"{where}: field 'task' must be a string")
    scale = rec.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0):
        raise SampleFault(BAD_RECORD, f"{where}: field 'scale' must be a number > 0, got {scale!r}")
    if "video" in rec and "image" in rec:
        raise SampleFault(BAD_RECORD, f"{where}: has both 'video' and 'image'")
    return rec


def _media(raw: RawSample, keys: Sequence[str], field: str) -> tuple[str, bytes]:
    for key in keys:
        if key in raw.members:
            return key, raw.members[key]
    raise SampleFault(MISSING_MEDIA, f"{raw.shard}:{raw.key}: record names a {field} but the shard holds "
                                     f"none of {list(keys)}")


def decode_sample(raw: RawSample, opts: SampleOptions, source_tasks: frozenset[str] | None = None,
                  frame_cache: DecodedFrameCache | None = None) -> DecodedSample | None:
    """Decode one raw sample; ``None`` when its task is filtered out (not in ``opts.tasks``, the stage's
    filter, or not in ``source_tasks``, its data source's); :class:`SampleFault` if broken. With
    ``frame_cache`` a video read before (same bytes, same frames) is not decoded again (data/frame_cache.py)."""
    rec = parse_record(raw)
    task = str(rec.get("task", "unknown"))
    if (opts.tasks is not None and task not in opts.tasks) or (source_tasks is not None and task not in source_tasks):
        return None
    video: VideoBytes | CachedVideo | None = None
    image: np.ndarray | None = None
    frames: FrameSample | None = None
    if "video" in rec:
        ext, data = _media(raw, VIDEO_KEYS, "video")
        where = f"{raw.shard}:{raw.key}.{ext}"
        video = (frame_cache.open(data, where, opts.decoders) if frame_cache is not None
                 else VideoBytes(data, where, opts.decoders))
        frames = sample_video_frames(video.num_frames, video.avg_fps, frames_upbound=opts.frames_upbound,
                                     fps_upbound=opts.fps_upbound, scale=rec.get("scale"),
                                     group=opts.frames_per_group)
    elif "image" in rec:
        ext, data = _media(raw, IMAGE_KEYS, "image")
        image = read_image(data, f"{raw.shard}:{raw.key}.{ext}")
        frames = sample_image_frames(opts.frames_per_group)
    num_groups = len(frames.indices) // opts.frames_per_group if frames is not None else 0
    group_ts = frames.group_timestamps(opts.frames_per_group) if video is not None and frames else None
    try:
        built = build_sequence(opts.tokenizer, rec["conversations"], timestamps=group_ts,
                               num_groups=num_groups, tokens_per_group=opts.tokens_per_group,
                               max_length=opts.max_length)
    except NoSupervisedTokens as exc:
        raise SampleFault(NO_SUPERVISED_TOKENS, f"{raw.shard}:{raw.key}: {exc}") from exc
    except EmptyAnswer as exc:
        raise SampleFault(EMPTY_ANSWER, f"{raw.shard}:{raw.key}.json: {exc}") from exc
    except ValueError as exc:
        raise SampleFault(BAD_CONVERSATION, f"{raw.shard}:{raw.key}.json: {exc}") from exc
    kept = built.num_groups * opts.frames_per_group
    if frames is None or kept == 0:
        pixels = torch.zeros((0, 3, opts.image_size, opts.image_size), dtype=torch.float32)
    else:
        if video is not None:  # preprocess each distinct frame once, then expand the padding repeats
            uint8, inverse = video.read_unique(frames.indices[:kept])
        else:
            assert image is not None
            uint8, inverse = image[None], np.zeros(kept, dtype=np.int64)
        pixels = preprocess_frames(uint8, opts.image_size, opts.mean, opts.std)[torch.from_numpy(inverse)]
    return DecodedSample(sample_id=str(rec["id"]), task=task, input_ids=built.input_ids, labels=built.labels,
                         pixel_values=pixels, timestamps=list(group_ts[:built.num_groups]) if group_ts else [],
                         token_kind=built.token_kind, group_index=built.group_index,
                         decoder=video.decoder if video is not None and kept > 0 else None)
