"""Prompts per benchmark and protocol: what the model is asked, as the benchmark authors and lmms-eval ask it.

A `PromptSpec` is a system prompt (None: the model's default ``"You are a helpful assistant."``), a
user-turn template and an assistant-turn prefix (text the answer is forced to start with, e.g. MLVU's
``"Best Option: ("``). The user turn is ``"<image>\\n" + template.format(...)``; template fields:

* ``{question}`` the bare question (readers strip embedded options),
* ``{options}`` option lines ``"A. text"``, ``{options_paren}`` lines ``"(A) text"``,
* ``{options_list}`` Python's ``str()`` of the list ``["A. text", ...]`` (how the lmms-eval Video-MME task
  of the Video-XL-2 release rendered the options).

Sources (read for their facts; strings below are the prompts those sources send):

* MLVU official: JUNJIE99/MLVU ``evaluation/multiple_choice_evaluation/choice_bench.py`` (system prompt,
  ``Question:``/``Options:`` block with ``(A)`` labels, "Only give the best option.", answer prefix).
* Video-MME official: BradyFU/Video-MME README, subtitle-free prompt.
* LongVideoBench official: longvideobench/LongVideoBench ``longvideobench_dataset.py`` (the inputs it builds).
* LVBench official: THUDM/LVBench ships no prompt; its questions carry the options as ``(A) ...`` lines,
  so the question is shown as stored, followed by the letter instruction its leaderboard scorer expects.
* Charades-STA official: the annotation authors evaluate no language model; this project's grounding
  prompt is used, asking for the form its parser reads.
* lmms-eval: the task definitions shipped with Video-XL-2 (VectorSpaceLab/Video-XL,
  ``Video-XL-2/eval/lvu/w_chunk_bilevel/lmms_eval/tasks/{mlvu,videomme,lvbench,longvideobench}``), which
  produced the published numbers; Charades-STA from EvolvingLMMs-Lab/lmms-eval
  ``lmms_eval/tasks/charades_sta`` (``charades.yaml`` pre/post prompts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from data.benchmarks import LETTERS, EvalSample

BENCHMARK_FORMATS: tuple[str, ...] = ("mlvu", "videomme", "lvbench", "longvideobench", "charades")
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class PromptSpec:
    """One benchmark's prompt under one protocol (see module docstring); ``source`` says where it is from."""

    user: str
    system: str | None = None
    response_prefix: str = ""
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping for the metrics JSON."""
        return asdict(self)


_MLVU_SYSTEM = ("Carefully watch this video and pay attention to every detail. Based on your observations, "
                "select the best option that accurately addresses the question.")
_VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
                         "Respond with only the letter (A, B, C, or D) of the correct option.")
_VIDEOMME_LMMS_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video "
                              "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
_CHARADES_LMMS_PRE = (
    "Please find the visual event described by a sentence in the video, determining its starting and ending "
    "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
    "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: ")
PROJECT_GROUNDING = ('Give the query: "{question}", when does the described content occur in the video? '
                     'Answer in the form "From <start> to <end> seconds."')

PROMPTS: dict[tuple[str, str], PromptSpec] = {
    ("mlvu", "official"): PromptSpec(
        system=_MLVU_SYSTEM, user="Question: {question}\nOptions:\n{options_paren}\nOnly give the best option.",
        response_prefix="Best Option: (", source="JUNJIE99/MLVU choice_bench.py"),
    ("mlvu", "lmms-eval"): PromptSpec(
        user="\n{question}\n{options_paren}\nOnly give the best option.\n\nBest option: (",
        source="Video-XL-2 lmms-eval tasks/mlvu"),
    ("videomme", "official"): PromptSpec(
        user=_VIDEOMME_INSTRUCTION + "\n{question}\n{options}\nThe best answer is:",
        source="BradyFU/Video-MME README (no subtitles)"),
    ("videomme", "lmms-eval"): PromptSpec(
        user=_VIDEOMME_LMMS_INSTRUCTION + "\n{question}\n{options_list}\n\n" + LETTER_INSTRUCTION,
        source="Video-XL-2 lmms-eval tasks/videomme"),
    ("lvbench", "official"): PromptSpec(
        user="{question}\n{options_paren}\n" + LETTER_INSTRUCTION,
        source="THUDM/LVBench question text as released (no prompt shipped)"),
    ("lvbench", "lmms-eval"): PromptSpec(
        user="{question}\n{options}\n" + LETTER_INSTRUCTION, source="Video-XL-2 lmms-eval tasks/lvbench"),
    ("longvideobench", "official"): PromptSpec(
        user="Question: {question}\n{options}\n" + LETTER_INSTRUCTION,
        source="longvideobench/LongVideoBench longvideobench_dataset.py"),
    ("longvideobench", "lmms-eval"): PromptSpec(
        user="{question}\n{options}\n" + LETTER_INSTRUCTION + "\n",
        source="Video-XL-2 lmms-eval tasks/longvideobench (val_v)"),
    ("charades", "official"): PromptSpec(
        user=PROJECT_GROUNDING, source="this project (Charades-STA authors evaluate no language model)"),
    ("charades", "lmms-eval"): PromptSpec(
        user=_CHARADES_LMMS_PRE + "{question}. Please return its start time and end time.",
        source="EvolvingLMMs-Lab/lmms-eval tasks/charades_sta"),
}


def prompt_spec(fmt: str, protocol: str, bench_template: str) -> PromptSpec:
    """The prompt for data format `fmt` under `protocol`.

    Benchmark formats (`BENCHMARK_FORMATS`) take theirs from `PROMPTS`; the project's own data
    (synth, records) uses the bench's `bench_template` and only the ``official`` protocol.
    Raises ValueError for a protocol a format does not have.
    """
    if fmt in BENCHMARK_FORMATS:
        if (fmt, protocol) not in PROMPTS:
            raise ValueError(f"format {fmt}: unknown protocol {protocol!r} (official | lmms-eval)")
        return PROMPTS[(fmt, protocol)]
    if protocol != "official":
        raise ValueError(f"format {fmt}: protocol {protocol!r} is defined only for "
                         f"{', '.join(BENCHMARK_FORMATS)}; this project's data uses 'official'")
    return PromptSpec(user=bench_template, source="conf/eval/bench template")


def render(spec: PromptSpec, sample: EvalSample) -> str:
    """The user text (after ``<image>\\n``) for `sample`; a sample's own `prompt` (synth data) wins."""
    if sample.prompt is not None:
        return sample.prompt
    lettered = [f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options)]
    return spec.user.format(
        question=sample.question, options="\n".join(lettered),
        options_paren="\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(sample.options)),
        options_list=str(lettered))
