"""Types and helpers shared by the benchmark readers.

`EvalSample` is the one normalised question type every reader returns; `BenchmarkRead` bundles a
reader's samples with the rows it had to leave out (`Exclusion`, id + reason); `read_table` loads
parquet / json / jsonl through the `datasets` library; `resolve_video` finds a sample's video
file under the video root whatever container extension it was stored with.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVAL_TASKS: tuple[str, ...] = ("mcq", "grounding", "needle")
LETTERS = "ABCDEFGHIJ"
DEFAULT_MCQ_TEMPLATE = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
DEFAULT_GROUNDING_TEMPLATE = (
    'Give the query: "{question}", when does the described content occur in the video? '
    'Answer in the form "From <start> to <end> seconds."'
)
# Containers a release's video may have been re-saved as; tried after the release's own name.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
LAYOUTS: tuple[str, ...] = ("release", "lmms-eval")


class AnnotationError(ValueError):
    """An annotation that cannot be used: the message names the file, the row/line and the field.

    ``AnnotationError(path, where, field_name, problem)``; `where` and `field_name` may be ``None``
    for a problem of the whole file.
    """

    def __init__(self, path: str | Path, where: str | None, field_name: str | None, problem: str) -> None:
        parts = [str(path)]
        if where:
            parts.append(where)
        if field_name:
            parts.append(f"field '{field_name}'")
        super().__init__(": ".join([*parts, problem]))


@dataclass
class EvalSample:
    """One evaluation question about one video.

    `question` is the bare question; `options` the option texts without letter prefixes
    (option i has letter ``LETTERS[i]``); `prompt`, when set, is the exact user text to use
    (after the ``<image>`` tag) instead of formatting `question`/`options` with a template.
    `answer` is the ground-truth letter (mcq, needle), `span` the [start, end] seconds (grounding),
    `duration` the video length in seconds when the annotation gives it.
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


@dataclass
class Exclusion:
    """A row left out of scoring: its id, a short snake_case `reason` and a human `detail`."""

    sample_id: str
    reason: str
    detail: str


@dataclass
class BenchmarkRead:
    """What a reader returns: the scorable `samples`, the `excluded` rows, the file(s) read and the layout."""

    samples: list[EvalSample]
    excluded: list[Exclusion]
    source: str
    layout: str

    def summary(self) -> dict[str, Any]:
        """``{"samples": N, "excluded": {reason: count}, "missing_videos": M, "layout": ...}``.

        ``"clipped_spans"`` is added when grounding spans were cut at the video's end.
        `missing_videos` counts samples whose video was not found (``metadata["video_missing"]``);
        they stay in `samples` (scored as failed), the excluded rows do not.
        """
        out: dict[str, Any] = {
            "samples": len(self.samples),
            "excluded": dict(sorted(Counter(e.reason for e in self.excluded).items())),
            "missing_videos": sum(bool(s.metadata.get("video_missing")) for s in self.samples),
            "layout": self.layout,
        }
        clipped = sum("span_clipped_from" in s.metadata for s in self.samples)
        if clipped:
            out["clipped_spans"] = clipped  # grounding spans cut at the video's end (kept, not excluded)
        return out


class RowSkip(Exception):
    """Raised while converting one row: the row cannot be scored (`reason`, `detail`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Collector:
    """Accumulates a reader's samples and exclusions; with `strict` the first exclusion raises."""

    def __init__(self, benchmark: str, layout: str, source: str, strict: bool) -> None:
        self.benchmark, self.layout, self.source, self.strict = benchmark, layout, source, strict
        self.samples: list[EvalSample] = []
        self.excluded: list[Exclusion] = []

    def add(self, sample: EvalSample) -> None:
        """Keep `sample`, tagging ``metadata["benchmark"]`` and ``metadata["layout"]``."""
        sample.metadata["benchmark"] = self.benchmark
        sample.metadata["layout"] = self.layout
        self.samples.append(sample)

    def exclude(self, path: str | Path, sample_id: str, skip: RowSkip) -> None:
        """Record `sample_id` as excluded; raises AnnotationError (naming `path`) when strict."""
        if self.strict:
            raise AnnotationError(path, sample_id, None, f"{skip.reason}: {skip.detail} (strict: no exclusions allowed)")
        self.excluded.append(Exclusion(sample_id, skip.reason, skip.detail))

    def result(self) -> BenchmarkRead:
        """The collected `BenchmarkRead`."""
        return BenchmarkRead(self.samples, self.excluded, self.source, self.layout)


