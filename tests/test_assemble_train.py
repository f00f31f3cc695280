"""Training and evaluation from an assembled model: `python -m train stage=dts stage.init_from=<assembled>`
trains from the assembled weights, and `python -m train.pipeline ... stage.init_from=<assembled>` gives it
to the first stage only (the next chains from that export); truncated weights, unloadable tokenizer files or
a part of the wrong kind in `stage.init_from` (ConfigError, which `python -m train` prints as one line, exit 2)
or an evaluation `ckpt` (one line, exit 2) stop before any compute."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assemble_parts import save_qwen2, save_siglip
from helpers import REPO, subprocess_env
from model.checks import check_videoxl2_dir
from model.weights import weight_files
from train.build import check_run, model_group_differences
from train.config import ConfigError
from train.pipeline import compose_stage

pytestmark = pytest.mark.slow


def load_all(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir):
        out.update(load_file(str(path)))
    return out


def test_stages_start_from_assembled_and_bad_dirs_fail_before_compute(synth: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    asm = tmp_path / "assembled"
    save_siglip(parts / "siglip", bare=False)
    save_qwen2(parts / "qwen", vocab=152064, tied=False)
    proc = subprocess.run([sys.executable, "-m", "model.assemble", "--vision", str(parts / "siglip"), "--llm",
                           str(parts / "qwen"), "--out", str(asm), "--config", "tiny"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layers 2 of 3 kept" in proc.stdout

    truncated = Path(shutil.copytree(asm, tmp_path / "truncated"))
    shard = sorted(truncated.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    no_tok = Path(shutil.copytree(asm, tmp_path / "no_tokenizer"))
    (no_tok / "tokenizer.json").unlink()  # tokenizer_config.json stays: the files look present but are not

    root = tmp_path / "runs"
    common = ["model=tiny", "data=synth", f"data.root={synth}", "preset=tiny", "logging.tqdm=false",
              "loop.loader_workers=0", "checkpoint.every_steps=100", "loop.max_steps=2"]
    # the pipeline's first stage starts from the assembled model, the next from that stage's export
    first, _ = compose_stage("dts", [*common, f"output_root={root}", f"stage.init_from={asm}"], None)
    second, _ = compose_stage("align", [*common, f"output_root={root}", f"stage.init_from={asm}"],
                              str(root / "dts" / "export"))
    assert first.stage.init_from == str(asm) and second.stage.init_from == str(root / "dts" / "export")
    model_cfg, tok = check_run(first)
    assert model_cfg.vision_pad_token_id == tok.convert_tokens_to_ids("<|vision_pad|>") == 151654
    for bad_dir, field, message in ((truncated, "stage.init_from", f"{shard}: truncated: "),
                                    (no_tok, "tokenizer", f"{no_tok}: holds no tokenizer files"),
                                    (parts / "qwen", "stage.init_from", "model_type 'qwen2'")):
        run, _ = compose_stage("dts", [*common, f"output_root={root}", f"stage.init_from={bad_dir}"], None)
        with pytest.raises(ConfigError) as err:
            check_run(run)
        assert err.value.field == field and message in str(err.value) and "\n" not in str(err.value)

    evaluate = [sys.executable, "-m", "train.evaluate", "bench=mcq", f"data={synth}", "limit=1"]
    bad = [  # (command, what the one stderr line starts with)
        ([*evaluate, f"ckpt={truncated}", f"out={tmp_path / 'e1.json'}"], f"error: ckpt: {shard}: truncated: "),
        ([*evaluate, f"ckpt={no_tok}", f"out={tmp_path / 'e2.json'}"], f"error: ckpt: {no_tok}: holds no tokenizer"),
    ]
    procs = [(subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True), message) for cmd, message in bad]
    good = [sys.executable, "-m", "train", "stage=dts", *common, f"output_root={root}", f"stage.init_from={asm}"]
    proc = subprocess.run(good, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for bad_proc, message in procs:
        _, err = bad_proc.communicate(timeout=300)
        assert bad_proc.returncode == 2, (message, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (message, lines)
    assert not any((tmp_path / name).exists() for name in ("e1.json", "e2.json"))

    source = load_all(asm)
    export = load_all(root / "dts" / "export")
    assert source.keys() == export.keys()
    for key, value in source.items():
        if not key.startswith("dts."):  # frozen in the dts stage: the assembled weights, in the export's dtype
            assert torch.equal(export[key], value.to(export[key].dtype)), key
    assert any(not torch.equal(export[k], source[k].to(export[k].dtype)) for k in source if k.startswith("dts."))
    assert (root / "dts" / "export" / "tokenizer.json").read_bytes() == (asm / "tokenizer.json").read_bytes()
    check_videoxl2_dir(root / "dts" / "export", tokenizer=True)  # what the next stage's init_from goes through
    # the `model` group (tiny: a 1,024-token vocabulary) is not what trained: the run says so, field by field
    differs = model_group_differences(first, model_cfg)
    assert any(d.startswith("text_config.vocab_size: 1024 (model group), 152064 (init_from)") for d in differs)
    records = [json.loads(line) for line in (root / "dts" / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") == "model_group_not_used"]
    assert len(events) == 1 and events[0]["differs"] == differs and events[0]["init_from"] == str(asm)
