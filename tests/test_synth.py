"""Generated dataset: determinism, split disjointness, decodable media, answers that match the pixels."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from data.scenes import BACKGROUNDS, COLOURS, NEEDLE_COLOURS, render_frame, sample_scene
from data.synth import SPLITS, SynthConfig, generate, main

PALETTE = {**COLOURS, **NEEDLE_COLOURS}


def _read_split(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                fh = tar.extractfile(member)
                assert fh is not None
                samples.setdefault(key, {})[ext] = fh.read()
    return samples


def _frames(mp4: bytes) -> tuple[np.ndarray, float]:
    reader = decord.VideoReader(io.BytesIO(mp4))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), float(reader.get_avg_fps())


def _colour_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Per palette colour, the pixels nearest to it (and within a tolerance) — background excluded."""
    names = list(PALETTE) + [f"bg{i}" for i in range(len(BACKGROUNDS))]
    refs = np.array(list(PALETTE.values()) + list(BACKGROUNDS), dtype=np.int32)
    dist = np.abs(frame.astype(np.int32)[:, :, None, :] - refs[None, None]).max(axis=-1)
    nearest = dist.argmin(axis=-1)
    close = dist.min(axis=-1) < 70
    return {n: (nearest == i) & close for i, n in enumerate(names) if not n.startswith("bg")}


