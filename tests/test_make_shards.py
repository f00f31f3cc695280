"""make_shards: LLaVA annotations + media -> shards; unusable records reported, counted, summarised."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.loader import build_loader
from data.make_shards import main
from data.shards import iter_shard
from helpers import grey_mp4, indexed_video
from model import build_preset, load_tokenizer


def conv() -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Grey."}]


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "vids").mkdir(parents=True)
    (root / "vids" / "a.mp4").write_bytes(grey_mp4([(20 * i) % 256 for i in range(10)], fps=5))
    (root / "vids" / "b.mp4").write_bytes(grey_mp4([(20 * i) % 256 for i in range(15)], fps=5))
    (root / "vids" / "junk.mp4").write_bytes(b"definitely not an mp4 file" * 8)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(buf, format="PNG")
    (root / "img.png").write_bytes(buf.getvalue())
    return root


def test_convert_reports_and_round_trips(tmp_path: Path, media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann_a = tmp_path / "a.json"
    ann_a.write_text(json.dumps([
        {"id": "v/1", "video": "vids/a.mp4", "conversations": conv(), "scale": 2.0},
        {"id": "img1", "image": "img.png", "conversations": conv(), "task": "image_caption"},
        {"id": "gone", "video": "vids/missing.mp4", "conversations": conv()},
        {"id": "noconv", "video": "vids/a.mp4"},
        ["not", "a", "record"],
        {"id": "junk", "video": "vids/junk.mp4", "conversations": conv()},
        {"id": "badscale", "video": "vids/a.mp4", "conversations": conv(), "scale": "x"},
    ]))
    ann_b = tmp_path / "b.jsonl"
    ann_b.write_text(json.dumps({"id": "v2", "video": "vids/b.mp4", "conversations": conv()}) + "\n{broken\n")
    out = tmp_path / "shards"
    rc = main(["--annotations", f"{ann_a},{ann_b}", "--media-root", str(media), "--out", str(out),
               "--shard-size", "2", "--task", "caption"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "3/9 records written to 2 shards" in captured.out
    for reason, n in {"missing_media": 1, "missing_key": 1, "bad_json": 2, "bad_video": 1, "bad_record": 1}.items():
        assert f"skipped {n} x {reason}" in captured.out
    assert f"{ann_a}[2]: missing_media" in captured.err and f"{ann_b}[1]: bad_json" in captured.err
    assert f"{ann_a}[5]: bad_video" in captured.err

    samples = [s for shard in sorted(out.glob("shard-*.tar")) for s in iter_shard(str(shard))]
    by_id = {json.loads(s.members["json"])["id"]: s for s in samples}
    assert set(by_id) == {"v/1", "img1", "v2"}
    v1 = json.loads(by_id["v/1"].members["json"])
    assert v1["video"] == f"{by_id['v/1'].key}.mp4" and v1["scale"] == 2.0 and v1["task"] == "caption"
    assert by_id["v/1"].members["mp4"] == (media / "vids" / "a.mp4").read_bytes()
    assert json.loads(by_id["img1"].members["json"])["task"] == "image_caption"
    assert by_id["img1"].members["png"] == (media / "img.png").read_bytes()

    cfg = {"root": str(out), "val": [{"shards": "shard-*.tar"}]}
    loader = build_loader(cfg, load_tokenizer("tiny"), build_preset("tiny"), split="val", batch_size=3,
                          num_workers=0, frames_upbound=8)
    (batch,) = list(loader)
    assert sorted(batch["sample_ids"]) == ["img1", "v/1", "v2"] and not any(loader.skipped.values())
    row = batch["sample_ids"].index("v/1")
    # 10 frames at 5 fps, 1 fps -> indices 0, 5 -> padded to 4; scale 2 doubles the times
    assert batch["timestamps"][row] == [round(0 / 5, 1) * 2.0]


def test_bad_annotation_file_is_a_clear_error(tmp_path: Path, media: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc = main(["--annotations", str(bad), "--media-root", str(media), "--out", str(tmp_path / "o")])
    assert rc == 2 and str(bad) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--annotations", str(tmp_path / "nope.json"), "--media-root", str(media), "--out", str(tmp_path)])


def test_an_out_folder_with_shards_is_refused(tmp_path: Path, media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Writing into a folder that already holds shards would leave an earlier, longer run's last shards
    beside the new ones (read as data by `shard-*.tar`): refused, exit 2, nothing written."""
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps([{"id": "v", "video": "vids/a.mp4", "conversations": conv()}]))
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shard-000003.tar").write_bytes(b"old")
    with pytest.raises(SystemExit) as exit_:
        main(["--annotations", str(ann), "--media-root", str(media), "--out", str(out)])
    assert exit_.value.code == 2
    assert f"--out: {out} already holds 1 shard-*.tar files" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["shard-000003.tar"]


