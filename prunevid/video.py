"""Video and image input for Qwen2.5-VL: decode, sample, resize to the 28-px grid, lay out as vision patches.

We do not go through the transformers processor: how it samples and resizes has changed between versions (4.x vs
5.x video processors pick different frames; 5.x treats a list of images as separate items), and the pruning needs
to know exactly which frames it got and at what fps. What must match Qwen exactly is the patch layout of
to_patches; tests/test_video.py checks it against the processor.

Decoding uses OpenCV with one sequential pass: grab() every frame (demux + decode, no colour conversion, no copy
to Python) and retrieve() (colour conversion + copy) only the frames we keep, each resized right away. RAM holds
only the kept frames at their final size. We do not seek with CAP_PROP_POS_FRAMES: FFmpeg seeks go to a keyframe
and OpenCV then estimates the frame number from timestamps, which is known to land a few frames off on files with
B-frames, edit lists or a variable frame rate, and does not work at all on files without an index (truncated
mp4s, some mkv/webm). A sequential pass always knows frame i is frame i and costs one decode of the video, which
is small next to the vision tower for the short clips Qwen2.5-VL takes. Timestamps assume a constant frame rate
(frame i is at i / fps).

FFmpeg inside OpenCV prints its complaints (a truncated file, damaged macroblocks) straight to the process's
stderr, where they land before or between our own messages. We collect them while we decode and turn them into
our error message or one note; notes are logged on the "prunevid" logger (one line, no source line) and kept in
Clip.notes.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import BudgetError, ConfigError, VideoError
from .samples import sample_video_path  # noqa: F401  (documented here: prunevid.video.sample_video_path)

FACTOR = 28                  # patch_size 14 * merge_size 2: one merged vision token per 28x28 pixels
MIN_PIXELS = 4 * 28 * 28     # at least a 2x2 grid of merged tokens
MAX_PIXELS = 448 * 448       # per frame; 256 merged tokens per temporal group
MAX_RATIO = 200              # Qwen's limit on the aspect ratio
FALLBACK_FPS = 25.0          # assumed when the container reports no usable frame rate
SAMPLINGS = ("uniform", "fps")

log = logging.getLogger(__name__)


@dataclass
class Clip:
    frames: torch.Tensor      # uint8 [T, H, W, 3] RGB, H and W multiples of 28, T even (>= 2)
    fps: float                # effective fps of the sampled frames: 1 / (seconds between consecutive sampled frames)
    timestamps: list[float]   # [T] seconds of each frame in the source (a repeated last frame repeats its time)
    source: str               # path or description, used in messages
    source_fps: float         # frame rate of the source (FALLBACK_FPS if the container had none)
    source_frames: int        # frames in the source (counted when the container's count was missing or wrong)
    notes: list[str] = field(default_factory=list)  # what was assumed or corrected while reading

    def __repr__(self):
        t, h, w, _ = self.frames.shape
        return (f"Clip({self.source!r}, {t} frames {w}x{h} at {self.fps:.3g} fps, "
                f"source {self.source_frames} frames at {self.source_fps:.3g} fps)")


# ---------------------------------------------------------------- sizes

def _check_pixels(min_pixels, max_pixels, factor=FACTOR):
    if not (isinstance(max_pixels, (int, np.integer)) and max_pixels >= factor * factor):
        raise ConfigError(f"max_pixels must be an integer >= {factor * factor} (one {factor}x{factor} token), "
                          f"got {max_pixels!r}")
    if not (isinstance(min_pixels, (int, np.integer)) and 0 < min_pixels <= max_pixels):
        raise ConfigError(f"min_pixels must be an integer in [1, max_pixels={max_pixels}], got {min_pixels!r}")


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size for a height x width frame: (new_height, new_width), both multiples of factor.

    Each side is rounded to a multiple of factor; if that is over max_pixels (under min_pixels) both sides are
    scaled down (up) by the same factor, keeping the aspect ratio. Same rule as transformers' and qwen-vl-utils'
    smart_resize, plus one guard: for very thin frames Qwen clamps the short side up to `factor`, which can leave
    the result over max_pixels; we then cut the long side so the budget always holds.
    """
    _check_pixels(min_pixels, max_pixels, factor)
    if height <= 0 or width <= 0:
        raise VideoError(f"frame size {width}x{height} is empty")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoError(f"frame size {width}x{height} has an aspect ratio over {MAX_RATIO}:1, which Qwen2.5-VL "
                         "does not accept; crop it")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h * w > max_pixels:  # only after a clamp (thin frames, or min_pixels close to max_pixels)
        if h >= w:
            h = max(factor, max_pixels // w // factor * factor)
        else:
            w = max(factor, max_pixels // h // factor * factor)
    return h, w


def visual_tokens(frames: int, height: int, width: int, factor: int = FACTOR) -> int:
    """LLM tokens of `frames` frames of height x width (multiples of factor) before Stage 1: one per 2 frames x
    factor x factor pixels (28 on Qwen2/2.5-VL, 32 on Qwen3-VL; an odd frame count is padded to even, as Qwen does)."""
    return -(-frames // 2) * (height // factor) * (width // factor)


def _check_tokens(source: str, frames: int, height: int, width: int, max_video_tokens: int | None,
                  factor: int = FACTOR):
    """BudgetError when `frames` frames of height x width (already on the factor grid) are over max_video_tokens."""
    tokens = visual_tokens(frames, height, width, factor)
    if max_video_tokens is not None and tokens > max_video_tokens:
        raise BudgetError(f"{source}: {frames + frames % 2} frames at {width}x{height} make {tokens} visual tokens, "
                          f"over max_video_tokens={max_video_tokens}; lower max_frames or max_pixels")


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3]."""
    if img.shape[:2] == (h, w):
        return np.ascontiguousarray(img)
    # INTER_AREA averages all source pixels under each output pixel: no aliasing (moire, shimmering edges) when
    # shrinking, which is the usual case (720p -> ~448x252). When a side grows (tiny videos, min_pixels) it would
    # be blocky, so we use bicubic there, which is also what Qwen's own processor uses.
    shrink = h <= img.shape[0] and w <= img.shape[1]
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


# ---------------------------------------------------------------- which frames

def _positive(v) -> bool:
    try:
        return math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False


def _check_sampling(max_frames, sampling, fps):
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 2:
        raise ConfigError(f"max_frames must be an integer >= 2 (Qwen packs 2 frames per temporal patch), "
                          f"got {max_frames!r}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "fps" and not _positive(fps):
        raise ConfigError(f"fps (frames per second to sample) must be > 0, got {fps!r}")


def _uniform(n: int, k: int) -> list[int]:
    """k (or n if fewer) indices spread evenly over 0..n-1, first and last included."""
    # round(linspace) with step >= 1 never repeats an index; set() is only a guard for k > n
    return sorted(set(np.rint(np.linspace(0, n - 1, min(k, n))).astype(int).tolist()))


def _select(n: int, source_fps: float, max_frames: int, sampling: str, fps: float) -> list[int]:
    """Indices of the frames to keep out of n frames at source_fps (sorted, unique, not yet made even)."""
    if sampling == "uniform":
        return _uniform(n, max_frames)
    # "fps": the nearest frame to each of 0, 1/fps, 2/fps, ... up to the last frame; a source slower than fps
    # just gives each of its frames once. Over max_frames: thinned evenly, so the whole video is still covered.
    steps = math.floor((n - 1) / source_fps * fps + 1e-9)
    times = np.arange(steps + 1) / fps
    idx = sorted(set(np.minimum(np.rint(times * source_fps).astype(int), n - 1).tolist()))
    return [idx[i] for i in _uniform(len(idx), max_frames)]


def _make_clip(frames: list[np.ndarray], indices: list[int], source_fps: float, source_frames: int, source: str,
               notes: list[str]) -> Clip:
    """Kept frames (uint8 [h, w, 3] each, source indices `indices`) -> Clip with an even frame count."""
    times = [i / source_fps for i in indices]
    # fps from the distinct sampled frames: temporal_patch_size / fps is then the real time between the starts of
    # consecutive temporal groups, which is what Qwen's time positions encode
    span = indices[-1] - indices[0]
    fps = (len(indices) - 1) * source_fps / span if span > 0 else source_fps
    if len(frames) % 2:
        # Qwen packs 2 frames per temporal patch. Repeating the last frame (what Qwen's processor does) keeps
        # every group start on the sampled grid, so fps stays true; the copy gets the same timestamp.
        frames = frames + [frames[-1]]
        times = times + [times[-1]]
    return Clip(frames=torch.from_numpy(np.stack(frames)), fps=float(fps), timestamps=times, source=source,
                source_fps=float(source_fps), source_frames=int(source_frames), notes=notes)


# ---------------------------------------------------------------- files

def _as_path(path, what: str = "video") -> tuple[Path, str]:
    """A str, bytes or os.PathLike file path -> (Path, the path as printable text for messages).

    A name that is not valid UTF-8 (bytes from an old archive, say) arrives as a str with surrogate escapes; the
    printable form shows those bytes as \\xNN, since such a str cannot even be printed to a UTF-8 stream.
    """
    try:
        text = os.fsdecode(path)
    except TypeError:
        raise VideoError(f"a {what} path must be a str, bytes or pathlib.Path, got {type(path).__name__}") from None
    return Path(text), os.fsencode(text).decode("utf-8", "backslashreplace")


def _check_file(path: Path, shown: str, what: str = "video"):
    if not path.exists():
        hint = "" if path.is_absolute() else f" (relative paths are from {os.getcwd()})"
        raise VideoError(f"{what} file not found: {shown}{hint}; check the path")
    if not path.is_file():
        raise VideoError(f"{shown} is not a file (a directory?); give the path of a {what} file")
    if path.stat().st_size == 0:
        raise VideoError(f"{what} file {shown} is empty (0 bytes); it was not fully written or copied, use another")


_FFMPEG_LINE = re.compile(r"\[[^\]\n]* @ (?:0x)?[0-9a-fA-F]+\] ")   # "[h264 @ 0x55d1c0de] message"
_STDERR = threading.RLock()   # reentrant: _open collects its own messages inside a decode's


@contextmanager
def _ffmpeg_messages():
    """Collect what FFmpeg prints while the block runs (a list, filled when the block ends) instead of showing it.

    FFmpeg writes to file descriptor 2 itself, past Python, so fd 2 points at a temporary file for the block.
    Lines that are not FFmpeg's (another thread's output) are written back to stderr afterwards, late but whole.
    The lock keeps two threads from swapping fd 2 under each other (their decodes then take turns).
    """
    messages: list[str] = []
    with _STDERR:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (AttributeError, OSError, ValueError):   # no stderr at all (pythonw): nothing to keep clean
            saved = None
        if saved is None:
            yield messages
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield messages
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                other = []
                for line in tmp.read().decode("utf-8", "replace").splitlines():
                    found = _FFMPEG_LINE.search(line)
                    if found:
                        messages.append(line[found.end():].strip())
                    elif line.strip():
                        other.append(line + "\n")
                if other:
                    os.write(2, "".join(other).encode())


@contextmanager
def _utf8_name(path: Path, shown: str):
    """A name for path that OpenCV can take: its own, or a temporary symlink with a plain name while it opens.

    OpenCV's Python binding passes names on as UTF-8 and kills the process (segmentation fault) on a str it cannot
    encode, which is what a Linux file name that is not valid UTF-8 becomes in Python (surrogate escapes). Once
    the file is open the link can go: the decoder holds the file itself.
    """
    if shown == str(path):
        yield str(path)
        return
    folder = tempfile.mkdtemp(prefix="prunevid-")
    link = os.path.join(folder, "video" + (path.suffix if path.suffix.isascii() else ""))
    try:
        try:
            os.symlink(os.path.abspath(path), link)
            link.encode("utf-8")
        except (OSError, UnicodeEncodeError) as e:
            raise VideoError(f"cannot open {shown}: its name is not valid UTF-8, which OpenCV cannot take, and a link "
                             f"with a plain name in {folder} failed ({e}); rename the file") from None
        yield link
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        os.rmdir(folder)


def _open(path: Path, shown: str):
    # FFmpeg first: CAP_ANY would also try the image-sequence backend, which reads a '%' in a name as a pattern.
    # Builds without FFmpeg (some conda / system OpenCVs) fall back to whatever backend they have.
    # OpenCV's own warnings are silenced and FFmpeg's collected: a file it cannot open gets one clear error.
    cvlog = getattr(getattr(cv2, "utils", None), "logging", None)
    level = cvlog.getLogLevel() if cvlog else None
    if cvlog:
        cvlog.setLogLevel(cvlog.LOG_LEVEL_ERROR)
    try:
        with _ffmpeg_messages() as said, _utf8_name(path, shown) as name:
            cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
            if not cap.isOpened():
                cap = cv2.VideoCapture(name)
    finally:
        if cvlog:
            cvlog.setLogLevel(level)
    if not cap.isOpened():
        reason = f" FFmpeg says {said[-1]!r}" if said else ""
        raise VideoError(f"cannot decode {shown}: OpenCV cannot open it as a video (not a video, truncated, or "
                         f"audio only?{reason}); check that it plays, or re-encode it: "
                         "ffmpeg -i IN -c:v libx264 OUT.mp4")
    return cap


def _scan(cap, wanted: list[int], last: float, resize) -> tuple[dict[int, np.ndarray], int]:
    """One sequential pass over frames 0..last: grab() each, retrieve() and resize the wanted ones.

    Returns (kept frames by index, frames grabbed); fewer than last + 1 grabbed means the video ended first.
    """
    kept, want, i = {}, set(wanted), 0
    while i <= last and cap.grab():
        if i in want:
            ok, bgr = cap.retrieve()
            if ok and bgr is not None:
                kept[i] = resize(bgr)
        i += 1
    return kept, i


def load_video(path, *, max_frames: int = 16, sampling: str = "uniform", fps: float = 2.0,
               max_pixels: int = MAX_PIXELS, min_pixels: int = MIN_PIXELS,
               max_video_tokens: int | None = None, factor: int = FACTOR) -> Clip:
    """Decode and sample a video file into a Clip (uint8 [T, h, w, 3] RGB, T even, h and w multiples of 28).

    path: str, bytes or os.PathLike.
    sampling "uniform": max_frames frames evenly over the whole video (round(linspace(0, N-1, max_frames))).
    sampling "fps": a frame every 1/fps seconds over the whole video; over max_frames, thinned evenly.
    Each kept frame is resized with smart_resize(min_pixels, max_pixels); an odd count gets its last frame repeated.
    max_video_tokens: raise BudgetError when the sampled frames would make more visual tokens (before Stage 1);
    checked from the container's frame count and size before any frame is decoded, and again on what decoded.
    factor: pixels per LLM token along a side (the family's token_factor(): 28, or 32 on Qwen3-VL).
    """
    _check_sampling(max_frames, sampling, fps)
    _check_pixels(min_pixels, max_pixels, factor)
    path, shown = _as_path(path)
    _check_file(path, shown)
    notes = []

    def note(msg):
        notes.append(msg)
        log.warning("%s: %s", shown, msg)

    size = None

    def resize(bgr):
        nonlocal size
        if size is None:  # from the decoded frame, not the container: OpenCV applies rotation metadata
            size = smart_resize(bgr.shape[0], bgr.shape[1], factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), *size)

    def budget(n_frames):
        # Before decoding: the container's size is enough, since the token count does not depend on rotation
        # (smart_resize is symmetric in height and width). A count the container over-reports can refuse a
        # video that would have fitted, and then the advice (fewer frames) is still right.
        h, w = size or (smart_resize(*container_size, factor, min_pixels=min_pixels, max_pixels=max_pixels)
                        if min(container_size) > 0 else (0, 0))
        _check_tokens(shown, n_frames, h, w, max_video_tokens, factor)

    with _ffmpeg_messages() as said:   # decoding and release(), which flushes the decoder, both talk
        cap = _open(path, shown)
        try:
            source_fps = cap.get(cv2.CAP_PROP_FPS)
            if not (math.isfinite(source_fps) and 0 < source_fps < 1000):
                note(f"the container reports {source_fps} fps; assuming {FALLBACK_FPS:g}")
                source_fps = FALLBACK_FPS
            container_size = tuple(int(v) if math.isfinite(v) else 0
                                   for v in (cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
            reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            reported = int(reported) if math.isfinite(reported) and reported >= 1 else 0
            if reported:
                # Trust the count but check it: it is often estimated from duration * fps. Grabbing up to index
                # `reported` (one past the end) tells whether the video really ends there.
                wanted = _select(reported, source_fps, max_frames, sampling, fps)
                budget(len(wanted))
                kept, total = _scan(cap, wanted, reported, resize)
                if total > reported:
                    while cap.grab():
                        total += 1
            else:
                kept, total = _scan(cap, [], math.inf, resize)
            if total == 0:
                raise VideoError(f"{shown} has no decodable video frames (audio only, or corrupt?); use another file")
            if reported and total != reported:
                note(f"the container reports {reported} frames but {total} decode; sampling from {total}")
            elif not reported:
                note(f"the container reports no frame count; counted {total} frame{'s' if total != 1 else ''}")
        finally:
            cap.release()

    wanted = _select(total, source_fps, max_frames, sampling, fps)
    missing = [i for i in wanted if i not in kept]
    if missing:  # the count was missing or wrong: a second pass for the frames the first one did not pick
        budget(len(wanted))
        with _ffmpeg_messages() as again:
            cap = _open(path, shown)
            try:
                more, _ = _scan(cap, missing, missing[-1], resize)
            finally:
                cap.release()
        said += again
        kept.update(more)
        lost = [i for i in missing if i not in more]
        if lost:
            note(f"frames {lost} could not be decoded; left out")
            wanted = [i for i in wanted if i in kept]
            if not wanted:
                raise VideoError(f"{shown}: no frame could be decoded; check the file plays, or re-encode it")
    if said:
        note(f"FFmpeg reported {len(said)} problem(s) while decoding, first {said[0]!r}; some frames may be damaged")
    clip = _make_clip([kept[i] for i in wanted], wanted, source_fps, total, shown, notes)
    _check_tokens(shown, *clip.frames.shape[:3], max_video_tokens, factor)
    return clip


# ---------------------------------------------------------------- in-memory frames and images

def _to_uint8(x) -> np.ndarray:
    """[..., 3] uint8 or float 0..1 (torch or numpy, any device) -> uint8 numpy."""
    x = torch.as_tensor(x).detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.numpy()


def clip_from_frames(frames, source_fps: float, *, max_frames: int = 16, sampling: str = "uniform", fps: float = 2.0,
                     max_pixels: int = MAX_PIXELS, min_pixels: int = MIN_PIXELS, source: str = "frames",
                     factor: int = FACTOR) -> Clip:
    """Sample and resize frames already in memory, with the same rules as load_video.

    frames: [T, H, W, 3] float in 0..1 (ComfyUI IMAGE) or uint8, torch or numpy. source_fps: their frame rate.
    fps is the sampling rate for sampling="fps", as in load_video; factor as in load_video.
    """
    _check_sampling(max_frames, sampling, fps)
    _check_pixels(min_pixels, max_pixels, factor)
    if not _positive(source_fps):
        raise ConfigError(f"source_fps (frame rate of {source}) must be > 0, got {source_fps!r}")
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise VideoError(f"{source} has shape {list(shape)}; expected frames [T, H, W, 3]")
    if shape[0] == 0:
        raise VideoError(f"{source} has no frames")
    wanted = _select(shape[0], float(source_fps), max_frames, sampling, fps)
    h, w = smart_resize(shape[1], shape[2], factor, min_pixels=min_pixels, max_pixels=max_pixels)
    # convert only the kept frames: a long IMAGE batch stays float and untouched
    kept = [_resize(_to_uint8(frames[i]), h, w) for i in wanted]
    return _make_clip(kept, wanted, float(source_fps), shape[0], source, [])


def _read_image(item, i: int) -> np.ndarray:
    if isinstance(item, (str, bytes, os.PathLike)):
        from PIL import Image, ImageOps
        path, shown = _as_path(item, "image")
        _check_file(path, shown, "image")
        try:
            with Image.open(path) as im:
                # phone photos store rotation in EXIF; convert("RGB") handles palette, grey, alpha, CMYK
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise VideoError(f"cannot read image {shown}: {e}; use a PNG/JPEG/WebP file") from None
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        return np.asarray(item.convert("RGB"))
    x = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
    if x.ndim == 4 and x.shape[0] == 1:  # a one-image ComfyUI IMAGE batch
        x = x[0]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise VideoError(f"image {i} has shape {list(x.shape)}; expected [H, W, 3] RGB")
    return _to_uint8(x)


def load_images(images, *, max_pixels: int = MAX_PIXELS, min_pixels: int = MIN_PIXELS,
                factor: int = FACTOR) -> list[torch.Tensor]:
    """Paths, PIL images or [H, W, 3] arrays/tensors (uint8 or float 0..1) -> list of uint8 [h, w, 3] tensors,
    each resized on its own to the factor grid (28, or 32 on Qwen3-VL; images keep their own sizes, as in Qwen)."""
    _check_pixels(min_pixels, max_pixels, factor)
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__len__"):
        images = [images]
    if len(images) == 0:
        raise VideoError("no images given; pass a list of image paths, PIL images or [H, W, 3] arrays")
    out = []
    for i, item in enumerate(images):
        img = _read_image(item, i)
        h, w = smart_resize(img.shape[0], img.shape[1], factor, min_pixels=min_pixels, max_pixels=max_pixels)
        out.append(torch.from_numpy(_resize(img, h, w)))
    return out


def to_grid(frames, factor: int) -> tuple:
    """uint8 [T, H, W, 3] frames sized for another grid (e.g. 28 px by a model-independent video node) -> (frames on
    the factor grid with about the same pixel count, or the same frames when already on it; whether they changed)."""
    x = torch.as_tensor(frames)
    T, H, W = x.shape[:3]
    if H % factor == 0 and W % factor == 0:
        return x, False
    h, w = smart_resize(H, W, factor, min_pixels=factor * factor, max_pixels=max(H * W, factor * factor))
    return torch.from_numpy(np.stack([_resize(f, h, w) for f in x.numpy()])), True


# ---------------------------------------------------------------- vision tower input

def to_patches(frames, mean, std, *, patch_size: int = 14, temporal_patch_size: int = 2,
               merge_size: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [T, H, W, 3] (or one image [H, W, 3]) -> (pixel_values float32 [gt*gh*gw, 3*tp*p*p], (gt, gh, gw)).

    Same values and order as Qwen2-VL's image/video processor: rescale by 1/255, normalise with mean/std, a
    frame count that is not a multiple of temporal_patch_size gets its last frame repeated (one image -> 2
    frames), then patches are ordered 2x2 merge window by merge window, row-major over the windows, so that the
    vision tower's patch merger finds the 4 patches of a merged token next to each other.
    """
    x = torch.as_tensor(frames)
    if x.ndim == 3:
        x = x[None]
    tp, p, m = temporal_patch_size, patch_size, merge_size
    T, H, W, C = x.shape if x.ndim == 4 else (0, 0, 0, 0)
    if C != 3 or H % (p * m) or W % (p * m) or T == 0:
        raise VideoError(f"frames of shape {list(x.shape)}: expected [T, H, W, 3] with H and W multiples of "
                         f"{p * m}; resize with smart_resize (load_video / clip_from_frames do)")
    if T % tp:
        x = torch.cat([x, x[-1:].expand(tp - T % tp, -1, -1, -1)])
    scale = 1.0 if torch.is_floating_point(x) else 1.0 / 255.0  # float input is taken as already in 0..1
    x = x.permute(0, 3, 1, 2).float() * scale  # [T, C, H, W]
    mean = torch.tensor(mean, dtype=torch.float32).view(1, C, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, C, 1, 1)
    x = (x - mean) / std
    gt, gh, gw = x.shape[0] // tp, H // p, W // p
    x = x.reshape(gt, tp, C, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return x.reshape(gt * gh * gw, C * tp * p * p).contiguous(), (gt, gh, gw)
