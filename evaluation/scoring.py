"""Evaluation metrics: answer parsing, MCQ accuracy, temporal grounding IoU, needle grids.

Every function here is pure (no model, no I/O) so that the numbers written by
`train.evaluate` can be recomputed from its per-sample prediction records.

Definitions
-----------
* **MCQ letter extraction** (`extract_choice`): the output is stripped, the known
  answer prefixes (``ANSWER_PREFIXES``, case-insensitive) are removed, and the answer is the
  *first* upper-case letter among the allowed option letters (default ``A``-``D``) that
  stands as its own token, i.e. is neither preceded nor followed by an ASCII letter
  (so ``"B"``, ``"B."``, ``"(C)"``, ``"Answer: D) red"`` parse; the ``D`` inside ``"Dog"`` does not).
  No such letter -> ``None`` (counted as wrong). A prediction is correct iff the extracted
  letter equals the ground-truth letter.
* **Span parsing** (`parse_span`): the first ``<number> [s|sec|seconds] (to|-|–|and) <number>``
  in the output (case-insensitive, so ``"From 12.0 to 18.0 seconds."`` gives ``(12.0, 18.0)``);
  the pair is ordered (min, max). Unparseable -> ``None``, scored as IoU 0 and counted.
* **Temporal IoU**: |pred ∩ gt| / |pred ∪ gt| over closed intervals in seconds; two
  zero-length identical spans have IoU 1. R@t = fraction of samples with IoU >= t.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ANSWER_PREFIXES: tuple[str, ...] = (
    "the best answer is",
    "the correct answer is",
    "the answer is",
    "the best option is",
    "the correct option is",
    "best answer:",
    "best option:",
    "answer:",
)
RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
# metadata fields (string categories of the benchmark readers) that get their own accuracy breakdown
CATEGORY_KEYS: tuple[str, ...] = ("question_type", "task_type", "duration")

_NUM = r"(\d+(?:\.\d+)?)"
_SPAN_RE = re.compile(_NUM + r"\s*(?:s|sec|secs|seconds?)?\s*(?:to|-|–|and)\s*" + _NUM, re.IGNORECASE)


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """Return the first standalone option letter in `text` (see module docstring), or None."""
    s = text.strip()
    lowered = s.lower()
    for prefix in ANSWER_PREFIXES:
        idx = lowered.find(prefix)
        if idx >= 0:
            s = s[:idx] + s[idx + len(prefix):]
            lowered = s.lower()
    pattern = re.compile(r"(?<![A-Za-z])([" + re.escape(letters) + r"])(?![A-Za-z])")
    m = pattern.search(s)
    return m.group(1) if m else None


def parse_span(text: str) -> tuple[float, float] | None:
    """Parse the first ``X (to|-|and) Y`` pair of seconds from a model output, ordered (min, max)."""
    m = _SPAN_RE.search(text)
    if m is None:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return (min(a, b), max(a, b))


def temporal_iou(pred: Sequence[float] | None, gt: Sequence[float]) -> float:
    """IoU of two [start, end] intervals in seconds; a missing prediction scores 0."""
    if pred is None:
        return 0.0
    ps, pe = float(pred[0]), float(pred[1])
    gs, ge = float(gt[0]), float(gt[1])
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    if union <= 0.0:
        return 1.0 if (ps, pe) == (gs, ge) else 0.0
    return inter / union


def mcq_accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> dict[str, float]:
    """Accuracy of extracted letters against ground-truth letters (None counts as wrong)."""
    if len(predicted) != len(truth):
        raise ValueError(f"mcq_accuracy: {len(predicted)} predictions vs {len(truth)} answers")
    n = len(truth)
    correct = sum(int(p is not None and p == t) for p, t in zip(predicted, truth, strict=True))
    unparsed = sum(int(p is None) for p in predicted)
    return {"accuracy": correct / n if n else float("nan"), "n": n, "n_correct": correct, "n_unparsed": unparsed}


def grounding_metrics(
    predicted: Sequence[Sequence[float] | None],
    truth: Sequence[Sequence[float]],
    thresholds: Iterable[float] = RECALL_THRESHOLDS,
) -> dict[str, float]:
    """mIoU and R@t over samples; unparsed predictions (None) score IoU 0 and are counted."""
    if len(predicted) != len(truth):
        raise ValueError(f"grounding_metrics: {len(predicted)} predictions vs {len(truth)} answers")
    ious = [temporal_iou(p, g) for p, g in zip(predicted, truth, strict=True)]
    n = len(ious)
    out: dict[str, float] = {"miou": sum(ious) / n if n else float("nan"), "n": n,
                             "n_unparsed": sum(int(p is None) for p in predicted)}
    for t in thresholds:
        out[f"R@{t:g}"] = sum(int(i >= t) for i in ious) / n if n else float("nan")
    return out


def bucket_label(value: float, edges: Sequence[float]) -> str:
    """Name of the half-open bucket [edges[i], edges[i+1]) holding `value` (last bucket open-ended)."""
    if not edges:
        raise ValueError("bucket_label: empty bucket edges")
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        if lo <= value < hi:
            return f"{lo:g}-{hi:g}s"
    if value >= edges[-1]:
        return f">={edges[-1]:g}s"
    return f"<{edges[0]:g}s"


def accuracy_by(keys: Sequence[Any], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """Mean score and count per key (keys are stringified, output sorted by key)."""
    sums: dict[str, list[float]] = {}
    for k, s in zip(keys, scores, strict=True):
        sums.setdefault(str(k), []).append(float(s))
    return {k: {"score": sum(v) / len(v), "n": len(v)} for k, v in sorted(sums.items())}


def needle_grid(lengths: Sequence[float], depths: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    """Needle accuracy per (length, depth) cell: ``{"cells": [{length, depth, accuracy, n}], "accuracy"}``."""
    cells: dict[tuple[float, float], list[int]] = {}
    for length, depth, ok in zip(lengths, depths, correct, strict=True):
        cells.setdefault((float(length), round(float(depth), 4)), []).append(int(bool(ok)))
    rows = [{"length": k[0], "depth": k[1], "accuracy": sum(v) / len(v), "n": len(v)}
            for k, v in sorted(cells.items())]
    n = len(correct)
    return {"accuracy": sum(int(bool(c)) for c in correct) / n if n else float("nan"), "n": n, "cells": rows}


def mean_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of every finite numeric field over per-sample inference stats (missing fields skipped).

    With ``kept_kv_bytes`` and ``full_kv_bytes`` present (model.inference GenerationStats) it adds
    ``kv_ratio_pooled`` = sum kept / sum full over samples (the per-sample mean is ``kv_ratio``).
    """
    sums: dict[str, list[float]] = {}
    kept_total = full_total = 0.0
    for row in stats:
        for key, val in row.items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                continue
            sums.setdefault(key, []).append(float(val))
        kept, full = row.get("kept_kv_bytes"), row.get("full_kv_bytes")
        if isinstance(kept, (int, float)) and isinstance(full, (int, float)):
            kept_total, full_total = kept_total + kept, full_total + full
    out = {k: sum(v) / len(v) for k, v in sorted(sums.items())}
    if full_total > 0:
        out["kv_ratio_pooled"] = kept_total / full_total
    return out


