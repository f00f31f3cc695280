"""Safetensors checkpoints on disk: shard lists, tensor shapes, key mapping with a report, shard writing.

Shared by the released-checkpoint converter (`model.convert_official`) and the assembler of pretrained
parts (`model.assemble`): both read a source directory shard by shard, map every source tensor name onto
this model's names, check every shape against the target config before copying anything, and write a
`from_pretrained` directory (safetensors shards + `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import VideoXL2Config

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# source name -> (local name or None, known); (None, True) = known but not used by this model
KeyMapper = Callable[[str], tuple[str | None, bool]]


class TensorShapeError(ValueError):
    """A source tensor's shape differs from what the target model expects (names both)."""


def weight_files(src: str | Path) -> list[Path]:
    """The directory's safetensors files, from `model.safetensors.index.json` when there is one.

    Raises FileNotFoundError when the directory holds neither an index nor `model.safetensors`.
    """
    src = Path(src)
    index = src / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [src / name for name in sorted(set(weight_map.values()))]
    single = src / SINGLE_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{src} holds neither {INDEX_NAME} nor {SINGLE_NAME}")


def tensor_shapes(src: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for every tensor of the directory's checkpoint (reads headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(src):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


# safetensors dtype names of floating tensors -> torch dtypes
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def stored_dtype(src: str | Path, name: str) -> torch.dtype:
    """Torch dtype of the floating tensor `name` as stored in the directory's safetensors files (header
    only). Raises KeyError when no file holds it, ValueError for a non-floating dtype."""
    for path in weight_files(src):
        with safe_open(str(path), framework="pt") as f:
            if name in f.keys():
                code = f.get_slice(name).get_dtype()
                if code not in FLOAT_DTYPES:
                    raise ValueError(f"{path}: tensor {name} is stored as {code}, expected a floating dtype")
                return FLOAT_DTYPES[code]
    raise KeyError(name)


def expected_shapes(config: VideoXL2Config) -> dict[str, tuple[int, ...]]:
    """Local tensor name -> shape for the persistent state of a model built from `config` (on meta)."""
    from .modeling import VideoXL2ForCausalLM

    with torch.device("meta"):
        model = VideoXL2ForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class KeyReport:
    """Key accounting of a conversion: copied count, target tensors not found, source tensors not used."""

    converted: int = 0
    missing: list[str] = field(default_factory=list)  # local names the source lacks
    unexpected: list[str] = field(default_factory=list)  # source names that map onto nothing of the model
    unused: list[str] = field(default_factory=list)  # source names known and deliberately not used
    dst: str = ""

    def summary(self) -> str:
        """Human-readable multi-line summary (first 20 names of each list)."""
        lines = [f"converted {self.converted} tensors -> {self.dst}"]
        for name in ("missing", "unexpected", "unused"):
            keys = getattr(self, name)
            lines.append(f"{name} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
        return "\n".join(lines)


def plan_keys(shapes: Mapping[str, tuple[int, ...]], map_key: KeyMapper, expected: Mapping[str, tuple[int, ...]],
              report: KeyReport, source: str = "checkpoint") -> dict[str, str]:
    """Source name -> local name for every source tensor that maps onto a tensor of the model.

    Known-but-unused names go to `report.unused`, names mapping onto nothing to `report.unexpected`.
    Raises TensorShapeError naming both tensors and both shapes on the first shape mismatch, and
    ValueError when two source tensors map onto the same local name.
    """
    plan: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name, shape in shapes.items():
        local, known = map_key(name)
        if local is None:
            (report.unused if known else report.unexpected).append(name)
        elif local not in expected:
            report.unexpected.append(name)
        elif tuple(expected[local]) != tuple(shape):
            raise TensorShapeError(
                f"shape mismatch for {name} -> {local}: {source} {list(shape)}, model {list(expected[local])}"
            )
        elif local in taken:
            raise ValueError(f"{name} and {taken[local]} both map onto {local}")
        else:
            plan[name] = local
            taken[local] = name
    return plan


class ShardWriter:
    """Writes a model directory's weights one shard at a time, then the index.

    `add` saves one shard per call (so memory stays at one shard); `finish` names the shards
    `model-0000i-of-0000N.safetensors` (or `model.safetensors` when there is one) and writes
    `model.safetensors.index.json` for several.
    """

    def __init__(self, dst: str | Path) -> None:
        self.dst = Path(dst)
        self.dst.mkdir(parents=True, exist_ok=True)
        self._parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.dtype: torch.dtype | None = None  # dtype of the first tensor written

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Save `tensors` (local names) as the next shard; an empty mapping writes nothing."""
        if not tensors:
            return
        path = self.dst / f".part-{len(self._parts):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
        self._parts.append((path, list(tensors)))
        self.total_bytes += sum(v.numel() * v.element_size() for v in tensors.values())
        self.dtype = self.dtype or next(iter(tensors.values())).dtype

    def finish(self) -> dict[str, str]:
        """Rename the shards to their final names, write the index when needed; returns the weight map."""
        n = len(self._parts)
        weight_map: dict[str, str] = {}
        for i, (path, keys) in enumerate(self._parts):
            name = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.replace(self.dst / name)
            weight_map.update(dict.fromkeys(keys, name))
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.dst / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return weight_map


def copy_planned(src_files: list[Path], plan: Mapping[str, str], writer: ShardWriter,
                 dtype: torch.dtype | None = None) -> int:
    """Copy the planned tensors, one output shard per source file; `dtype` None keeps each tensor's own.

    Returns the number of tensors copied. Tensors are read with the safetensors library (no pickle).
    """
    copied = 0
    for path in src_files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in plan:
                    tensor = f.get_tensor(name)
                    tensors[plan[name]] = tensor if dtype is None else tensor.to(dtype)
        writer.add(tensors)
        copied += len(tensors)
    return copied
