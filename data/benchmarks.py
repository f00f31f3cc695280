"""Readers that normalise evaluation annotations into one `EvalSample` type.

Supported sources (all read from local files; field names are those of the published releases
as this project understands them — the assumptions are stated per reader):

* ``synth``    — this project's generated shards ``DIR/{split}-%06d.tar`` (see docs/architecture.md),
* ``records``  — a JSON list of records in the same schema as the synth json (``data.niah`` writes these),
* ``mlvu``     — MLVU dev multiple-choice json,
* ``videomme`` — Video-MME rows (parquet, json list or jsonl),
* ``lvbench``  — LVBench ``video_info.meta.jsonl``,
* ``charades`` — Charades-STA ``vid start end##sentence`` lines.

A malformed row raises `AnnotationError` naming the file, the row/line and the field.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.shards import SHARD_READ_ERRORS, RawSample, iter_shard

EVAL_TASKS: tuple[str, ...] = ("mcq", "grounding", "needle")
LETTERS = "ABCDEFGHIJ"
DEFAULT_MCQ_TEMPLATE = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
DEFAULT_GROUNDING_TEMPLATE = (
    'Give the query: "{question}", when does the described content occur in the video? '
    'Answer in the form "From <start> to <end> seconds."'
)


class AnnotationError(ValueError):
    """A malformed annotation: the message names the file, the row/line and the field."""

    def __init__(self, path: str | Path, where: str, field_name: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: field '{field_name}': {problem}")


@dataclass
class EvalSample:
    """One evaluation question about one video.

    `question` is the bare question; `options` the option texts without letter prefixes
    (option i has letter ``LETTERS[i]``); `prompt`, when set, is the exact user text to use
    (after the ``<image>`` tag) instead of formatting `question`/`options` with a template.
    `answer` is the ground-truth letter (mcq, needle), `span` the [start, end] seconds (grounding).
    """

    sample_id: str
    video: str
    task: str
    question: str
    source: str
    options: list[str] = field(default_factory=list)
    answer: str | None = None
    span: tuple[float, float] | None = None
    duration: float | None = None
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        """Option letters of this sample (``"ABCD"`` when options are unknown)."""
        return LETTERS[: len(self.options)] if self.options else "ABCD"


def format_prompt(sample: EvalSample, mcq_template: str, grounding_template: str) -> str:
    """User-turn text for `sample`: its own `prompt` if set, else the task's template filled in.

    Templates use ``{question}`` and ``{options}`` (lines ``"A. text"``); grounding uses ``{question}``.
    """
    if sample.prompt is not None:
        return sample.prompt
    if sample.task == "grounding":
        return grounding_template.format(question=sample.question)
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options))
    return mcq_template.format(question=sample.question, options=opts)


def _need(row: dict[str, Any], key: str, path: Path, where: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch `row[key]`, checking presence and type, else raise AnnotationError."""
    if not isinstance(row, dict):
        raise AnnotationError(path, where, key, f"row is {type(row).__name__}, expected an object")
    if key not in row or row[key] is None:
        raise AnnotationError(path, where, key, "missing")
    val = row[key]
    if not isinstance(val, kind) or isinstance(val, bool):
        raise AnnotationError(path, where, key, f"expected {kind}, got {type(val).__name__}")
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


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """Parse a jsonl file into (line number, object) pairs, skipping blank lines."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"line {lineno}", "<json>", f"invalid JSON: {exc.msg}") from exc
    return rows


def _letter_of(ans: str, n_options: int, path: Path, where: str, key: str = "answer") -> str:
    """Validate a ground-truth letter against the number of options."""
    letter = ans.strip().strip("().").upper()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise AnnotationError(path, where, key, f"{ans!r} is not one of {list(LETTERS[:n_options])}")
    return letter


# --------------------------------------------------------------------------- MLVU
def read_mlvu(path: str | Path, video_root: str | Path) -> list[EvalSample]:
    """MLVU dev multiple-choice json (a file or a directory of ``*.json`` task files).

    Assumed row fields: ``video`` (file name), ``question``, ``candidates`` (list of option
    texts), ``answer`` (the *text* of the correct candidate), optional ``duration`` (seconds)
    and ``question_type``. Videos are looked up at ``video_root/<json stem>/<video>`` (the
    release's per-task folders) and otherwise ``video_root/<video>``.
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out: list[EvalSample] = []
    for f in files:
        for i, row in enumerate(_read_json_list(f)):
            where = f"row {i}"
            video = _need(row, "video", f, where, str)
            question = _need(row, "question", f, where, str)
            cands = _need(row, "candidates", f, where, list)
            if not 2 <= len(cands) <= len(LETTERS) or not all(isinstance(c, str) for c in cands):
                raise AnnotationError(f, where, "candidates", f"expected 2..{len(LETTERS)} strings")
            answer = _need(row, "answer", f, where, str)
            if answer not in cands:
                raise AnnotationError(f, where, "answer", f"{answer!r} is not among the candidates")
            dur = row.get("duration")
            per_task = Path(video_root) / f.stem / video
            vpath = per_task if per_task.exists() else Path(video_root) / video
            out.append(EvalSample(
                sample_id=f"mlvu/{f.stem}/{i}", video=str(vpath), task="mcq", question=question,
                source="mlvu", options=list(cands), answer=LETTERS[cands.index(answer)],
                duration=float(dur) if isinstance(dur, (int, float)) else None,
                metadata={"question_type": row.get("question_type", f.stem)},
            ))
    return out


# ------------------------------------------------------------------------ VideoMME
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-J])[.):]\s*")


