"""Convert a released Video-XL-2 checkpoint (official tensor names) into this project's format.

    python -m model.convert_official --src RELEASED_DIR --dst OUT_DIR [--config PRESET] [--allow-missing]

Reads `model.safetensors` or shards listed in `model.safetensors.index.json`, renames tensors
(`model.sae.*` -> `dts.*`, `model.mm_projector.*` -> `projector.*`,
`model.vision_tower.vision_tower.vision_model.*` -> `vision_tower.*`, `model.*`/`lm_head.*` -> `llm.*`),
checks every shape against the target config, and writes a directory that
`VideoXL2ForCausalLM.from_pretrained` loads (config.json + safetensors shards + index). The target
uses `dts_layout: released`. `model.text_mlp.*` exists only in inference code and is reported as unused.
Shards are converted one at a time, so memory stays at about one shard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checks import check_weights, read_config
from .config import VideoXL2Config
from .modeling import VideoXL2ForCausalLM
from .presets import build_preset
from .weights import (
    KeyReport,
    ShardWriter,
    copy_planned,
    expected_shapes,
    plan_keys,
    tensor_shapes,
    weight_files,
)

# (official prefix, local prefix); first match wins, None = known but unused.
KEY_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.sae.", "dts."),
    ("model.mm_projector.", "projector."),
    ("model.text_mlp.", None),
    ("lm_head.", "llm.lm_head."),
    ("model.", "llm.model."),
)
# Released config.json fields copied onto text_config (Qwen2).
TEXT_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "hidden_act",
    "bos_token_id", "eos_token_id", "attention_dropout", "use_sliding_window", "sliding_window",
    "max_window_layers",
)
ConversionReport = KeyReport  # outcome of a conversion: key accounting and where the result went


def map_key(official: str) -> tuple[str | None, bool]:
    """Official tensor name -> (local name or None, known). Known-but-unused keys give (None, True)."""
    for prefix, local in KEY_PREFIXES:
        if official.startswith(prefix):
            return (None if local is None else local + official[len(prefix):]), True
    return None, False


def config_from_released(released: dict, shapes: dict[str, tuple[int, ...]], base: VideoXL2Config) -> VideoXL2Config:
    """Target config: `base` with the released config.json's LLM fields and the checkpoint's vision depth."""
    projector_type = released.get("mm_projector_type", "mlp2x_gelu")
    if projector_type != "mlp2x_gelu":
        raise ValueError(f"config.json mm_projector_type={projector_type!r}: only 'mlp2x_gelu' is supported")
    data = base.to_dict()
    text = data["text_config"]
    for name in TEXT_FIELDS:
        if name in released:
            text[name] = released[name]
    if "rope_theta" in released:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(released["rope_theta"])}
    if released.get("rope_scaling"):
        raise ValueError(f"config.json rope_scaling={released['rope_scaling']!r}: plain RoPE expected")
    vision = data["vision_config"]
    layer_prefix = "model.vision_tower.vision_tower.vision_model.encoder.layers."
    layers = {int(k[len(layer_prefix):].split(".")[0]) for k in shapes if k.startswith(layer_prefix)}
    if layers:
        vision["num_hidden_layers"] = max(layers) + 1
    if "mm_hidden_size" in released and int(released["mm_hidden_size"]) != int(vision["hidden_size"]):
        raise ValueError(
            f"config.json mm_hidden_size={released['mm_hidden_size']} != vision_config.hidden_size "
            f"{vision['hidden_size']} of the base preset"
        )
    data["dts_layout"] = "released"
    return VideoXL2Config.from_dict(data)


def convert(src: str | Path, dst: str | Path, config: VideoXL2Config | None = None,
            allow_missing: bool = False) -> ConversionReport:
    """Convert the checkpoint in `src` into `dst`; `config` defaults to the mapped released config.json.

    Raises ValueError naming the tensor on any shape mismatch, and on missing tensors unless
    `allow_missing` (then `from_pretrained` initialises them); `model.checks.ModelFileError` (a ValueError)
    naming the file when a weights file is truncated or corrupt.
    """
    src, dst = Path(src), Path(dst)
    check_weights(src)
    shapes = tensor_shapes(src)
    if config is None:
        released_path = src / "config.json"
        if not released_path.is_file():
            raise FileNotFoundError(f"{released_path} not found; pass a preset with --config")
        config = config_from_released(read_config(src), shapes, build_preset("videoxl2_7b"))
    else:
        config = VideoXL2Config.from_dict({**config.to_dict(), "dts_layout": "released"})
    expected = expected_shapes(config)

    report = ConversionReport(dst=str(dst))
    plan = plan_keys(shapes, map_key, expected, report)
    report.missing = sorted(set(expected) - set(plan.values()))
    if report.missing and not allow_missing:
        raise ValueError(f"checkpoint lacks {len(report.missing)} tensors of the model: {report.missing[:20]}")

    writer = ShardWriter(dst)
    report.converted = copy_planned(weight_files(src), plan, writer)
    writer.finish()
    config.dtype = writer.dtype
    config.architectures = [VideoXL2ForCausalLM.__name__]
    config.save_pretrained(str(dst))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m model.convert_official", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="released checkpoint directory")
    parser.add_argument("--dst", required=True, help="output directory (save_pretrained format)")
    parser.add_argument("--config", default=None,
                        help="preset name or YAML path; default maps the released config.json")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the output even if model tensors are missing (they get initialised on load)")
    args = parser.parse_args(argv)
    try:
        config = build_preset(args.config) if args.config else None
        report = convert(args.src, args.dst, config=config, allow_missing=args.allow_missing)
    except (ValueError, FileNotFoundError) as err:
        print(f"conversion failed: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
