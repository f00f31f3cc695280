"""`python -m data.bench` (the loader benchmark): a shard glob that matches no file, or an unknown model preset,
is one line, exit 2."""

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


def test_a_folder_or_an_unknown_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dir.tar").mkdir()  # a glob that matches only a folder
    (tmp_path / "train-000000.tar").write_bytes(b"")
    for args, said in (([str(tmp_path / "dir.tar")], "matches no shard file"),
                       ([str(tmp_path / "train-*.tar"), "--model", "bogus"], "--model: model preset 'bogus' not found")):
        with pytest.raises(SystemExit) as exc:
            main(["--shards", *args])
        assert exc.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert said in last, last
