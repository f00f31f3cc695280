"""evaluation.answers: the table of model outputs and the value each protocol reads from them."""

from __future__ import annotations

import pytest

from evaluation.answers import (
    LMMS_EVAL_EXTRACTORS,
    OFFICIAL_CHOICE,
    OFFICIAL_SPAN,
    clock_seconds,
    extractor_for,
    parse_choice,
    parse_span,
)

# output -> (official, lmms-eval mlvu, videomme, lvbench, longvideobench); None = unparsed.
# The lmms-eval columns follow those tasks' extraction rules (see evaluation/answers.py), lax parts included.
CHOICES = [
    ("B", ("B", "B", "B", "B", "B")),
    ("(B)", ("B", "B", "B", "B", "B")),
    ("B.", ("B", None, "B", "B", "B")),          # MLVU's lmms-eval needs a ')' or the bare letter
    (" C.", ("C", None, "C", "C", "C")),
    ("B) red", ("B", "B", "B", "B", "B")),
    ("(D) the red car", ("D", "D", "D", "D", "D")),
    ("Option D", ("D", None, "D", "D", "D")),
    ("The answer is C", ("C", None, "C", "C", "C")),
    ("A man opens the door. The answer is C", ("C", None, "A", "A", "A")),  # lmms-eval reads the article
    ("Best option: (A", ("A", None, "B", "A", "A")),  # Video-MME's phrase list misses "Best option:" -> "B"est
    ("Answer: B", ("B", None, "A", "B", "A")),
    ("The best answer is: C) a dog", ("C", "C", "C", "C", "C")),
    ("The correct answer is \n\nD", ("D", None, "D", "D", "D")),
    ("I think it is B.", ("B", None, "B", "B", "B")),
    ("I think C, not B", ("C", None, "C", "C", "C")),
    ("It is (C), not B", ("C", "C", "C", "C", "C")),
    ("Dog", (None, None, "D", None, "D")),          # lmms-eval's first-capital rule reads the D of "Dog"
    ("A man opens the door.", (None, None, "A", "A", "A")),
    ("", (None, None, None, None, None)),
]


@pytest.mark.parametrize(("text", "expected"), CHOICES)
def test_choice_table(text: str, expected: tuple[str | None, ...]) -> None:
    got = (parse_choice(text), LMMS_EVAL_EXTRACTORS["mlvu"].parse(text, "ABCD"),
           LMMS_EVAL_EXTRACTORS["videomme"].parse(text, "ABCD"), LMMS_EVAL_EXTRACTORS["lvbench"].parse(text, "ABCD"),
           LMMS_EVAL_EXTRACTORS["longvideobench"].parse(text, "ABCD"))
    assert got == expected


def test_choice_respects_the_letter_set() -> None:
    assert parse_choice("E.", letters="ABCDE") == "E"
    assert parse_choice("E then A", letters="ABCD") == "A"
    assert parse_choice("The answer is E", letters="ABCD") is None
    assert LMMS_EVAL_EXTRACTORS["longvideobench"].parse("E", "ABCDE") == "E"
    assert LMMS_EVAL_EXTRACTORS["longvideobench"].parse("E", "ABCD") is None


# output -> (official parse_span, lmms-eval charades); spans in seconds, reversed pairs come back sorted.
SPANS = [
    ("From 12.0 to 18.0 seconds.", ((12.0, 18.0), (12.0, 18.0))),
    ("from 3 to 7.5 seconds", ((3.0, 7.5), (3.0, 7.5))),
    ("12.5-18", ((12.5, 18.0), (12.5, 18.0))),
    ("1:05 - 1:20", ((65.0, 80.0), (65.0, 80.0))),
    ("00:01:05 to 00:01:20", ((65.0, 80.0), (65.0, 80.0))),
    ("between 12 s and 18 s", ((12.0, 18.0), None)),           # lmms-eval reads ranges written with '-'/'to'
    ("starts at 3.1 and ends at 9.8", ((3.1, 9.8), None)),     # ... and splits sentences only at !?\n
    ("The event starts at 3.1.\nIt ends at 9.8.", ((3.1, 9.8), (3.1, 9.8))),
    ("The event happens at 4.2s - 9s.", ((4.2, 9.0), (4.2, 9.0))),
    ("From 18 to 12 seconds.", ((12.0, 18.0), (12.0, 18.0))),  # reversed pair: sorted by both
    ("between 20 and 10 seconds", ((10.0, 20.0), None)),
    ("The event happens in the 24.3 - 30.4 seconds.", ((24.3, 30.4), (24.3, 30.4))),
    ("I do not know", (None, None)),
    ("At 5 seconds.", (None, None)),
]


@pytest.mark.parametrize(("text", "expected"), SPANS)
def test_span_table(text: str, expected: tuple) -> None:
    assert (parse_span(text), LMMS_EVAL_EXTRACTORS["charades"].parse(text)) == expected


def test_clock_seconds() -> None:
    assert clock_seconds("65") == 65.0
    assert clock_seconds("1:05") == 65.0
    assert clock_seconds("01:01:05.5") == 3665.5
    assert clock_seconds("105:00") == 6300.0  # minutes past 99 (LVBench time references)


def test_extractor_dispatch() -> None:
    assert extractor_for("official", "mlvu", "mcq") is OFFICIAL_CHOICE
    assert extractor_for("official", "synth", "needle") is OFFICIAL_CHOICE
    assert extractor_for("official", "charades", "grounding") is OFFICIAL_SPAN
    for fmt in ("mlvu", "videomme", "lvbench", "longvideobench", "charades"):
        assert extractor_for("lmms-eval", fmt, "mcq") is LMMS_EVAL_EXTRACTORS[fmt]
    with pytest.raises(ValueError, match="no task for format 'synth'"):
        extractor_for("lmms-eval", "synth", "mcq")
    with pytest.raises(ValueError, match="unknown protocol 'gpt'"):
        extractor_for("gpt", "mlvu", "mcq")