# ------------------------------------------------------------------------ row fields
def need(row: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """`row[key]` checked for presence (not None / not blank) and type, else RowSkip."""
    val = row.get(key)
    if val is None or (isinstance(val, str) and not val.strip()):
        raise RowSkip("missing_field", f"field '{key}' is missing or empty")
    if not isinstance(val, kind) or isinstance(val, bool):
        raise RowSkip("bad_field", f"field '{key}' is {type(val).__name__}, expected {type_names(kind)}")
    return val


def type_names(kind: type | tuple[type, ...]) -> str:
    """A type or a tuple of types as a message reads them: ``str``, ``int or float``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def number_or_none(val: Any) -> float | None:
    """`val` as a float when it is a number (or a numeric string), else None."""
    if isinstance(val, bool):
        return None
    if isinstance(val, (int, float)):
        return float(val)
    if isinstance(val, str):
        try:
            return float(val)
        except ValueError:
            return None
    return None


def check_options(options: list[Any]) -> list[str]:
    """Validate an option list: 2..10 non-empty, distinct strings (compared stripped, case-folded).

    Raises RowSkip ``too_few_candidates`` / ``too_many_candidates`` / ``empty_candidate`` /
    ``duplicate_candidates``.
    """
    if len(options) < 2:
        raise RowSkip("too_few_candidates", f"{len(options)} candidate(s)")
    if len(options) > len(LETTERS):
        raise RowSkip("too_many_candidates", f"{len(options)} candidates, at most {len(LETTERS)} letters")
    out = []
    for i, opt in enumerate(options):
        if opt is None or not str(opt).strip():
            raise RowSkip("empty_candidate", f"candidate {i} is empty")
        out.append(str(opt).strip())
    seen: dict[str, int] = {}
    for i, opt in enumerate(out):
        key = opt.casefold()
        if key in seen:
            raise RowSkip("duplicate_candidates", f"candidates {seen[key]} and {i} are both {opt!r}")
        seen[key] = i
    return out


def answer_letter(ans: Any, n_options: int) -> str:
    """A ground-truth letter (``"B"``, ``"(B)"``, ``"b."``) checked against `n_options`, else RowSkip."""
    if ans is None or (isinstance(ans, str) and not ans.strip()):
        raise RowSkip("no_answer", "no ground-truth answer")
    letter = str(ans).strip().strip("().").upper()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise RowSkip("answer_not_in_candidates", f"answer {ans!r} is not one of {list(LETTERS[:n_options])}")
    return letter


def answer_index_of_text(answer: str, options: list[str]) -> int:
    """Index of the option whose text is `answer` (exact, then stripped and case-folded; must be unique)."""
    if answer in options:
        return options.index(answer)
    key = answer.strip().casefold()
    hits = [i for i, o in enumerate(options) if o.strip().casefold() == key]
    if len(hits) == 1:
        return hits[0]
    raise RowSkip("answer_not_in_candidates", f"answer {answer!r} matches none of {options}")


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s*(.*?)\s*$")
_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*")


def split_embedded_options(text: str) -> tuple[str, list[str]]:
    """Split a question that embeds its options into (bare question, option texts).

    Options are lines ``(A) text`` / ``A. text`` / ``A) text`` in letter order after the question
    (LVBench, lmms-eval MLVU); failing that, inline ``... (A) x (B) y`` markers. Text after the
    option block is dropped. Returns ``(text.strip(), [])`` when no options are found.
    """
    lines = text.splitlines()
    for start in range(1, len(lines)):
        m = _OPTION_LINE.match(lines[start])
        if m is None or m.group(1) != "A":
            continue
        opts = []
        for line in lines[start:]:
            if len(opts) == len(LETTERS):
                break
            m = _OPTION_LINE.match(line)
            if m is None or m.group(1) != LETTERS[len(opts)]:
                break
            opts.append(m.group(2))
        if len(opts) >= 2:
            return "\n".join(lines[:start]).strip(), opts
    parts = _INLINE_OPTION.split(text)  # [question, "A", optA, "B", optB, ...]
    letters = "".join(parts[1::2])
    if len(parts) >= 5 and letters == LETTERS[: len(letters)]:
        return parts[0].strip(), [p.strip() for p in parts[2::2]]
    return text.strip(), []


def parse_clock(text: str) -> float:
    """``"SS"`` / ``"MM:SS"`` / ``"HH:MM:SS"`` -> seconds; minutes may exceed 99 (``"105:07"`` = 6307 s).

    Raises ValueError on anything else.
    """
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
        raise ValueError(f"not a clock time: {text!r}")
    secs = 0.0
    for p in parts:
        secs = secs * 60 + float(p)
    return secs


def parse_time_range(text: str) -> tuple[float, float]:
    """``"MM:SS-MM:SS"`` (either side may be ``H:MM:SS``) -> (start, end) seconds; ValueError otherwise."""
    left, sep, right = text.strip().partition("-")
    if not sep:
        raise ValueError(f"not a time range: {text!r}")
    return parse_clock(left), parse_clock(right)


# ---------------------------------------------------------------------- video files
class VideoResolver:
    """Finds a sample's video under a root: the release's name first, then other containers.

    ``resolve(*relative_names)`` tries each name as given, then with its extension replaced by each of
    `VIDEO_EXTENSIONS` (``.mp4 .MP4 .mkv .webm .avi .mov``); ``deep=True`` also searches one folder
    level below the root (MLVU keeps videos in per-task folders). Returns (absolute path, missing);
    when nothing exists the first expected path is returned with ``missing=True``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self._subdirs: list[Path] | None = None

    def _variants(self, path: Path) -> list[Path]:
        out = [path]
        for ext in VIDEO_EXTENSIONS:
            alt = path.with_name(path.stem + ext) if path.suffix else path.with_name(path.name + ext)
            if alt != path:
                out.append(alt)
        return out

    def resolve(self, *names: str | Path, deep: bool = False) -> tuple[str, bool]:
        """(absolute path of the first existing candidate, False) or (first expected path, True)."""
        bases = [self.root / n for n in names]
        if deep:
            if self._subdirs is None:
                self._subdirs = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            bases += [d / Path(n).name for n in names for d in self._subdirs]
        for base in bases:
            for cand in self._variants(base):
                if cand.is_file():
                    return str(cand), False
        return str(bases[0]), True