def _shape_of(mask: np.ndarray) -> str:
    """Classify a single blob from its bounding-box fill and top/bottom balance."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    fill = box.mean()
    h = box.shape[0]
    top, bottom = box[: h // 4].mean(), box[-(h // 4):].mean()
    if fill > 0.9:
        return "square"
    if fill > 0.68:
        return "circle"
    return "triangle" if top < 0.6 * bottom else "cross"


def _observe(frames: np.ndarray, fps: float) -> tuple[dict[str, dict], list[tuple[int, str]]]:
    """Objects seen in decoded frames: colour -> {shape, seconds}; and full-frame needle frames."""
    objects: dict[str, dict] = {}
    needles = []
    for i, frame in enumerate(frames):
        masks = _colour_masks(frame)
        for name, mask in masks.items():
            if mask.mean() > 0.9 and name in NEEDLE_COLOURS:
                needles.append((i, name))
            elif name in COLOURS and mask.sum() >= 40:
                obj = objects.setdefault(name, {"shapes": Counter(), "seconds": set()})
                obj["shapes"][_shape_of(mask)] += 1
                obj["seconds"].add(int(i // fps))
    for obj in objects.values():
        obj["shape"] = obj["shapes"].most_common(1)[0][0]
        obj["span"] = (min(obj["seconds"]), max(obj["seconds"]) + 1)
        assert len(obj["seconds"]) == obj["span"][1] - obj["span"][0], "object visibility has a hole"
    return objects, needles


def _options(question: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^([A-D])\. (.+)$", question, re.MULTILINE)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthConfig, dict]:
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(out=str(out), videos=14, seed=7, images=6, min_frames=8, max_frames=24, needle_prob=0.5,
                      shard_size=16)
    return out, cfg, generate(cfg)


def test_determinism(dataset: tuple[Path, SynthConfig, dict], tmp_path: Path) -> None:
    out, _, _ = dataset
    main(["--out", str(tmp_path / "again"), "--videos", "14", "--seed", "7", "--images", "6",
          "--min-frames", "8", "--max-frames", "24", "--needle-prob", "0.5", "--shard-size", "16"])
    for split in SPLITS:
        a, b = _read_split(out, split), _read_split(tmp_path / "again", split)
        assert a.keys() == b.keys() and a
        for key in a:
            assert a[key]["json"] == b[key]["json"]
            media = "mp4" if "mp4" in a[key] else "png"
            if media == "mp4":
                assert np.array_equal(_frames(a[key]["mp4"])[0], _frames(b[key]["mp4"])[0])
            else:
                assert a[key]["png"] == b[key]["png"]
    assert (out / "manifest.json").read_bytes() == (tmp_path / "again" / "manifest.json").read_bytes()
    generate(SynthConfig(out=str(tmp_path / "other"), videos=14, seed=8, images=6, min_frames=8, max_frames=24))
    assert _read_split(tmp_path / "other", "train")["train_v000000_caption"]["json"] != \
        _read_split(out, "train")["train_v000000_caption"]["json"]


def test_splits_disjoint_and_manifest_counts(dataset: tuple[Path, SynthConfig, dict]) -> None:
    out, cfg, manifest = dataset
    seen_sources: dict[str, str] = {}
    seen_scenes: dict[str, str] = {}
    for split in SPLITS:
        samples = _read_split(out, split)
        recs = [json.loads(s["json"]) for s in samples.values()]
        counts = Counter(r["task"] for r in recs)
        info = manifest["splits"][split]
        assert dict(counts) == info["tasks"] and len(recs) == info["samples"]
        assert len({r["source_id"] for r in recs if "video" in r}) == info["videos"]
        assert len({r["source_id"] for r in recs if "image" in r}) == info["images"]
        assert counts["needle"] == info["needle_videos"]
        for r in recs:
            assert r["id"] in samples and r["id"].startswith(split)
            assert seen_sources.setdefault(r["source_id"], split) == split
            scene = json.dumps(r["scene"], sort_keys=True)
            assert seen_scenes.setdefault(scene, split) == split
    assert manifest["splits"]["val"]["videos"] >= 1 and manifest["splits"]["test"]["videos"] >= 1
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_media_decode_with_requested_frames(dataset: tuple[Path, SynthConfig, dict]) -> None:
    out, cfg, _ = dataset
    for split in SPLITS:
        by_source: dict[str, bytes] = {}
        for key, sample in _read_split(out, split).items():
            rec = json.loads(sample["json"])
            if "image" in rec:
                assert rec["image"] == f"{key}.png"
                image = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
                assert image.shape == (cfg.size, cfg.size, 3)
                continue
            assert rec["video"] == f"{key}.mp4"
            frames, fps = _frames(sample["mp4"])
            assert frames.shape[1:] == (cfg.size, cfg.size, 3)
            assert fps == pytest.approx(cfg.fps) and rec["fps"] == cfg.fps
            assert len(frames) == rec["duration"] * cfg.fps
            assert cfg.min_frames <= len(frames) <= cfg.max_frames
            assert by_source.setdefault(rec["source_id"], sample["mp4"]) == sample["mp4"]


def test_answers_match_decoded_pixels(dataset: tuple[Path, SynthConfig, dict]) -> None:
    out, _, _ = dataset
    checked = Counter()
    observed_cache: dict[str, tuple[dict, list]] = {}
    for split in SPLITS:
        for sample in _read_split(out, split).values():
            rec = json.loads(sample["json"])
            question, answer_text = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
            assert question.startswith("<image>\n")
            task = rec["task"]
            if task == "image_caption":
                image = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
                (colour, mask), = [(c, m) for c, m in _colour_masks(image).items() if m.sum() >= 40]
                assert colour == rec["answer"]["colour"] and _shape_of(mask) == rec["answer"]["shape"]
                assert colour in answer_text.lower() or rec["answer"]["shape"] in answer_text
                checked[task] += 1
                continue
            if rec["source_id"] not in observed_cache:
                frames, fps = _frames(sample["mp4"])
                observed_cache[rec["source_id"]] = _observe(frames, fps)
            objects, needles = observed_cache[rec["source_id"]]
            if task in ("mcq", "needle"):
                letter = answer_text[0]
                assert answer_text.startswith(f"{letter}. ") and letter == rec["answer"]["letter"]
                chosen = _options(question)[letter]
                assert answer_text == f"{letter}. {chosen}"
            if task == "grounding":
                m = re.fullmatch(r"From (\d+\.\d) to (\d+\.\d) seconds\.", answer_text)
                assert m is not None
                span = (float(m.group(1)), float(m.group(2)))
                assert list(span) == rec["answer"]["span"]
                colour, shape = re.search(r"When does the (\w+) (\w+) appear", question).groups()
                assert objects[colour]["shape"] == shape and objects[colour]["span"] == span
            elif task == "needle":
                assert len({n for _, n in needles}) == 1 and chosen == needles[0][1]
                frames_per_s = len({i for i, _ in needles})
                second = needles[0][0] // frames_per_s
                assert rec["answer"]["second"] == second
                assert rec["answer"]["depth"] == pytest.approx(second / (rec["duration"] - 1), abs=1e-3)
            elif task == "caption":
                said = re.findall(r"(\w+) (\w+) appears at (\d+) s and leaves at (\d+) s", answer_text)
                assert {c: (s, (int(a), int(b))) for c, s, a, b in said} == \
                    {c: (o["shape"], o["span"]) for c, o in objects.items()}
                flash = re.findall(r"At (\d+) s the whole screen flashes (\w+)", answer_text)
                assert [(int(s), c) for s, c in flash] == needles  # at 1 fps a needle second is one frame
            elif task == "mcq":
                kind = rec["answer"]["type"]
                if kind == "colour_of_shape":
                    shape = re.search(r"What colour is the (\w+)\?", question).group(1)
                    assert objects[chosen]["shape"] == shape
                elif kind == "shape_of_colour":
                    colour = re.search(r"What shape is the (\w+) object\?", question).group(1)
                    assert objects[colour]["shape"] == chosen
                elif kind == "which_shape":
                    assert [o["shape"] for o in objects.values()] == [chosen]
                elif kind == "count":
                    assert int(chosen) == len(objects)
                else:
                    first = min(objects, key=lambda c: objects[c]["span"][0])
                    assert chosen == f"{first} {objects[first]['shape']}"
            checked[task] += 1
    assert set(checked) == {"caption", "mcq", "grounding", "needle", "image_caption"}


def test_two_fps_needle_covers_its_second(tmp_path: Path) -> None:
    cfg = SynthConfig(out=str(tmp_path), videos=3, seed=3, images=0, min_frames=16, max_frames=16, fps=2,
                      needle_prob=1.0, val_frac=0.0, test_frac=0.0, tasks=("needle",))
    manifest = generate(cfg)
    assert manifest["splits"]["train"]["tasks"] == {"needle": 3}
    for sample in _read_split(tmp_path, "train").values():
        rec = json.loads(sample["json"])
        frames, fps = _frames(sample["mp4"])
        assert fps == pytest.approx(2.0) and len(frames) == 16 and rec["duration"] == 8.0
        _, needles = _observe(frames, fps)
        second = rec["answer"]["second"]
        assert sorted(i for i, _ in needles) == [2 * second, 2 * second + 1]


def test_time_lapse_videos(tmp_path: Path) -> None:
    """frame_seconds: a frame every k seconds (k drawn per video), events on a grid of 4k seconds, the needle
    on one frame; sampled timestamps count k seconds per frame."""
    from data.sampling import sample_video_frames

    cfg = SynthConfig(out=str(tmp_path), videos=8, seed=5, images=0, min_frames=16, max_frames=24,
                      needle_prob=1.0, val_frac=0.0, test_frac=0.0, tasks=("grounding", "needle"), max_objects=1,
                      object_scale=0.3, object_speed=0.0, frame_seconds=(4, 10))
    generate(cfg)
    seen_k = set()
    for sample in _read_split(tmp_path, "train").values():
        rec = json.loads(sample["json"])
        frames, fps = _frames(sample["mp4"])
        k = round(1 / fps)
        seen_k.add(k)
        assert k in (4, 10) and rec["fps"] == pytest.approx(1 / k)
        assert 16 <= len(frames) <= 24 and rec["duration"] == len(frames) * k
        (obj,) = rec["scene"]["objects"]
        assert obj["appear"] % (4 * k) == 0 and obj["leave"] % (4 * k) == 0
        objects, needles = _observe(frames, 1.0)  # per frame index
        shown = sorted(objects[obj["colour"]]["seconds"])
        assert [i * k for i in shown] == list(range(obj["appear"], obj["leave"], k))
        assert [i * k for i, _ in needles] == [rec["scene"]["needle"]["second"]]
        if rec["task"] == "grounding":
            assert rec["answer"]["span"] == [obj["appear"], obj["leave"]]
        sampled = sample_video_frames(len(frames), fps, frames_upbound=64, fps_upbound=4.0)
        assert sampled.timestamps[:len(frames)] == [float(i * k) for i in range(len(frames))]
    assert seen_k == {4, 10}


def test_a_time_lapse_of_one_second_is_the_plain_set(dataset: tuple[Path, SynthConfig, dict], tmp_path: Path) -> None:
    """The per-video draw of k has its own seed: frame_seconds=(1,) writes the same videos and answers."""
    out, cfg, _ = dataset
    generate(SynthConfig(**{**asdict(cfg), "out": str(tmp_path), "frame_seconds": (1,)}))
    for split in SPLITS:
        plain, lapse = _read_split(out, split), _read_split(tmp_path, split)
        assert plain.keys() == lapse.keys()
        for key, sample in plain.items():
            assert json.loads(sample["json"]) == json.loads(lapse[key]["json"])
            assert sample.get("mp4") == lapse[key].get("mp4")


@pytest.mark.parametrize(("scale", "speed"), [(0.2, 1.0 / 16.0), (0.3, 0.0), (0.35, 0.1)])
def test_object_size_and_speed_knobs(scale: float, speed: float) -> None:
    """Rendered objects are 2r+1 pixels across with r = round(scale * size); speed 0 means they stand still."""
    size = 64
    for seed in range(6):
        scene = sample_scene(np.random.default_rng(seed), size, 1, 24, 4, 3, 0.0, scale, speed)
        for obj in scene.objects:
            assert obj.radius == round(scale * size)
            first, last = render_frame(scene, obj.appear), render_frame(scene, obj.leave - 1)
            mask = _colour_masks(first)[obj.colour]
            ys, xs = np.nonzero(mask)
            assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 == 2 * obj.radius + 1
            moved = not np.array_equal(mask, _colour_masks(last)[obj.colour])
            assert moved == (speed > 0 and obj.leave - obj.appear > 1 and abs(obj.vx) > 0.5)


def test_sequences_build_for_every_sample(dataset: tuple[Path, SynthConfig, dict]) -> None:
    from model.sequence import build_sequence
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny")
    out, _, _ = dataset
    for sample in _read_split(out, "train").values():
        rec = json.loads(sample["json"])
        if "video" in rec:
            groups = int(rec["duration"] * rec["fps"]) // 4
            built = build_sequence(tok, rec["conversations"], [4.0 * g for g in range(groups)], groups, 9)
        else:
            built = build_sequence(tok, rec["conversations"], None, 1, 9)
        assert len(built) < 1024


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"videos": -1}, "videos"), ({"fps": 0}, "fps"), ({"size": 63}, "size"), ({"min_frames": 30, "max_frames": 20}, "max_frames"),
     ({"val_frac": 0.6, "test_frac": 0.5}, "val_frac"), ({"tasks": ("dance",)}, "tasks"),
     ({"min_frames": 5, "max_frames": 7}, "min_frames"), ({"needle_prob": 2.0}, "needle_prob"),
     ({"object_scale": 0.5}, "object_scale"), ({"object_scale": 0.0}, "object_scale"),
     ({"object_speed": -0.1}, "object_speed"), ({"frame_seconds": (0,)}, "frame_seconds"),
     ({"fps": 2, "frame_seconds": (4,)}, "frame_seconds"), ({"videos": 0}, "videos, images: both 0")],
)
def test_bad_config_names_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        generate(SynthConfig(out=str(tmp_path), **{"videos": 4, **kwargs}))


def test_refuses_to_mix_with_existing_shards(dataset: tuple[Path, SynthConfig, dict]) -> None:
    out, cfg, _ = dataset
    with pytest.raises(ValueError, match="out"):
        generate(cfg)


def test_cli_bad_setting_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data.synth import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "o"), "--videos", "0"])
    assert exc.value.code == 2 and "videos, images: both 0" in capsys.readouterr().err.strip().splitlines()[-1]
