"""Generated questions: shuffled count options, canonical option order, the multi-turn qa session, and
when the count is asked."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.scenes import COLOURS, NEEDLE_COLOURS, SHAPES, sample_scene
from data.shards import iter_shard
from data.synth import SynthConfig, generate
from data.synth_questions import mcq, needle, session


def _options(question: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-D])\. (.+)$", question, re.MULTILINE))


def _scenes(n: int, max_objects: int = 3) -> list:
    return [sample_scene(np.random.default_rng(i), 64, 1, 48, 4, max_objects, 0.7) for i in range(n)]


def test_count_options_are_shuffled() -> None:
    letters = Counter()
    for i, scene in enumerate(_scenes(80)):
        conv, ans = mcq(scene, np.random.default_rng(1000 + i), kind="count")
        assert _options(conv[0]["value"])[ans["letter"]] == str(len(scene.objects))
        letters[ans["letter"]] += 1
    assert set(letters) == set("ABCD")


def test_canonical_order_lists_options_in_one_order() -> None:
    for i, scene in enumerate(_scenes(40)):
        rng = np.random.default_rng(i)
        conv, ans = mcq(scene, rng, kind="colour_of_shape", shuffle=False)
        assert list(_options(conv[0]["value"]).values()) == list(COLOURS)
        conv, ans = mcq(scene, rng, kind="shape_of_colour", shuffle=False)
        assert list(_options(conv[0]["value"]).values()) == list(SHAPES)
        if len(scene.objects) >= 2:
            conv, ans = mcq(scene, rng, kind="first", shuffle=False)
            opts = list(_options(conv[0]["value"]).values())
            assert opts == sorted(opts) and opts["ABCD".index(ans["letter"])] == ans["option"]
        if scene.needle is not None:
            conv, ans = needle(scene, rng, shuffle=False)
            assert list(_options(conv[0]["value"]).values()) == list(NEEDLE_COLOURS)
            assert ans["option"] == scene.needle.colour


def test_session_answers_match_the_scene_and_do_not_leak() -> None:
    for i, scene in enumerate(_scenes(60)):
        conv, ans = session(scene, np.random.default_rng(i))
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        names = {f"{o.colour} {o.shape}": o for o in scene.objects}
        said: list[str] = []
        for (q, a), turn in zip(zip(conv[::2], conv[1::2], strict=True), ans["turns"], strict=True):
            question, answer = q["value"], a["value"]
            if turn["task"] == "grounding":
                obj = names[re.search(r"When does the (\w+ \w+) appear", question).group(1)]
                assert answer == f"From {obj.appear:.1f} to {obj.leave:.1f} seconds."
            else:
                letter, option = answer.split(". ", 1)
                assert _options(question)[letter] == option == turn["option"]
                # no earlier turn (question or answer) already states this answer
                if turn["task"] == "mcq" and turn["type"] != "count":
                    assert all(option not in text for text in said), (said, option)
            said += [question.removeprefix("<image>\n").split("\n")[0], answer]
        kinds = Counter(t.get("type", t["task"]) for t in ans["turns"])
        assert kinds["grounding"] == len(scene.objects) and kinds["count"] == 1
        assert kinds["needle"] == (scene.needle is not None)


def test_option_order_is_validated() -> None:
    with pytest.raises(ValueError, match="option_order"):
        SynthConfig(out="x", videos=4, option_order="sorted").validate()
    with pytest.raises(ValueError, match="tasks"):
        SynthConfig(out="x", videos=4, tasks=("dance",)).validate()
    SynthConfig(out="x", videos=4, tasks=("qa",)).validate()


@pytest.mark.parametrize("max_objects", [1, 2])
def test_count_is_asked_only_when_videos_can_hold_several_objects(tmp_path: Path, max_objects: int) -> None:
    """With one object per video the count answer would be a constant: generate() leaves it out."""
    generate(SynthConfig(out=str(tmp_path), videos=40, images=0, seed=3, min_frames=16, max_frames=24,
                         val_frac=0.0, test_frac=0.0, max_objects=max_objects, tasks=("mcq", "qa")))
    kinds: Counter[str] = Counter()
    for shard in sorted(tmp_path.glob("train-*.tar")):
        for raw in iter_shard(str(shard)):
            rec = json.loads(raw.members["json"])
            turns = rec["answer"]["turns"] if rec["task"] == "qa" else [rec["answer"]]
            kinds.update(t["type"] for t in turns if "type" in t)
    assert kinds["colour_of_shape"] > 0 and kinds["shape_of_colour"] > 0
    assert (kinds["count"] > 0) == (max_objects > 1)