def set_video(sample: EvalSample, resolved: tuple[str, bool]) -> EvalSample:
    """Store a `VideoResolver.resolve` result on `sample` (flagging ``metadata["video_missing"]``)."""
    sample.video, missing = resolved
    if missing:
        sample.metadata["video_missing"] = True
    return sample


# ---------------------------------------------------------------------- table files
def table_kind(path: Path) -> str:
    """``"parquet"``, ``"json"`` (one JSON value, a list of rows) or ``"jsonl"`` (one row per line).

    Decided by the file's first bytes (``PAR1`` magic, ``[``, ``{``), not only its name; raises
    AnnotationError for anything else.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise AnnotationError(path, None, None, f"cannot open ({exc.strerror or exc})") from exc
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "jsonl"
    if not text:
        raise AnnotationError(path, None, None, "file is empty")
    raise AnnotationError(path, None, None, "not a parquet, JSON list or JSON-lines file")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a parquet / JSON-list / JSON-lines file as dicts, read through `datasets`.

    Uses ``datasets.load_dataset("parquet"|"json", data_files=..., split="train")`` into a temporary
    cache (kept in memory, nothing written under the user's home). A JSON file is re-read with the
    standard library when `datasets` cannot type it or had to store a column that mixes strings and
    numbers as a ``Json`` feature: decoding that column turns numeric-looking strings into numbers
    (LVBench's ``uid`` ``"007"`` would become 7). Raises AnnotationError naming the file when it
    cannot be read or holds no rows.
    """
    path = Path(path)
    kind = table_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:  # footer check first: `datasets` logs its own error line before raising on a bad file
            pq.read_schema(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
            raise AnnotationError(path, None, None, f"unreadable parquet ({str(exc).splitlines()[0][:200]})") from exc
        rows = _read_with_datasets(path, "parquet")
    else:
        try:
            rows = _read_with_datasets(path, "json")
        except AnnotationError:
            rows = None
        if rows is None:
            rows = _read_json_stdlib(path, kind)  # raises AnnotationError when the JSON itself is bad
    if not rows:
        raise AnnotationError(path, None, None, "no rows")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise AnnotationError(path, f"row {bad}", None, f"expected an object, got {type(rows[bad]).__name__}")
    return rows


def _has_mixed_column(feature: Any) -> bool:
    """Whether a `datasets` feature (tree) holds a ``Json`` column, its type for mixed-type values."""
    if type(feature).__name__ == "Json":
        return True
    if isinstance(feature, dict):
        return any(_has_mixed_column(v) for v in feature.values())
    inner = getattr(feature, "feature", None)  # List / Sequence / LargeList
    return inner is not None and _has_mixed_column(inner)


def _read_with_datasets(path: Path, builder: str) -> list[dict[str, Any]] | None:
    """Rows via `datasets`; None for a JSON file with a mixed-type column (see `read_table`)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # no "Generating train split" bar per annotation file in an evaluation
    with tempfile.TemporaryDirectory(prefix="bench-read-") as cache:
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True)
            if builder == "json" and _has_mixed_column(ds.features):
                return None
            return ds.to_list()  # decodes strings: invalid UTF-8 surfaces here
        except ValueError as exc:
            if "corresponds to no data" in str(exc):  # an empty JSON list
                return []
            raise AnnotationError(path, None, None, f"cannot read as {builder}: {_cause(exc)}") from exc
        except Exception as exc:  # DatasetGenerationError / ArrowInvalid wrap the parser's error
            raise AnnotationError(path, None, None, f"cannot read as {builder}: {_cause(exc)}") from exc
        finally:
            if bars:
                datasets.enable_progress_bars()


def _cause(exc: BaseException) -> str:
    """The innermost error's first line (datasets wraps the parser's error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _read_json_stdlib(path: Path, kind: str) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, None, None, f"cannot read as UTF-8 text ({exc})") from exc
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"line {exc.lineno}", None, f"invalid JSON: {exc.msg}") from exc
        if not isinstance(data, list):
            raise AnnotationError(path, None, None, f"expected a list of rows, got {type(data).__name__}")
        return data
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AnnotationError(path, f"line {lineno}", None, f"invalid JSON: {exc.msg}") from exc
    return rows


def table_files(path: str | Path, patterns: tuple[str, ...] = ("*.parquet", "*.json", "*.jsonl")) -> list[Path]:
    """`path` itself, or the table files directly inside it (sorted); AnnotationError if none / missing."""
    path = Path(path)
    if path.is_dir():
        files = sorted({f for pat in patterns for f in path.glob(pat) if f.is_file()})
        if not files:
            raise AnnotationError(path, None, None, f"folder holds no {' / '.join(patterns)} files")
        return files
    if not path.is_file():
        raise AnnotationError(path, None, None, "no such file or folder")
    return [path]
