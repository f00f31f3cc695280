"""Assemble a Video-XL-2 model from pretrained parts: a SigLIP vision checkpoint and a Qwen2 causal LM.

    python -m model.assemble --vision DIR --llm DIR --out DIR [--tokenizer DIR]
        [--config PRESET_OR_YAML] [--dtype bf16|fp32|keep] [--seed N]

The released recipe starts from SigLIP-SO400M/384 and Qwen2.5-7B-Instruct (spec, "Architecture" 3 and
"Training"). This writes the directory that `stage=dts stage.init_from=DIR` (or `python -m train.pipeline
... stage.init_from=DIR`) starts from:
- `--vision`: a SigLIP directory as downloaded: a full `SiglipModel` (vision weights under `vision_model.`,
  the text tower, `logit_scale`/`logit_bias` unused) or a bare `SiglipVisionModel` (with or without that
  prefix). Its vision config becomes `vision_config` with the last encoder layer dropped (a 27-layer
  so400m keeps 26), so the encoder's last hidden state is the source's second-to-last layer output; the
  pooling head is not used and the post-layernorm is kept but never applied (`model/vision.py`).
- `--llm`: a `Qwen2ForCausalLM` directory (config.json, safetensors shards + index); its config becomes
  `text_config` unchanged: the embedding keeps all its rows (151,936 or 152,064 for Qwen2.5, more than the
  tokenizer's tokens), `vocab_size` stays equal to the embedding and head widths, a tied head stays tied.
- `--config`: the remaining fields (frames_per_group, interp_grid, video_pool, dts_*); default
  `videoxl2_7b`. Image mean/std come from the SigLIP directory's `preprocessor_config.json` when present.
  DTS and the projector start fresh (the model's own init, seeded by `--seed`).
- The tokenizer comes from the LLM directory or `--tokenizer`, must hold `<|vision_pad|>`, `<|im_start|>`,
  `<|im_end|>`, and gives `vision_pad_token_id`; its files are saved into `--out`.
- `--dtype keep` (default) writes every copied tensor bit for bit as in its source (fresh tensors take the
  LLM's dtype); `bf16`/`fp32` cast everything.

Every part is checked before anything is written (`model.checks`): config kind, readable and complete
safetensors files, tokenizer. Every source tensor is mapped by name and its shape compared with the target
model's; a mismatch fails naming the tensor and both shapes, a model tensor the parts lack fails, unused
and unexpected source tensors are reported (also in `assemble_info.json`). Shards are copied one at a
time, so memory stays at about one source shard. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Qwen2Config, SiglipVisionConfig

from .checks import ModelFileError, check_weights, read_config
from .config import VideoXL2Config
from .modeling import VideoXL2ForCausalLM
from .presets import build_preset
from .tokenizer import load_tokenizer
from .weights import (
    KeyMapper,
    KeyReport,
    ShardWriter,
    copy_planned,
    expected_shapes,
    plan_keys,
    stored_dtype,
    weight_files,
)

VISION_TYPES = ("siglip", "siglip_vision_model")
VISION_ARCHITECTURES = ("SiglipModel", "SiglipVisionModel")
LLM_TYPES = ("qwen2",)
LLM_ARCHITECTURES = ("Qwen2ForCausalLM",)
FRESH_MODULES = ("dts", "projector")
DTYPES: dict[str, torch.dtype | None] = {"keep": None, "bf16": torch.bfloat16, "fp32": torch.float32}
VISION_PROBE = "embeddings.patch_embedding.weight"
FULL_SIGLIP_PREFIX = "vision_model."
SIGLIP_UNUSED = ("text_model.", "logit_scale", "logit_bias")
HEAD_KEY = "llm.lm_head.weight"
PREPROCESSOR_NAME = "preprocessor_config.json"
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass
class AssemblyReport:
    """What `assemble` did: per-part key accounting, the fresh tensors, the resolved ids and dtype."""

    dst: str
    vision: KeyReport
    llm: KeyReport
    fresh: list[str] = field(default_factory=list)
    vision_prefix: str = ""
    vision_layers_source: int = 0
    vision_layers_kept: int = 0
    tied_head: bool = False
    vocab_size: int = 0
    tokenizer_tokens: int = 0
    vision_pad_token_id: int = 0
    dtype: str = ""

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"assembled -> {self.dst} ({self.dtype})",
                 f"vision: {self.vision.converted} tensors (prefix {self.vision_prefix or '(none)'!r}), "
                 f"layers {self.vision_layers_kept} of {self.vision_layers_source} kept",
                 f"llm: {self.llm.converted} tensors, vocab_size {self.vocab_size} (tokenizer {self.tokenizer_tokens} "
                 f"tokens), head {'tied' if self.tied_head else 'untied'}",
                 f"fresh: {len(self.fresh)} tensors ({', '.join(FRESH_MODULES)}); vision_pad_token_id "
                 f"{self.vision_pad_token_id}"]
        for part in ("vision", "llm"):
            report: KeyReport = getattr(self, part)
            for name in ("missing", "unexpected", "unused"):
                keys = getattr(report, name)
                lines.append(f"{part} {name} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}")
        return "\n".join(lines)


def vision_config_of(raw: dict, config_path: Path) -> tuple[SiglipVisionConfig, int]:
    """(vision config with the last encoder layer dropped, source layer count) from a SigLIP config.json
    (`siglip`: its `vision_config`; `siglip_vision_model`: the whole file)."""
    if raw.get("model_type") == "siglip":
        if not isinstance(raw.get("vision_config"), dict):
            raise ModelFileError(config_path, "model_type 'siglip' without a vision_config object")
        raw = raw["vision_config"]
    cfg = SiglipVisionConfig.from_dict(raw)
    layers = int(cfg.num_hidden_layers)
    if layers < 2:
        raise ModelFileError(config_path, f"num_hidden_layers {layers}: the vision tower needs at least 2 layers "
                                          "(the last one is dropped)")
    data = cfg.to_dict()
    data["num_hidden_layers"] = layers - 1
    data["vision_use_head"] = False
    return SiglipVisionConfig.from_dict(data), layers


def normalisation_of(vision_dir: Path) -> dict[str, list[float]]:
    """`image_mean` / `image_std` from the SigLIP directory's `preprocessor_config.json` when it has one
    (SigLIP's are 0.5 / 0.5, as in the presets), else {} (the preset's values stand)."""
    path = vision_dir / PREPROCESSOR_NAME
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        out = {k: [float(v) for v in raw[k]] for k in ("image_mean", "image_std") if k in raw}
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise ModelFileError(path, f"corrupt: {exc}") from None
    if any(len(v) != 3 for v in out.values()):
        raise ModelFileError(path, f"image_mean/image_std must have 3 values, got {out}")
    return out


def vision_prefix(shapes: dict[str, tuple[int, ...]], vision_dir: Path) -> str:
    """`vision_model.` (a full SiglipModel, or an older SiglipVisionModel) or `` (a bare SiglipVisionModel):
    the prefix under which the checkpoint holds the patch embedding. Raises ModelFileError when neither
    holds it, so a load that would copy nothing is impossible."""
    if FULL_SIGLIP_PREFIX + VISION_PROBE in shapes:
        return FULL_SIGLIP_PREFIX
    if VISION_PROBE in shapes:
        return ""
    raise ModelFileError(vision_dir, f"holds no SigLIP vision tensors: neither {FULL_SIGLIP_PREFIX}{VISION_PROBE} "
                                     f"(SiglipModel) nor {VISION_PROBE} (SiglipVisionModel)")


def vision_mapper(prefix: str, dropped_layer: int) -> KeyMapper:
    """SigLIP tensor name -> `vision_tower.*`; the dropped layer, the pooling head and (of a full SiglipModel)
    the text tower and logit scale/bias are known but unused."""

    def map_key(name: str) -> tuple[str | None, bool]:
        if prefix and name.startswith(SIGLIP_UNUSED):
            return None, True
        if not name.startswith(prefix):
            return None, False
        rest = name[len(prefix):]
        layer = _LAYER.match(rest)
        if (layer and int(layer.group(1)) == dropped_layer) or rest.startswith("head."):
            return None, True
        return "vision_tower." + rest, True

    return map_key


def llm_mapper(tied: bool) -> KeyMapper:
    """Qwen2ForCausalLM tensor name -> `llm.*`; with a tied head a stored `lm_head.weight` is unused."""

    def map_key(name: str) -> tuple[str | None, bool]:
        if name.startswith("lm_head."):
            return (None, True) if tied else ("llm." + name, True)
        if name.startswith("model."):
            return "llm." + name, True
        return None, False

    return map_key


def source_layers(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """Encoder layers present in a SigLIP checkpoint (highest index + 1)."""
    found = [int(m.group(1)) for k in shapes if k.startswith(prefix) and (m := _LAYER.match(k[len(prefix):]))]
    return max(found) + 1 if found else 0


def fresh_tensors(config: VideoXL2Config, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Freshly initialised DTS and projector tensors (the model's own `_init_weights`, applied to those
    modules only, with torch's RNG seeded by `seed` inside a forked RNG state), cast to `dtype`."""
    with torch.device("meta"):
        model = VideoXL2ForCausalLM(config)
    out: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in FRESH_MODULES:
            module = getattr(model, name)
            module.to_empty(device="cpu")
            module.apply(model._initialize_weights)
            out.update({f"{name}.{k}": v.detach().to(dtype) for k, v in module.state_dict().items()})
    return out


