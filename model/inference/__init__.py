"""Long-video inference: chunked prefill, bi-level KV decoding, greedy generation.

Public API: :func:`generate_video`, :class:`GenerationResult`, :class:`GenerationStats`,
:class:`VideoLayout`.
"""

from model.inference.generate import GenerationResult, generate_video
from model.inference.layout import VideoLayout
from model.inference.stats import GenerationStats

__all__ = ["GenerationResult", "GenerationStats", "VideoLayout", "generate_video"]
