"""One training step of the framework (DeepSpeed engine forward/backward/step through the stage's
TrainModule) against a bare torch loop (forward, backward, clip, AdamW) on the same tiny model and
batch. Prints median step times and their ratio (goal <= 1.10).

`python -m train.bench [--deepspeed zero2] [--zero-option contiguous_gradients=false] [--steps 20] [--precision fp32] [--frames 8] [--text 96]`

`python -m train.bench --packing [--batch 4] [--rows 1] [--max-tokens N] [--videos 48]`: tokens/s of packed against
right-padded micro-batches on the generated 16-48-frame mix (goal >= 1.3x).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from train.config import DeepSpeedConfig, LoopConfig, ScheduleConfig
from train.engine import build_engine, deepspeed_config, init_distributed, read_dist_env
from train.objectives import TrainModule
from train.optim import build_optimizer, build_schedule, param_groups, set_trainable

MODULES = ["vision_tower", "dts", "projector", "llm"]
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def make_batch(cfg: Any, frames: int, text: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch of one sample: `text` random tokens around the visual block of `frames` frames."""
    g = torch.Generator().manual_seed(seed)
    groups = frames // cfg.frames_per_group
    vocab = cfg.text_config.vocab_size
    words = torch.randint(16, vocab, (text,), generator=g)
    pads = torch.full((groups * cfg.tokens_per_group,), cfg.vision_pad_token_id)
    ids = torch.cat([words[: text // 4], pads, words[text // 4:]])[None]
    labels = ids.clone()
    labels[ids == cfg.vision_pad_token_id] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(frames, 3, cfg.image_size, cfg.image_size, generator=g)}


def timed(fn: Any, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def packing_bench(args: argparse.Namespace) -> dict[str, float]:
    """Tokens/s of training steps on the generated 16-48-frame mix, right-padded micro-batches of
    `--batch` samples against packed micro-batches of `--rows` rows of at most `--max-tokens` tokens (default:
    batch x the longest sample / rows, the padded batch's worst-case footprint). Same samples, same model and
    AdamW; loading is done before the timing; the loss is the token-weighted sum (train.trainer). `--model`:
    tiny or wide (model/bench_prefill.py: a 512-wide LLM, 36 tokens per group)."""
    import subprocess
    import sys
    import tempfile

    from data.loader import build_loader
    from model import VideoXL2ForCausalLM, load_tokenizer
    from model.bench_prefill import preset_config
    from model.packing import supervised_targets

    cfg, tok = preset_config(args.model), load_tokenizer("tiny")
    data_dir = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="packbench-"))
    if not args.data:
        subprocess.run([sys.executable, "-m", "data.synth", "--out", str(data_dir), "--videos", str(args.videos),
                        "--seed", "0"], check=True, capture_output=True)
    data = {"root": str(data_dir), "train": [{"shards": "train-*.tar"}], "shuffle_buffer": 16}

    def batches(**kw: Any) -> list[dict[str, Any]]:
        loader = build_loader(data, tok, cfg, split="train", loop=False, num_workers=0, seed=0,
                              frames_upbound=48, **kw)
        return list(loader)

    padded = batches(batch_size=args.batch)
    longest = max(int(b["attention_mask"].sum(1).max()) for b in padded)
    max_tokens = args.max_tokens or args.batch * longest // args.rows
    packed = batches(batch_size=args.rows, packing=max_tokens)
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids", "segment_ids")
    torch.manual_seed(0)
    base = VideoXL2ForCausalLM(cfg)
    runs = {"padded": padded, "packed": packed}
    steps = {}
    for name in runs:
        module = TrainModule(copy.deepcopy(base), "lm", packing=name == "packed").train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step(b: dict[str, Any], module: TrainModule = module, opt: Any = opt) -> None:
            loss = module(**{k: b[k] for k in keys if k in b}, reduction="sum") / supervised_targets(b["labels"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
        for b in runs[name][: args.warmup]:
            step(b)
    cpu = dict.fromkeys(runs, 0.0)
    for _ in range(args.epochs):  # alternate whole passes so that load changes hit both
        for name, batches_ in runs.items():
            t0 = time.process_time()  # CPU seconds of this process: robust on shared cores
            for b in batches_:
                steps[name](b)
            cpu[name] += time.process_time() - t0
    out: dict[str, float] = {}
    for name, batches_ in runs.items():
        tokens = args.epochs * sum(float(b["attention_mask"].sum()) for b in batches_)
        slots = args.epochs * sum(float(b["input_ids"].numel()) for b in batches_)
        out[f"{name}_tokens_per_s"] = tokens / cpu[name]
        out[f"{name}_padding"] = 1 - tokens / slots
        out[f"{name}_micro_batches"] = float(len(batches_))
    out["speedup"] = out["packed_tokens_per_s"] / out["padded_tokens_per_s"]
    print(f"model={args.model} (CPU seconds, {args.epochs} passes) samples={sum(len(b['sample_ids']) for b in padded)} (16-48 frames): padded "
          f"{args.batch}/micro-batch {out['padded_tokens_per_s']:.0f} tokens/s (padding {out['padded_padding']:.1%}, "
          f"{len(padded)} micro-batches); packed {args.rows} rows x {max_tokens} tokens "
          f"{out['packed_tokens_per_s']:.0f} tokens/s (padding {out['packed_padding']:.1%}, {len(packed)} "
          f"micro-batches); packed/padded {out['speedup']:.2f}x (goal >= 1.3)")
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepspeed", default="zero2", help="conf/deepspeed/<name>.yaml to run the framework with")
    parser.add_argument("--zero", type=int, default=None, help="override the ZeRO stage of --deepspeed")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--text", type=int, default=96)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--zero-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra zero_optimization entry (YAML value), e.g. contiguous_gradients=false")
    parser.add_argument("--packing", action="store_true", help="tokens/s packed vs padded on the generated mix")
    parser.add_argument("--batch", type=int, default=4, help="--packing: samples per padded micro-batch")
    parser.add_argument("--rows", type=int, default=1, help="--packing: rows per packed micro-batch")
    parser.add_argument("--max-tokens", type=int, default=0, help="--packing: tokens per packed row (0: auto)")
    parser.add_argument("--videos", type=int, default=24, help="--packing: generated videos")
    parser.add_argument("--epochs", type=int, default=2, help="--packing: timed passes over the samples")
    parser.add_argument("--data", default=None, help="--packing: an existing data.synth output dir")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from model.presets import load_preset_dict

    try:
        load_preset_dict(args.model)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--model: {exc}")
    if not (CONF_DIR / "deepspeed" / f"{args.deepspeed}.yaml").is_file():
        parser.error(f"--deepspeed: no conf/deepspeed/{args.deepspeed}.yaml")
    if args.packing:
        return packing_bench(args)

    from model import VideoXL2ForCausalLM, build_preset

    torch.manual_seed(0)
    cfg = build_preset(args.model)
    base = VideoXL2ForCausalLM(cfg)
    batch = make_batch(cfg, args.frames, args.text, seed=0)
    lr = {m: 1e-4 for m in MODULES}
    loop = LoopConfig(grad_clip=1.0)

    # framework: DeepSpeed engine over the same module, with the stage's schedule
    init_distributed(read_dist_env())
    fw = TrainModule(copy.deepcopy(base), "lm")
    set_trainable(fw.trainable_modules(), MODULES)
    opt = build_optimizer(param_groups(fw.trainable_modules(), lr, 0.0), (0.9, 0.999), 1e-8)
    sched = build_schedule(ScheduleConfig(name="constant", warmup_ratio=0.0), 10**6)
    conf = yaml.safe_load((CONF_DIR / "deepspeed" / f"{args.deepspeed}.yaml").read_text())
    extra = dict(conf.get("zero_optimization") or {})
    for item in args.zero_option:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    zero = conf["zero_stage"] if args.zero is None else args.zero
    ds = DeepSpeedConfig(zero_stage=zero, precision=args.precision, zero_optimization=extra)
    engine = build_engine(fw, opt, sched, deepspeed_config(ds, loop))
    engine.train()
    dev = torch.device(engine.device)  # both loops run on the device DeepSpeed chose
    fw_batch = {k: v.to(dev) for k, v in batch.items()}

    def fw_step() -> None:
        loss = engine(**fw_batch)
        engine.backward(loss)
        engine.step()

    # bare torch: same module wrapper, forward/backward/clip/AdamW, constant lr, same device
    bare = TrainModule(copy.deepcopy(base), "lm")
    set_trainable(bare.trainable_modules(), MODULES)
    bare.train()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    bare.to(device=dev, dtype=dtype)
    bare_opt = torch.optim.AdamW(param_groups(bare.trainable_modules(), lr, 0.0), betas=(0.9, 0.999), eps=1e-8)
    bare_batch = {k: v.to(dev, dtype=dtype) if v.is_floating_point() else v.to(dev) for k, v in batch.items()}

    def bare_step() -> None:
        loss = bare(**bare_batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), loop.grad_clip)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    timed(bare_step, args.warmup)
    timed(fw_step, args.warmup)
    bare_t: list[float] = []
    fw_t: list[float] = []
    for _ in range(args.steps):  # interleave so that load changes on a shared machine hit both
        bare_t += timed(bare_step, 1)
        fw_t += timed(fw_step, 1)
    result = {"bare_ms": statistics.median(bare_t) * 1e3, "framework_ms": statistics.median(fw_t) * 1e3,
              "bare_min_ms": min(bare_t) * 1e3, "framework_min_ms": min(fw_t) * 1e3}
    result["ratio"] = result["framework_ms"] / result["bare_ms"]
    result["ratio_min"] = result["framework_min_ms"] / result["bare_min_ms"]
    print(f"device={dev} model={args.model} deepspeed={args.deepspeed} zero={zero} precision={args.precision} frames={args.frames} text={args.text} "
          f"steps={args.steps}: median bare {result['bare_ms']:.2f} / framework {result['framework_ms']:.2f} ms "
          f"(ratio {result['ratio']:.3f}); best bare {result['bare_min_ms']:.2f} / framework "
          f"{result['framework_min_ms']:.2f} ms (ratio {result['ratio_min']:.3f}); goal <= 1.10")
    return result


if __name__ == "__main__":
    main()
