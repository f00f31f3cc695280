"""Benchmark full vs chunked prefill and full vs bi-level decoding on random-weight presets.

    python -m model.bench_prefill --frames 64,256,1024 --preset tiny|wide

Every measurement runs in a fresh subprocess (clean RSS high-water mark) after a 16-frame warm-up
of the same path (its freed heap handed back with malloc_trim). The LLM runs use random visual embeddings; the "vision" run streams random
pixel frames chunk by chunk through ``model.encode_frames`` (chunked prefill + bi-level decoding).
``wide`` = the tiny preset with a 512-wide, 8-head LLM and a 12x12 grid (36 tokens per group).
Columns: pair density (allowed / causal pairs); prefill CPU seconds (single thread, robust on shared
cores) full and chunked, their ratio, the wall-time ratio, the FLOP-predicted ratio and
``eff`` = cpu ratio / FLOP ratio (goal <= 1.3); prefill peak RSS delta ("pk") and that minus the
prompt's KV store ("act", activation memory, should stay flat for chunked); kept/full KV bytes of
bi-level decoding; decode wall seconds; streamed vision seconds and activation peak; "kv_r@144":
the kept/full KV count for the released layout (144 visual tokens per group), top_k=4.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys

import torch

RUNS = ("full", "chunked", "bilevel", "vision")


def preset_config(name: str):
    """The model config of a bench preset."""
    from model import build_preset

    if name == "tiny":
        return build_preset("tiny")
    if name == "wide":
        return build_preset(
            "tiny", interp_grid=12,
            text_config={"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8,
                         "num_key_value_heads": 2, "num_hidden_layers": 4},
        )
    raise ValueError(f"unknown bench preset {name!r} (tiny | wide)")


def _prompt(cfg, frames: int):
    from model import load_tokenizer
    from model.sequence import build_sequence

    groups = frames // cfg.frames_per_group
    conv = [{"from": "human", "value": "<image>\nWhich event happens after the red ball appears? "
                                        "Answer with the letter of the option."}]
    return build_sequence(load_tokenizer("tiny"), conv, [4.0 * g for g in range(groups)], groups,
                          cfg.tokens_per_group, for_generation=True)


def _generate(model, cfg, frames: int, run: str, new_tokens: int):
    from model.inference import generate_video

    built = _prompt(cfg, frames)
    groups = frames // cfg.frames_per_group
    prefill = "full" if run == "full" else "chunked"
    decode = "bilevel" if run in ("bilevel", "vision") else "full"
    kw = dict(layout=built, prefill=prefill, decode=decode, max_new_tokens=new_tokens, eos_token_id=None)
    if run == "vision":
        fpg, size = cfg.frames_per_group, cfg.image_size

        def frames_for(g0: int, g1: int) -> torch.Tensor:
            gen = torch.Generator().manual_seed(g0)
            return torch.rand((g1 - g0) * fpg, 3, size, size, generator=gen) * 2 - 1

        return generate_video(model, built.input_ids, frames_for, **kw)
    vis = torch.randn(groups, cfg.tokens_per_group, cfg.text_config.hidden_size)
    return generate_video(model.llm, built.input_ids, None, visual_embeds=vis, **kw)


def _release_freed_heap() -> None:
    """Return memory freed by the warm-up to the OS (glibc malloc_trim) so the measured run's RSS
    high-water delta is not hidden by reuse of already-resident heap pages."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(preset: str, frames: int, run: str, new_tokens: int) -> dict:
    """One measurement (after a 16-frame warm-up of the same path); returns the stats dict."""
    from model import VideoXL2ForCausalLM

    torch.manual_seed(0)
    cfg = preset_config(preset)
    model = VideoXL2ForCausalLM(cfg).eval()
    _generate(model, cfg, 16, run, 2)
    _release_freed_heap()
    out = _generate(model, cfg, frames, run, new_tokens).stats.as_dict()
    tc = cfg.text_config
    head_dim = tc.hidden_size // tc.num_attention_heads
    q_dim, kv_dim = tc.num_attention_heads * head_dim, tc.num_key_value_heads * head_dim
    linear = 2 * (tc.hidden_size * (2 * q_dim + 2 * kv_dim) + 3 * tc.hidden_size * tc.intermediate_size)
    causal = out["prompt_tokens"] * (out["prompt_tokens"] + 1) // 2
    pairs = out["pair_density"] * causal
    out["flops"] = tc.num_hidden_layers * (out["prompt_tokens"] * linear + 4 * q_dim * pairs)
    out["store_bytes"] = out["full_kv_bytes"]
    return out


