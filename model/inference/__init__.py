"""Long-video inference: chunked prefill, bi-level KV decoding, greedy generation.

Public API: :func:`generate_video`, :class:`GenerationResult`, :class:`GenerationStats`,
:class:`VideoLayout`, :class:`VisualCache`.
"""

from model.inference.generate import GenerationResult, generate_video
from model.inference.layout import VideoLayout
from model.inference.stats import GenerationStats
from model.inference.visual import VisualCache

__all__ = ["GenerationResult", "GenerationStats", "VideoLayout", "VisualCache", "generate_video"]
