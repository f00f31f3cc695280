"""Questions with exact answers about generated scenes, one function per task family.

Each function returns ``(conversations, answer)``: a LLaVA conversation whose first human turn starts
with ``<image>\\n`` and the task-specific ground truth of docs/architecture.md. Multiple-choice
answers are written ``"B. circle"`` so the first answer token is the letter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.scenes import COLOURS, NEEDLE_COLOURS, SHAPES, Scene, SceneObject

LETTERS = "ABCD"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
GROUNDING_SUFFIX = 'Answer in the form "From <start> to <end> seconds."'
CAPTION_PROMPTS = ("Describe the video.", "Describe what happens in the video.", "Briefly describe the video.")

Conversation = list[dict[str, str]]


def _turns(question: str, answer: str) -> Conversation:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _name(obj: SceneObject) -> str:
    return f"{obj.colour} {obj.shape}"


def _mcq(rng: np.random.Generator, question: str, options: list[str], correct: str,
         shuffle: bool = True) -> tuple[Conversation, dict[str, Any]]:
    if len(options) != len(LETTERS) or correct not in options or len(set(options)) != len(options):
        raise ValueError(f"options: need {len(LETTERS)} distinct options containing {correct!r}, got {options}")
    order = [options[i] for i in rng.permutation(len(options))] if shuffle else list(options)
    letter = LETTERS[order.index(correct)]
    listing = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(order))
    conv = _turns(f"{question}\n{listing}\n{MCQ_SUFFIX}", f"{letter}. {correct}")
    return conv, {"letter": letter, "option": correct, "options": order}


def caption(scene: Scene, rng: np.random.Generator) -> tuple[Conversation, dict[str, Any]]:
    """Alignment caption listing every object's appear/leave seconds (and the needle flash)."""
    events: list[tuple[int, str]] = []
    for i, obj in enumerate(scene.objects):
        lead = "A" if i == 0 else "Then a"
        events.append((obj.appear, f"{lead} {_name(obj)} appears at {obj.appear} s and leaves at {obj.leave} s."))
    if scene.needle is not None:
        events.append((scene.needle.second,
                       f"At {scene.needle.second} s the whole screen flashes {scene.needle.colour}."))
    sentences = [text for _, text in sorted(events, key=lambda e: e[0])]
    prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
    answer = {
        "objects": [{"colour": o.colour, "shape": o.shape, "span": [float(o.appear), float(o.leave)]}
                    for o in scene.objects],
        "needle": None if scene.needle is None else {"colour": scene.needle.colour, "second": scene.needle.second},
    }
    return _turns(prompt, " ".join(sentences)), answer


def mcq(scene: Scene, rng: np.random.Generator, kind: str | None = None,
        obj: SceneObject | None = None, shuffle: bool = True, count: bool = True) -> tuple[Conversation, dict[str, Any]]:
    """A four-option question about one object (colour, shape), the object count or the order
    (`kind` picks the family, default: drawn among those that apply; `obj` the object asked about).
    ``shuffle=False`` lists the options in their canonical order (`COLOURS`, `SHAPES`, 1-4, sorted names).
    ``count=False`` leaves the count family out of the draw (for data whose videos all hold one object,
    where its answer would be a constant)."""
    if kind is None:
        kinds = ["colour_of_shape", "shape_of_colour"] + (["count"] if count else [])
        if len(scene.objects) == 1:
            kinds.append("which_shape")
        if len(scene.objects) >= 2:
            kinds.append("first")
        kind = kinds[int(rng.integers(len(kinds)))]
    if obj is None:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if kind == "colour_of_shape":
        conv, ans = _mcq(rng, f"What colour is the {obj.shape}?", list(COLOURS), obj.colour, shuffle)
    elif kind == "shape_of_colour":
        conv, ans = _mcq(rng, f"What shape is the {obj.colour} object?", list(SHAPES), obj.shape, shuffle)
    elif kind == "which_shape":
        conv, ans = _mcq(rng, "Which shape appears in the video?", list(SHAPES), obj.shape, shuffle)
    elif kind == "count":
        conv, ans = _mcq(rng, "How many shapes appear in the video?", ["1", "2", "3", "4"], str(len(scene.objects)),
                         shuffle)
    else:
        first = min(scene.objects, key=lambda o: o.appear)
        present = {_name(o) for o in scene.objects}
        pool = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
        distractors = [pool[i] for i in rng.choice(len(pool), size=len(LETTERS) - len(present), replace=False)]
        options = sorted(present) + distractors
        conv, ans = _mcq(rng, "Which shape appears first?", options if shuffle else sorted(options), _name(first),
                         shuffle)
    ans["type"] = kind
    return conv, ans


