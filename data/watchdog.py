"""A time limit on one sample's decoding (``data.decode_timeout_s``).

The decode runs in a fresh daemon thread of the calling process (a loader worker process, or the
main process with ``num_workers: 0``); the caller waits at most ``timeout_s`` seconds for it. A decode
that has not returned by then is abandoned: the caller raises a ``decode_timeout`` fault (the sample is
skipped and counted) and goes on with the next sample. A thread cannot be killed, so the abandoned
decode keeps running in the background until it returns (its result is dropped) or the process ends;
it does not block the loader, because decord (ctypes) and PyAV release the GIL inside FFmpeg, and it
does not keep the process alive at exit (daemon thread). Each decode that hangs for good costs one
idle thread; :func:`abandoned_alive` says how many such threads are still running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from data.faults import DECODE_TIMEOUT, SampleFault

T = TypeVar("T")

_abandoned: list[threading.Thread] = []


def call_with_timeout(fn: Callable[[], T], timeout_s: float | None, where: str) -> T:
    """``fn()`` if it returns (or raises) within ``timeout_s`` seconds; None: no limit, no thread.

    Raises :class:`~data.faults.SampleFault` ``decode_timeout`` naming ``where`` when the limit passes;
    an exception raised by ``fn`` propagates unchanged.
    """
    if timeout_s is None:
        return fn()
    box: dict[str, object] = {}
    lock = threading.Lock()
    abandoned = [False]

    # An abandoned decode's result or error is dropped by its own thread: kept in `box`, an error's
    # traceback (which holds run()'s frame, and so `box`) would make a reference cycle keeping the decode's
    # objects, decoder readers included, alive until a cyclic collection frees them in some other thread
    # (see data.sampling._detached).
    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the waiting caller
            with lock:
                if not abandoned[0]:
                    box["error"] = exc
            return
        with lock:
            if not abandoned[0]:
                box["value"] = value

    thread = threading.Thread(target=run, name=f"decode {where}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        with lock:
            abandoned[0] = True
            box.clear()
        _abandoned[:] = [t for t in _abandoned if t.is_alive()] + [thread]
        raise SampleFault(DECODE_TIMEOUT, f"{where}: decoding took longer than data.decode_timeout_s = "
                                          f"{timeout_s} s; abandoned ({len(_abandoned)} abandoned decodes still "
                                          "running in this process)")
    # popped, not read, for the same reason
    if "error" in box:
        raise box.pop("error")  # type: ignore[misc]
    return box.pop("value")  # type: ignore[return-value]


def abandoned_alive() -> int:
    """How many decodes abandoned by :func:`call_with_timeout` in this process are still running."""
    return sum(1 for t in _abandoned if t.is_alive())
