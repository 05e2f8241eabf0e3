"""Video and image input for Qwen2.5-VL: decode, sample, resize to the 28-px grid, lay out as vision patches.

We do not go through the transformers processor: how it samples and resizes has changed between versions (4.x vs
5.x video processors pick different frames; 5.x treats a list of images as separate items), and the pruning needs
to know exactly which frames it got and at what fps. What must match Qwen exactly is the patch layout of
to_patches; tests/test_video.py checks it against the processor.

Decoding uses PyAV (FFmpeg; docs/performance.md says why PyAV and not torchcodec or OpenCV) and reads only the
frames it keeps. Frames are chosen by timestamp: "uniform" spreads max_frames instants evenly from the first
frame's time to the last frame's, "fps" takes one every 1/fps seconds, and each instant takes the frame on screen
half an average frame later (at a constant frame rate: the nearest frame, the earlier on a tie; the first and last
instants take the first and last frame). So a variable frame rate samples evenly in time, not in frame count.
Timestamps are the frames' own presentation times less the first frame's (an edit list or a stream that starts
late still starts at 0.0).

For each wanted instant the reader seeks to the keyframe at or before it and decodes forward to the frame whose
timestamp is wanted; it seeks only when that keyframe lies ahead of what it already decoded, so wanted frames in
one GOP cost one forward decode and no frame is decoded twice. Packets shown well before the wanted instant go to
the decoder with skip_frame=NONREF: FFmpeg then drops the frames nothing refers to (non-reference B-frames), which
changes no other frame; should one of them have been the frame on screen at the instant (frames further apart
than two average frames), that GOP is decoded again whole. Before decoding, one seek to the end and a demux of the
last GOP (no decoding) give the last frame's time. The demuxer's index (PyAV >= 16: stream.index_entries) says
where a seek lands; PyAV < 16 does not show it, and a second demuxer of the same file is seeked instead.

Seeking is not trusted, and the file is read in one sequential pass (every frame decoded, only the kept ones
converted) with a note, where the container has no index (MPEG-TS, raw streams, a PNG renamed .mp4), no start
time or duration, an index that points past the end of the file (a truncated mp4 whose index comes first), or
when decoding shows timestamps going backwards, missing, or a seek that finds nothing. The sequential pass
chooses from the frames' own timestamps, or, when they go backwards, by decode order at the container's frame
rate (frame i at i / fps).

What FFmpeg says (a truncated file, damaged macroblocks) is collected while we read, through PyAV's log, and
turned into our error message or one note; notes are logged on the "prunevid" logger (one line, no source line)
and kept in Clip.notes. OpenCV is still used for resizing (INTER_AREA when shrinking).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
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
    """Kept frames (uint8 [h, w, 3] each, source indices `indices` of a constant frame rate) -> Clip."""
    return _clip_at(frames, [i / source_fps for i in indices], source_fps, source_frames, source, notes)


def _clip_at(frames: list[np.ndarray], times: list[float], source_fps: float, source_frames: int, source: str,
             notes: list[str]) -> Clip:
    """Kept frames (uint8 [h, w, 3] each, at `times` seconds, increasing) -> Clip with an even frame count."""
    # fps from the distinct sampled frames: temporal_patch_size / fps is then the real time between the starts of
    # consecutive temporal groups, which is what Qwen's time positions encode
    span = times[-1] - times[0]
    fps = (len(times) - 1) / span if span > 0 else source_fps
    if len(frames) % 2:
        # Qwen packs 2 frames per temporal patch. Repeating the last frame (what Qwen's processor does) keeps
        # every group start on the sampled grid, so fps stays true; the copy gets the same timestamp.
        frames = frames + [frames[-1]]
        times = times + [times[-1]]
    return Clip(frames=torch.from_numpy(np.stack(frames)), fps=float(fps), timestamps=list(times), source=source,
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


_STDERR = threading.RLock()   # one reader at a time changes PyAV's (process-wide) log level


@contextmanager
def _ffmpeg_messages():
    """Collect FFmpeg's error messages while the block runs (a list, filled when the block ends) instead of showing
    them.

    PyAV routes FFmpeg's log through Python and drops it unless a level is set; inside the block the level is ERROR
    and av.logging.Capture keeps the messages of every thread (the decoder's own threads log too, so a reader
    elsewhere in the process that logs meanwhile lands here as well). Nothing reaches the process's stderr. The
    lock keeps two readers from restoring the level under each other (their reads then take turns).
    """
    messages: list[str] = []
    with _STDERR:
        level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)   # (a message like the previous file's would be dropped)
        try:
            with av.logging.Capture(local=False) as logs:
                yield messages
        finally:
            av.logging.set_level(level)
            av.logging.set_skip_repeated(skip)
            messages.extend(m.strip() for _, _, m in logs if m.strip())


@contextmanager
def _utf8_name(path: Path, shown: str):
    """A name for path that FFmpeg can take: its own, or a temporary symlink with a plain name while it opens.

    PyAV passes names on as UTF-8 and cannot encode what a Linux file name that is not valid UTF-8 becomes in
    Python (a str with surrogate escapes). Once the file is open the link can go: the demuxer holds the file itself.
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
            raise VideoError(f"cannot open {shown}: its name is not valid UTF-8, which FFmpeg cannot take, and a link "
                             f"with a plain name in {folder} failed ({e}); rename the file") from None
        yield link
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        os.rmdir(folder)