def target_config(vision_cfg: SiglipVisionConfig, llm_raw: dict, vision_pad_token_id: int,
                  config: str | Path = "videoxl2_7b", extra: dict | None = None) -> VideoXL2Config:
    """The assembled model's config: `vision_cfg` (layers kept) as `vision_config`, the LLM's config.json
    (`llm_raw`) as `text_config` unchanged, the other fields from the preset `config`, then `extra`.
    Raises ValueError naming the field when the result is inconsistent."""
    data = build_preset(config).to_dict()
    data.update(vision_config=vision_cfg.to_dict(), text_config=Qwen2Config.from_dict(llm_raw).to_dict(),
                vision_pad_token_id=vision_pad_token_id, tokenizer=None, **(extra or {}))
    return VideoXL2Config.from_dict(data)


def _fail_missing(part: str, path: Path, missing: list[str]) -> None:
    if missing:
        raise ModelFileError(path, f"{part} lacks {len(missing)} tensors of the model, e.g. {missing[:5]}")


def assemble(vision: str | Path, llm: str | Path, out: str | Path, tokenizer: str | Path | None = None,
             config: str | Path = "videoxl2_7b", dtype: str = "keep", seed: int = 0) -> AssemblyReport:
    """Write a `from_pretrained` directory at `out` from the SigLIP part `vision` and the Qwen2 part `llm`
    (module docstring). Nothing is written until every check passed.

    Raises `model.checks.ModelFileError` (a ValueError, one line naming the file) for a missing, truncated
    or corrupt file, a part of the wrong kind, a missing tokenizer or a tensor the model needs but the part
    lacks; `model.weights.TensorShapeError` naming the tensor and both shapes; ValueError for a bad
    `dtype`, a non-empty `out`, or an inconsistent resulting config (naming the field).
    """
    vision, llm, out = Path(vision), Path(llm), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out: {out} exists and is not an empty directory")

    vision_raw = read_config(vision, VISION_TYPES, VISION_ARCHITECTURES, "--vision (SigLIP)")
    vision_shapes = check_weights(vision)
    llm_raw = read_config(llm, LLM_TYPES, LLM_ARCHITECTURES, "--llm (Qwen2ForCausalLM)")
    llm_shapes = check_weights(llm)
    for part, path, shapes in (("--vision", vision, vision_shapes), ("--llm", llm, llm_shapes)):
        if not shapes:
            raise ModelFileError(path, f"{part} holds only pytorch_model*.bin weights; safetensors are needed")

    tok_dir = Path(tokenizer) if tokenizer is not None else llm
    try:
        tok = load_tokenizer(tok_dir)
    except ModelFileError as exc:
        hint = "" if tokenizer is not None else "; pass --tokenizer DIR"
        raise ModelFileError(exc.path, exc.problem + hint) from None
    pad_id = int(tok.convert_tokens_to_ids("<|vision_pad|>"))

    vision_cfg, layers = vision_config_of(vision_raw, vision / "config.json")
    prefix = vision_prefix(vision_shapes, vision)
    stored = source_layers(vision_shapes, prefix)
    if stored != layers:
        raise ModelFileError(vision / "config.json", f"num_hidden_layers {layers}, but the weights hold {stored} "
                                                     "encoder layers")
    target = target_config(vision_cfg, llm_raw, pad_id, config, normalisation_of(vision))
    vocab = int(target.text_config.vocab_size)
    if len(tok) > vocab:
        raise ModelFileError(llm / "config.json", f"vocab_size {vocab} is smaller than the tokenizer's {len(tok)} "
                                                  f"tokens ({tok_dir})")
    tied = bool(target.text_config.tie_word_embeddings)
    expected = expected_shapes(target)

    report = AssemblyReport(dst=str(out), vision=KeyReport(dst=str(out)), llm=KeyReport(dst=str(out)),
                            vision_prefix=prefix, vision_layers_source=layers, vision_layers_kept=layers - 1,
                            tied_head=tied, vocab_size=vocab, tokenizer_tokens=len(tok), vision_pad_token_id=pad_id)
    vision_plan = plan_keys(vision_shapes, vision_mapper(prefix, layers - 1), expected, report.vision,
                            source=f"{vision} (--vision)")
    llm_plan = plan_keys(llm_shapes, llm_mapper(tied), expected, report.llm, source=f"{llm} (--llm)")
    report.vision.missing = sorted(k for k in expected if k.startswith("vision_tower.")
                                   and k not in set(vision_plan.values()))
    report.llm.missing = sorted(k for k in expected if k.startswith("llm.") and k not in set(llm_plan.values())
                                and not (tied and k == HEAD_KEY))
    _fail_missing("--vision", vision, report.vision.missing)
    _fail_missing("--llm", llm, report.llm.missing)

    cast = DTYPES[dtype]
    embed = "llm.model.embed_tokens.weight"
    embed_src = next(k for k, v in llm_plan.items() if v == embed)
    fresh_dtype = cast or stored_dtype(llm, embed_src)
    fresh = fresh_tensors(target, seed, fresh_dtype)
    if set(fresh) != {k for k in expected if k.startswith(tuple(f"{m}." for m in FRESH_MODULES))}:
        raise RuntimeError("fresh DTS/projector tensors do not cover the model's DTS/projector state")

    writer = ShardWriter(out)
    report.vision.converted = copy_planned(weight_files(vision), vision_plan, writer, cast)
    report.llm.converted = copy_planned(weight_files(llm), llm_plan, writer, cast)
    writer.add(fresh)
    writer.finish()
    report.fresh = sorted(fresh)
    report.dtype = str(fresh_dtype).removeprefix("torch.")
    target.dtype = fresh_dtype
    target.architectures = [VideoXL2ForCausalLM.__name__]
    target.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    info = {"vision": str(vision), "llm": str(llm), "tokenizer": str(tok_dir), "config": str(config),
            "seed": seed, **asdict(report)}
    (out / "assemble_info.json").write_text(json.dumps(info, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 with one line on stderr for bad input)."""
    parser = argparse.ArgumentParser(prog="python -m model.assemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", required=True, help="SigLIP directory (SiglipModel or SiglipVisionModel)")
    parser.add_argument("--llm", required=True, help="Qwen2ForCausalLM directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="output directory (created; must be empty)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the --llm directory)")
    parser.add_argument("--config", default="videoxl2_7b",
                        help="preset name or YAML for the DTS/grouping fields (default videoxl2_7b)")
    parser.add_argument("--dtype", default="keep", choices=sorted(DTYPES),
                        help="keep: each copied tensor as stored; bf16 / fp32: cast everything")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh DTS and projector")
    args = parser.parse_args(argv)
    try:
        report = assemble(args.vision, args.llm, args.out, tokenizer=args.tokenizer, config=args.config,
                          dtype=args.dtype, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"assemble failed: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
