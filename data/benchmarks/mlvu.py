"""MLVU dev multiple-choice questions: the release's per-task json files and the lmms-eval parquet.

Release (annotations in github.com/JUNJIE99/MLVU ``data/<n>_<task>.json``, shipped as
``MLVU/json/`` in HF dataset ``MLVU/MVLU``): one json list per task file ``1_plotQA 2_needle 3_ego
4_count 5_order 6_anomaly_reco 7_topic_reasoning`` (multiple choice) and ``8_sub_scene 9_summary``
(open-ended, in the same folder). Multiple-choice rows have exactly ``video`` (file name),
``duration`` (int or float seconds), ``question``, ``candidates`` (option texts), ``answer`` (the
correct option's *text*) and ``question_type``; the open-ended rows have no ``candidates``
(``8_sub_scene`` adds ``scoring_points``). ``question_type`` per file: ``plotQA findNeedle ego count
order anomaly_reco topic_reasoning subPlot summary``. Faults in the release files: answers that match
no candidate (2 rows of ``2_needle``), duplicate candidates and empty candidates (``1_plotQA``,
``6_anomaly_reco``, ``7_topic_reasoning``, ``3_ego``) and one row with an empty question; this
reader keeps 2155 of the 2174 multiple-choice rows (19 excluded), while the authors' scorer keeps
all of them (a duplicated answer text takes the last matching letter, an answer matching no
candidate gets letter ``@`` and can never be right). Source: the json files of JUNJIE99/MLVU.
Videos: the authors' scorer (JUNJIE99/MLVU ``evaluation/multiple_choice_evaluation/choice_bench.py``)
reads ``video/<task>/<video>`` with ``<task>`` the file's task name without its number (``needle``,
``plotQA``, ...); copies of the HF release use ``video/<n>_<task>/`` (the path kept for a missing
video); both are tried, then flat, then one folder level down.

lmms-eval copy (HF dataset ``sy1998/MLVU_dev``, split ``test``, named in lmms-eval
``lmms_eval/tasks/mlvu/mlvu_dev.yaml``): parquet columns ``video_name`` (string), ``duration``
(float64), ``question``, ``candidates`` (list of strings), ``answer``, ``task_type``,
``question_id`` (strings) -- column types from the dataset card of a one-task subset of it
(``topyun/MLVU_dev_plotQA``, 539 rows, as many as the release's ``1_plotQA.json``); row values from
the HF dataset viewers of that subset and of a full copy (``Ahmed-Nasri/tivtv-frames-mlvu-dev-640f``):
``video_name`` is the bare file name (``needle_32.mp4``), ``question`` is the question followed by
one ``(A) text`` line per option and a final newline, ``candidates`` the option texts, ``answer``
the letter, ``question_id`` ``Q<n>``. lmms-eval ``lmms_eval/tasks/mlvu/utils.py`` appends
``Best option: (`` to ``question`` and compares the extracted letter with ``answer``. Its ``task_type`` values are lmms-eval's names, not the release's:
``anomaly_reco count ego needle order plotQA topic_reasoning`` (the ``TASK_TYPES`` of
``mlvu_aggregate_results_dev`` in that utils.py); the copy lmms-eval read before March 2025
(``sy1998/temp``) used the paper's codes ``TR AR NQA ER PQA AO AC`` (``TASK_TYPES`` in the same
file at lmms-eval commit 13d139ac). `canonical_task_type` maps all of these to the release's
``question_type`` names so both layouts aggregate under the same keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.benchmarks.common import (
    LETTERS,
    AnnotationError,
    BenchmarkRead,
    Collector,
    EvalSample,
    RowSkip,
    VideoResolver,
    answer_index_of_text,
    answer_letter,
    check_options,
    need,
    number_or_none,
    read_table,
    set_video,
    split_embedded_options,
    table_files,
)

# lmms-eval's task names and the paper's task codes -> the release's ``question_type`` (see module doc).
# Codes: MLVU paper / README table (TR topic reasoning, AR anomaly recognition, NQA needle QA, ER ego
# reasoning, PQA plot QA, AO action order, AC action count, SSC sub-scene captioning, VS video summary).
TASK_TYPE_ALIASES: dict[str, str] = {
    "needle": "findNeedle", "sub_scene": "subPlot",
    "TR": "topic_reasoning", "AR": "anomaly_reco", "NQA": "findNeedle", "ER": "ego", "PQA": "plotQA",
    "AO": "order", "AC": "count", "SSC": "subPlot", "VS": "summary",
}


def canonical_task_type(name: str) -> str:
    """The release's ``question_type`` for an MLVU task name (lmms-eval name, paper code or task-file
    name without its number); names it does not know are returned unchanged."""
    return TASK_TYPE_ALIASES.get(name.strip(), name.strip())


def _layout_of(rows: list[dict[str, Any]]) -> str:
    keys = set().union(*(r.keys() for r in rows[:50]))
    if "video_name" in keys:
        return "lmms-eval"
    if "video" in keys:
        return "release"
    return ""


def _release_row(row: dict[str, Any], stem: str, videos: VideoResolver) -> EvalSample:
    video = need(row, "video")
    question = need(row, "question")
    head, _, rest = stem.partition("_")
    task_dir = rest if head.isdigit() and rest else stem  # "2_needle" -> "needle", the scorer's video folder
    qtype = row.get("question_type") if isinstance(row.get("question_type"), str) else canonical_task_type(task_dir)
    cands = row.get("candidates")
    if cands is None:
        raise RowSkip("no_candidates_open_ended", f"no 'candidates' (open-ended '{qtype}' question)")
    if not isinstance(cands, list):
        raise RowSkip("bad_field", f"field 'candidates' is {type(cands).__name__}, expected a list")
    options = check_options(cands)
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        raise RowSkip("no_answer", "no 'answer'")
    idx = answer_index_of_text(str(answer), options)
    sample = EvalSample(
        sample_id="", video="", task="mcq", question=question.strip(), source="mlvu", options=options,
        answer=LETTERS[idx], duration=number_or_none(row.get("duration")),
        metadata={"task_type": qtype, "task_file": stem},
    )
    return set_video(sample, videos.resolve(Path(stem) / video, Path(task_dir) / video, video, deep=True))


def _lmms_row(row: dict[str, Any], videos: VideoResolver) -> EvalSample:
    video = need(row, "video_name")
    question, embedded = split_embedded_options(need(row, "question"))
    cands = row.get("candidates")
    raw_type = row.get("task_type") if isinstance(row.get("task_type"), str) else ""
    qtype = canonical_task_type(raw_type)
    raw = list(cands) if isinstance(cands, (list, tuple)) and len(cands) else embedded
    if not raw:
        raise RowSkip("no_candidates_open_ended", f"no candidates in 'candidates' or the question ('{qtype}')")
    options = check_options(raw)
    answer = row.get("answer")
    try:
        letter = answer_letter(answer, len(options))
    except RowSkip:
        if not (isinstance(answer, str) and len(answer.strip()) > 1):
            raise
        letter = LETTERS[answer_index_of_text(answer, options)]  # some copies give the option text
    sample = EvalSample(
        sample_id="", video="", task="mcq", question=question, source="mlvu", options=options, answer=letter,
        duration=number_or_none(row.get("duration")), metadata={"task_type": qtype},
    )
    if raw_type != qtype:
        sample.metadata["task_type_raw"] = raw_type
    return set_video(sample, videos.resolve(video, deep=True))


def read(path: str | Path, video_root: str | Path | None = None, *, strict: bool = False) -> BenchmarkRead:
    """Read MLVU dev from a task json, a folder of task jsons (all of them, open-ended ones included) or parquet.

    Sample ids: release ``mlvu/<task file stem>/<row>``, lmms-eval ``mlvu/<question_id>``.
    ``metadata["task_type"]`` is the release's ``question_type`` in both layouts (lmms-eval's own
    value kept in ``metadata["task_type_raw"]`` when it differs, e.g. ``needle`` -> ``findNeedle``).
    Excluded rows: ``no_candidates_open_ended``, ``answer_not_in_candidates`` (the needle file
    has answers that match none of their candidates; an answer is matched exactly, then stripped
    and case-folded if that is unique), ``duplicate_candidates``, ``empty_candidate``,
    ``too_few_candidates``, ``too_many_candidates``, ``no_answer``, ``missing_field``, ``bad_field``.
    Videos: ``video_root/<task stem>/<video>`` (``2_needle``), ``video_root/<task>/<video>``
    (``needle``), ``video_root/<video>``, then one folder level down.
    Raises AnnotationError for an unreadable file or a folder mixing the two layouts.
    """
    path = Path(path)
    files = table_files(path, ("*.json", "*.parquet"))
    videos = VideoResolver(video_root if video_root is not None else (path if path.is_dir() else path.parent))
    coll: Collector | None = None
    for f in files:
        rows = read_table(f)
        layout = _layout_of(rows)
        if not layout:
            raise AnnotationError(f, None, None, "neither MLVU release rows ('video') nor lmms-eval rows ('video_name')")
        if coll is None:
            coll = Collector("mlvu", layout, str(path), strict)
        elif coll.layout != layout:
            raise AnnotationError(f, None, None, f"{layout} rows in a folder of {coll.layout} files")
        for i, row in enumerate(rows):
            qid = row.get("question_id")
            sid = f"mlvu/{qid}" if layout == "lmms-eval" and qid not in (None, "") else f"mlvu/{f.stem}/{i}"
            try:
                sample = _release_row(row, f.stem, videos) if layout == "release" else _lmms_row(row, videos)
            except RowSkip as skip:
                coll.exclude(f, sid, skip)
                continue
            sample.sample_id = sid
            coll.add(sample)
    assert coll is not None  # table_files returned at least one file
    return coll.result()