def _open(path: Path, shown: str, threads: bool = True):
    """(container, its first video stream), or VideoError with FFmpeg's reason.

    threads: frame threads as well as slice threads (the same frames, faster; on a damaged stream frame threads
    can drop a frame more than one decoder thread would, so the sequential pass, which reads such files, goes
    without them)."""
    with _ffmpeg_messages() as said:
        try:
            with _utf8_name(path, shown) as name:
                container = av.open(name, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError, UnicodeError) as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        reason = said[-1] if said else _reason(failure)
        raise VideoError(f"cannot decode {shown}: FFmpeg cannot open it as a video (not a video, truncated, or "
                         f"audio only? FFmpeg says {reason!r}); check that it plays, or re-encode it: "
                         "ffmpeg -i IN -c:v libx264 OUT.mp4")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{shown} has no decodable video frames (audio only, or corrupt?); use another file")
    stream = container.streams.video[0]
    if threads:
        stream.thread_type = "AUTO"
    return container, stream


class _Untrusted(Exception):
    """Seeking cannot be trusted for this file (the reason is the message): read it in one sequential pass."""


@dataclass
class _Facts:
    """What the container says about the video stream, before anything is decoded."""
    fps: float | None            # average frame rate, None when missing or absurd
    frames: int                  # frame count, 0 when missing
    start: float                 # seconds of the first frame (stream start time; 0 when missing)
    duration: float | None       # seconds from the first frame to the end of the last one, None when missing
    size: tuple[int, int]        # (height, width) as coded, (0, 0) when missing
    sequential: str | None       # why seeking cannot be trusted, None when it can
    index: object = None         # the demuxer's index (PyAV >= 16), None when PyAV does not show it


def _facts(container, stream, path: Path) -> _Facts:
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate and 0 < float(rate) < 1000 else None
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else None
    if stream.duration and tb:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = ((container.start_time or 0) + container.duration) / av.time_base - (start or 0.0)
    else:
        duration = None
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        duration = None
    cc = stream.codec_context
    size = (int(cc.height or 0), int(cc.width or 0))
    frames = int(stream.frames or 0)
    index = getattr(stream, "index_entries", None)
    if index is not None and len(index) <= 1 and "matroska" in container.format.name and start is not None:
        # Matroska's demuxer reads the cues (its index) at the first seek; until then it shows one entry
        try:
            container.seek(stream.start_time, stream=stream, backward=True)
        except av.error.FFmpegError:
            pass
    why = None
    if start is None or duration is None:
        why = "the container gives no start time or duration"
    elif index is not None:
        if len(index) == 0:
            why = "the container has no index to seek with"
        else:
            last = index[len(index) - 1]
            if last.pos >= 0 and last.pos + last.size > path.stat().st_size:
                why = "the file ends before the data its index points to (truncated)"
    elif not any(n in container.format.name.split(",") for n in ("mov", "mp4", "matroska", "webm")):
        # PyAV < 16 does not show the index: seek only in the formats that always carry one (checked as we decode)
        why = f"the container ({container.format.name}) may have no index to seek with"
    return _Facts(fps, frames, start or 0.0, duration, size, why, index)


