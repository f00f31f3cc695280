"""Checks of a model directory before anything is loaded: config, weights files, tokenizer files.

`check_model_dir(path, model_types=...)` reads only JSON and safetensors headers (no tensor data), so it
runs in milliseconds even for a 7B checkpoint and fails before any compute. Every problem raises
`ModelFileError` (a ValueError) whose message is one line naming the file and what is wrong, e.g.
`/ckpt/model-00002-of-00004.safetensors: truncated: the header declares 3.9 GB of tensor data, the file
holds 1.2 GB`. The safetensors layout (8-byte little-endian header length, JSON header of
`{name: {dtype, shape, data_offsets}}`, then the data) is from the format's specification
(https://github.com/huggingface/safetensors#format).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .weights import INDEX_NAME, SINGLE_NAME

# bytes per element of each safetensors dtype
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
               "F8_E8M0": 1, "C64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
# A fast tokenizer needs tokenizer.json, or the BPE files it can be built from.
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class ModelFileError(ValueError):
    """A model directory's file is missing, unreadable, truncated or of the wrong kind; one-line message
    `<path>: <what is wrong>`."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def _size(n: int) -> str:
    return f"{n} bytes" if n < 10**6 else f"{n / 1e6:.1f} MB ({n} bytes)"


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of one safetensors file, after checking that the file holds exactly the data it
    declares: every tensor's byte range matches its dtype and shape, the ranges tile the data section,
    and the file is neither shorter (truncated) nor longer than that.

    Raises ModelFileError naming the file. Returns {tensor name: {"dtype", "shape", "data_offsets"}}
    (without `__metadata__`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(path, f"truncated: {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES:
            raise ModelFileError(path, f"corrupt: header length {header_len} is implausible (not a safetensors file?)")
        if 8 + header_len > size:
            raise ModelFileError(path, f"truncated: the header declares {_size(header_len)} of metadata, "
                                       f"the file holds {_size(size - 8)} after the length")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"corrupt: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "corrupt: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    ranges = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"corrupt: header entry of tensor {name!r} is malformed") from None
        if dtype not in DTYPE_BYTES:
            raise ModelFileError(path, f"corrupt: tensor {name!r} has unknown dtype {dtype!r}")
        if end - begin != numel * DTYPE_BYTES[dtype]:
            raise ModelFileError(path, f"corrupt: tensor {name!r} ({dtype} {shape}) spans {end - begin} bytes, "
                                       f"needs {numel * DTYPE_BYTES[dtype]}")
        ranges.append((begin, end, name))
    ranges.sort()
    pos = 0
    for begin, end, name in ranges:
        if begin != pos:
            raise ModelFileError(path, f"corrupt: tensor {name!r} starts at byte {begin} of the data, expected {pos}")
        pos = end
    held = size - 8 - header_len
    if held < pos:
        raise ModelFileError(path, f"truncated: the header declares {_size(pos)} of tensor data, "
                                   f"the file holds {_size(held)}")
    if held > pos:
        raise ModelFileError(path, f"corrupt: {held - pos} bytes after the last tensor's data")
    return header


def check_weights(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Check every safetensors file of `model_dir` (the index's shards, or `model.safetensors`): the index
    parses and lists existing shards that hold the tensors it maps to them; each file's header is readable
    and its data length matches. Returns tensor name -> shape over all files.

    A directory with only `pytorch_model*.bin` weights is left to the loader (which reads them with
    torch's weights-only unpickler); returns {} then. Raises ModelFileError naming the file.
    """
    root = Path(model_dir)
    index = root / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(index, f"corrupt: not valid JSON ({exc})") from None
        except (KeyError, TypeError):
            raise ModelFileError(index, "corrupt: no 'weight_map' of tensor name -> shard file") from None
        by_file: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            by_file.setdefault(str(shard), []).append(tensor)
        shapes: dict[str, tuple[int, ...]] = {}
        for shard, tensors in sorted(by_file.items()):
            if not (root / shard).is_file():
                raise ModelFileError(index, f"lists shard {shard!r} (for {tensors[0]} ...), which does not exist")
            header = read_safetensors_header(root / shard)
            absent = [t for t in tensors if t not in header]
            if absent:
                raise ModelFileError(root / shard, f"lacks tensor {absent[0]!r} that {INDEX_NAME} maps to it "
                                                   f"({len(absent)} missing)")
            shapes.update({k: tuple(v["shape"]) for k, v in header.items()})
        return shapes
    single = root / SINGLE_NAME
    if single.is_file():
        return {k: tuple(v["shape"]) for k, v in read_safetensors_header(single).items()}
    if any(root.glob("pytorch_model*.bin")):
        return {}
    raise ModelFileError(root, f"holds no weights ({SINGLE_NAME}, or {INDEX_NAME} with its shards)")


def read_config(model_dir: str | Path, model_types: Sequence[str] = (),
                architectures: Sequence[str] = (), what: str = "model") -> dict[str, Any]:
    """`model_dir/config.json` as a dict, checked to declare one of `model_types` (when given) and, if it
    lists `architectures`, one of `architectures` (when given). `what` names the expected part in the
    message (e.g. "--llm"). Raises ModelFileError naming config.json."""
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise ModelFileError(model_dir, "directory not found")
    if not path.is_file():
        raise ModelFileError(path, "not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"corrupt: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "corrupt: not a JSON object")
    model_type = data.get("model_type")
    archs = data.get("architectures") or []
    if model_types and model_type not in model_types:
        raise ModelFileError(path, f"model_type {model_type!r} (architectures {archs}): {what} needs "
                                   f"model_type {' or '.join(repr(t) for t in model_types)}")
    if architectures and archs and not set(archs) & set(architectures):
        raise ModelFileError(path, f"architectures {archs}: {what} needs {' or '.join(architectures)}")
    return data


def check_tokenizer_files(model_dir: str | Path) -> None:
    """The directory holds a fast tokenizer's files (`tokenizer.json`, or `vocab.json` + `merges.txt`).
    Raises ModelFileError naming the directory."""
    root = Path(model_dir)
    if not any(all((root / name).is_file() for name in files) for files in TOKENIZER_FILE_SETS):
        raise ModelFileError(root, "holds no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")


def check_model_dir(model_dir: str | Path, model_types: Sequence[str] = (), architectures: Sequence[str] = (),
                    tokenizer: bool = False, what: str = "model") -> dict[str, Any]:
    """config.json (kind checked as in `read_config`), every weights file (`check_weights`) and, with
    `tokenizer`, a tokenizer that loads with `model.load_tokenizer` (required tokens present).

    Returns the parsed config.json. Raises ModelFileError with a one-line message naming the file.
    """
    config = read_config(model_dir, model_types, architectures, what)
    check_weights(model_dir)
    if tokenizer:
        from .tokenizer import load_tokenizer

        load_tokenizer(model_dir)
    return config


def check_videoxl2_dir(model_dir: str | Path, tokenizer: bool = False, what: str = "model") -> None:
    """`check_model_dir` for a VideoXL2ForCausalLM directory (model_type `videoxl2`), plus: its config.json
    builds a valid `VideoXL2Config`, and its safetensors files hold every tensor of the model that config
    describes with the described shape (a tied LM head may be absent), so that `from_pretrained` can
    neither fail on a shape nor silently initialise tensors the directory lacks.

    Raises ModelFileError (one line naming the file).
    """
    from .config import VideoXL2Config
    from .weights import expected_shapes

    check_model_dir(model_dir, model_types=("videoxl2",), tokenizer=tokenizer, what=what)
    root = Path(model_dir)
    try:
        config = VideoXL2Config.from_pretrained(str(root))
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(root / "config.json", str(exc).strip().splitlines()[0]) from None
    shapes = check_weights(root)
    if not shapes:  # pytorch_model*.bin: left to the weights-only loader
        return
    expected = expected_shapes(config)
    optional = {"llm.lm_head.weight"} if config.text_config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(shapes) - optional)
    if missing:
        raise ModelFileError(root, f"the weights lack {len(missing)} tensors of the model config.json describes, "
                                   f"e.g. {missing[:3]}")
    for name, shape in expected.items():
        if name in shapes and tuple(shapes[name]) != tuple(shape):
            raise ModelFileError(root, f"tensor {name} is {list(shapes[name])} in the weights, config.json "
                                       f"describes {list(shape)}")
