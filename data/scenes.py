"""Generated scenes: coloured shapes that appear, move and leave at known seconds, and a rare
one-second full-frame "needle" colour. Sampling, rendering and encoding (mp4 via PyAV, png).

A scene is plain data (:class:`Scene`); every pixel of it follows from that data, so questions about
it have exact answers. Objects are visible at frame time ``t`` when ``appear <= t < leave``; they never
overlap in time and the needle second is a second without any object.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import av
import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 30),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
NEEDLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "magenta": (225, 40, 225),
    "cyan": (30, 225, 225),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((20, 20, 20), (45, 45, 45), (15, 25, 50), (50, 30, 20))


@dataclass(frozen=True)
class SceneObject:
    """One shape: colour/shape names, visible seconds ``[appear, leave)``, linear bouncing motion."""

    colour: str
    shape: str
    appear: int
    leave: int
    x0: float
    y0: float
    vx: float  # pixels per second
    vy: float
    radius: int  # half side of the bounding box, in pixels

    def visible(self, t: float) -> bool:
        """Whether the object is on screen at time ``t`` seconds."""
        return self.appear <= t < self.leave

    def center(self, t: float, size: int) -> tuple[float, float]:
        """(x, y) of the centre at time ``t``; the motion bounces inside the frame."""
        dt = t - self.appear
        lo, hi = float(self.radius + 1), float(size - 2 - self.radius)
        return _bounce(self.x0 + self.vx * dt, lo, hi), _bounce(self.y0 + self.vy * dt, lo, hi)


@dataclass(frozen=True)
class Needle:
    """A full-frame solid colour shown during second ``second`` (all frames with floor(t) == second)."""

    colour: str
    second: int


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a video (or a still when ``duration`` is 0)."""

    size: int
    fps: float  # 1 / an integer below 1 fps: frames fall on whole seconds
    duration: int  # seconds; frames = duration * fps
    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    needle: Needle | None = None

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def frame_time(self, index: int) -> float:
        """Presentation time of frame ``index`` in seconds."""
        return index / self.fps

    def to_json(self) -> dict:
        """A json-ready description of the scene."""
        out = asdict(self)
        out["background"] = list(self.background)
        return out


