"""Needle-in-a-video-haystack builder: frame placement, colours, records, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.benchmarks import read_records
from data.niah import PALETTE, NeedleSpec, fit_length, insert_needle, main, read_frames, write_mp4


def _haystack(path: Path, n: int = 24, fps: float = 8.0) -> np.ndarray:
    """A video whose frames are distinct greyish flat images with a little texture."""
    rng = np.random.default_rng(3)
    levels = rng.integers(70, 180, size=n)
    frames = np.empty((n, 48, 64, 3), dtype=np.uint8)
    for i, lv in enumerate(levels):
        frames[i] = lv
        frames[i, ::8] = lv // 2
    write_mp4(frames, path, fps)
    return frames


def test_fit_length_loops_and_resamples() -> None:
    frames = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    looped = fit_length(frames, 12)[:, 0, 0, 0].tolist()
    assert looped == [i % 5 for i in range(12)]
    down = fit_length(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), 4)[:, 0, 0, 0].tolist()
    assert down[0] == 0 and down[-1] == 9 and len(down) == 4 and sorted(down) == down


def test_insert_needle_positions() -> None:
    base = np.full((10, 8, 8, 3), 100, dtype=np.uint8)
    for depth, start in [(0.0, 0), (1.0, 8), (0.5, 4)]:
        out = insert_needle(base, NeedleSpec(10, depth, "red", "solid", needle_frames=2))
        changed = [i for i in range(10) if not np.array_equal(out[i], base[i])]
        assert changed == [start, start + 1]
        assert (out[start] == np.array(PALETTE["red"], dtype=np.uint8)).all()
    patch = insert_needle(base, NeedleSpec(10, 0.5, "blue", "patch"))
    start = NeedleSpec(10, 0.5, "blue").start
    assert (patch[start, 4, 4] == PALETTE["blue"]).all() and (patch[start, 0, 0] == 100).all()
    with pytest.raises(ValueError, match="depth"):
        insert_needle(base, NeedleSpec(10, 1.5, "red"))


def test_cli_builds_grid(tmp_path: Path) -> None:
    hay = tmp_path / "hay.mp4"
    _haystack(hay)
    out = tmp_path / "niah"
    main(["--haystack", str(hay), "--out", str(out), "--lengths", "6,10", "--depths", "0,0.5,1",
          "--seed", "7", "--fps", "2"])
    records = json.loads((out / "annotations.json").read_text())
    assert len(records) == 6
    cells = {(r["length"], r["answer"]["depth"]) for r in records}
    assert cells == {(L, d) for L in (6, 10) for d in (0.0, 0.5, 1.0)}
    samples = read_records(out / "annotations.json")
    assert len(samples) == 6
    for rec, sample in zip(records, samples, strict=True):
        frames = read_frames(out / rec["video"], fps=2.0)
        assert len(frames) == rec["length"]
        start = rec["needle"]["start_frame"]
        colour = np.array(PALETTE[rec["needle"]["color"]], dtype=np.float64)
        err = np.abs(frames.astype(np.float64) - colour).mean(axis=(1, 2, 3))
        assert err[start] < 12, err
        assert np.delete(err, start).min() > 40, err
        # the letter answer names the needle colour among the options
        assert sample.task == "needle" and sample.options[ord(sample.answer) - 65] == rec["needle"]["color"]
        assert len(set(sample.options)) == 4 and sample.metadata["depth"] == rec["answer"]["depth"]
    # the same seed reproduces the same grid
    main(["--haystack", str(hay), "--out", str(tmp_path / "again"), "--lengths", "6,10",
          "--depths", "0,0.5,1", "--seed", "7", "--fps", "2"])
    assert json.loads((tmp_path / "again" / "annotations.json").read_text()) == records


@pytest.mark.parametrize("fps", [2.0, 2.5, 29.97])
def test_needle_videos_use_the_shared_encoder(tmp_path: Path, fps: float) -> None:
    """write_mp4 is data.scenes.encode_mp4 (one H.264 encoder), also for fractional frame rates."""
    import av

    from data.scenes import encode_mp4

    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    write_mp4(frames, tmp_path / "v.mp4", fps)
    assert (tmp_path / "v.mp4").read_bytes() == encode_mp4(frames, fps, crf=18)
    with av.open(str(tmp_path / "v.mp4")) as box:
        stream = box.streams.video[0]
        assert stream.frames == 6 and float(stream.average_rate) == pytest.approx(fps, rel=1e-3)


def test_cli_names_a_missing_or_unreadable_haystack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No file, or a file PyAV cannot open as a video: exit 2 with one line naming it, nothing written."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    for hay, says in ((tmp_path / "absent.mp4", "--haystack: no such file"), (junk, "cannot read it as a video")):
        with pytest.raises(SystemExit) as exc:
            main(["--haystack", str(hay), "--out", str(tmp_path / "out"), "--lengths", "6"])
        assert exc.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert says in last and str(hay) in last, last
    assert not (tmp_path / "out" / "annotations.json").exists()
