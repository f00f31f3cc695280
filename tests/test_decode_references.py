"""A failed decode leaves no reference cycle: its objects (a decoder's native reader among them) are freed
by reference counting in the thread that drops them, never later by a cyclic collection in another thread
(decord is not thread-safe; such a late free in a loader worker's queue thread aborted the process)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from data.decoders import DecodeError
from data.faults import SampleFault
from data.sampling import VideoBytes
from data.watchdog import abandoned_alive, call_with_timeout


class Reader:
    """Stands for a decoder's native reader."""


@dataclass
class Opened:
    num_frames: int = 8
    avg_fps: float = 4.0

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.zeros((len(indices), 2, 2, 3), dtype=np.uint8)


@dataclass(frozen=True)
class FailsHoldingReader:
    """Opens a Reader, then fails: the DecodeError's traceback holds the frame that holds the reader."""

    refs: list[weakref.ref]
    name: str = "fails"

    def open(self, data: bytes, where: str) -> Opened:
        reader = Reader()
        self.refs.append(weakref.ref(reader))
        raise DecodeError(f"{self.name}: cannot open {where}")


@dataclass(frozen=True)
class Opens:
    name: str = "opens"

    def open(self, data: bytes, where: str) -> Opened:
        return Opened()


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_decoder_that_fails_leaves_nothing_alive(no_cyclic_gc: None) -> None:
    refs: list[weakref.ref] = []
    video = VideoBytes(b"bytes", "clip.mp4", [FailsHoldingReader(refs), Opens()])
    assert video.decoder == "opens" and video.read([0, 0, 3]).shape == (3, 2, 2, 3)
    assert len(refs) == 1 and refs[0]() is None  # freed while the video is still in use
    with pytest.raises(SampleFault, match="fails: cannot open clip.mp4"):
        VideoBytes(b"bytes", "clip.mp4", [FailsHoldingReader(refs)])  # the reason is kept as text
    assert len(refs) == 2 and refs[1]() is None


def test_an_error_returned_by_the_watchdog_leaves_nothing_alive(no_cyclic_gc: None) -> None:
    refs: list[weakref.ref] = []

    def decode() -> None:
        reader = Reader()
        refs.append(weakref.ref(reader))
        raise DecodeError("cannot decode")

    with pytest.raises(DecodeError, match="cannot decode"):
        call_with_timeout(decode, 10.0, "clip.mp4")
    assert refs[0]() is None


def test_an_abandoned_decode_that_fails_later_leaves_nothing_alive(no_cyclic_gc: None) -> None:
    refs: list[weakref.ref] = []
    release = threading.Event()

    def decode() -> None:
        release.wait(30.0)
        reader = Reader()
        refs.append(weakref.ref(reader))
        raise DecodeError("cannot decode")

    with pytest.raises(SampleFault, match="decode_timeout_s"):
        call_with_timeout(decode, 0.05, "clip.mp4")
    release.set()
    deadline = time.monotonic() + 30.0
    while abandoned_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert abandoned_alive() == 0 and len(refs) == 1 and refs[0]() is None