def grounding(scene: Scene, rng: np.random.Generator,
              obj: SceneObject | None = None) -> tuple[Conversation, dict[str, Any]]:
    """When one object (default: a random one) is visible: ``From a.0 to b.0 seconds.``, span [appear, leave)."""
    if obj is None:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
    question = f"When does the {_name(obj)} appear in the video? {GROUNDING_SUFFIX}"
    start, end = float(obj.appear), float(obj.leave)
    return _turns(question, f"From {start:.1f} to {end:.1f} seconds."), {"span": [start, end],
                                                                         "object": _name(obj)}


def needle(scene: Scene, rng: np.random.Generator, shuffle: bool = True) -> tuple[Conversation, dict[str, Any]]:
    """Colour of the one-second full-screen flash; depth = second / (duration - 1)."""
    if scene.needle is None:
        raise ValueError("scene: has no needle to ask about")
    question = "For one second the whole screen shows a single colour. What colour is it?"
    conv, ans = _mcq(rng, question, list(NEEDLE_COLOURS), scene.needle.colour, shuffle)
    ans["depth"] = round(scene.needle.second / max(1, scene.duration - 1), 4)
    ans["second"] = scene.needle.second
    return conv, ans


def session(scene: Scene, rng: np.random.Generator, shuffle: bool = True,
            count: bool = True) -> tuple[Conversation, dict[str, Any]]:
    """Multi-turn training conversation: several question families about one video, one turn each.

    No earlier turn gives a later answer away: the needle, the count, then for one object "which
    shape" and its colour, for two objects either "which first" or one attribute (colour or shape)
    of each, and last the grounding questions (whose wording names colour and shape). Every turn
    draws its own option order (or uses the canonical one when ``shuffle`` is False); ``count=False``
    leaves the count question out.
    """
    turns: list[tuple[str, Conversation, dict[str, Any]]] = []
    if scene.needle is not None:
        turns.append(("needle", *needle(scene, rng, shuffle)))
    kinds = ["count"] if count else []
    if len(scene.objects) == 1:
        kinds += ["which_shape", "colour_of_shape"]
    elif rng.random() < 0.5:
        kinds.append("first")
    for kind in kinds:
        turns.append(("mcq", *mcq(scene, rng, kind=kind, shuffle=shuffle)))
    if len(scene.objects) >= 2 and "first" not in kinds:
        for obj in scene.objects:
            kind = "colour_of_shape" if rng.random() < 0.5 else "shape_of_colour"
            turns.append(("mcq", *mcq(scene, rng, kind=kind, obj=obj, shuffle=shuffle)))
    for obj in scene.objects:
        turns.append(("grounding", *grounding(scene, rng, obj=obj)))
    conv: Conversation = []
    for i, (_, c, _) in enumerate(turns):
        human = c[0]["value"] if i == 0 else c[0]["value"].removeprefix("<image>\n")
        conv += [{"from": "human", "value": human}, c[1]]
    return conv, {"turns": [{"task": t, **a} for t, _, a in turns]}


def image_caption(scene: Scene, rng: np.random.Generator) -> tuple[Conversation, dict[str, Any]]:
    """Caption, colour or shape of the single object of a still image."""
    obj = scene.objects[0]
    variants = [
        ("Describe the image briefly.", f"A {_name(obj)}."),
        ("What colour is the shape in the image?", f"{obj.colour.capitalize()}."),
        ("What shape is in the image?", f"A {obj.shape}."),
    ]
    question, answer = variants[int(rng.integers(len(variants)))]
    return _turns(question, answer), {"colour": obj.colour, "shape": obj.shape}
