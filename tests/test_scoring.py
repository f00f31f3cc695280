"""evaluation.scoring: IoU, accuracy, needle grids, the benchmarks' aggregations and exclusion reports."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from evaluation.answers import LMMS_EVAL_EXTRACTORS
from evaluation.scoring import (
    accuracy_by,
    bucket_label,
    exclusion_report,
    grounding_metrics,
    mcq_accuracy,
    mean_stats,
    needle_grid,
    score_prediction,
    summarize,
    temporal_iou,
)


def test_temporal_iou() -> None:
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 4), (6, 10)) == 0.0
    assert temporal_iou(None, (1, 2)) == 0.0
    assert temporal_iou((3, 3), (3, 3)) == 1.0
    assert temporal_iou((2, 8), (4, 6)) == pytest.approx(2 / 6)


def test_grounding_metrics_counts_unparsed_as_zero() -> None:
    preds = [(0.0, 10.0), (5.0, 15.0), None, (0.0, 4.0)]
    gts = [(0.0, 10.0), (0.0, 10.0), (1.0, 2.0), (0.0, 10.0)]
    m = grounding_metrics(preds, gts)
    ious = [1.0, 5 / 15, 0.0, 0.4]
    assert m["miou"] == pytest.approx(sum(ious) / 4)
    assert m["R@0.3"] == pytest.approx(3 / 4)
    assert m["R@0.5"] == pytest.approx(1 / 4)
    assert m["R@0.7"] == pytest.approx(1 / 4)
    assert m["n"] == 4 and m["n_unparsed"] == 1


def test_mcq_accuracy() -> None:
    m = mcq_accuracy(["A", None, "C", "D"], ["A", "B", "B", "D"])
    assert m["accuracy"] == 0.5 and m["n_unparsed"] == 1 and m["n_correct"] == 2
    with pytest.raises(ValueError):
        mcq_accuracy(["A"], ["A", "B"])
    assert math.isnan(mcq_accuracy([], [])["accuracy"])


def test_buckets_and_grouping() -> None:
    edges = [0, 60, 600]
    assert bucket_label(0, edges) == "0-60s"
    assert bucket_label(59.9, edges) == "0-60s"
    assert bucket_label(60, edges) == "60-600s"
    assert bucket_label(1e4, edges) == ">=600s"
    grouped = accuracy_by(["x", "y", "x", "x"], [1, 0, 0, 1])
    assert grouped["x"] == {"score": pytest.approx(2 / 3), "n": 3}
    assert grouped["y"] == {"score": 0.0, "n": 1}


def test_needle_grid() -> None:
    g = needle_grid([32, 32, 32, 64], [0.0, 0.0, 0.5, 0.0], [True, False, True, True])
    cells = {(c["length"], c["depth"]): (c["accuracy"], c["n"]) for c in g["cells"]}
    assert cells == {(32.0, 0.0): (0.5, 2), (32.0, 0.5): (1.0, 1), (64.0, 0.0): (1.0, 1)}
    assert g["accuracy"] == 0.75


def test_mean_stats() -> None:
    rows = [
        {"pair_density": 0.5, "kept_kv_bytes": 50, "full_kv_bytes": 100, "prefill_seconds": 1.0, "name": "x"},
        {"pair_density": 0.3, "kept_kv_bytes": 10, "full_kv_bytes": 300, "prefill_seconds": 3.0, "flag": True},
    ]
    m = mean_stats(rows)
    assert m["pair_density"] == pytest.approx(0.4)
    assert m["kv_ratio_pooled"] == pytest.approx(60 / 400)
    assert m["prefill_seconds"] == pytest.approx(2.0)
    assert "name" not in m and "flag" not in m
    assert mean_stats([]) == {}


def test_score_prediction() -> None:
    assert score_prediction("mcq", "B.", answer="B") == {"parsed": "B", "correct": True}
    assert score_prediction("needle", "blue", answer="B") == {"parsed": None, "correct": False}
    g = score_prediction("grounding", "From 2 to 6 seconds.", span=(4.0, 8.0))
    assert g["parsed"] == [2.0, 6.0] and g["iou"] == pytest.approx(2 / 6)
    # the protocol's parser is used when given: lmms-eval's Video-MME extraction reads the article "A"
    text = "A man opens the door. The answer is C"
    assert score_prediction("mcq", text, answer="C")["correct"] is True
    assert score_prediction("mcq", text, answer="C", extractor=LMMS_EVAL_EXTRACTORS["videomme"])["parsed"] == "A"
    with pytest.raises(ValueError, match="unknown task"):
        score_prediction("caption", "x", answer="A")


def test_summarize_recomputes_from_parsed() -> None:
    recs = [
        {"task": "needle", "parsed": "A", "answer": "A", "correct": False, "duration": 30, "length": 32, "depth": 0.0,
         "stats": {"pair_density": 1.0}},
        {"task": "needle", "parsed": None, "answer": "C", "correct": True, "duration": 70, "length": 64, "depth": 0.5,
         "stats": {"pair_density": 0.5}},
    ]
    m = summarize(recs, [0, 60])
    # the stale "correct" flags are ignored; scores come from parsed vs answer
    assert m["accuracy"] == 0.5 and m["n_unparsed"] == 1
    assert m["by_length"] == {"0-60s": {"score": 1.0, "n": 1}, ">=60s": {"score": 0.0, "n": 1}}
    assert [c["accuracy"] for c in m["needle_grid"]["cells"]] == [1.0, 0.0]
    assert m["inference"]["pair_density"] == pytest.approx(0.75)
    m = summarize([dict(recs[0], duration=d) for d in (700, 5, 90, -1)], [0, 60, 600])
    assert list(m["by_length"]) == ["<0s", "0-60s", "60-600s", ">=600s"]
    cats = [dict(recs[0], metadata={"question_type": ["a", "b"], "duration": "long"}),
            dict(recs[1], metadata={"question_type": "c", "duration": 70.0})]
    m = summarize(cats, [0], "synth")
    assert m["by_question_type"] == {"a": {"score": 1.0, "n": 1}, "b": {"score": 1.0, "n": 1},
                                     "c": {"score": 0.0, "n": 1}}
    assert "by_duration" not in m and "by_task_type" not in m
    assert "by_question_type" not in summarize(cats, [0])  # no benchmark: no breakdowns
    grounding = [{"task": "grounding", "parsed": [0, 10], "span": [5, 10], "duration": 10}]
    assert summarize(grounding, [0])["miou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mix tasks"):
        summarize(recs + grounding, [0])


def _mcq(sid: str, parsed: str | None, answer: str, **meta: object) -> dict:
    return {"id": sid, "task": "mcq", "parsed": parsed, "answer": answer, "duration": 10.0, "metadata": meta}


def test_mlvu_m_avg_is_the_mean_of_task_accuracies() -> None:
    recs = [_mcq("1", "A", "A", task_type="plotQA"), _mcq("2", "B", "A", task_type="plotQA"),
            _mcq("3", "C", "C", task_type="plotQA"), _mcq("4", "D", "D", task_type="needle")]
    m = summarize(recs, [0], "mlvu")
    assert m["by_task_type"]["plotQA"] == {"score": pytest.approx(2 / 3), "n": 3}
    assert m["m_avg"] == pytest.approx((2 / 3 + 1.0) / 2)  # task mean, not the overall 3/4
    assert m["accuracy"] == pytest.approx(3 / 4)


def test_benchmark_breakdowns() -> None:
    vmme = [_mcq("1", "A", "A", duration_category="short"), _mcq("2", None, "A", duration_category="long"),
            _mcq("3", "B", "B", duration_category="long")]
    m = summarize(vmme, [0], "videomme")
    assert m["by_duration_category"] == {"long": {"score": 0.5, "n": 2}, "short": {"score": 1.0, "n": 1}}
    assert m["n_unparsed"] == 1 and "m_avg" not in m
    lvb = [_mcq("1", "A", "A", question_types=["reasoning", "entity recognition"]),
           _mcq("2", "B", "A", question_types=["reasoning"])]
    m = summarize(lvb, [0], "lvbench")  # a question counts once in each of its types
    assert m["by_question_types"] == {"entity recognition": {"score": 1.0, "n": 1}, "reasoning": {"score": 0.5, "n": 2}}
    assert m["accuracy"] == 0.5 and m["n"] == 2
    long = [_mcq("1", "A", "A", duration_group=600, question_category="TOS"),
            _mcq("2", "A", "B", duration_group=15, question_category="TOS"),
            _mcq("3", "C", "C", duration_group=600.0, question_category="S2E")]
    m = summarize(long, [0], "longvideobench")
    assert m["by_duration_group"] == {"15": {"score": 0.0, "n": 1}, "600": {"score": 1.0, "n": 2}}
    assert m["by_question_category"] == {"S2E": {"score": 1.0, "n": 1}, "TOS": {"score": 0.5, "n": 2}}


def test_exclusion_report_lists_rows_and_denominators() -> None:
    recs = [_mcq("a", "A", "A"), dict(_mcq("b", None, "B"), error="FileNotFoundError: video not found: x.mp4")]
    def excl_row(sid: str, reason: str, detail: str) -> SimpleNamespace:  # duck-typed data.benchmarks.Exclusion
        return SimpleNamespace(sample_id=sid, reason=reason, detail=detail)

    excl = [excl_row("c", "answer_not_in_candidates", "answer 'x'"), excl_row("d", "no_answer", ""),
            excl_row("e", "answer_not_in_candidates", "answer 'y'")]
    rep = exclusion_report(excl, recs)
    assert [e["id"] for e in rep["excluded"]] == ["c", "d", "e"]
    assert rep["excluded"][0] == {"id": "c", "reason": "answer_not_in_candidates", "detail": "answer 'x'"}
    assert rep["failed"] == [{"id": "b", "error": "FileNotFoundError: video not found: x.mp4"}]
    assert rep["denominators"] == {"rows_read": 5, "other_tasks": 0, "excluded": 3, "scored": 2, "failed": 1,
                                   "excluded_by_reason": {"answer_not_in_candidates": 2, "no_answer": 1}}
    assert exclusion_report([], recs, samples_read=10)["denominators"]["rows_read"] == 10
    # a file of several tasks: the other tasks' samples were read too, and are counted apart
    mixed = exclusion_report(excl, recs, samples_read=10, other_tasks=7)["denominators"]
    assert (mixed["rows_read"], mixed["other_tasks"], mixed["scored"]) == (20, 7, 2)
