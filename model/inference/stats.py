"""Generation statistics and the peak-memory probe.

Peak memory is the process resident-set high-water mark (Linux ``VmHWM``) reset right before the
measured phase via ``/proc/self/clear_refs`` (value 5), reported as the delta over the RSS at the
start of the phase. Where the reset is not permitted, the fallback is ``ru_maxrss`` (lifetime
high-water; the delta is then a lower bound) and ``method`` says so.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class GenerationStats:
    """What one :func:`generate_video` call cost."""

    prefill: str
    decode: str
    prompt_tokens: int
    pair_density: float  # allowed (q, k) pairs / causal pairs over the prompt
    kept_kv_bytes: int  # KV cache bytes of the prompt when decoding starts
    full_kv_bytes: int  # the same for a full (uncompacted) cache
    prefill_seconds: float  # wall: vision + prefill of the prompt (bilevel: of system + video only)
    decode_seconds: float  # wall: (bilevel: relevance scoring, compaction, question encoding) + token loop
    prefill_cpu_seconds: float  # process CPU time of the same phase (robust on shared cores)
    decode_cpu_seconds: float
    vision_seconds: float  # part of prefill_seconds spent in model.encode_frames
    prefill_peak_bytes: int  # RSS high-water delta during prefill
    decode_peak_bytes: int  # RSS high-water delta during decoding
    memory_method: str
    dense_chunks: list[int] | None = None

    @property
    def kv_ratio(self) -> float:
        """Kept / full KV bytes."""
        return self.kept_kv_bytes / max(self.full_kv_bytes, 1)

    def as_dict(self) -> dict:
        """Plain dict (with ``kv_ratio``)."""
        d = asdict(self)
        d["kv_ratio"] = self.kv_ratio
        return d


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager measuring a phase's wall and CPU time and its memory high-water delta: device
    memory (`torch.cuda.max_memory_allocated`) when `device` is a CUDA device, else host RSS."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.peak_bytes = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.method = "VmHWM reset via /proc/self/clear_refs"
        self._start_rss = 0
        self._t0 = 0.0
        self._c0 = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            self.method = "torch.cuda.max_memory_allocated"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_rss = torch.cuda.memory_allocated(self.device)
            self._t0 = time.perf_counter()
            self._c0 = time.process_time()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            start = _status_kib("VmRSS")
            if start is None:
                raise OSError("no /proc/self/status")
            self._start_rss = start
        except OSError:
            self.method = "ru_maxrss (not resettable; lower bound)"
            self._start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0
        if self.cuda:
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start_rss)
            return
        if self.method.startswith("VmHWM"):
            peak = _status_kib("VmHWM") or self._start_rss
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_bytes = max(0, peak - self._start_rss) * 1024