def _last_time(container, stream, facts: _Facts, source_fps: float) -> float:
    """Seconds of the last frame, before decoding: the largest timestamp among the packets after the last keyframe
    (a seek to the end, then demuxing without decoding: one GOP of reading), with the container back at its start
    afterwards. Else the end of the stream less one average frame (a variable rate's last frame can be longer)."""
    estimate = facts.start + facts.duration - 1 / source_fps
    tb, last = stream.time_base, None
    try:
        end = int(math.ceil((facts.start + facts.duration) / tb))
        container.seek(end, stream=stream, backward=True, any_frame=False)
        for i, packet in enumerate(container.demux(stream)):
            if packet.pts is not None and packet.size:
                last = packet.pts if last is None else max(last, packet.pts)
            if i > 5000:   # a keyframe-less tail: the estimate will do
                last = None
                break
        container.seek(stream.start_time, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        raise _Untrusted("seeking to the end fails") from None
    return float(last * tb) if last is not None and last * tb > facts.start else estimate


class _Frame:
    __slots__ = ("frame", "time", "pts")

    def __init__(self, frame, tb):
        self.frame, self.pts = frame, frame.pts
        self.time = float(frame.pts * tb)


def _decode(container, stream, said: list[str], skip=None):
    """Every frame of stream from where the container stands, in presentation order. A packet the decoder refuses
    (damaged data) is skipped with its message kept, as FFmpeg's own tools do, instead of ending the video; a
    demuxing error (a truncated file) ends it after the frames still in the decoder.

    skip(pts) -> bool: packets for which it is true are decoded with skip_frame NONREF, so the decoder drops them
    when no other frame refers to them (a non-reference B-frame): the frames it returns are unchanged, and the
    ones it drops are simply absent."""
    packets = container.demux(stream)
    cc = stream.codec_context
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            said.append(_reason(e))
            break
        if skip is not None:
            cc.skip_frame = "NONREF" if packet.pts is not None and skip(packet.pts) else "DEFAULT"
        try:
            frames = packet.decode()
        except av.error.EOFError:
            return
        except av.error.FFmpegError as e:   # "no frame!", "Invalid data found": the damage is in said
            said.append(_reason(e))
            continue
        yield from frames
    try:
        yield from stream.decode(None)
    except av.error.FFmpegError:
        return


def _reason(e) -> str:
    text = str(e)
    return text.split("last error log: ")[-1] if "last error log: " in text else text


class _Cursor:
    """Frames of one stream by timestamp: seeks to the keyframe before a wanted time only when that keyframe lies
    ahead of what was already decoded, so wanted frames in the same GOP cost one forward decode."""

    MAX_RETRIES = 8

    def __init__(self, container, stream, facts: _Facts, said: list[str], reopen, end: float | None = None):
        self.container, self.stream, self.facts, self.said = container, stream, facts, said
        self.reopen, self.probe = reopen, None   # PyAV < 16: a second demuxer shows where a seek would land
        self.end = end           # seconds of the last frame, as found before decoding
        self.tb = stream.time_base
        self.index = facts.index if facts.index is not None and len(facts.index) else None
        # B-frames: a keyframe's pts is its dts plus the reordering delay; the index holds dts
        self.delay = 0
        if self.index is not None and stream.start_time is not None:
            self.delay = max(0, stream.start_time - self.index[0].timestamp)
        self.first = None        # time of the stream's first frame, once seen
        self.seeks = 0
        self.skip_below = None   # packets shown before this pts, well before the wanted time, may be dropped
        self.exact = False       # True: drop nothing (a dropped frame turned out to be the wanted one)
        # two average frames: a frame shown that long before the wanted time cannot be the one on screen at it
        self.margin = int(math.ceil(2 / (facts.fps or FALLBACK_FPS) / self.tb))
        self._start(seek=None)

    def _start(self, seek):
        if seek is not None:
            self.container.seek(int(seek), stream=self.stream, backward=True, any_frame=False)
            self.seeks += 1
        self.skipped = []        # pts of packets sent with skip_frame NONREF in this run
        self.frames = _decode(self.container, self.stream, self.said, None if self.exact else self._skip)
        self.after_seek = seek is not None
        self.trusted_from = None if seek is not None else -math.inf   # pts of the run's first keyframe
        self.prev = None         # last frame with time <= the current target
        self.pending = None      # a decoded frame after the current target
        self.last = None         # last frame of this run (pts)

    def _skip(self, pts) -> bool:
        if self.skip_below is not None and pts < self.skip_below:
            self.skipped.append(pts)
            if len(self.skipped) > 256:
                del self.skipped[:128]
            return True
        return False

    def _next(self):
        """The run's next trusted frame, or None at the end of the video."""
        if self.pending is not None:
            f, self.pending = self.pending, None
            return f
        for frame in self.frames:
            if frame.pts is None:
                raise _Untrusted("frames come without timestamps")
            if self.trusted_from is None:       # after a seek: from the first keyframe on
                if not frame.key_frame:
                    continue
                self.trusted_from = frame.pts
            if frame.pts < self.trusted_from:   # leading pictures of an open GOP need the GOP before
                continue
            if self.last is not None and frame.pts <= self.last:
                raise _Untrusted("the stream's timestamps go backwards")
            self.last = frame.pts
            f = _Frame(frame, self.tb)
            if self.first is None and not self.after_seek:
                self.first = f.time
            return f
        return None

    def _ahead(self, ts: int) -> bool:
        """Does the keyframe a seek to ts would land on lie ahead of what this run has decoded?"""
        if self.last is None:
            return True
        if self.index is None:
            landing = self._landing(ts)
            return landing is None or landing > self.last
        k = self.index.search_timestamp(ts - self.delay, backward=True)
        return k >= 0 and self.index[k].timestamp + self.delay > self.last

    def _landing(self, ts: int):
        """pts of the keyframe a seek to ts lands on, found by seeking a second demuxer of the same file and
        reading one packet (no decoding); None when that does not work."""
        try:
            if self.probe is None:
                self.probe = self.reopen()
            container, stream = self.probe
            container.seek(int(ts), stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                if packet.pts is not None and packet.is_keyframe:
                    return packet.pts
                if packet.size == 0:
                    return None
        except (av.error.FFmpegError, VideoError):
            return None
        return None

    def close(self):
        if self.probe is not None:
            self.probe[0].close()

    def at(self, t: float):
        """The frame on screen at time t (seconds; math.inf: the last frame): the last one whose timestamp is <= t
        (the first frame for a t before it)."""
        ts = None if math.isinf(t) else int(math.floor(t / self.tb))
        if math.isinf(t):
            end = self.facts.start + (self.facts.duration or 0.0)
            seek_ts = int(math.ceil(end / self.tb))
        else:
            seek_ts = ts   # FFmpeg seeks by presentation time (mov corrects its dts index for the delay itself)
        if self.pending is None or self.pending.time <= t:   # the frames decoded so far do not reach t
            if self.prev is None and self.pending is None and self.last is None:
                pass                                          # fresh run from the start: decode forward
            elif self._ahead(seek_ts):
                self._start(seek_ts)
        if ts is not None:
            self.skip_below = ts - self.margin
        else:   # the last frame: at the last frame's time found before decoding (_last_time), if any
            self.skip_below = None if self.end is None else int(self.end / self.tb) - self.margin
        for _ in range(self.MAX_RETRIES):
            a, b = self.prev, None
            while True:
                f = self._next()
                if f is None or f.time > t:
                    b = f
                    break
                a = f
            self.prev, self.pending = a, b
            if a is None and b is not None and self.after_seek and b.time != self.first:
                # landed after t (a keyframe shown later than its decode time, or a coarse index): one GOP back
                seek_ts = min(seek_ts, b.pts - self.delay) - 1
                self._start(seek_ts)
                continue
            if a is None and b is None:
                raise _Untrusted("a seek found no frames (the file ends before its index says?)")
            limit = math.inf if ts is None else ts
            if any((a is None or p > a.pts) and p <= limit for p in self.skipped):
                # a frame the decoder may have dropped was the one on screen at t (frames further apart than
                # the margin): decode this GOP again, dropping nothing
                self.exact = True
                self._start(min(seek_ts, (a.pts if a is not None else b.pts if b is not None else seek_ts)))
                self.exact = False
                continue
            if b is None and not math.isinf(t) and self.facts.duration:
                end = self.facts.start + self.facts.duration
                if t < end - 2 * (1 / (self.facts.fps or FALLBACK_FPS)) and (a is None or a.time < t - 1):
                    raise _Untrusted("the video ends before its container says (truncated?)")
            return a if a is not None else b
        raise _Untrusted("seeking does not reach the wanted frames")


def _targets(times_or_span, max_frames: int, sampling: str, fps: float, source_fps: float) -> list[float]:
    """Instants (seconds from the first frame) to take the nearest frame of: max_frames evenly from the first
    frame's time to the last frame's ("uniform"), or one every 1/fps seconds thinned to max_frames ("fps").

    times_or_span: the last frame's time, and a frame count for "uniform" as (span, count)."""
    span, count = times_or_span
    if sampling == "uniform":
        k = min(max_frames, count)
        if k <= 1 or span <= 0:
            return [0.0]
        return [j * span / (k - 1) for j in range(k)]
    steps = math.floor(span * fps + 1e-9)
    times = [m / fps for m in range(steps + 1)]
    # a source slower than fps: each of its frames once (nearest frame of each instant, CFR estimate)
    seen, unique = set(), []
    for t in times:
        i = round(t * source_fps)
        if i not in seen:
            seen.add(i)
            unique.append(t)
    return [unique[i] for i in _uniform(len(unique), max_frames)]


def _choose(times: list[float], max_frames: int, sampling: str, fps: float, source_fps: float) -> list[int]:
    """Indices into times (seconds, increasing) of the frames _targets' instants take (see _on_screen)."""
    rel = np.asarray(times) - times[0]
    want = _targets((float(rel[-1]), len(times)), max_frames, sampling, fps, source_fps)
    out = []
    for t in want:
        i = max(0, int(np.searchsorted(rel, _on_screen(t, source_fps), side="right")) - 1)   # last rel <= t'
        if not out or out[-1] != i:
            out.append(i)
    if sampling == "fps":
        out = [out[i] for i in _uniform(len(out), max_frames)]
    return out


def _on_screen(t: float, source_fps: float) -> float:
    """The instant whose frame on screen an instant t (seconds from the first frame) takes: half an (average) frame
    later, so that at a constant frame rate it is the frame nearest t (frame round(t * fps), as the frame-index
    sampling of clip_from_frames). The first instant takes the first frame."""
    return t + 0.5 / source_fps - 1e-7 if t > 0 else t   # (- 1e-7 s: on a tie, the earlier frame)


def _sequential(path, shown, facts: _Facts, source_fps: float, max_frames, sampling, fps, convert, budget, said,
                note):
    """Every frame decoded in order; returns (kept frames, their times, frames decoded)."""
    # pass 1, demux only (no decoding): the frame times, to choose from
    container, stream = _open(path, shown, threads=False)
    try:
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
        except av.error.FFmpegError as e:
            said.append(_reason(e))
        tb = stream.time_base
    finally:
        container.close()

    def plan(stamps):
        """(chosen positions in presentation order, their times); times from the order and fps when the
        timestamps are missing or go backwards."""
        if stamps and None not in stamps and all(b > a for a, b in zip(stamps, stamps[1:])) and tb:
            secs = [float(p * tb) for p in stamps]
            times = [s - secs[0] for s in secs]
        else:
            times = [i / source_fps for i in range(len(stamps))]
        idx = _choose(times, max_frames, sampling, fps, source_fps) if stamps else []
        return idx, [times[i] for i in idx]

    order = sorted(p for p in pts if p is not None) if None not in pts else pts
    wanted, _ = plan(order)
    if wanted:
        budget(len(wanted))

    def scan(positions):
        kept, seen = {}, []
        want = set(positions)
        container, stream = _open(path, shown, threads=False)
        try:
            for frame in _decode(container, stream, said):
                if len(seen) in want:
                    kept[len(seen)] = convert(frame)
                seen.append(frame.pts)
        finally:
            container.close()
        return kept, seen

    kept, decoded = scan(wanted)
    total = len(decoded)
    if total == 0:
        raise VideoError(f"{shown} has no decodable video frames (audio only, or corrupt?); use another file")
    if not facts.frames:
        note(f"the container reports no frame count; counted {total} frame{'s' if total != 1 else ''}")
    elif total != facts.frames:
        note(f"the container reports {facts.frames} frames but {total} decode; sampling from {total}")
    if decoded != order:   # frames the decoder dropped or added: choose again from what decoded
        wanted, times = plan(decoded)
        missing = [i for i in wanted if i not in kept]
        if missing:
            budget(len(wanted))
            more, _ = scan(missing)
            kept.update(more)
    else:
        _, times = plan(decoded)
    return [kept[i] for i in wanted], times, total


def load_video(path, *, max_frames: int = 16, sampling: str = "uniform", fps: float = 2.0,
               max_pixels: int = MAX_PIXELS, min_pixels: int = MIN_PIXELS,
               max_video_tokens: int | None = None, factor: int = FACTOR) -> Clip:
    """Decode and sample a video file into a Clip (uint8 [T, h, w, 3] RGB, T even, h and w multiples of 28).

    path: str, bytes or os.PathLike.
    sampling "uniform": max_frames instants evenly from the first frame's time to the last frame's, each taking the
    nearest frame (the earlier on a tie): for a constant frame rate, frames round(linspace(0, N-1, max_frames)).
    sampling "fps": the nearest frame every 1/fps seconds over the whole video; over max_frames, thinned evenly.
    Timestamps are the frames' own (presentation time minus the first frame's), so a variable frame rate samples
    evenly in time. Only the frames needed are decoded (seek to the keyframe before, decode forward); files where
    seeking cannot be trusted are read in one sequential pass, with a note.
    Each kept frame is resized with smart_resize(min_pixels, max_pixels); an odd count gets its last frame repeated.
    max_video_tokens: raise BudgetError when the sampled frames would make more visual tokens (before Stage 1);
    checked from the container's frame count, duration and size before any frame is decoded, and again on what
    decoded.
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

    def convert(frame):
        nonlocal size
        rgb = frame.to_ndarray(format="rgb24")
        turn = round((getattr(frame, "rotation", 0) or 0) / 90) % 4   # the display matrix, as players show it
        if turn:
            rgb = np.rot90(rgb, turn)
        if size is None:  # from the decoded frame, not the container: rotation swaps the sides
            size = smart_resize(rgb.shape[0], rgb.shape[1], factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return _resize(rgb, *size)

    def budget(n_frames):
        # Before decoding: the container's size is enough, since the token count does not depend on rotation
        # (smart_resize is symmetric in height and width). A count the container over-reports can refuse a
        # video that would have fitted, and then the advice (fewer frames) is still right.
        h, w = size or (smart_resize(*facts.size, factor, min_pixels=min_pixels, max_pixels=max_pixels)
                        if min(facts.size) > 0 else (0, 0))
        _check_tokens(shown, n_frames, h, w, max_video_tokens, factor)

    with _ffmpeg_messages() as said:
        container, stream = _open(path, shown)
        try:
            facts = _facts(container, stream, path)
            source_fps = facts.fps
            if source_fps is None and facts.frames > 1 and facts.duration:
                source_fps = facts.frames / facts.duration
                note(f"the container reports no frame rate; {source_fps:.4g} fps from its frame count and duration")
            elif source_fps is None:
                source_fps = FALLBACK_FPS
                note(f"the container reports no frame rate; assuming {FALLBACK_FPS:g}")
            why = facts.sequential
            if why is None:
                count = estimate = max(1, round(facts.duration * source_fps))
                if facts.frames and abs(facts.frames - estimate) <= max(2, 0.02 * estimate):
                    count = facts.frames
                elif facts.frames:   # one of them is wrong; the duration is what seeking goes by
                    note(f"the container reports {facts.frames} frames but {facts.duration:.3f} s at "
                         f"{source_fps:.4g} fps make {estimate}; sampling as if {estimate}")
                budget(len(_targets((max(0.0, facts.duration - 1 / source_fps), count), max_frames, sampling, fps,
                                    source_fps)))
                cursor = None
                try:
                    end = _last_time(container, stream, facts, source_fps)
                    span = max(0.0, end - facts.start)
                    want = _targets((span, count), max_frames, sampling, fps, source_fps)
                    budget(len(want))
                    cursor = _Cursor(container, stream, facts, said, lambda: _open(path, shown, threads=False), end)
                    got, kept = [], []
                    for j, t in enumerate(want):
                        last = sampling == "uniform" and j == len(want) - 1 and j > 0
                        f = cursor.at(math.inf if last else facts.start + _on_screen(t, source_fps))
                        if not got or f.pts > got[-1].pts:
                            got.append(f)
                            kept.append(convert(f.frame))   # right away: RAM holds kept frames at their final size
                            f.frame = None                  # (a frame returned again is a duplicate, never used)
                        elif f.pts < got[-1].pts:
                            raise _Untrusted("the stream's timestamps go backwards")
                    first = cursor.first if cursor.first is not None else facts.start
                    times = [f.time - first for f in got]
                    total = count
                except _Untrusted as e:
                    why = str(e)
                finally:
                    if cursor is not None:
                        cursor.close()
        finally:
            container.close()
        if why is not None:
            size = None
            kept, times, total = _sequential(path, shown, facts, source_fps, max_frames, sampling, fps, convert,
                                             budget, said, note)
            if total > 1:   # (a single picture, a PNG named .mp4 say, has nothing to seek in)
                note(f"read in one sequential pass: {why}")
    if said:
        note(f"FFmpeg reported {len(said)} problem(s) while decoding, first {said[0]!r}; some frames may be damaged")
    clip = _clip_at(kept, times, source_fps, total, shown, notes)
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
