"""Answer parsing and evaluation metrics."""

from __future__ import annotations

import math

import pytest

from train.metrics import (
    accuracy_by,
    bucket_label,
    extract_choice,
    grounding_metrics,
    mcq_accuracy,
    mean_stats,
    needle_grid,
    parse_span,
    score_prediction,
    summarize,
    temporal_iou,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        (" C.", "C"),
        ("(D) the red car", "D"),
        ("The answer is A", "A"),
        ("The best answer is: C) a dog", "C"),
        ("Answer: B", "B"),
        ("Dog", None),          # letter inside a word does not count
        ("E", None),            # not an allowed option letter
        ("", None),
        ("I think C, not B", "C"),
        ("The correct answer is \n\nD", "D"),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_extract_choice_respects_letter_set() -> None:
    assert extract_choice("E.", letters="ABCDE") == "E"
    assert extract_choice("E then A", letters="ABCD") == "A"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("From 12.0 to 18.0 seconds.", (12.0, 18.0)),
        ("from 3 to 7.5 seconds", (3.0, 7.5)),
        ("The event happens at 4.2s - 9s.", (4.2, 9.0)),
        ("between 20 and 10 seconds", (10.0, 20.0)),
        ("I do not know", None),
        ("At 5 seconds.", None),
    ],
)
def test_parse_span(text: str, expected: tuple[float, float] | None) -> None:
    assert parse_span(text) == expected


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
    m = summarize(cats, [0])
    assert m["by_question_type"] == {"a,b": {"score": 1.0, "n": 1}, "c": {"score": 0.0, "n": 1}}
    assert m["by_duration"] == {"long": {"score": 1.0, "n": 1}} and "by_task_type" not in m
    grounding = [{"task": "grounding", "parsed": [0, 10], "span": [5, 10], "duration": 10}]
    assert summarize(grounding, [0])["miou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mix tasks"):
        summarize(recs + grounding, [0])
