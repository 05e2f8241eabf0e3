"""Video input: a file from ComfyUI's input folder (with upload), a path, core VIDEO, or IMAGE frames + fps."""
from __future__ import annotations

import logging
import os

from ..prunevid import video as pv_video
from ..prunevid import visualize
from ..prunevid.config import get_paper_config
from ..prunevid.errors import VideoError
from . import comfy_bridge as comfy
from .types import CATEGORY, VIDEO

_PAPER = get_paper_config()
log = logging.getLogger(__name__)


def _source_path(file: str, path: str) -> str:
    path = (path or "").strip()
    if path:
        return os.path.expanduser(path)
    return comfy.annotated_path(file or "")


def _fps_from(fps, video_info) -> tuple:
    """(frame rate of the IMAGE input, a note when it had to be assumed, else None)."""
    if fps is not None:
        return float(fps), None
    if isinstance(video_info, dict):
        for k in ("loaded_fps", "source_fps"):
            if video_info.get(k):
                return float(video_info[k]), None
    assumed = pv_video.FALLBACK_FPS   # what the library assumes for a file without a usable frame rate
    return assumed, (f"the IMAGE input came without a frame rate, so {assumed:g} fps was assumed and the time "
                     "positions are wrong unless the frames really are that rate; connect the fps or video_info "
                     "input of PruneVid Load Video")


def _summary(clip) -> str:
    """What the model will see, and every note (assumption, correction) made while reading."""
    t, h, w, _ = clip.frames.shape
    span = f"{clip.timestamps[0]:.2f}-{clip.timestamps[-1]:.2f} s" if clip.timestamps else "no timestamps"
    lines = [f"{t} frames {w}x{h} at {clip.fps:.3g} fps ({span} of {clip.source})"]
    return "\n".join(lines + [f"warning: {n}" for n in clip.notes])


class PruneVidLoadVideo:
    """Decode and sample a video for Qwen2.5-VL."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO, "IMAGE")
    RETURN_NAMES = ("video", "frames")
    OUTPUT_TOOLTIPS = (
        "The sampled frames with their timestamps and fps (the fps sets Qwen's temporal positions).",
        "The sampled frames as an IMAGE batch, for previewing what the model sees.",
    )
    DESCRIPTION = ("Samples up to max_frames frames from a video (evenly, or at sampling_fps) and resizes them to "
                   "Qwen's 28-pixel grid within max_pixels per frame. The source is, in this order: the optional "
                   "VIDEO input (core Load Video), the optional IMAGE input (e.g. VideoHelperSuite) with its fps, "
                   "the path text, else the file chosen from ComfyUI's input folder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "path": ("STRING", {"default": "", "tooltip":
                         "A video file path on the server. When set it is used instead of the file below."}),
                "max_frames": ("INT", {"default": _PAPER.max_frames, "min": 2, "max": 1024, "step": 1, "tooltip":
                               "Most frames to sample. Qwen groups 2 frames per temporal token group."}),
                "sampling": (["uniform", "fps"], {"default": _PAPER.video_sampling, "tooltip":
                             "uniform: max_frames frames spread evenly over the whole video. fps: one frame every "
                             "1/sampling_fps seconds from the start; when that makes more than max_frames, "
                             "max_frames of them are kept, spread evenly, so the whole video is still covered."}),
                "sampling_fps": ("FLOAT", {"default": _PAPER.sampling_fps, "min": 0.01, "max": 60.0, "step": 0.01,
                                 "tooltip": "Frames per second to sample when sampling is fps."}),
                "max_pixels": ("INT", {"default": _PAPER.max_pixels, "min": 4 * 28 * 28, "max": 16384 * 28 * 28,
                               "step": 28 * 28, "tooltip": "Most pixels per frame after resizing (the aspect ratio "
                               "is kept, sides rounded to multiples of 28). Every 28x28 pixels make one token."}),
                "file": (comfy.input_videos(), {"video_upload": True, "tooltip":
                         "A video in ComfyUI's input folder (use the upload button to add one). Ignored when path "
                         "is set or a VIDEO / IMAGE input is connected."}),
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "A core VIDEO (e.g. from Load Video); its frame rate is kept."}),
                "images": ("IMAGE", {"tooltip": "Frames as an IMAGE batch (e.g. VideoHelperSuite Load Video); "
                           "connect fps or video_info too, else 25 fps is assumed (with a warning on this node "
                           "and in the stats)."}),
                "fps": ("FLOAT", {"forceInput": True, "tooltip": "Frame rate of the images input."}),
                "video_info": ("VHS_VIDEOINFO", {"tooltip": "VideoHelperSuite's video_info; its loaded_fps is the "
                               "frame rate of the images input."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        # the file list is checked when loading (a path or a connected input makes the file irrelevant)
        return True

    @classmethod
    def IS_CHANGED(cls, path="", file="", **kwargs):
        src = _source_path(file, path)
        try:
            return f"{src}:{os.path.getmtime(src)}"
        except (OSError, TypeError):
            return src

    def load(self, path, max_frames, sampling, sampling_fps, max_pixels, file="", video=None, images=None,
             fps=None, video_info=None, unique_id=None):
        options = dict(max_frames=max_frames, sampling=sampling, fps=sampling_fps, max_pixels=max_pixels)
        if video is not None:
            parts = video.get_components()
            clip = pv_video.clip_from_frames(parts.images, float(parts.frame_rate), source="the VIDEO input",
                                             **options)
        elif images is not None:
            rate, note = _fps_from(fps, video_info)
            clip = pv_video.clip_from_frames(images, rate, source="the IMAGE input", **options)
            if note:
                clip.notes.append(note)   # a new Clip of ours: the note travels with it into the stats
                log.warning("PruneVid Load Video: %s", note)   # (a file's notes the library logs itself)
        elif not (path or "").strip() and not (file or "").strip():
            raise VideoError("no video given: choose or upload a file, type a path, or connect a VIDEO or IMAGE input")
        else:
            # the default budget (Stage 1 checks the same one): an over-budget file fails before it is decoded
            clip = pv_video.load_video(_source_path(file, path), max_video_tokens=_PAPER.max_video_tokens, **options)
        text = _summary(clip)
        comfy.show_text(unique_id, text)
        return {"ui": {"text": [text]}, "result": (clip, visualize.as_image(clip.frames))}
