"""Long-video inference: chunked prefill, bi-level KV decoding, generation."""
