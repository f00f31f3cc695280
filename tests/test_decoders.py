"""Video decoders: decord and PyAV give the same frames (each frame shows its index as bars); PyAV reads
what decord cannot (AV1, GIF, raw H.264); errors name the cause; the frame-rate rule; in the loader,
decoder counts, conversations with system turns / later-turn videos / empty answers, and the decode
time limit with a decode that hangs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.decoders import DEFAULT_FPS, DecordDecoder, PyAVDecoder, resolve_fps
from data.faults import BAD_VIDEO, UNSUPPORTED_CODEC, SampleFault
from data.loader import build_loader
from data.mix import DataConfig
from data.sampling import VideoBytes, sample_video_frames
from data.shards import ShardWriter
from helpers import HangingDecoder, bar_index, indexed_video
from model import build_preset, load_tokenizer
from model.sequence import TokenKind

DECORD_ONLY = (DecordDecoder(),)
PYAV_ONLY = (PyAVDecoder(),)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("media")
    faststart = indexed_video(60, 10, path=tmp / "fs.mp4", options={"movflags": "faststart"})
    av1 = indexed_video(24, 8, codec="libsvtav1")
    return {
        "h264.mp4": indexed_video(60, 10, gop=8),  # B-frames, a keyframe every 8 frames
        "av1.mp4": av1,
        "clip.gif": indexed_video(20, 10, fmt="gif", codec="gif", pix_fmt="rgb8"),
        "raw.h264": indexed_video(24, 10, fmt="h264"),
        "header_promises_more.mp4": faststart[: len(faststart) * 2 // 3],  # index says 60 frames, data stops
        "last_packet_cut.mp4": faststart[:-1],  # opens; the last frame's data is incomplete
        "unknown_codec.mp4": av1.replace(b"av01", b"evc1"),  # a codec FFmpeg here has no decoder for
    }


def check_indices(frames: np.ndarray, indices: list[int]) -> None:
    assert [bar_index(f) for f in frames] == indices


@pytest.mark.parametrize(("upbound", "fps_up"), [(16, None), (150, 4.0), (7, None)])
def test_decord_and_pyav_give_the_same_frames(media: dict[str, bytes], upbound: int, fps_up: float | None) -> None:
    data = media["h264.mp4"]
    dec, pav = VideoBytes(data, "h264.mp4", DECORD_ONLY), VideoBytes(data, "h264.mp4", PYAV_ONLY)
    assert (dec.num_frames, dec.avg_fps) == (pav.num_frames, pav.avg_fps) == (60, 10.0)
    sample = sample_video_frames(dec.num_frames, dec.avg_fps, frames_upbound=upbound, fps_upbound=fps_up)
    a, b = dec.read(sample.indices), pav.read(sample.indices)
    assert (dec.decoder, pav.decoder) == ("decord", "pyav")
    check_indices(a, sample.indices)
    check_indices(b, sample.indices)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 8  # the same decoded pictures (identical here), up to RGB conversion


def test_pyav_seeks_instead_of_decoding_everything(media: dict[str, bytes]) -> None:
    video = PyAVDecoder().open(media["h264.mp4"], "h264.mp4")
    check_indices(video.read([50, 53]), [50, 53])
    assert video.frames_decoded <= 16  # from the keyframe at 48, not from frame 0
    raw = PyAVDecoder().open(media["raw.h264"], "raw.h264")  # no timestamps: decoded in order, up to the frame
    check_indices(raw.read([3, 20]), [3, 20])
    assert raw.frames_decoded == 21


@pytest.mark.parametrize(("name", "frames", "fps"), [("av1.mp4", 24, 8.0), ("clip.gif", 20, 10.0),
                                                     ("raw.h264", 24, 10.0)])
def test_pyav_reads_what_decord_cannot(media: dict[str, bytes], name: str, frames: int, fps: float) -> None:
    with pytest.raises(SampleFault):
        VideoBytes(media[name], name, DECORD_ONLY)
    video = VideoBytes(media[name], name)
    assert video.decoder == "pyav" and video.num_frames == frames
    # the raw stream's rate is the one its H.264 VUI declares, not FFmpeg's invented 25 fps
    assert video.avg_fps == pytest.approx(fps)
    sample = sample_video_frames(video.num_frames, video.avg_fps, frames_upbound=16, fps_upbound=4)
    check_indices(video.read(sample.indices), sample.indices)
    assert video.decoder == "pyav"


def test_errors_name_the_cause(media: dict[str, bytes]) -> None:
    with pytest.raises(SampleFault) as err:
        VideoBytes(media["av1.mp4"], "clips/av1.mp4", DECORD_ONLY)
    assert err.value.reason == UNSUPPORTED_CODEC
    assert str(err.value).startswith("unsupported_codec: unsupported codec av1 in clips/av1.mp4 (decord: ")
    with pytest.raises(SampleFault) as err:
        VideoBytes(media["unknown_codec.mp4"], "u.mp4")
    assert err.value.reason == UNSUPPORTED_CODEC
    assert "unsupported codec (unknown to FFmpeg) in u.mp4" in str(err.value)
    assert "decord: no decoder" in str(err.value) and "pyav: no decoder" in str(err.value)

    with pytest.raises(SampleFault) as err:
        VideoBytes(media["header_promises_more.mp4"], "t.mp4")
    assert err.value.reason == BAD_VIDEO
    assert "header promises 60 frames, the file holds" in str(err.value)

    video = VideoBytes(media["last_packet_cut.mp4"], "cut.mp4")  # the index is whole: it opens
    assert video.num_frames == 60
    check_indices(video.read([0, 10]), [0, 10])
    with pytest.raises(SampleFault) as err:
        video.read(list(range(60)))
    assert err.value.reason == BAD_VIDEO and "cut.mp4" in str(err.value)
    assert "decord: cannot decode frames" in str(err.value) and "pyav: cannot decode frames" in str(err.value)


def test_frame_rate_rule() -> None:
    kw: dict[str, Any] = {"container_rate": None, "timed": True, "duration_s": None, "codec_rate": None,
                          "num_frames": 50}
    assert resolve_fps(**{**kw, "container_rate": 29.97, "codec_rate": 10.0}) == 29.97
    assert resolve_fps(**{**kw, "container_rate": 0.0, "duration_s": 2.0, "codec_rate": 10.0}) == 25.0  # 50 / 2 s
    assert resolve_fps(**{**kw, "duration_s": 4.0}) == 12.5
    assert resolve_fps(**{**kw, "container_rate": float("nan"), "codec_rate": 12.0}) == 12.0
    untimed = {**kw, "timed": False, "container_rate": 25.0, "duration_s": 3.0}  # a raw stream's made-up values
    assert resolve_fps(**{**untimed, "codec_rate": 10.0}) == 10.0
    assert resolve_fps(**untimed) == DEFAULT_FPS
    assert resolve_fps(**{**kw, "num_frames": 0, "duration_s": 3.0}) == DEFAULT_FPS


def test_decode_timeout_is_validated() -> None:
    assert DataConfig.from_mapping({"decode_timeout_s": 2}).decode_timeout_s == 2
    assert DataConfig.from_mapping({"decode_timeout_s": None}).decode_timeout_s is None
    for bad in (0, -1.0, "10", True, float("inf")):
        with pytest.raises(ValueError, match="data.decode_timeout_s"):
            DataConfig.from_mapping({"decode_timeout_s": bad})


def turn(who: str, value: str) -> dict[str, str]:
    return {"from": who, "value": value}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, media: dict[str, bytes]) -> Path:
    root = tmp_path_factory.mktemp("shards")
    mp4 = indexed_video(12, 4)
    qa = [turn("human", "<image>\nWhat is shown?"), turn("gpt", "Bars.")]
    samples = [
        ("k0", "mp4", mp4, qa),
        ("k1", "gif", media["clip.gif"], qa),
        ("k2", "h264", media["raw.h264"], qa),
        ("k3", "mp4", mp4, [turn("system", "Answer in one word."), *qa]),
        ("k4", "mp4", mp4, [turn("human", "Hello."), turn("gpt", "Hi there."),
                            turn("human", "Now this video: <image>"), turn("gpt", "Bars again.")]),
        ("k5", "mp4", mp4, [qa[0], turn("gpt", "")]),
        ("k6", "mp4", mp4, [qa[0], turn("gpt", "Fine."), turn("human", "And?"), turn("gpt", " \n\t")]),
        ("k7", "mp4", media["unknown_codec.mp4"], qa),
    ]
    with ShardWriter(root, 4) as writer:
        for key, ext, data, conversations in samples:
            rec = {"id": key, "video": f"{key}.{ext}", "task": "caption", "conversations": conversations}
            writer.write(key, {"json": json.dumps(rec).encode(), ext: data})
    return root


def test_loader_decoders_conversations_and_faults(shards: Path) -> None:
    tok, mcfg = load_tokenizer("tiny"), build_preset("tiny")
    cfg = {"root": str(shards), "val": [{"shards": "*.tar"}]}
    loader = build_loader(cfg, tok, mcfg, split="val", batch_size=8, num_workers=0, frames_upbound=8)
    (batch,) = list(loader)
    assert sorted(batch["sample_ids"]) == ["k0", "k1", "k2", "k3", "k4"]
    assert {k: v for k, v in loader.skipped.items() if v} == {"empty_answer": 2, "unsupported_codec": 1}
    assert loader.decoded == {"decord": 3, "pyav": 2}
    assert loader.counts["decoder/pyav"] == 2 and loader.state_dict()["skipped"]["decoder/decord"] == 3
    again = build_loader(cfg, tok, mcfg, split="val", batch_size=8, num_workers=0, frames_upbound=8)
    again.load_state_dict(loader.state_dict())
    assert again.decoded == loader.decoded and again.skipped == loader.skipped

    def text(sid: str) -> str:
        row = batch["sample_ids"].index(sid)
        return tok.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist())

    def answer(sid: str) -> str:
        row = batch["sample_ids"].index(sid)
        lab = batch["labels"][row]
        return tok.decode(lab[lab != -100].tolist())

    assert "<|im_start|>system\nAnswer in one word.<|im_end|>" in text("k3")
    assert "helpful assistant" not in text("k3") and "<|im_start|>system\nYou are a helpful assistant." in text("k0")
    row = batch["sample_ids"].index("k4")
    ids = batch["input_ids"][row]
    visual_start = int((batch["token_kind"][row] == TokenKind.TIMESTAMP).nonzero()[0])
    before = tok.decode(ids[:visual_start].tolist())
    assert "Hi there." in before and before.rstrip().endswith("Now this video:")
    assert int((ids == mcfg.vision_pad_token_id).sum()) == mcfg.tokens_per_group  # 12 frames at 4 fps: 0, 4, 8 -> 1 group
    assert "Hi there." in answer("k4") and "Bars again." in answer("k4")
    offsets = np.cumsum([0] + batch["frame_counts"].tolist())
    for sid in ("k1", "k2"):  # PyAV-decoded frames went through the same preprocessing
        r = batch["sample_ids"].index(sid)
        assert offsets[r + 1] > offsets[r] and bool(batch["pixel_values"][offsets[r]:offsets[r + 1]].isfinite().all())


@pytest.mark.parametrize("workers", [0, 1])
def test_a_hanging_decode_is_abandoned_and_counted(shards: Path, workers: int) -> None:
    cfg = {"root": str(shards), "val": [{"shards": "*.tar"}], "decode_timeout_s": 1.0}
    decoders = (HangingDecoder(frozenset({"k3.mp4"}), seconds=30.0), PyAVDecoder())
    loader = build_loader(cfg, load_tokenizer("tiny"), build_preset("tiny"), split="val", batch_size=2,
                          num_workers=workers, frames_upbound=8, decoders=decoders)
    t0 = time.monotonic()
    seen = [s for b in loader for s in b["sample_ids"]]
    assert time.monotonic() - t0 < 20  # the 30 s stall did not hold the stream up
    assert sorted(seen) == ["k0", "k1", "k2", "k4"]
    assert {k: v for k, v in loader.skipped.items() if v} == {"decode_timeout": 1, "empty_answer": 2,
                                                              "unsupported_codec": 1}
    assert loader.decoded == {"hang_or_decord": 2, "pyav": 2}


def test_an_unopenable_file_names_ffmpegs_reason(media: dict[str, bytes]) -> None:
    """A file cut before its index (an mp4 without `moov`) fails with FFmpeg's reason, without PyAV's
    errno and in-memory '<none>' file name."""
    data = media["av1.mp4"]
    with pytest.raises(SampleFault) as err:
        VideoBytes(data[: len(data) // 3], "half.mp4")
    text = str(err.value)
    assert err.value.reason == BAD_VIDEO and "half.mp4" in text
    assert "pyav: cannot open the container (Invalid data found when processing input)" in text, text
    assert "<none>" not in text and "Errno" not in text