def _videomme_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a Video-MME file: parquet (via pyarrow), a json list or jsonl."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if path.suffix == ".jsonl":
        return [(f"line {n}", r) for n, r in _read_jsonl(path)]
    return [(f"row {i}", r) for i, r in enumerate(_read_json_list(path))]


def read_videomme(path: str | Path, video_root: str | Path) -> list[EvalSample]:
    """Video-MME (no subtitles) rows from parquet, json or jsonl.

    Assumed fields: ``videoID`` (YouTube id; video file ``video_root/<videoID>.mp4``),
    ``question_id``, ``question``, ``options`` (``["A. ...", "B. ...", ...]``), ``answer`` (letter),
    ``duration`` (category ``short|medium|long``), optional ``task_type``, ``domain``.
    """
    path = Path(path)
    out: list[EvalSample] = []
    for where, row in _videomme_rows(path):
        vid = _need(row, "videoID", path, where, str)
        question = _need(row, "question", path, where, str)
        raw_opts = _need(row, "options", path, where, (list, tuple))
        options = []
        for j, opt in enumerate(raw_opts):
            m = _OPTION_PREFIX.match(opt) if isinstance(opt, str) else None
            if m is None or m.group(1) != LETTERS[j]:
                raise AnnotationError(path, where, "options", f"option {j} {opt!r} does not start with '{LETTERS[j]}.'")
            options.append(opt[m.end():])
        answer = _letter_of(_need(row, "answer", path, where, str), len(options), path, where)
        qid = row.get("question_id") or f"{vid}-{where}"
        out.append(EvalSample(
            sample_id=f"videomme/{qid}", video=str(Path(video_root) / f"{vid}.mp4"), task="mcq",
            question=question, source="videomme", options=options, answer=answer,
            metadata={k: row[k] for k in ("duration", "task_type", "domain", "sub_category") if k in row},
        ))
    return out


# ------------------------------------------------------------------------- LVBench
_LV_OPTION = re.compile(r"\n?\s*\(([A-J])\)\s*")


def _parse_clock(text: str) -> float:
    """``"HH:MM:SS"`` / ``"MM:SS"`` -> seconds."""
    secs = 0.0
    for part in text.strip().split(":"):
        secs = secs * 60 + float(part)
    return secs


