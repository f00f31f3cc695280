"""evaluation.config (typed conf/eval) and evaluation.prompts (prompt per benchmark and protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.benchmarks import EvalSample
from evaluation.config import EvalConfig, parse_eval_config
from evaluation.prompts import BENCHMARK_FORMATS, PROMPTS, prompt_spec, render
from train.config import ConfigError

EVAL_CONF = Path(__file__).resolve().parent.parent / "conf" / "eval"
BENCH_OF = {"mlvu": "mcq", "videomme": "mcq", "lvbench": "mcq", "longvideobench": "mcq", "charades": "grounding",
            "synth": "mcq", "niah": "niah"}


def _compose(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(EVAL_CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("setting", sorted(p.stem for p in (EVAL_CONF / "setting").glob("*.yaml")))
def test_every_setting_parses(setting: str) -> None:
    fmt = setting if setting in BENCHMARK_FORMATS else ("records" if setting == "niah" else "synth")
    protocols = ["official", "lmms-eval"] if fmt in BENCHMARK_FORMATS else ["official"]
    for protocol in protocols:
        cfg = parse_eval_config(_compose(["ckpt=c", "data=d", f"format={fmt}", f"setting={setting}",
                                          f"bench={BENCH_OF[setting]}", "video_root=/v",
                                          f"setting.protocol={protocol}"]))
        assert isinstance(cfg, EvalConfig) and cfg.setting.name == setting and cfg.setting.protocol == protocol


def test_published_frame_counts() -> None:
    """The settings pin the frame counts of the published Video-XL-2 evaluation (spec: 256/400/400/600)."""
    frames = {s: parse_eval_config(_compose(["ckpt=c", "data=d", f"setting={s}"])).setting.frames_upbound
              for s in ("mlvu", "videomme", "longvideobench", "lvbench")}
    assert frames == {"mlvu": 256, "videomme": 400, "longvideobench": 400, "lvbench": 600}


@pytest.mark.parametrize(("overrides", "field", "message"), [
    (["format=mlvu"], "video_root", "needs video_root"),
    (["format=nope"], "format", "unknown format 'nope'"),
    (["format=charades", "video_root=/v"], "bench", "use bench=grounding"),
    (["setting.protocol=lmms-eval"], "setting.protocol", "defined only for"),
    (["setting.protocol=gpt4"], "setting.protocol", "unknown protocol 'gpt4'"),
    (["prefill=sparse"], "prefill", "full | chunked"),
    (["decode=topk"], "decode", "full | bilevel"),
    (["setting.frames_upbound=0"], "setting.frames_upbound", "positive integer"),
    (["setting.inference.prev_chunks=-1"], "setting.inference.prev_chunks", ">= 0"),
    (["+setting.fps=2"], "setting.fps", "unknown field"),
    (["bench.max_new_tokens=many"], "bench.max_new_tokens", "expected an integer"),
    (["strict=maybe"], "strict", "expected true/false"),
    (["durations=/x.csv"], "durations", "only format=charades"),
    (["length_buckets=[0,60,30]"], "length_buckets", "increasing"),
])
def test_errors_name_the_field(overrides: list[str], field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_eval_config(_compose(["ckpt=c", "data=d", *overrides]))
    assert info.value.field == field


def test_missing_ckpt_is_named() -> None:
    with pytest.raises(ConfigError, match="missing required value") as info:
        parse_eval_config(_compose(["data=d"]))
    assert info.value.field == "ckpt"


def _sample(**kw: object) -> EvalSample:
    base = {"sample_id": "s", "video": "v.mp4", "task": "mcq", "question": "What colour is the car?",
            "source": "x", "options": ["red", "blue", "green", "black"], "answer": "B"}
    base.update(kw)
    return EvalSample(**base)


def test_every_benchmark_has_both_protocols() -> None:
    assert set(PROMPTS) == {(f, p) for f in BENCHMARK_FORMATS for p in ("official", "lmms-eval")}
    for spec in PROMPTS.values():
        assert spec.source and "{question}" in spec.user


def test_rendered_prompts() -> None:
    s = _sample()
    mlvu = prompt_spec("mlvu", "official", "unused")
    text = render(mlvu, s)
    assert text.startswith("Question: What colour is the car?\nOptions:\n(A) red\n(B) blue\n")
    assert text.endswith("(D) black\nOnly give the best option.")
    assert mlvu.system.startswith("Carefully watch this video") and mlvu.response_prefix == "Best Option: ("
    lmms = render(prompt_spec("mlvu", "lmms-eval", "unused"), s)
    assert lmms.endswith("(D) black\nOnly give the best option.\n\nBest option: (")
    vmme = render(prompt_spec("videomme", "lmms-eval", "unused"), s)
    assert "\n['A. red', 'B. blue', 'C. green', 'D. black']\n" in vmme  # the list as str(), as that task sent it
    assert render(prompt_spec("videomme", "official", "unused"), s).endswith("C. green\nD. black\nThe best answer is:")
    lvb = render(prompt_spec("longvideobench", "official", "unused"), _sample(options=["a", "b", "c", "d", "e"]))
    assert lvb.startswith("Question: What colour") and "\nE. e\nAnswer with the option's letter" in lvb
    g = _sample(task="grounding", question="person opens a door", options=[], answer=None, span=(1.0, 2.0))
    assert "person opens a door. Please return its start time and end time." in render(
        prompt_spec("charades", "lmms-eval", "unused"), g)
    # generated data keeps its own prompt, and the bench template is used for records without one
    assert render(prompt_spec("synth", "official", "T {question}"), _sample(prompt="own")) == "own"
    assert render(prompt_spec("records", "official", "T {question}"), _sample()) == "T What colour is the car?"
    with pytest.raises(ValueError, match="defined only for"):
        prompt_spec("synth", "lmms-eval", "x")


def test_cli_bad_config_exits_2_naming_the_field(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The entry point's main (run in-process; `python -m evaluation` and `python -m train.evaluate` call it)."""
    from evaluation.runner import main

    monkeypatch.setattr("sys.argv", ["evaluation", "ckpt=c", "data=d", "setting.protocol=lmms-eval"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: setting.protocol: lmms-eval is defined only for") and "Traceback" not in err