def _bounce(v: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def shape_mask(shape: str, cx: float, cy: float, radius: int, size: int) -> np.ndarray:
    """Boolean [size, size] mask of ``shape`` centred at (cx, cy) inside a (2r+1)-pixel box."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy, r = xx - round(cx), yy - round(cy), float(radius)
    box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "square":
        return box
    if shape == "circle":
        return dx * dx + dy * dy <= r * r + 0.5
    if shape == "triangle":  # apex up, base at the bottom of the box
        return box & (np.abs(dx) <= (dy + r) / 2.0 + 0.5)
    if shape == "cross":
        arm = max(1.0, r / 3.0)
        return box & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(f"shape: unknown {shape!r} (known: {', '.join(SHAPES)})")


def render_frame(scene: Scene, t: float) -> np.ndarray:
    """uint8 [size, size, 3] frame at time ``t`` seconds."""
    s = scene.size
    if scene.needle is not None and int(np.floor(t + 1e-9)) == scene.needle.second:
        return np.broadcast_to(np.array(NEEDLE_COLOURS[scene.needle.colour], np.uint8), (s, s, 3)).copy()
    frame = np.empty((s, s, 3), dtype=np.uint8)
    frame[:] = np.array(scene.background, dtype=np.uint8)
    for obj in scene.objects:
        if obj.visible(t):
            cx, cy = obj.center(t, s)
            frame[shape_mask(obj.shape, cx, cy, obj.radius, s)] = COLOURS[obj.colour]
    return frame


def render_video(scene: Scene) -> np.ndarray:
    """All frames of a scene: uint8 [duration * fps, size, size, 3]."""
    return np.stack([render_frame(scene, scene.frame_time(i)) for i in range(scene.num_frames)])


def sample_scene(rng: np.random.Generator, size: int, fps: float, duration: int, quantum: int = 4,
                 max_objects: int = 2, needle_prob: float = 0.0, object_scale: float = 0.2,
                 object_speed: float = 1.0 / 16.0) -> Scene:
    """Random scene: 1..max_objects objects of distinct colours and shapes on non-overlapping
    ``quantum``-aligned second intervals (a gap of at least one quantum between them), and with
    probability ``needle_prob`` (when the video spans at least two quanta) a needle second where no
    object is visible (below 1 fps, a second that holds a frame). Objects have a half side of
    ``object_scale * size`` pixels (at least 3) and move
    at about ``object_speed * size`` pixels per second (0: they stand still).
    """
    if not 0.0 < object_scale < 0.5:
        raise ValueError(f"object_scale: must be in (0, 0.5), got {object_scale}")
    if object_speed < 0.0:
        raise ValueError(f"object_speed: must be >= 0, got {object_speed}")
    if duration < quantum or duration % quantum:
        raise ValueError(f"duration: must be a positive multiple of quantum={quantum}, got {duration}")
    slots = duration // quantum
    k = int(rng.integers(1, max(1, min(max_objects, (slots + 1) // 2)) + 1))
    want_needle = bool(rng.random() < needle_prob) and slots >= 2
    while True:  # a needle needs one second without any object; redraw intervals covering everything
        bounds = np.sort(rng.choice(slots + 1, size=2 * k, replace=False)) * quantum
        covered = int(sum(bounds[1::2] - bounds[0::2]))
        if not want_needle or covered < duration:
            break
    colours = rng.choice(list(COLOURS), size=k, replace=False)
    shapes = rng.choice(list(SHAPES), size=k, replace=False)
    radius = min(max(3, int(round(size * object_scale))), (size - 3) // 2)
    lo, hi = radius + 1, size - 2 - radius
    objects = []
    for i in range(k):
        speed = size * object_speed
        objects.append(SceneObject(
            colour=str(colours[i]), shape=str(shapes[i]), appear=int(bounds[2 * i]), leave=int(bounds[2 * i + 1]),
            x0=float(rng.integers(lo, hi + 1)), y0=float(rng.integers(lo, hi + 1)),
            vx=float(rng.choice([-1, 1]) * speed * rng.uniform(0.5, 1.5)),
            vy=float(rng.choice([-1, 1]) * speed * rng.uniform(0.0, 1.0)), radius=radius))
    needle = None
    if want_needle:
        step = max(1, round(1 / fps))  # the seconds that hold a frame
        free = [s for s in range(0, duration, step) if not any(o.appear <= s < o.leave for o in objects)]
        needle = Needle(colour=str(rng.choice(list(NEEDLE_COLOURS))), second=int(rng.choice(free)))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(size=size, fps=fps, duration=duration, background=background, objects=tuple(objects),
                 needle=needle)


def sample_still(rng: np.random.Generator, size: int) -> Scene:
    """A still image scene: one object, no motion, rendered at t = 0."""
    radius = max(3, int(round(size * 0.25)))
    lo, hi = radius + 1, size - 2 - radius
    obj = SceneObject(colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(list(SHAPES))), appear=0,
                      leave=1, x0=float(rng.integers(lo, hi + 1)), y0=float(rng.integers(lo, hi + 1)),
                      vx=0.0, vy=0.0, radius=radius)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(size=size, fps=1, duration=0, background=background, objects=(obj,))


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 12) -> bytes:
    """H.264 (libx264, yuv420p, single thread, no B-frames) mp4 bytes of uint8 [N, H, W, 3] frames.

    The one video encoder of the data package (synthetic videos, needle videos). ``fps`` may be
    fractional (kept to a denominator of at most 1000); a keyframe comes every ~4 s.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames: need non-empty uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if not fps > 0:
        raise ValueError(f"fps: must be > 0, got {fps}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "g": str(max(1, round(4 * fps))),
                          "bf": "0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
