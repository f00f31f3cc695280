"""This project's own evaluation files: generated shards and synth-schema record lists.

* ``synth``   — generated shards ``DIR/{split}-%06d.tar`` (see docs/architecture.md),
* ``records`` — a JSON list of records in the same schema as the synth json (``data.niah`` writes these).

These are files this project writes, so a malformed row is an error (AnnotationError naming the
file, the row and the field), not an exclusion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.benchmarks.common import EVAL_TASKS, LETTERS, AnnotationError, EvalSample, type_names

if TYPE_CHECKING:
    from data.shards import RawSample


def _need(row: dict[str, Any], key: str, path: Path, where: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch `row[key]`, checking presence and type, else raise AnnotationError."""
    if not isinstance(row, dict):
        raise AnnotationError(path, where, key, f"row is {type(row).__name__}, expected an object")
    if key not in row or row[key] is None:
        raise AnnotationError(path, where, key, "missing")
    val = row[key]
    if not isinstance(val, kind) or isinstance(val, bool):
        raise AnnotationError(path, where, key, f"expected {type_names(kind)}, got {type(val).__name__}")
    return val


def _read_json_list(path: Path) -> list[Any]:
    """Parse a json file that must hold a list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"line {exc.lineno}", "<json>", f"invalid JSON: {exc.msg}") from exc
    if not isinstance(data, list):
        raise AnnotationError(path, "top level", "<json>", f"expected a list, got {type(data).__name__}")
    return data


def _letter_of(ans: str, n_options: int, path: Path, where: str, key: str = "answer") -> str:
    """Validate a ground-truth letter against the number of options."""
    letter = ans.strip().strip("().").upper()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise AnnotationError(path, where, key, f"{ans!r} is not one of {list(LETTERS[:n_options])}")
    return letter


# ---------------------------------------------------- synth shards and record lists
# an option line of the question: "A. text", "A) text" or "(A) text" (MLVU's and LVBench's labels)
_PROMPT_OPTION = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.)])\s+(.*)$", re.MULTILINE)


def record_to_sample(rec: Any, path: Path, where: str, video: str, source: str) -> EvalSample | None:
    """Convert one synth-schema record (json of a shard sample) to an EvalSample (None: not an eval task)."""
    task = _need(rec, "task", path, where, str)
    if task not in EVAL_TASKS:
        return None
    convs = _need(rec, "conversations", path, where, list)
    human = next((c for c in convs if isinstance(c, dict) and c.get("from") == "human"), None)
    if human is None or not isinstance(human.get("value"), str):
        raise AnnotationError(path, where, "conversations", "no human turn with a string 'value'")
    prompt = human["value"].replace("<image>", "").strip()
    answer = _need(rec, "answer", path, where, dict)
    options = [m.group(3).strip() for m in _PROMPT_OPTION.finditer(prompt)]
    sample = EvalSample(
        sample_id=str(rec.get("id", where)), video=video, task=task, question=prompt, source=source,
        options=options, prompt=prompt, duration=float(rec["duration"]) if isinstance(rec.get("duration"), (int, float)) else None,
        metadata={k: v for k, v in rec.items() if k not in ("conversations", "answer")},
    )
    first = convs[0] if convs and isinstance(convs[0], dict) else {}
    if first.get("from") == "system" and isinstance(first.get("value"), str):  # as in training (model.sequence)
        sample.metadata["system_prompt"] = first["value"]
    if isinstance(answer.get("type"), str):  # synth question family
        sample.metadata.setdefault("question_type", answer["type"])
    if task == "grounding":
        span = answer.get("span")
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, (int, float)) for x in span)):
            raise AnnotationError(path, where, "answer.span", f"expected [start, end] seconds, got {span!r}")
        sample.span = (float(span[0]), float(span[1]))
    else:
        letter = answer.get("letter")
        if not isinstance(letter, str):
            raise AnnotationError(path, where, "answer.letter", f"expected a letter, got {letter!r}")
        sample.answer = _letter_of(letter, len(options) or 4, path, where, "answer.letter")
        if task == "needle":
            depth = answer.get("depth")
            if not isinstance(depth, (int, float)):
                raise AnnotationError(path, where, "answer.depth", f"expected a number, got {depth!r}")
            sample.metadata["depth"] = float(depth)
    return sample


def read_records(path: str | Path, video_root: str | Path | None = None) -> list[EvalSample]:
    """A JSON list of synth-schema records; ``video`` is resolved against `video_root` (default: the file's folder)."""
    path = Path(path)
    root = Path(video_root) if video_root else path.parent
    out = []
    for i, rec in enumerate(_read_json_list(path)):
        video = _need(rec, "video", path, f"row {i}", str)
        s = record_to_sample(rec, path, f"row {i}", str(root / video), "records")
        if s is not None:
            out.append(s)
    return out


def read_synth_shards(shard_dir: str | Path, extract_dir: str | Path, split: str = "test") -> list[EvalSample]:
    """Eval-task samples (mcq, grounding, needle) of ``shard_dir/{split}-*.tar``; videos are written to `extract_dir`.

    Shards are streamed one sample at a time with `data.shards.iter_shard`: only known member keys
    are read, anything else (``.pyd``, ``.pickle``, ...) is skipped unread.
    """
    from data.shards import SHARD_READ_ERRORS, iter_shard  # webdataset: imported only when shards are read

    shards = sorted(Path(shard_dir).glob(f"{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards {split}-*.tar under {shard_dir} (split={split!r})")
    extract = Path(extract_dir)
    extract.mkdir(parents=True, exist_ok=True)
    out: list[EvalSample] = []
    for shard in shards:
        raws = iter_shard(str(shard))
        while True:
            try:
                raw = next(raws, None)
            except SHARD_READ_ERRORS as exc:
                raise ValueError(f"{shard}: unreadable tar shard ({type(exc).__name__}: {exc})") from exc
            if raw is None:
                break
            sample = _synth_sample(raw, shard, extract)
            if sample is not None:
                out.append(sample)
    return out


def _synth_sample(raw: RawSample, shard: Path, extract: Path) -> EvalSample | None:
    """The eval sample of one shard sample (None for a training-only task); its mp4 is written to `extract`."""
    where = f"sample {raw.key}"
    if "json" not in raw.members:
        raise AnnotationError(shard, where, "json", "sample has no json member")
    try:
        rec = json.loads(raw.members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(shard, where, "json", f"invalid JSON: {exc}") from exc
    if not isinstance(rec, dict):
        raise AnnotationError(shard, where, "json", f"expected an object, got {type(rec).__name__}")
    if rec.get("task") not in EVAL_TASKS:
        return None
    if "mp4" not in raw.members:
        raise AnnotationError(shard, where, "mp4", f"task {rec.get('task')!r} sample has no mp4 member")
    vpath = extract / f"{raw.key.replace('/', '_')}.mp4"
    vpath.write_bytes(raw.members["mp4"])
    return record_to_sample(rec, shard, where, str(vpath), "synth")
