"""Evaluation scoring: temporal IoU, accuracy, needle grids and the benchmarks' official aggregations.

Every function here is pure (no model, no I/O) so that the numbers written by `evaluation.runner`
can be recomputed from its per-sample prediction records. Output parsing lives in
`evaluation.answers`; a record's ``parsed`` field is what the protocol's parser read.

Definitions
-----------
* **MCQ**: a prediction is correct iff the parsed letter equals the ground-truth letter; an unparsed
  output (``parsed`` None) is wrong and counted in ``n_unparsed``.
* **Temporal IoU**: |pred ∩ gt| / |pred ∪ gt| over closed intervals in seconds; two
  zero-length identical spans have IoU 1; an unparsed prediction scores 0. R@t = fraction of
  queries with IoU >= t; mIoU = mean IoU over all queries.
* **Benchmark aggregations** (`BREAKDOWNS`, `summarize`), as the benchmarks' own scorers report:
  MLVU accuracy per ``task_type`` and M-Avg (their mean) plus overall accuracy
  (JUNJIE99/MLVU choice_bench.py); Video-MME per ``duration_category`` (short/medium/long) plus
  overall; LVBench overall and per question type, a question counting once in each of its
  ``question_types`` (THUDM/LVBench compute_accuracy.py); LongVideoBench per ``duration_group``
  and per ``question_category`` plus overall; Charades-STA mIoU and R@{0.3, 0.5, 0.7} over all queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evaluation.answers import OFFICIAL_CHOICE, OFFICIAL_SPAN, Extractor

RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
# metadata keys (set by the data.benchmarks readers) each benchmark's scorer breaks accuracy down by;
# a list value counts the sample once under each of its entries
BREAKDOWNS: dict[str, tuple[str, ...]] = {
    "mlvu": ("task_type",),
    "videomme": ("duration_category", "domain", "task_type"),
    "lvbench": ("question_types",),
    "longvideobench": ("duration_group", "question_category"),
    "charades": (),
    "synth": ("question_type",),
    "records": ("question_type",),
}


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


def score_prediction(task: str, text: str, answer: str | None = None, span: Sequence[float] | None = None,
                     letters: str = "ABCD", extractor: Extractor | None = None) -> dict[str, Any]:
    """Parse one output with `extractor` (default: the official/project parser of the task) and score it:
    mcq/needle -> ``parsed`` letter + ``correct``; grounding -> ``parsed`` [start, end] + ``iou``."""
    if task in ("mcq", "needle"):
        if answer is None:
            raise ValueError(f"score_prediction: task {task!r} needs a ground-truth letter")
        letter = (extractor or OFFICIAL_CHOICE).parse(text, letters)
        return {"parsed": letter, "correct": letter is not None and letter == answer}
    if task == "grounding":
        if span is None:
            raise ValueError("score_prediction: task 'grounding' needs a ground-truth span")
        pred = (extractor or OFFICIAL_SPAN).parse(text)
        return {"parsed": list(pred) if pred else None, "iou": temporal_iou(pred, span)}
    raise ValueError(f"score_prediction: unknown task {task!r} (mcq | grounding | needle)")


def summarize(records: Sequence[Mapping[str, Any]], length_edges: Sequence[float],
              benchmark: str | None = None) -> dict[str, Any]:
    """Metrics of one task from per-sample records (as written by `evaluation.runner`).

    Records carry ``task``, ``duration`` (s), ``stats``, ``metadata`` and either ``parsed``/``answer``
    (mcq, needle; needle also ``length`` and ``depth``) or ``parsed``/``span`` (grounding).
    Scores are recomputed from ``parsed`` and the ground truth, not read from ``correct``/``iou``.
    A record with an ``error`` (its video could not be read or is missing) has ``parsed`` None, so it
    scores as a wrong / unparsed answer; ``failed`` counts such records.
    `benchmark` (a data format) picks the breakdowns of `BREAKDOWNS` (``by_<metadata key>``; for MLVU
    also ``m_avg``, the mean of the per-task accuracies); None: none.
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
    for key in BREAKDOWNS.get(benchmark or "", ()):
        keys, keyed_scores = [], []
        for r, sc in zip(records, scores, strict=True):
            for k in categories(r, key):
                keys.append(k)
                keyed_scores.append(sc)
        if keys:
            out[f"by_{key}"] = accuracy_by(keys, keyed_scores)
    if benchmark == "mlvu" and out.get("by_task_type"):
        per_task = [v["score"] for v in out["by_task_type"].values()]
        out["m_avg"] = sum(per_task) / len(per_task)
    out["inference"] = mean_stats([r.get("stats") or {} for r in records])
    return out


def categories(record: Mapping[str, Any], key: str) -> list[str]:
    """The categories of ``record["metadata"][key]`` as strings: a list gives each entry, a scalar
    (string or number, e.g. LongVideoBench's ``duration_group`` 600) gives one, absent/None none."""
    val = (record.get("metadata") or {}).get(key)
    if val is None or isinstance(val, bool):
        return []
    if isinstance(val, (list, tuple)):
        return [_label(v) for v in val if v is not None]
    return [_label(val)]


def _label(value: Any) -> str:
    """``600.0`` -> ``"600"``; strings as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def exclusion_report(excluded: Sequence[Any], records: Sequence[Mapping[str, Any]],
                     samples_read: int | None = None, other_tasks: int = 0) -> dict[str, Any]:
    """What was not scored or failed, and the denominators.

    `excluded`: the reader's `Exclusion` objects (``sample_id``, ``reason``, ``detail``); `records`: the
    scored prediction records; `samples_read`: the bench task's samples read (default: the records);
    `other_tasks`: samples of other tasks read from the same file and not evaluated by this bench. Returns
    ``excluded`` (list of {id, reason, detail}), ``failed`` (records with an ``error``: missing or unreadable
    video, scored wrong; list of {id, error}) and ``denominators``: rows read = the task's samples read + the
    other tasks' samples + excluded; every metric divides by ``scored`` (failed included; fewer than the
    task's samples read only under ``limit``).
    """
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")]
    rows = [{"id": e.sample_id, "reason": e.reason, "detail": e.detail} for e in excluded]
    reasons: dict[str, int] = {}
    for e in rows:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    return {"excluded": rows, "failed": failed,
            "denominators": {"rows_read": (len(records) if samples_read is None else samples_read) + other_tasks + len(rows),
                             "other_tasks": other_tasks, "excluded": len(rows),
                             "excluded_by_reason": dict(sorted(reasons.items())), "scored": len(records),
                             "failed": len(failed)}}
