"""PruneVidQwen25VL: the seed-compatible high-level API.

    model = PruneVidQwen25VL(model_path="Qwen/Qwen2.5-VL-7B-Instruct", config=get_paper_config())
    out = model.generate(video_path="clip.mp4", question="What happens?", return_stats=True)
    out["answer"], out["stats"]["stage1"]["compressed_tokens"], ...
"""
from __future__ import annotations

import dataclasses
import os
import time

from . import engine, qwen, stage3, stats, video
from .config import PruneVidConfig, get_paper_config
from .errors import ConfigError, InputError

SAMPLING_ARGS = [f.name for f in dataclasses.fields(engine.SamplingParams) if f.name != "max_new_tokens"]


def sampling_params(max_new_tokens: int, sampling: dict) -> engine.SamplingParams:
    """Validated decoding parameters; a misspelled keyword is an error, not a silently ignored argument."""
    unknown = sorted(set(sampling) - set(SAMPLING_ARGS))
    if unknown:
        raise ConfigError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))}; the sampling arguments "
                          f"are {', '.join(SAMPLING_ARGS)}")
    return engine.SamplingParams(max_new_tokens=max_new_tokens, **sampling)


def check_pruning_layer(qm: qwen.QwenModel, config: PruneVidConfig) -> None:
    """Stage 2 selects after layer M: M must be one of the model's layers."""
    if config.enable_stage2 and config.pruning_layer >= qm.num_layers:
        raise ConfigError(f"pruning_layer must be below the layer count of {qm.name} ({qm.num_layers}), got "
                          f"{config.pruning_layer}; use 0..{qm.num_layers - 1}")


class PruneVidQwen25VL:
    def __init__(self, model_path: str, config: PruneVidConfig | None = None, device: str = "auto",
                 dtype: str = "auto", attention: str = "sdpa"):
        self.config = config or get_paper_config()
        self.model = qwen.load(model_path, dtype=dtype, device=device, attention=attention)
        check_pruning_layer(self.model, self.config)      # now, not after the vision tower ran on a video

    def load_video(self, video_path: str) -> video.Clip:
        return read_video(video_path, self.config)

    def encode(self, video_path: str | None = None, images: list | None = None, progress=None,
               videos: list | None = None) -> engine.Encoded:
        """Question-independent work (decode, vision tower, Stage 1): reuse it for several questions.

        One prompt can hold several visual blocks: video_path, then every entry of videos (paths or Clips), then
        every image, in that order; Stage 1 runs on each block alone.
        """
        return engine.encode(self.model, self.visuals(video_path, videos, images), self.config, progress)

    def visuals(self, video_path=None, videos=None, images=None) -> list:
        """The visual blocks of one prompt as engine.encode takes them: Clips (videos read now) and images."""
        if isinstance(videos, (str, bytes, os.PathLike, video.Clip)):
            videos = [videos]
        if video_path is None and not videos and images is None:
            raise InputError("give a video_path, videos=[...] or images=[...]")
        paths = ([video_path] if video_path is not None else []) + list(videos or [])
        clips = [v if isinstance(v, video.Clip) else self.load_video(v) for v in paths]
        return clips + (video.load_images(images, max_pixels=self.config.max_pixels) if images is not None else [])

    def answer(self, encoded: engine.Encoded, question: str, max_new_tokens: int = 128,
               system_prompt: str = engine.DEFAULT_SYSTEM_PROMPT, on_text=None, progress=None, **sampling) -> dict:
        """Prefill + Stage 3 + decoding for one question about already-encoded visual input."""
        params = sampling_params(max_new_tokens, sampling)
        pf = engine.prefill(encoded, question, self.config, system_prompt, progress=progress)
        if self.config.enable_cache_compression:
            pf = stage3.compress(pf)
        out = engine.generate(pf, params, on_text=on_text)
        return {"answer": out["text"], "ids": out["ids"], "stats": stats.final_stats(pf.stats, out["stats"])}

    def generate(self, video_path: str | None = None, question: str = "", images: list | None = None,
                 max_new_tokens: int = 128, return_stats: bool = False, on_text=None, videos: list | None = None,
                 **sampling):
        """Answer `question` about a video, several videos (videos=[a, b]) and/or images, all in one prompt.

        Returns {"answer", "stats"} or just the answer string.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("question is empty: ask something about the video")
        sampling_params(max_new_tokens, sampling)     # bad values fail before the video is read
        t0 = time.perf_counter()
        encoded = self.encode(video_path=video_path, images=images, videos=videos)
        out = self.answer(encoded, question, max_new_tokens, on_text=on_text, **sampling)
        out["stats"]["timings"]["end_to_end_s"] = time.perf_counter() - t0
        if self.config.verbose:
            print(stats.format_stats(out["stats"]))
        return {"answer": out["answer"], "stats": out["stats"]} if return_stats else out["answer"]


def read_video(video_path, config: PruneVidConfig) -> video.Clip:
    """Decode and sample a video (str, bytes or os.PathLike path) with the config's frame and pixel budgets.

    An over-budget request (config.max_video_tokens) fails from the container's frame count and size, before
    any frame is decoded.
    """
    return video.load_video(video_path, max_frames=config.max_frames, sampling=config.video_sampling,
                            fps=config.sampling_fps, max_pixels=config.max_pixels,
                            max_video_tokens=config.max_video_tokens)
