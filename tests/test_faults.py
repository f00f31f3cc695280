"""Every fault kind is skipped and counted (no exception escapes); pickle payloads never run."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data.faults import REASONS, FaultCounter
from data.loader import build_loader
from data.shards import ShardWriter, iter_shard
from helpers import grey_mp4
from model import build_preset, load_tokenizer


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 77, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Payload:
    """Unpickling this runs code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def conv(media: bool = True) -> list[dict[str, str]]:
    return [{"from": "human", "value": ("<image>\n" if media else "") + "Describe."},
            {"from": "gpt", "value": "A grey square."}]


def rec(sid: str, **extra: Any) -> bytes:
    return json.dumps({"id": sid, "conversations": conv("video" in extra or "image" in extra),
                       "task": "caption", **extra}).encode()


def raw_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar written member by member (ShardWriter refuses unknown keys, so faults are made by hand)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("faulty")
    marker = root / "PWNED"
    good_mp4 = grey_mp4([10 * i for i in range(12)], fps=4)
    payload = pickle.dumps(Payload(marker))
    good = []

    def ok(i: int) -> tuple[str, bytes]:
        good.append(f"good{i}")
        return (f"g{i}.json", rec(f"good{i}", video=f"g{i}.mp4"))

    raw_tar(root / "part-000.tar", [
        ok(0), ("g0.mp4", good_mp4),
        ("zero.json", rec("zero", video="zero.mp4")), ("zero.mp4", b""),
        ("trunc.json", rec("trunc", video="trunc.mp4")), ("trunc.mp4", good_mp4[: len(good_mp4) // 2]),
        ("junk.json", rec("junk", video="junk.mp4")), ("junk.mp4", b"<html>not a video</html>" * 20),
        ("badjson.json", b'{"id": "badjson", "conversations": ['), ("badjson.mp4", good_mp4),
        ("nokey.json", json.dumps({"id": "nokey", "video": "nokey.mp4"}).encode()), ("nokey.mp4", good_mp4),
        ("nomedia.json", rec("nomedia", video="nomedia.mp4")),
        ("badimg.json", rec("badimg", image="badimg.png")), ("badimg.png", b"\x89PNG\r\n\x1a\n garbage"),
        ok(1), ("g1.mp4", good_mp4),
    ])
    raw_tar(root / "part-001.tar", [
        ("evil.json", rec("evil", video="evil.mp4")), ("evil.mp4", good_mp4), ("evil.pyd", payload),
        ("evil2.pickle", payload),  # a sample made only of a pickle
        ("img.json", rec("img", image="img.png")), ("img.png", png()),
        ("text.json", rec("text")),
        ok(2), ("g2.mp4", good_mp4),
    ])
    good += ["evil", "img", "text"]
    with ShardWriter(root / "w", 2, prefix="part") as writer:
        for i in range(3, 7):
            writer.write(f"g{i}", {"json": rec(f"good{i}", video=f"g{i}.mp4"), "mp4": good_mp4})
            good.append(f"good{i}")
    whole_path = root / "w" / "part-000000.tar"
    with tarfile.open(whole_path) as tar:
        cut_member = tar.getmember("g4.mp4")
    cut = cut_member.offset_data + cut_member.size // 2  # truncated inside the second sample's video
    (root / "part-002.tar").write_bytes(whole_path.read_bytes()[:cut])
    good.remove("good4")
    (root / "w" / "part-000001.tar").rename(root / "part-003.tar")
    (root / "part-004.tar").write_bytes(b"")  # zero-byte shard
    return root, marker, good


EXPECTED = {"empty_media": 1, "bad_video": 2, "bad_json": 1, "missing_key": 1, "missing_media": 1,
            "bad_image": 1, "bad_shard": 2, "unknown_key": 2, "missing_json": 1}


@pytest.mark.parametrize("workers", [0, 2])
def test_every_fault_is_skipped_and_counted(faulty: tuple[Path, Path, list[str]], workers: int,
                                           caplog: pytest.LogCaptureFixture) -> None:
    root, marker, good = faulty
    cfg = {"root": str(root), "val": [{"shards": "part-*.tar"}], "shuffle_buffer": 4}
    loader = build_loader(cfg, load_tokenizer("tiny"), build_preset("tiny"), split="val", batch_size=2,
                          num_workers=workers, frames_upbound=8)
    with caplog.at_level(logging.WARNING, logger="data.faults"):
        seen = [s for b in loader for s in b["sample_ids"]]
    assert sorted(seen) == sorted(good)
    assert {k: v for k, v in loader.skipped.items() if v} == EXPECTED
    assert list(loader.skipped) == list(REASONS)  # same keys, same order on every rank
    assert not marker.exists()
    if workers == 0:  # worker processes log in their own process
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == len(EXPECTED)  # once per reason
        assert any("bad_video" in m and "trunc" in m for m in logged)


def test_payload_is_live_but_never_read(faulty: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    root, marker, _ = faulty
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))  # the payload kind used above really executes on unpickle
    assert probe.exists()
    samples = list(iter_shard(str(root / "part-001.tar")))
    evil = next(s for s in samples if s.key == "evil")
    assert set(evil.members) == {"json", "mp4"} and evil.ignored == ["pyd"]
    only_pickle = next(s for s in samples if s.key == "evil2")
    assert only_pickle.members == {} and only_pickle.ignored == ["pickle"]
    assert not marker.exists()


def test_fault_counter_logs_once_and_counts_notes_apart(caplog: pytest.LogCaptureFixture) -> None:
    counter = FaultCounter()
    with caplog.at_level(logging.WARNING, logger="data.faults"):
        for _ in range(3):
            counter.add("bad_video", "a.tar:k")
        counter.add("bad_json", "a.tar:j")
        counter.note("decoder/pyav")
    assert counter.total == {"bad_video": 3, "bad_json": 1}
    assert counter.seen == {"bad_video": 3, "bad_json": 1, "decoder/pyav": 1}
    assert len(caplog.records) == 2
    with pytest.raises(ValueError, match="unknown fault reason"):
        counter.add("no_such_reason", "x")


def test_unknown_member_sorting_first_does_not_split_its_sample(tmp_path: Path) -> None:
    """Each key is yielded once, in stored order, even when an unknown member comes before known ones."""
    path = tmp_path / "order.tar"
    raw_tar(path, [("a.json", rec("a")), ("b.cls", b"x"), ("b.json", rec("b")), ("c.pyd", b"p"),
                   ("d.json", rec("d")), ("d.zzz", b"z")])
    samples = list(iter_shard(str(path)))
    assert [s.key for s in samples] == ["a", "b", "c", "d"]
    assert [sorted(s.members) for s in samples] == [["json"], ["json"], [], ["json"]]
    assert [s.ignored for s in samples] == [[], ["cls"], ["pyd"], ["zzz"]]


def test_loader_counts_no_phantom_sample_for_leading_unknown_member(tmp_path: Path) -> None:
    raw_tar(tmp_path / "part-000.tar", [("a.json", rec("a")), ("b.cls", b"x"), ("b.json", rec("b"))])
    cfg = {"root": str(tmp_path), "val": [{"shards": "part-*.tar"}], "shuffle_buffer": 1}
    loader = build_loader(cfg, load_tokenizer("tiny"), build_preset("tiny"), split="val", batch_size=1,
                          num_workers=0)
    assert [s for b in loader for s in b["sample_ids"]] == ["a", "b"]
    assert {k: v for k, v in loader.skipped.items() if v} == {"unknown_key": 1}


def test_shard_writer_drops_the_partial_shard_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, 2, prefix="part") as writer:
        for i in range(3):
            writer.write(f"k{i}", {"json": rec(f"k{i}")})
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000000.tar"]  # finished shard kept, no .tmp
    assert writer.shards == [str(tmp_path / "part-000000.tar")]
    assert [s.key for s in iter_shard(str(tmp_path / "part-000000.tar"))] == ["k0", "k1"]