def read_lvbench(path: str | Path, video_root: str | Path) -> list[EvalSample]:
    """LVBench ``video_info.meta.jsonl``: one video per line, its questions under ``qa``.

    Assumed fields per line: ``key`` (video id, file ``video_root/<key>.mp4``; ``video_id`` is
    accepted as an alias), ``qa`` list of ``{uid, question, answer, question_type, time_reference}``
    where ``question`` embeds the options as ``"...\\n(A) opt\\n(B) opt..."`` and ``answer`` is a
    letter; ``time_reference`` is ``"MM:SS-MM:SS"`` (kept in metadata, parsed to seconds when possible).
    """
    path = Path(path)
    out: list[EvalSample] = []
    for lineno, row in _read_jsonl(path):
        where = f"line {lineno}"
        key = "key" if isinstance(row, dict) and "key" in row else "video_id"
        vid = _need(row, key, path, where, str)
        qas = _need(row, "qa", path, where, list)
        for j, qa in enumerate(qas):
            qwhere = f"{where} qa[{j}]"
            text = _need(qa, "question", path, qwhere, str)
            parts = _LV_OPTION.split(text)
            # parts = [question, "A", optA, "B", optB, ...]
            letters, options = parts[1::2], [p.strip() for p in parts[2::2]]
            if len(options) < 2 or "".join(letters) != LETTERS[: len(letters)]:
                raise AnnotationError(path, qwhere, "question", "no embedded options '(A) ... (B) ...' found")
            answer = _letter_of(_need(qa, "answer", path, qwhere, str), len(options), path, qwhere)
            meta: dict[str, Any] = {"question_type": qa.get("question_type"), "video_type": row.get("type")}
            ref = qa.get("time_reference")
            if isinstance(ref, str) and ref:
                meta["time_reference"] = ref
                try:
                    meta["time_reference_s"] = [_parse_clock(t) for t in ref.split("-")]
                except ValueError:
                    pass
            info = row.get("video_info") or {}
            dur_min = info.get("duration_minutes") if isinstance(info, dict) else None
            out.append(EvalSample(
                sample_id=f"lvbench/{qa.get('uid', f'{vid}-{j}')}", video=str(Path(video_root) / f"{vid}.mp4"),
                task="mcq", question=parts[0].strip(), source="lvbench", options=options, answer=answer,
                duration=float(dur_min) * 60 if isinstance(dur_min, (int, float)) else None, metadata=meta,
            ))
    return out


# -------------------------------------------------------------------- Charades-STA
def read_charades_durations(path: str | Path) -> dict[str, float]:
    """Video lengths from the Charades ``Charades_v1_test.csv`` (columns ``id`` and ``length``)."""
    path = Path(path)
    out: dict[str, float] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for col in ("id", "length"):
            if col not in (reader.fieldnames or []):
                raise AnnotationError(path, "header", col, "missing column")
        for n, row in enumerate(reader, start=2):
            try:
                out[row["id"]] = float(row["length"])
            except (TypeError, ValueError) as exc:
                raise AnnotationError(path, f"line {n}", "length", f"not a number: {row['length']!r}") from exc
    return out


def read_charades_sta(path: str | Path, video_root: str | Path,
                      durations: dict[str, float] | None = None) -> list[EvalSample]:
    """Charades-STA lines ``"<vid> <start> <end>##<sentence>"`` (seconds); video ``video_root/<vid>.mp4``."""
    path = Path(path)
    out: list[EvalSample] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or not sentence.strip():
            raise AnnotationError(path, where, "sentence", "expected '<vid> <start> <end>##<sentence>'")
        if len(fields) != 3:
            raise AnnotationError(path, where, "vid start end", f"expected 3 fields, got {len(fields)}")
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError as exc:
            raise AnnotationError(path, where, "start/end", f"not numbers: {fields[1:]}") from exc
        if end < start:
            raise AnnotationError(path, where, "start/end", f"end {end} before start {start}")
        vid = fields[0]
        out.append(EvalSample(
            sample_id=f"charades/{vid}/{lineno}", video=str(Path(video_root) / f"{vid}.mp4"), task="grounding",
            question=sentence.strip().rstrip("."), source="charades", span=(start, end),
            duration=(durations or {}).get(vid),
        ))
    return out


# ---------------------------------------------------- synth shards and record lists
_PROMPT_OPTION = re.compile(r"^\s*([A-J])[.)]\s+(.*)$", re.MULTILINE)


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
    options = [m.group(2).strip() for m in _PROMPT_OPTION.finditer(prompt)]
    sample = EvalSample(
        sample_id=str(rec.get("id", where)), video=video, task=task, question=prompt, source=source,
        options=options, prompt=prompt, duration=float(rec["duration"]) if isinstance(rec.get("duration"), (int, float)) else None,
        metadata={k: v for k, v in rec.items() if k not in ("conversations", "answer")},
    )
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
    shards = sorted(Path(shard_dir).glob(f"{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards {split}-*.tar under {shard_dir}")
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


READERS: dict[str, Callable[..., list[EvalSample]]] = {
    "mlvu": read_mlvu,
    "videomme": read_videomme,
    "lvbench": read_lvbench,
    "charades": read_charades_sta,
    "records": read_records,
}
