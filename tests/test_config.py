"""Every shipped config composes and validates; bad configs fail naming the field, before compute."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.build import check_run
from train.config import ConfigError, parse_run_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return raw


def test_groups_present() -> None:
    assert names("stage") == ["align", "dts", "finetune", "long", "sft"]
    assert {"zero2", "zero3"} <= set(names("deepspeed"))


@pytest.mark.parametrize("model", names("model"))
@pytest.mark.parametrize("stage", names("stage"))
@pytest.mark.parametrize("ds", names("deepspeed"))
def test_every_config_composes_and_validates(model: str, stage: str, ds: str) -> None:
    for data in names("data"):
        raw = composed([f"model={model}", f"stage={stage}", f"deepspeed={ds}", f"data={data}"])
        run = parse_run_config(raw)
        assert run.stage.name == stage
        check_run(run, check_paths=False)
        if model == "tiny":
            for preset in names("preset"):
                tuned = parse_run_config(composed([f"model={model}", f"stage={stage}", f"deepspeed={ds}",
                                                   f"data={data}", f"preset={preset}"]))
                check_run(tuned, check_paths=False)


def test_stage_recipes_declare_the_mission_order() -> None:
    runs = {s: parse_run_config(composed([f"stage={s}"])).stage for s in ("dts", "align", "sft", "long")}
    assert runs["dts"].loss == "dts_reconstruction" and "dts_decoder" in runs["dts"].trainable
    assert runs["dts"].init_from is None
    assert runs["align"].trainable == ["projector"]
    assert set(runs["sft"].trainable) == set(runs["long"].trainable) == {"vision_tower", "dts", "projector", "llm"}
    assert runs["sft"].weight_decay == 0.0 and runs["sft"].schedule.warmup_ratio == pytest.approx(0.03)
    assert runs["long"].frames_upbound <= 150 and runs["long"].fps_upbound == 4
    for prev, nxt in (("dts", "align"), ("align", "sft"), ("sft", "long")):
        assert runs[nxt].init_from is not None and runs[nxt].init_from.endswith(f"{prev}/export")


BAD = [
    (["stage.name=pretrain"], "stage.name"),
    (["stage=align", "stage.trainable=[projector,mlp]"], "stage.trainable[1]"),
    (["stage=sft", "~stage.lr.llm"], "stage.lr.llm"),
    (["stage=align", "stage.loss=contrastive"], "stage.loss"),
    (["stage=sft", "stage.max_length=64", "stage.frames_upbound=64"], "stage.frames_upbound"),
    (["deepspeed.precision=fp16"], "deepspeed.precision"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
    (["+loop.learning_rate=1"], "loop.learning_rate"),
    (["loop.grad_accum=0"], "loop.grad_accum"),
    (["loop.loader_workers=-1"], "loop.loader_workers"),
    (["stage.schedule.name=linear_decay"], "stage.schedule.name"),
    (["checkpoint.keep_last_k=0"], "checkpoint.keep_last_k"),
    (["loop.micro_batch_size=two"], "loop.micro_batch_size"),
    (["data.shuffle_buffer=0"], "data.shuffle_buffer"),
    (["data.train=[{shards: a.tar, weight: -1}]"], "data.train[0].weight"),
    (["data.train=[{shards: a.tar, strategy: most}]"], "data.train[0].strategy"),
    (["+data.bogus=1"], "data"),
    (["data.train=[]"], "data.train"),
    (["stage.data.train=[{shards: a.tar, weight: 0}]"], "stage.data.train[0].weight"),
    (["stage=align", "stage.calibrate_projector.target_std=0"], "stage.calibrate_projector.target_std"),
    (["stage=sft", "+stage.calibrate_projector.batches=-1"], "stage.calibrate_projector.batches"),
    (["stage=sft", "stage.trainable=[llm]", "+stage.calibrate_projector.batches=4"],
     "stage.calibrate_projector.batches"),
    (["stage=align", "loop.decoded_frame_cache_mb=-1"], "loop.decoded_frame_cache_mb"),
    (["stage=align", "loop.frozen_feature_cache_mb=-1"], "loop.frozen_feature_cache_mb"),
    (["stage=sft", "loop.frozen_feature_cache_mb=64"], "loop.frozen_feature_cache_mb"),  # sft trains DTS
    (["stage=dts", "loop.frozen_feature_cache_mb=64"], "loop.frozen_feature_cache_mb"),
    (["stage=align", "deepspeed.zero_stage=3", "loop.frozen_feature_cache_mb=64"], "loop.frozen_feature_cache_mb"),
    (["stage=long", "+stage.chunked_attention.fraction=1.5"], "stage.chunked_attention.fraction"),
    (["stage=long", "+stage.chunked_attention={fraction: 0.5, chunk_groups: 0}"], "stage.chunked_attention.chunk_groups"),
    (["stage=long", "+stage.chunked_attention.prev_chunks=-1"], "stage.chunked_attention.prev_chunks"),
    (["stage=dts", "+stage.chunked_attention.fraction=0.5"], "stage.chunked_attention.fraction"),
    (["stage=long", "+stage.chunked_attention.bilevel_fraction=2"], "stage.chunked_attention.bilevel_fraction"),
    (["stage=long", "+stage.chunked_attention.top_k=-1"], "stage.chunked_attention.top_k"),
    (["stage=long", "+stage.chunked_attention.kv_pool=0"], "stage.chunked_attention.kv_pool"),
    (["stage=long", "+stage.position_skip.fraction=-0.1"], "stage.position_skip.fraction"),
    (["stage=long", "+stage.position_skip={fraction: 0.5, max_position: 0}"], "stage.position_skip.max_position"),
    (["stage=dts", "+stage.position_skip.fraction=0.5"], "stage.position_skip.fraction"),
    (["stage=long", "+stage.position_skip={fraction: 0.5, split: frame}"], "stage.position_skip.split"),
    (["stage=long", "+stage.position_skip={fraction: 0.5, tasks: []}"], "stage.position_skip.tasks"),
    (["stage=long", "+stage.position_skip.fraction=0.5", "loop.sequence_parallel=2"],
     "stage.position_skip.fraction"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        run = parse_run_config(composed(["model=tiny", *overrides]))
        check_run(run, check_paths=False)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_data_is_typed_at_parse_time() -> None:
    from data.mix import DataConfig

    run = parse_run_config(composed(["model=tiny", "data.shuffle_buffer=8"]))
    assert isinstance(run.data, DataConfig) and run.data.shuffle_buffer == 8
    assert [s.shards for s in run.data.train] == ["train-*.tar"]
    with pytest.raises(ConfigError, match=r"^data\.shuffle_buffer"):
        parse_run_config(composed(["model=tiny", "data.shuffle_buffer=0"]))  # no check_run needed


def test_preset_overlays_stage_and_command_line_wins() -> None:
    """preset=tiny merges conf/stage_preset/tiny_<stage>.yaml under explicit overrides."""
    plain = parse_run_config(composed(["stage=sft"])).stage
    tiny = parse_run_config(composed(["stage=sft", "preset=tiny"])).stage
    assert tiny.steps != plain.steps and tiny.lr["llm"] != plain.lr["llm"]
    both = parse_run_config(composed(["stage=sft", "preset=tiny", "stage.steps=7", "stage.lr.llm=0.5"])).stage
    assert both.steps == 7 and both.lr["llm"] == 0.5
    assert both.lr["dts"] == tiny.lr["dts"]


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(Exception, match="preset"):
        composed(["preset=huge"])


def test_frames_bound_follows_model_tokens() -> None:
    """A bound that fits passes; the same bound fails once max_length is below its group count."""
    run = parse_run_config(composed(["model=tiny", "stage=sft", "stage.frames_upbound=8"]))
    check_run(run, check_paths=False)
    from model import build_preset

    tiny = build_preset("tiny")
    groups = 8 // tiny.frames_per_group
    tight = groups * tiny.tokens_per_group  # no room left for the timestamp tokens
    run = parse_run_config(composed(["model=tiny", "stage=sft", "stage.frames_upbound=8",
                                     f"stage.max_length={tight}"]))
    with pytest.raises(ConfigError, match=r"^stage\.frames_upbound"):
        check_run(run, check_paths=False)


def test_missing_paths_name_field(tmp_path: Path) -> None:
    run = parse_run_config(composed(["model=tiny", "stage=sft", f"data.root={tmp_path / 'nothing'}",
                                     "stage.init_from=null"]))
    with pytest.raises(ConfigError) as err:
        check_run(run, check_paths=True)
    assert err.value.field == "data.train[0].shards"
    run = parse_run_config(composed(["model=tiny", "stage=align", f"stage.init_from={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError) as err:
        check_run(run, check_paths=True)
    assert err.value.field == "stage.init_from"


def test_model_group_differences_name_each_field_that_init_from_overrules() -> None:
    """With stage.init_from, the model is init_from's config.json; the fields of a `model` group that differs
    from it are listed (the trainer logs them as a `model_group_not_used` event), none when they agree."""
    from model import config_from_dict
    from train.build import model_group_differences

    tiny = config_from_dict(composed(["model=tiny"])["model"])
    same = parse_run_config(composed(["model=tiny", "stage=align"]))
    assert model_group_differences(same, tiny) == []
    other = parse_run_config(composed(["model=tiny", "stage=align", "model.text_config.num_hidden_layers=2",
                                       "model.video_pool=1"]))
    layers = tiny.text_config.num_hidden_layers
    assert layers != 2 and tiny.video_pool != 1
    assert model_group_differences(other, tiny) == [
        f"text_config.num_hidden_layers: 2 (model group), {layers} (init_from)",
        f"video_pool: 1 (model group), {tiny.video_pool} (init_from)"]


def test_cli_rejects_bad_config_before_compute(tmp_path: Path) -> None:
    """`python -m train` exits non-zero naming the field, without creating outputs or a process group."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "HYDRA_FULL_ERROR": "1"}
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "train", "model=tiny", "stage=align",
                           "stage.trainable=[projector,decoder]", f"output_root={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "stage.trainable[1]" in proc.stderr
    assert "init_distributed" not in proc.stderr and "shm_comm" not in proc.stderr + proc.stdout
    assert not out.exists()
    assert time.monotonic() - t0 < 120