def released_layout_kv_ratio(frames: int, top_k: int = 4, kv_pool: int = 4, chunk_groups: int = 4) -> float:
    """Kept/full KV of bi-level decoding for the released token layout (144 visual tokens per group,
    timestamps from the tiny tokenizer) with ``top_k`` middle chunks dense: a pure layout count (all
    full chunks have the same size, so which chunks are dense does not change it)."""
    from model import load_tokenizer
    from model.inference.bilevel import compaction_map
    from model.inference.layout import VideoLayout
    from model.sequence import build_sequence

    groups = frames // 4
    built = build_sequence(load_tokenizer("tiny"), [{"from": "human", "value": "<image>\nQuestion?"}],
                           [1.0 * 4 * g for g in range(groups)], groups, 144, for_generation=True)
    layout = VideoLayout.from_tensors(built.token_kind, built.group_index)
    n = layout.num_chunks(chunk_groups)
    dense = sorted({0, n - 1, *range(1, min(n - 1, 1 + top_k))})
    _, kept = compaction_map(layout, chunk_groups, dense, kv_pool)
    return (kept + layout.suffix_length) / layout.length


def _spawn(preset: str, frames: int, run: str, new_tokens: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "model.bench_prefill", "--worker", preset, str(frames), run, str(new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker failed ({preset}, {frames}, {run}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def report(preset: str, frames: list[int], new_tokens: int) -> None:
    """Run every measurement for one preset and print the table."""
    print(f"preset={preset} (random weights, {new_tokens} new tokens, chunk_groups=4 prev_chunks=3 "
          f"top_k=4 kv_pool=4)")
    head = ("frames", "tokens", "density", "full_cpu_s", "chunk_cpu_s", "cpu_r", "wall_r", "flop_r", "eff",
            "full_pk_MiB", "chunk_pk_MiB", "full_act_MiB", "chunk_act_MiB", "kv_r", "dec_full_s", "dec_bi_s",
            "vis_s", "vis_act_MiB", "kv_r@144")
    print(" | ".join(head))
    for n in frames:
        r = {run: _spawn(preset, n, run, new_tokens) for run in RUNS}
        f, c, b, v = r["full"], r["chunked"], r["bilevel"], r["vision"]
        cpu_r = c["prefill_cpu_seconds"] / f["prefill_cpu_seconds"]
        flop_r = c["flops"] / f["flops"]
        row = (n, f["prompt_tokens"], f"{c['pair_density']:.3f}", f"{f['prefill_cpu_seconds']:.2f}",
               f"{c['prefill_cpu_seconds']:.2f}", f"{cpu_r:.2f}",
               f"{c['prefill_seconds'] / f['prefill_seconds']:.2f}", f"{flop_r:.2f}", f"{cpu_r / flop_r:.2f}",
               _mib(f["prefill_peak_bytes"]), _mib(c["prefill_peak_bytes"]),
               _mib(f["prefill_peak_bytes"] - f["store_bytes"]), _mib(c["prefill_peak_bytes"] - c["store_bytes"]),
               f"{b['kv_ratio']:.3f}", f"{c['decode_seconds']:.2f}", f"{b['decode_seconds']:.2f}",
               f"{v['vision_seconds']:.2f}", _mib(v["prefill_peak_bytes"] - v["store_bytes"]),
               f"{released_layout_kv_ratio(n):.3f}")
        print(" | ".join(str(x) for x in row), flush=True)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="64,256,1024", help="comma-separated frame counts (multiples of 16)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "wide"])
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--worker", nargs=4, metavar=("PRESET", "FRAMES", "RUN", "NEW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        preset, n, run, new = args.worker
        torch.set_num_threads(1)
        print(json.dumps(worker(preset, int(n), run, int(new))))
        return
    try:
        frames = [int(x) for x in args.frames.split(",") if x]
    except ValueError as exc:
        raise SystemExit(f"--frames must be comma-separated ints: {exc}") from exc
    if not frames or any(n <= 0 or n % 16 for n in frames):
        raise SystemExit("--frames must be positive multiples of 16 (4 frames per group, 4 groups per chunk)")
    report(args.preset, frames, args.new_tokens)


if __name__ == "__main__":
    main()