def score_prediction(task: str, text: str, answer: str | None = None,
                     span: Sequence[float] | None = None, letters: str = "ABCD") -> dict[str, Any]:
    """Parse one output and score it: mcq/needle -> ``parsed`` letter + ``correct``; grounding -> ``parsed`` span + ``iou``."""
    if task in ("mcq", "needle"):
        if answer is None:
            raise ValueError(f"score_prediction: task {task!r} needs a ground-truth letter")
        letter = extract_choice(text, letters)
        return {"parsed": letter, "correct": letter is not None and letter == answer}
    if task == "grounding":
        if span is None:
            raise ValueError("score_prediction: task 'grounding' needs a ground-truth span")
        pred = parse_span(text)
        return {"parsed": list(pred) if pred else None, "iou": temporal_iou(pred, span)}
    raise ValueError(f"score_prediction: unknown task {task!r} (mcq | grounding | needle)")


def summarize(records: Sequence[Mapping[str, Any]], length_edges: Sequence[float]) -> dict[str, Any]:
    """Metrics of one task from per-sample records (as written by `train.evaluate`).

    Records carry ``task``, ``duration`` (s), ``stats`` and either ``parsed``/``answer``/``correct``
    (mcq, needle; needle also ``length`` and ``depth``) or ``parsed``/``span`` (grounding).
    Scores are recomputed from ``parsed`` and the ground truth, not read from ``correct``/``iou``.
    A record with an ``error`` (its video could not be read) has ``parsed`` None, so it scores as a
    wrong / unparsed answer; ``failed`` counts such records.
    String categories in ``metadata`` (`CATEGORY_KEYS`, e.g. VideoMME's ``duration`` short/medium/long,
    MLVU/LVBench ``question_type``) get ``by_<key>`` breakdowns.
    """
    tasks = {r["task"] for r in records}
    if len(tasks) > 1:
        raise ValueError(f"summarize: records mix tasks {sorted(tasks)}")
    task = tasks.pop() if tasks else "none"
    out: dict[str, Any] = {"task": task, "failed": sum(int(bool(r.get("error"))) for r in records)}
    if task == "grounding":
        preds = [r["parsed"] for r in records]
        out.update(grounding_metrics(preds, [r["span"] for r in records]))
        scores = [temporal_iou(p, r["span"]) for p, r in zip(preds, records, strict=True)]
    else:
        preds = [r["parsed"] for r in records]
        out.update(mcq_accuracy(preds, [r["answer"] for r in records]))
        scores = [float(p is not None and p == r["answer"]) for p, r in zip(preds, records, strict=True)]
        if task == "needle":
            out["needle_grid"] = needle_grid([r["length"] for r in records], [r["depth"] for r in records],
                                             [s > 0 for s in scores])
    by_length = accuracy_by([bucket_label(float(r["duration"]), length_edges) for r in records], scores)
    order = [f"<{length_edges[0]:g}s"] + [bucket_label(e, length_edges) for e in length_edges]
    out["by_length"] = {k: by_length[k] for k in dict.fromkeys(order) if k in by_length}
    for key in CATEGORY_KEYS:
        keyed = [(_category(r, key), sc) for r, sc in zip(records, scores, strict=True)]
        keyed = [(k, sc) for k, sc in keyed if k is not None]
        if keyed:
            out[f"by_{key}"] = accuracy_by([k for k, _ in keyed], [sc for _, sc in keyed])
    out["inference"] = mean_stats([r.get("stats") or {} for r in records])
    return out


def _category(record: Mapping[str, Any], key: str) -> str | None:
    """A string category from ``record["metadata"][key]`` (lists joined with ','); None if absent or numeric."""
    val = (record.get("metadata") or {}).get(key)
    if isinstance(val, (list, tuple)) and val and all(isinstance(v, str) for v in val):
        return ",".join(val)
    return val if isinstance(val, str) else None