def test_other_codecs_conversations_and_frame_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "media"
    root.mkdir()
    faststart = indexed_video(60, 10, path=tmp_path / "fs.mp4", options={"movflags": "faststart"})
    av1 = indexed_video(16, 8, codec="libsvtav1")
    files = {
        "ok.mp4": grey_mp4([20 * i for i in range(10)], fps=5),
        "av1.mp4": av1,
        "anim.gif": indexed_video(12, 6, fmt="gif", codec="gif", pix_fmt="rgb8"),
        "raw.h264": indexed_video(12, 6, fmt="h264"),
        "last_packet_cut.mp4": faststart[:-1],  # opens, but its sampled frames do not all decode
        "header_promises_more.mp4": faststart[: len(faststart) // 2],
        "unknown.mp4": av1.replace(b"av01", b"evc1"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    qa = conv()
    records = [{"id": name, "video": name, "conversations": qa} for name in files]
    records += [
        {"id": "sys", "video": "ok.mp4", "conversations": [{"from": "system", "value": "Be terse."}, *qa]},
        {"id": "turn2", "video": "ok.mp4", "conversations": [
            {"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "Grey."}]},
        {"id": "empty", "video": "ok.mp4", "conversations": [qa[0], {"from": "gpt", "value": ""}]},
        {"id": "blank", "video": "ok.mp4", "conversations": [qa[0], {"from": "gpt", "value": "  \n"}]},
        {"id": "twotags", "video": "ok.mp4", "conversations": [qa[0], {"from": "gpt", "value": "<image>"}]},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    out = tmp_path / "shards"
    assert main(["--annotations", str(ann), "--media-root", str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "6/12 records written" in captured.out
    for reason, n in {"bad_video": 2, "unsupported_codec": 1, "empty_answer": 2, "bad_conversation": 1}.items():
        assert f"skipped {n} x {reason}" in captured.out
    assert "videos rejected, by codec: h264 2, unknown 1" in captured.out
    assert "videos written, by codec/decoder: av1/pyav 1, gif/pyav 1, h264/decord 3, h264/pyav 1" in captured.out
    assert f"{ann}[4]: bad_video: {root / 'last_packet_cut.mp4'}: cannot decode the video" in captured.err
    assert f"{ann}[5]: bad_video: {root / 'header_promises_more.mp4'}: cannot decode the video" in captured.err
    assert "header promises 60 frames" in captured.err
    assert f"{ann}[6]: unsupported_codec: unsupported codec (unknown to FFmpeg) in {root / 'unknown.mp4'}" in captured.err
    assert f"{ann}[9]: empty_answer: conversations[1].value: the answer is empty" in captured.err

    cfg = {"root": str(out), "val": [{"shards": "shard-*.tar"}]}
    loader = build_loader(cfg, load_tokenizer("tiny"), build_preset("tiny"), split="val", batch_size=8,
                          num_workers=0, frames_upbound=8)
    (batch,) = list(loader)
    assert sorted(batch["sample_ids"]) == ["anim.gif", "av1.mp4", "ok.mp4", "raw.h264", "sys", "turn2"]
    assert not any(loader.skipped.values()) and loader.decoded == {"decord": 3, "pyav": 3}

    # without the frame check only the container is opened: the file with the cut last frame passes
    assert main(["--annotations", str(ann), "--media-root", str(root), "--out", str(tmp_path / "o2"),
                 "--check-frames", "0"]) == 0
    assert "7/12 records written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--annotations", str(ann), "--media-root", str(root), "--out", str(tmp_path / "o3"),
              "--check-frames", "-1"])
    assert exit_.value.code == 2
