"""`python -m data.bench` (the loader benchmark): a shard glob that matches nothing is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.bench import main


def test_a_glob_matching_no_shard_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(tmp_path / "absent" / "*.tar")
    with pytest.raises(SystemExit) as exc:
        main(["--shards", pattern])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--shards" in last and pattern in last and "matches no shard file" in last, last