def test_pipeline_validates_every_stage_before_training_any(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import train.pipeline as pipeline

    def no_training(*_: object) -> None:
        raise AssertionError("a stage trained before every stage was validated")

    monkeypatch.setattr(pipeline, "train_stage", no_training)
    subprocess.run([sys.executable, "-m", "data.synth", "--out", str(tmp_path / "synth"), "--videos", "2",
                    "--seed", "0"], cwd=REPO, check=True, capture_output=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    # 16 dts frames fit in 400 positions of the tiny model; the 150 frames of `long` do not
    overrides = ["model=tiny", "data=synth", f"data.root={tmp_path / 'synth'}", f"output_root={tmp_path}",
                 "stage.max_length=400"]
    with pytest.raises(ConfigError) as err:
        pipeline.run_pipeline(["dts", "long"], overrides)
    assert err.value.field == "stage.frames_upbound" and "stage.max_length=400" in str(err.value)
    pipeline.validate_stages(["dts", "align", "sft"], overrides)  # the valid prefix passes


@pytest.mark.parametrize(("args", "said"), [(["--stages", "dts,polish"], "--stages: unknown stage 'polish'"),
                                            (["--stages", "dts", "stage.stpes=3"], "config error: overrides: stage dts:")])
def test_pipeline_cli_bad_stage_or_override_is_one_line(args: list[str], said: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from train.pipeline import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "model=tiny", "data=synth"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in last, last
