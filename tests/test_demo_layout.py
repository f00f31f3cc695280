"""The demo package's boundaries: the framework never imports it, matplotlib stays inside its plots, and
its command line rejects a malformed override with one line and exit status 2 (no training runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from demo.run import DEMO_CONFIG, load_config, main

REPO = Path(__file__).resolve().parents[1]
FRAMEWORK = ("model", "data", "train", "evaluation")


def imported_modules(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import statement of a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, id(node) in top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
    return out


def test_framework_packages_do_not_import_the_demo() -> None:
    offenders = [f"{path.relative_to(REPO)}: {mod}" for pkg in FRAMEWORK for path in sorted((REPO / pkg).rglob("*.py"))
                 for mod, _ in imported_modules(path) if mod == "demo" or mod.startswith("demo.")]
    assert offenders == []


def test_matplotlib_is_imported_lazily_and_only_by_the_plots() -> None:
    sources = [p for pkg in (*FRAMEWORK, "demo") for p in sorted((REPO / pkg).rglob("*.py"))]
    uses = {(str(p.relative_to(REPO)), top) for p in sources for mod, top in imported_modules(p)
            if mod.split(".")[0] == "matplotlib"}
    assert uses and {path for path, _ in uses} == {"demo/plots.py"}
    assert not any(top for _, top in uses)  # inside a function: importing demo.plots needs no matplotlib


def test_config_loads_with_overrides() -> None:
    base = load_config([])
    cfg = load_config(["stages.sft.stage.steps=7", "sweep.frames=[16,32]", "ranks=1", "data.videos=40",
                       "train_data.extra.videos=5", "common.model.text_config.num_hidden_layers=3",
                       "stages.align.stage.position_skip.fraction=0.5"])  # new sets and Hydra keys pass
    assert DEMO_CONFIG.parent == REPO / "demo" and list(cfg.stages) == list(base.stages)
    assert cfg.stages.sft.stage.steps == 7 != base.stages.sft.stage.steps
    assert list(cfg.sweep.frames) == [16, 32] and cfg.ranks == 1
    assert cfg.stages.long == base.stages.long  # untouched keys keep demo.yaml's values


# (override, what the one line says, whether it quotes the override): key errors quote it; values refused by the
# settings they reach name the field (process counts, a video set's data.synth settings, a stage's run config,
# whose keys under `common` and `stages.<stage>` are Hydra overrides of conf/ composed as training will)
BAD_OVERRIDES = [("ranks", "is not a key=value override", True),
                 ("sweep.frames=[16,32", "cannot parse override", True),
                 ("bogus.key=1", "unknown key 'bogus'", True),
                 ("stages.longer.stage.steps=3", "unknown stages key 'longer'", True),
                 ("sweep.videos=3", "unknown sweep key 'videos'", True),
                 ("short_data.frames=3", "'frames' is not a data.synth field", True),
                 ("train_data.long_needle.vidoes=3", "'vidoes' is not a data.synth field", True),
                 ("short_data={vidoes: 3}", "'vidoes' is not a data.synth field", True),
                 ("eval.limt=3", "unknown eval key 'limt'", True),
                 ("ranks=0", "ranks: must be an integer >= 1", False),
                 ("data_workers=0", "data_workers: must be an integer >= 1", False),
                 ("short_data.videos=-1", "/data/short: videos: invalid value", False),
                 ("stages.long.stage.stpes=3", "stage.stpes: unknown field", False),
                 ("common.loop.micro_batch_size=0", "loop.micro_batch_size: must be >= 1", False)]


@pytest.mark.parametrize(("arg", "said", "quoted"), BAD_OVERRIDES)
def test_bad_override_exits_2_with_one_line_before_any_data(arg: str, said: str, quoted: bool,
                                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main([f"out={tmp_path / 'out'}", arg])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and said in err and err.count("\n") == 1, err
    assert repr(arg) in err or not quoted
    assert not (tmp_path / "out").exists()  # rejected before anything was written


def test_help_prints_usage_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == {}
    assert "python -m demo [key=value ...]" in capsys.readouterr().out
