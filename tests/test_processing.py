"""Frame preprocessing: resize/normalise against PIL, chunking, padding to groups, pseudo-videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.processing import image_to_pseudo_video, pad_frames_to_group, preprocess_frames


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :h, :w]  # blocky, like real content


def test_same_size_is_exact_normalisation() -> None:
    frames = _frames(3, 32, 32)
    out = preprocess_frames(frames, 32)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    ref = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    assert torch.allclose(out, ref, atol=1e-6)
    custom = preprocess_frames(frames, 32, mean=(0.1, 0.2, 0.3), std=(0.2, 0.3, 0.4))
    m = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    s = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(custom, (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - m) / s,
                          atol=1e-5)


@pytest.mark.parametrize(("h", "w", "size"), [(96, 128, 48), (40, 24, 64), (64, 64, 384)])
def test_resize_matches_pil_bicubic(h: int, w: int, size: int) -> None:
    frames = _frames(2, h, w, seed=h)
    out = preprocess_frames(frames, size)
    assert out.shape == (2, 3, size, size)
    assert out.min() >= -1.0 and out.max() <= 1.0
    for i in range(2):
        pil = np.asarray(Image.fromarray(frames[i]).resize((size, size), Image.BICUBIC), dtype=np.float32)
        ours = (out[i].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255.0
        diff = np.abs(ours - pil)
        assert diff.mean() < 0.5, diff.mean()


def test_constant_frame_stays_constant_and_chunks_agree() -> None:
    frames = np.full((1, 50, 70, 3), (200, 10, 128), dtype=np.uint8)
    out = preprocess_frames(frames, 24)
    expected = torch.tensor([200, 10, 128], dtype=torch.float32) / 255.0 * 2 - 1
    assert torch.allclose(out[0].mean(dim=(1, 2)), expected, atol=1e-5)
    assert float(out.std(dim=(2, 3)).max()) < 1e-5
    many = _frames(37, 40, 40, seed=3)  # more than one processing chunk
    batched = preprocess_frames(many, 20)
    single = torch.cat([preprocess_frames(many[i:i + 1], 20) for i in range(37)])
    assert torch.equal(batched, single)


@pytest.mark.parametrize(
    ("frames", "kwargs", "field"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), {}, "dtype"),
        (np.zeros((8, 8, 3), dtype=np.uint8), {}, "shape"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), {}, "shape"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), {"image_size": 0}, "image_size"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), {"std": (0.5, 0.0, 0.5)}, "std"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), {"mean": (0.5,)}, "mean"),
    ],
)
def test_preprocess_errors(frames: np.ndarray, kwargs: dict, field: str) -> None:
    args = {"image_size": 8, **kwargs}
    with pytest.raises(ValueError, match=field):
        preprocess_frames(frames, **args)
    with pytest.raises(ValueError, match="frames"):
        preprocess_frames(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 9])
def test_pad_frames_to_group(n: int) -> None:
    frames = _frames(n, 8, 8, seed=n)
    padded = pad_frames_to_group(frames, 4)
    assert padded.shape[0] % 4 == 0 and padded.shape[0] - n < 4
    assert np.array_equal(padded[:n], frames)
    assert all(np.array_equal(padded[i], frames[-1]) for i in range(n, padded.shape[0]))
    tensor = torch.from_numpy(frames)
    padded_t = pad_frames_to_group(tensor, 4)
    assert isinstance(padded_t, torch.Tensor) and torch.equal(padded_t, torch.from_numpy(padded))


def test_pad_and_pseudo_video_errors_and_values() -> None:
    with pytest.raises(ValueError, match="frames"):
        pad_frames_to_group(np.zeros((0, 4, 4, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="group"):
        pad_frames_to_group(np.zeros((1, 4, 4, 3), dtype=np.uint8), 0)
    image = _frames(1, 16, 12)[0]
    video = image_to_pseudo_video(image, 4)
    assert video.shape == (4, 16, 12, 3) and all(np.array_equal(f, image) for f in video)
    assert np.array_equal(image_to_pseudo_video(image[None], 4), video)
    assert torch.equal(image_to_pseudo_video(torch.from_numpy(image), 4), torch.from_numpy(video))
    with pytest.raises(ValueError, match="frame"):
        image_to_pseudo_video(np.zeros((2, 4, 4, 3), dtype=np.uint8), 4)
