"""One lmms-eval request's chat messages -> the system prompt, the question and the visual input of the engine.

Videos arrive as file paths and are read with one of two readers (model_arg video_reader), on the grid of the loaded
checkpoint's family (`factor`: 28 px per LLM token, 32 on Qwen3-VL):

- `qwen_vl_utils` (default): the frames lmms-eval's own model of the same name gives Qwen (`qwen2_5_vl` for
  prunevid_qwen2_5_vl and prunevid_qwen2_vl, `qwen3_vl` for prunevid_qwen3_vl). It calls qwen_vl_utils.fetch_video
  the way that model does, with image_patch_size = factor / 2 (lmms-eval's qwen3_vl passes 16): frames spread with
  round(linspace) over the video, resized with bicubic antialiasing to the factor grid between min_pixels and
  max_pixels. How many (`nframes`): qwen2_5_vl asks for min(max_frames, frames in the video) rounded down to even
  (at least 2); qwen3_vl asks for max_frames as given, which qwen-vl-utils rounds half to even (7 -> 8, 5 -> 4), and
  fails on a video with fewer frames: there the plugin takes the video's frame count rounded down to even instead.
  Each frame's time is its index / the source fps (what the processor's video metadata carries: Qwen3-VL's
  `<t seconds>` per group); the frame rate of the sampled frames is nframes / frames * source fps (transformers'
  `sampled_fps`, Qwen2.5-VL's temporal positions). With sampling=fps it asks fetch_video for sampling_fps frames per
  second, at most max_frames, as both models do. The unpruned baseline then sees exactly the inputs of lmms-eval's
  model, so its row is comparable with lmms-eval's published numbers.
- `prunevid`: the library's own PyAV reader (what `prunevid ask` and the ComfyUI nodes use): uniform or fps
  sampling over the whole video, area resizing when shrinking.

Images arrive as PIL images and go through prunevid.video.load_images (each resized on its own between
min_pixels and max_pixels, on the same grid).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..errors import InputError, VideoError
from ..video import FACTOR, Clip, load_images, load_video
from .args import EvalSettings


@dataclass
class Turn:
    """What one request asks: a system prompt, the question text and the visual input, in the engine's terms."""
    system_prompt: str
    question: str
    videos: list = field(default_factory=list)    # file paths
    images: list = field(default_factory=list)    # PIL images or image file paths


def turn_from_messages(messages: list, default_system_prompt: str) -> Turn:
    """messages: [(role, [(type, value), ...]), ...] with type text / video / image / audio.

    One user turn (after an optional system turn). The engine puts the visual input first and the text after
    it, as lmms-eval's video tasks lay out their prompts; text parts are joined in order.
    """
    system, user = default_system_prompt, None
    for role, parts in messages:
        if role == "system":
            system = "".join(v for t, v in parts if t == "text")
        elif role == "user" and user is None:
            user = parts
        else:
            raise InputError(f"a {role!r} turn after the first user turn: the PruneVid engine answers one user "
                             "turn (multi-turn prompts are not supported)")
    if user is None:
        raise InputError("the request has no user turn")
    turn = Turn(system_prompt=system, question="".join(v for t, v in user if t == "text"))
    for kind, value in user:
        if kind == "video":
            turn.videos.append(value)
        elif kind == "image":
            turn.images.append(value)
        elif kind == "audio":
            raise InputError("the request has audio; the PruneVid engine takes video, images and text only")
    if len(turn.videos) > 1 or (turn.videos and turn.images):
        raise InputError(f"the request has {len(turn.videos)} video(s) and {len(turn.images)} image(s); the PruneVid "
                         "engine takes one video, or images, per question")
    if not turn.question.strip():
        raise InputError("the request has no question text")
    return turn


def video_frame_count(path: str) -> int:
    """Frames in the video, counted as lmms-eval's qwen2_5_vl counts them (decord when installed, else OpenCV)."""
    try:
        import decord
        return len(decord.VideoReader(path))
    except ImportError:
        import cv2
        cap = cv2.VideoCapture(path)
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()


def qwen_vl_utils_nframes(max_frames: int, frames: int, model_id: str) -> int:
    """The frame count the plugin `model_id` asks fetch_video for, as its lmms-eval namesake does (module docstring):
    qwen3_vl passes max_frames as given and qwen-vl-utils rounds it half to even; qwen2_5_vl (and the others) pass
    min(max_frames, frames) rounded down to even. Never more than the video has, at least 2."""
    fits = max(2, frames // 2 * 2)
    if model_id == "prunevid_qwen3_vl":
        return min(round(max_frames / 2) * 2, fits)
    return max(2, min(max_frames, frames) // 2 * 2)


def qwen_vl_utils_clip(path: str, settings: EvalSettings, factor: int = FACTOR) -> Clip:
    """The frames lmms-eval's model of the same name feeds Qwen (see the module docstring) as a Clip, on the
    factor grid."""
    try:
        from qwen_vl_utils import vision_process
    except ImportError:
        raise VideoError("video_reader=qwen_vl_utils needs qwen-vl-utils: pip install qwen-vl-utils (it comes with "
                         "lmms-eval), or use video_reader=prunevid") from None
    config = settings.config
    ele = {"type": "video", "video": path, "min_pixels": settings.min_pixels, "max_pixels": config.max_pixels}
    if config.video_sampling == "fps":
        ele.update(fps=config.sampling_fps, max_frames=config.max_frames)
    else:
        ele["nframes"] = qwen_vl_utils_nframes(config.max_frames, video_frame_count(path), settings.model_id)
    try:
        (video, meta), sample_fps = vision_process.fetch_video(ele, image_patch_size=factor // 2,
                                                               return_video_sample_fps=True,
                                                               return_video_metadata=True)
    except Exception as e:
        raise VideoError(f"qwen_vl_utils cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         "; install a video backend it uses (pip install decord) or use video_reader=prunevid") from e
    frames = video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()   # [T, H, W, 3]
    source_fps = float(meta["fps"])
    indices = [int(i) for i in meta["frames_indices"]]
    if frames.shape[0] % 2:        # fetch_video gives an even count; keep the engine's invariant regardless
        frames = torch.cat([frames, frames[-1:]])
        indices.append(indices[-1])
    return Clip(frames=frames, fps=float(sample_fps), timestamps=[i / source_fps for i in indices], source=path,
                source_fps=source_fps, source_frames=int(meta["total_num_frames"]))


def read_video(path: str, settings: EvalSettings, factor: int = FACTOR) -> Clip:
    """The video at path as the model_arg video_reader reads it, on the factor grid (the family's token_factor())."""
    if not isinstance(path, (str, os.PathLike)):
        raise VideoError(f"a video must arrive as a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path}; check the task's video folder")
    if settings.video_reader == "qwen_vl_utils":
        return qwen_vl_utils_clip(path, settings, factor)
    c = settings.config
    return load_video(path, max_frames=c.max_frames, sampling=c.video_sampling, fps=c.sampling_fps,
                      max_pixels=c.max_pixels, min_pixels=settings.min_pixels, max_video_tokens=c.max_video_tokens,
                      factor=factor)


def visual_input(turn: Turn, settings: EvalSettings, factor: int = FACTOR):
    """The engine's visual input for a turn, on the factor grid: a Clip, or a list of uint8 [H, W, 3] images."""
    if turn.videos:
        return read_video(turn.videos[0], settings, factor)
    if turn.images:
        return load_images(turn.images, max_pixels=settings.config.max_pixels, min_pixels=settings.min_pixels,
                           factor=factor)
    raise InputError("the request has neither a video nor an image; the PruneVid engine needs visual input")
