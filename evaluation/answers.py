"""Answer parsing: model output text -> option letter (multiple choice) or [start, end] seconds (grounding).

Two families of parsers live here.

* **Project parsers** (`parse_choice`, `parse_span`), used by ``protocol: official``. The benchmark
  authors' own matchers assume an answer-only output (MLVU: the character before the first ``)``;
  LVBench: the first character after an optional ``(``; Video-MME: the first ``A``-``D`` after removing
  answer phrases), so they agree with these parsers on every answer-only output; these parsers also
  read an answer stated after a preamble ("A man opens the door. The answer is C" -> ``C``).
* **lmms-eval extractors** (`LMMS_EVAL_EXTRACTORS`), used by ``protocol: lmms-eval``: the answer
  extraction of the lmms-eval task definitions that produced the published Video-XL-2 numbers
  (the lmms-eval copy shipped in VectorSpaceLab/Video-XL, ``Video-XL-2/eval/lvu/*/lmms_eval/tasks``,
  June 2025) and, for Charades-STA (absent there), EvolvingLMMs-Lab/lmms-eval
  ``lmms_eval/tasks/charades_sta/utils.py``. They are re-implemented from their behaviour, including
  where it is lax (Video-MME's, LVBench's and LongVideoBench's read the preamble case as ``A``, the
  article; MLVU's reads only the character before the first ``)``).
  One deliberate difference: LongVideoBench's lmms-eval extractor draws a *random* letter when none
  is found; here that output is counted as unparsed (scored wrong), so results are deterministic.

Every parser returns ``None`` for an output it cannot read; the scorer counts those as unparsed.
A span is always returned ordered ``(min, max)`` (a reversed pair is swapped), in both protocols
(lmms-eval's Charades-STA extractor also swaps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# ------------------------------------------------------------------------------------ letters
# Phrases after which the answer letter follows ("The answer is C", "Option D", "Best option: (A").
_ANSWER_PHRASE = re.compile(
    r"\b(?:(?:the|my)\s+)?(?:(?:best|correct|right|final)\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*",
    re.IGNORECASE,
)
# Letters that are also English words at the start of a sentence ("A man ...", "I think ...").
_WORD_LETTERS = frozenset("AI")


def _after_phrase(text: str, letters: str) -> str | None:
    """The letter right after the last answer phrase that is followed by one (``"(C"``, ``"C."``...)."""
    for m in reversed(list(_ANSWER_PHRASE.finditer(text))):
        hit = re.match(r"\(?\s*([" + re.escape(letters) + r"])(?![A-Za-z])", text[m.end():])
        if hit:
            return hit.group(1)
    return None


def _standalone(text: str, letters: str) -> list[tuple[int, str, bool]]:
    """(position, letter, marked) of each option letter not touching other letters; marked = written as
    an option label (``(X``, ``X)``, ``X.``, ``X:``, or the whole output). A word letter (``A``, ``I``)
    followed by a space and a lower-case word is the English word, not an option, and is skipped."""
    out = []
    for m in re.finditer(r"(?<![A-Za-z])([" + re.escape(letters) + r"])(?![A-Za-z])", text):
        i, j = m.start(), m.end()
        after = text[j:]
        if m.group(1) in _WORD_LETTERS and re.match(r"\s+[a-z]", after):
            continue
        marked = (i > 0 and text[i - 1] == "(") or bool(re.match(r"[).:]", after)) or text.strip() == m.group(1)
        out.append((i, m.group(1), marked))
    return out


def parse_choice(text: str, letters: str = "ABCD") -> str | None:
    """The option letter a model output gives, or None (project parser, ``protocol: official``).

    Rules, first that applies: (1) the letter right after the last answer phrase ("the answer is",
    "best option:", "option", "answer:" ... case-insensitive) that is followed by a letter;
    (2) a letter at the very start written as an option label or alone (``B``, ``(B)``, ``B.``, ``B) red``);
    (3) the only letter written as a label anywhere (``... it is (C)``); (4) the first standalone letter.
    Letters inside words never count; ``A``/``I`` followed by a lower-case word are read as English words.
    """
    s = text.strip()
    if not s:
        return None
    hit = _after_phrase(s, letters)
    if hit is not None:
        return hit
    found = _standalone(s, letters)
    if found and found[0][0] <= 1 and (found[0][2] or found[0][1] not in _WORD_LETTERS):
        return found[0][1]
    labelled = {f[1] for f in found if f[2]}
    if len(labelled) == 1:
        return labelled.pop()
    return found[0][1] if found else None


# -------------------------------------------------------------------------------------- spans
_CLOCK = r"\d+(?::\d{1,2}){1,2}(?:\.\d+)?"
_TIME = re.compile(r"(?<![\d.:])(" + _CLOCK + r"|\d+(?:\.\d+)?)(?![\d:])")
_UNIT = r"(?:s|secs?|seconds?)?"
_JOIN = re.compile(
    r"^\s*" + _UNIT + r"\s*,?\s*(?:to|-|–|—|~|and|until|till|through)\s*"
    r"(?:(?:it\s+)?(?:ends?|ending|finishes|stops)(?:\s+at)?\s*)?$",
    re.IGNORECASE,
)


def clock_seconds(token: str) -> float:
    """``"SS"``, ``"MM:SS"`` or ``"HH:MM:SS"`` (fractions allowed on the last field) -> seconds."""
    total = 0.0
    for part in token.split(":"):
        total = total * 60 + float(part)
    return total


def parse_span(text: str) -> tuple[float, float] | None:
    """The first ``<time> <joiner> <time>`` pair in a model output, in seconds, ordered (min, max).

    A time is seconds (``12``, ``12.5``, optionally followed by ``s``/``sec``/``seconds``) or a clock
    ``M:SS`` / ``H:MM:SS``; the joiner is ``to``, ``-``, ``–``, ``and``, ``until`` ... optionally followed
    by "ends at" ("starts at 3.1 and ends at 9.8"). Without such a pair, an output holding exactly two
    times gives those two. Otherwise None (unparsed).
    """
    times = [(m.start(), m.end(), m.group(1)) for m in _TIME.finditer(text)]
    for (_, end_a, a), (start_b, _, b) in zip(times, times[1:], strict=False):
        if _JOIN.match(text[end_a:start_b]):
            x, y = clock_seconds(a), clock_seconds(b)
            return (min(x, y), max(x, y))
    if len(times) == 2:
        x, y = clock_seconds(times[0][2]), clock_seconds(times[1][2])
        return (min(x, y), max(x, y))
    return None


# ------------------------------------------------------------------------ lmms-eval extractors
_LMMS_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                  # adjacent string literals in the source concatenate into these two phrases
                  "The best option isThe correct option is", "Best answer:Best option:")


def lmms_first_capital(text: str, letters: str = "ABCD") -> str | None:
    """Video-MME (and old MLVU) lmms-eval extraction: strip; delete the answer phrases (case-sensitive);
    an output of more than 10 words without any of the letters is unparsed; else the first capital
    letter among `letters` anywhere (even inside a word)."""
    s = text.strip()
    for prefix in _LMMS_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search("[" + re.escape(letters) + "]", s)
    return m.group(0) if m else None


def lmms_mlvu(text: str, letters: str = "ABCD") -> str | None:
    """MLVU lmms-eval extraction (prompt ends in "Best option: ("): the character just before the first
    ``)``; without a ``)`` the whole stripped output, which scores only if it is exactly the letter."""
    s = text.strip()
    if ")" in s:
        i = s.index(")")
        s = s[i - 1:i] if i > 0 else ""
    return s if len(s) == 1 and s in letters else None


_LVB_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")


def lmms_lvbench(text: str, letters: str = "ABCDE") -> str | None:
    """LVBench lmms-eval extraction (``mcq_acc``): an output ``"X. text"`` gives X; otherwise line breaks
    become spaces, punctuation is removed (or spaced), quotes and parentheses are trimmed, the text is
    lower-cased, and the first standalone letter a-e (either case) is the answer."""
    s = text.strip()
    m = re.match(r"^([A-E])\.\s*(.+)$", s, re.IGNORECASE)
    if m:
        letter = m.group(1).upper()
        return letter if letter in letters else None
    s = s.replace("\n", " ").replace("\t", " ").strip()
    comma_number = re.search(r"\d,\d", s) is not None
    out = s
    for p in _LVB_PUNCT:
        out = out.replace(p, "") if (p + " " in s or " " + p in s or comma_number) else out.replace(p, " ")
    out = re.sub(r"\.(?!\d)", "", out)
    out = out.strip("'").strip('"').strip(")").strip("(").strip().lower()
    m = re.search(r"\b([a-e])\b", out)
    letter = m.group(1).upper() if m else None
    return letter if letter is not None and letter in letters else None


_LVB_LONG_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option is", "The correct option is", "Best answer:", "Best option:")


def lmms_longvideobench(text: str, letters: str = "ABCDE") -> str | None:
    """LongVideoBench lmms-eval extraction: strip, delete the answer phrases (case-sensitive), then the
    first capital A-E anywhere. lmms-eval picks a random letter when none is found (or when a >10-word
    output has none); here that is None (unparsed)."""
    s = text.strip()
    for prefix in _LVB_LONG_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search("[ABCDE]", s)
    return m.group(0) if m and m.group(0) in letters else None


_TVG_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
_TVG_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"


def lmms_charades(text: str) -> tuple[float, float] | None:
    """Charades-STA lmms-eval extraction: lower-case, every ``to`` becomes ``-`` (inside words too),
    split into sentences at ``!``, ``?`` and line breaks, keep those with a timing keyword (all if none
    has one), then the first of: a clock range ``M:SS - M:SS``; a number range ``a - b``; the clock
    times of the kept sentences taken in pairs; the first number of each kept sentence taken in pairs;
    a number range with ``s`` units. The first pair found is the span (swapped if reversed)."""
    para = text.lower().replace("a specific example is : 20.8 - 30.0 seconds", "").replace("to", "-")
    sentences = re.split(r"[!?\n]", para)
    kept = [s for s in sentences if any(k in s for k in _TVG_KEYWORDS)] or sentences
    pairs: list[tuple[float, float]] = []
    for s in kept:
        found = re.findall(r"\b(" + _TVG_CLOCK + r")\s*[–-]\s*(" + _TVG_CLOCK + r")\b", s)
        if found:
            pairs = [(clock_seconds(a), clock_seconds(b)) for a, b in found]
            break
    if not pairs:
        for s in kept:
            found = re.findall(r"(\d+(?:\.\d+)?)\s*[–-]\s*(\d+(?:\.\d+)?)", s)
            if found:
                pairs = [(float(a), float(b)) for a, b in found]
                break
    if not pairs:  # every clock time of the kept sentences, in pairs
        clocks = [clock_seconds(t) for s in kept for t in re.findall(r"\b(" + _TVG_CLOCK + r")\b", s)]
        pairs = list(zip(clocks[0::2], clocks[1::2], strict=False))
    if not pairs:  # the first number of each kept sentence, in pairs
        firsts = [float(found[0]) for s in kept if (found := re.findall(r"\b(\d+(?:\.\d+)?)\b", s))]
        pairs = list(zip(firsts[0::2], firsts[1::2], strict=False))
    if not pairs:  # a number range with seconds units ("4.2s - 9s")
        for s in kept:
            found = re.findall(r"(\d+(?:\.\d+)?)\s*s?\s*[–-]\s*(\d+(?:\.\d+)?)\s*s?", s)
            if found:
                pairs = [(float(a), float(b)) for a, b in found]
                break
    if not pairs:
        return None
    a, b = pairs[0]
    return (min(a, b), max(a, b))


# ------------------------------------------------------------------------------------ dispatch
@dataclass(frozen=True)
class Extractor:
    """How one protocol reads outputs of one benchmark: ``name`` (recorded in the metrics JSON),
    ``task`` ("choice" or "span") and the parser (``(text, letters) -> letter`` or ``text -> span``)."""

    name: str
    task: str
    parse: Callable[..., object]


OFFICIAL_CHOICE = Extractor("project.parse_choice", "choice", parse_choice)
OFFICIAL_SPAN = Extractor("project.parse_span", "span", parse_span)
LMMS_EVAL_EXTRACTORS: dict[str, Extractor] = {
    "mlvu": Extractor("lmms-eval.mlvu (char before first ')')", "choice", lmms_mlvu),
    "videomme": Extractor("lmms-eval.videomme (first capital A-D after answer phrases)", "choice",
                          lmms_first_capital),
    "lvbench": Extractor("lmms-eval.lvbench (mcq_acc)", "choice", lmms_lvbench),
    "longvideobench": Extractor("lmms-eval.longvideobench (first capital A-E; unparsed, not random)",
                                "choice", lmms_longvideobench),
    "charades": Extractor("lmms-eval.charades_sta (extract_time)", "span", lmms_charades),
}
PROTOCOLS: tuple[str, ...] = ("official", "lmms-eval")


def extractor_for(protocol: str, benchmark: str, task: str) -> Extractor:
    """The parser of `protocol` for `benchmark` (a data format) and eval `task` (mcq | needle | grounding).

    Raises ValueError for an unknown protocol, or ``lmms-eval`` with a format lmms-eval has no task for.
    """
    if protocol == "official":
        return OFFICIAL_SPAN if task == "grounding" else OFFICIAL_CHOICE
    if protocol == "lmms-eval":
        if benchmark not in LMMS_EVAL_EXTRACTORS:
            raise ValueError(f"protocol lmms-eval has no task for format {benchmark!r} "
                             f"(known: {', '.join(LMMS_EVAL_EXTRACTORS)})")
        return LMMS_EVAL_EXTRACTORS[benchmark]
    raise ValueError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
