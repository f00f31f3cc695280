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
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import VideoXL2Config
from .modeling import VideoXL2ForCausalLM
from .presets import build_preset

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
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


@dataclass
class ConversionReport:
    """Outcome of a conversion: key accounting and where the result went."""

    converted: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    dst: str = ""

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"converted {self.converted} tensors -> {self.dst}"]
        for name in ("missing", "unexpected", "unused"):
            keys = getattr(self, name)
            lines.append(f"{name} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
        return "\n".join(lines)


def map_key(official: str) -> tuple[str | None, bool]:
    """Official tensor name -> (local name or None, known). Known-but-unused keys give (None, True)."""
    for prefix, local in KEY_PREFIXES:
        if official.startswith(prefix):
            return (None if local is None else local + official[len(prefix):]), True
    return None, False


def shard_files(src: Path) -> list[Path]:
    """The checkpoint's safetensors files, from the index when there is one."""
    index = src / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [src / name for name in sorted(set(weight_map.values()))]
    single = src / SINGLE_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{src} holds neither {INDEX_NAME} nor {SINGLE_NAME}")


def official_shapes(src: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for every tensor of the checkpoint (reads headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in shard_files(src):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


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


def expected_shapes(config: VideoXL2Config) -> dict[str, tuple[int, ...]]:
    """Local tensor name -> shape for the persistent state of a model built from `config` (on meta)."""
    with torch.device("meta"):
        model = VideoXL2ForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert(src: str | Path, dst: str | Path, config: VideoXL2Config | None = None,
            allow_missing: bool = False) -> ConversionReport:
    """Convert the checkpoint in `src` into `dst`; `config` defaults to the mapped released config.json.

    Raises ValueError naming the tensor on any shape mismatch, and on missing tensors unless
    `allow_missing` (then `from_pretrained` initialises them).
    """
    src, dst = Path(src), Path(dst)
    shapes = official_shapes(src)
    if config is None:
        released_path = src / "config.json"
        if not released_path.is_file():
            raise FileNotFoundError(f"{released_path} not found; pass a preset with --config")
        config = config_from_released(json.loads(released_path.read_text()), shapes,
                                      build_preset("videoxl2_7b"))
    else:
        config = VideoXL2Config.from_dict({**config.to_dict(), "dts_layout": "released"})
    expected = expected_shapes(config)

    report = ConversionReport(dst=str(dst))
    plan: dict[str, str] = {}
    for official, shape in shapes.items():
        local, known = map_key(official)
        if local is None:
            (report.unused if known else report.unexpected).append(official)
        elif local not in expected:
            report.unexpected.append(official)
        elif expected[local] != shape:
            raise ValueError(
                f"shape mismatch for {official} -> {local}: checkpoint {list(shape)}, model {list(expected[local])}"
            )
        else:
            plan[official] = local
    report.missing = sorted(set(expected) - set(plan.values()))
    if report.missing and not allow_missing:
        raise ValueError(f"checkpoint lacks {len(report.missing)} tensors of the model: {report.missing[:20]}")

    dst.mkdir(parents=True, exist_ok=True)
    files = shard_files(src)
    weight_map: dict[str, str] = {}
    total_bytes = 0
    dtype = None
    for i, path in enumerate(files):
        out_name = SINGLE_NAME if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for official in f.keys():
                if official in plan:
                    tensor = f.get_tensor(official).contiguous()
                    tensors[plan[official]] = tensor
                    weight_map[plan[official]] = out_name
                    total_bytes += tensor.numel() * tensor.element_size()
                    dtype = dtype or tensor.dtype
        if tensors:
            save_file(tensors, str(dst / out_name), metadata={"format": "pt"})
        report.converted += len(tensors)
    if len(files) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2))
    config.dtype = dtype
    config.architectures = [VideoXL2ForCausalLM.__name__]
    config.save_pretrained(str(dst))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="released checkpoint directory")
    parser.add_argument("--dst", required=True, help="output directory (save_pretrained format)")
    parser.add_argument("--config", default=None,
                        help="preset name or YAML path; default maps the released config.json")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the output even if model tensors are missing (they get initialised on load)")
    args = parser.parse_args(argv)
    config = build_preset(args.config) if args.config else None
    try:
        report = convert(args.src, args.dst, config=config, allow_missing=args.allow_missing)
    except (ValueError, FileNotFoundError) as err:
        print(f"conversion failed: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
