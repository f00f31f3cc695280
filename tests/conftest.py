"""Session fixtures shared by the multi-process tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, SYNTH_ARGS, subprocess_env


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (8 videos, seed 0) written once per test session."""
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "data.synth", "--out", str(out), *SYNTH_ARGS],
                   cwd=REPO, env=subprocess_env(), check=True, capture_output=True, timeout=300)
    return out
