"""PruneVid: the high-level API, for a checkpoint of any supported family (PruneVidQwen25VL: the seed's name).

    model = PruneVid(model_path="Qwen/Qwen2-VL-7B-Instruct", config=get_paper_config())
    out = model.generate(video_path="clip.mp4", question="What happens?", return_stats=True)
    out["answer"], out["stats"]["stage1"]["compressed_tokens"], out["stats"]["family"], ...
"""
from __future__ import annotations

import dataclasses
import os
import time

from . import batch, engine, families, loader, stage3, stats, video
from .config import PruneVidConfig, get_paper_config
from .errors import ConfigError, InputError, PruneVidError

SAMPLING_ARGS = [f.name for f in dataclasses.fields(engine.SamplingParams) if f.name != "max_new_tokens"]
VISUAL_KEYS = ("video_path", "videos", "images")
REQUEST_KEYS = (*VISUAL_KEYS, "question", "system_prompt", "max_new_tokens", *SAMPLING_ARGS)


def sampling_params(max_new_tokens: int, sampling: dict) -> engine.SamplingParams:
    """Validated decoding parameters; a misspelled keyword is an error, not a silently ignored argument."""
    unknown = sorted(set(sampling) - set(SAMPLING_ARGS))
    if unknown:
        raise ConfigError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))}; the sampling arguments "
                          f"are {', '.join(SAMPLING_ARGS)}")
    return engine.SamplingParams(max_new_tokens=max_new_tokens, **sampling)


class PruneVid:
    def __init__(self, model_path: str, config: PruneVidConfig | None = None, device: str = "auto",
                 dtype: str = "auto", attention: str = "sdpa", quantization: str = "none", device_map=None,
                 max_memory: dict | None = None, offload_folder: str | None = None, lazy: bool = False):
        """model_path: a local checkpoint folder or a hub id of any supported family (prunevid.families; the family
        is read from config.json), or "tiny" / "tiny:<model_type>" (a random tiny checkpoint built on disk).
        quantization: "none" | "8bit" | "4bit"; device_map ("auto", "balanced", "sequential" or a dict),
        max_memory and offload_folder shard or offload the model (see docs/performance.md, "Memory").
        lazy: load the weights on first use (generate() then reads and checks the video before the load)."""
        self.config = config or get_paper_config()
        self.model_path = loader.resolve_model(model_path)
        self._load_args = dict(dtype=dtype, device=device, attention=attention, quantization=quantization,
                               device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        self._model = None
        if not lazy:
            self.model                                  # noqa: B018  (loads now)

    @property
    def model(self):
        """The loaded families.VideoLLM (loaded on first use with lazy=True)."""
        if self._model is None:
            qm = loader.load(self.model_path, **self._load_args)
            engine.check_pruning_layer(qm, self.config)   # now, not after the vision tower ran on a video
            self._model = qm
        return self._model

    @property
    def family(self) -> type:
        """The checkpoint's family class (families.Qwen25VL, ...): the loaded model's, or before a lazy load the one
        its config.json names (the default family while a hub id is not downloaded yet)."""
        if self._model is not None:
            return type(self._model)
        return loader.detect(self.model_path) or families.for_hub_id(str(self.model_path)) or families.DEFAULT

    def load_video(self, video_path: str) -> video.Clip:
        return read_video(video_path, self.config, self.family.token_factor())

    def encode(self, video_path: str | None = None, images: list | None = None, progress=None,
               videos: list | None = None) -> engine.Encoded:
        """Question-independent work (decode, vision tower, Stage 1): reuse it for several questions.

        One prompt can hold several visual blocks: video_path, then every entry of videos (paths or Clips), then
        every image, in that order; Stage 1 runs on each block alone.
        """
        return engine.encode(self.model, self.visuals(video_path, videos, images), self.config, progress)

    def visuals(self, video_path=None, videos=None, images=None, on_status=None) -> list:
        """The visual blocks of one prompt as engine.encode takes them: Clips (videos read now, each checked against
        the token budget from its container's metadata before any frame is decoded) and images."""
        if isinstance(videos, (str, bytes, os.PathLike, video.Clip)):
            videos = [videos]
        if videos is not None and not isinstance(videos, (list, tuple)):
            raise InputError(f"videos must be a list of video paths (or Clips), got {type(videos).__name__}")
        if video_path is None and not videos and images is None:
            raise InputError("give a video_path, videos=[...] or images=[...]")
        paths = ([video_path] if video_path is not None else []) + list(videos or [])
        clips = []
        for v in paths:
            if on_status and not isinstance(v, video.Clip):
                on_status(f"reading {v} ...")
            clips.append(v if isinstance(v, video.Clip) else self.load_video(v))
        return clips + (video.load_images(images, max_pixels=self.config.max_pixels,
                                          factor=self.family.token_factor()) if images is not None else [])

    def answer(self, encoded: engine.Encoded, question: str, max_new_tokens: int = 128,
               system_prompt: str = engine.DEFAULT_SYSTEM_PROMPT, on_text=None, progress=None, **sampling) -> dict:
        """Prefill + Stage 3 + decoding for one question about already-encoded visual input."""
        return self._answer(encoded, question, sampling_params(max_new_tokens, sampling), system_prompt, on_text,
                            progress)

    def _answer(self, encoded, question, params, system_prompt=engine.DEFAULT_SYSTEM_PROMPT, on_text=None,
                progress=None) -> dict:
        pf = engine.prefill(encoded, question, self.config, system_prompt, progress=progress)
        if self.config.enable_cache_compression:
            pf = stage3.compress(pf)
        out = engine.generate(pf, params, on_text=on_text)
        return {"answer": out["text"], "ids": out["ids"], "stats": stats.final_stats(pf.stats, out["stats"])}

    def generate(self, video_path: str | None = None, question: str = "", images: list | None = None,
                 max_new_tokens: int = 128, return_stats: bool = False, on_text=None, videos: list | None = None,
                 progress=None, on_status=None, **sampling):
        """Answer `question` about a video, several videos (videos=[a, b]) and/or images, all in one prompt.

        Everything is checked before the slow work: the question and the sampling values, then each video against
        the token budget from its metadata (before decoding), then the whole prompt's budget (before a lazy model
        load). progress(layer, layers) follows the prefill; on_status(text) hears each step ("reading ...",
        "loading ...", "vision tower ..."). Returns {"answer", "stats"} or just the answer string.
        """
        if not isinstance(question, str) or not question.strip():
            raise InputError("question is empty: ask something about the video")
        params = sampling_params(max_new_tokens, sampling)     # bad values fail before the video is read
        t0 = time.perf_counter()
        visual = self.visuals(video_path, videos, images, on_status)
        if self._model is None:                                 # a lazy load: the budget first, then the weights
            engine.check_budget(visual, self.config, self.family)
            if on_status:
                on_status(f"loading {self.model_path} ...")
            self.model                                          # noqa: B018  (loads now)
        if on_status:
            on_status(f"vision tower{' + Stage 1' if self.config.enable_stage1 else ''} on "
                      f"{engine.describe(engine.visual_items(visual))} ...")
        encoded = engine.encode(self.model, visual, self.config)
        out = self._answer(encoded, question, params, on_text=on_text, progress=progress)
        out["stats"]["timings"]["end_to_end_s"] = time.perf_counter() - t0
        if self.config.verbose:
            print(stats.format_stats(out["stats"]))
        return {"answer": out["answer"], "stats": out["stats"]} if return_stats else out["answer"]

    # ---------------------------------------------------------------- batches

    def encode_batch(self, requests: list, progress=None) -> list:
        """encode() for each request dict ({"video_path" | "videos" | "images", ...}; other keys are ignored), each
        on its own: returns, in order, an engine.Encoded or the PruneVidError that request raised."""
        out = []
        for i, r in enumerate(requests):
            try:
                if not isinstance(r, dict):
                    raise InputError(f"request {i}: expected a dict such as {{'video_path': ..., 'question': ...}}, "
                                     f"got {type(r).__name__}")
                out.append(self.encode(**{k: r[k] for k in VISUAL_KEYS if k in r}))
            except PruneVidError as e:
                out.append(e)
            if progress:
                progress(i + 1, len(requests))
        return out

    def answer_batch(self, encoded: list, questions: list, max_new_tokens: int = 128,
                     system_prompt: str = engine.DEFAULT_SYSTEM_PROMPT, progress=None, **sampling) -> list:
        """answer() for several encoded inputs at once, batched through the LLM (see prunevid.batch).

        encoded: what encode_batch returned (an entry that is an error gives that error's result). Returns one dict
        per entry, in order: {"answer", "ids", "stats", "error": None}, or {"answer": None, "ids": [], "stats": None,
        "error": message} for a request that failed.
        """
        params = sampling_params(max_new_tokens, sampling)
        n = len(encoded)
        if len(questions) != n:
            raise InputError(f"answer_batch needs one question per encoded input: {n} inputs, {len(questions)} "
                             "questions")
        return self._answer_rows(list(encoded), list(questions), [system_prompt] * n, [params] * n, progress)

    def generate_batch(self, requests: list, max_new_tokens: int = 128, batch_size: int = 8, progress=None,
                       **sampling) -> list:
        """Answer several requests, batch_size of them at a time through the LLM, each pruned on its own.

        requests: dicts with "video_path" (or "videos": [...], "images": [...]) and "question"; optional
        "system_prompt", "max_new_tokens" and any sampling argument, which override this call's defaults for that
        request. Returns one result dict per request, in order, each with its own stats (see answer_batch); a
        request that fails (a corrupt video, an empty question, a bad value) gets an error result and the others
        are answered. progress(done, total) is called after each group of batch_size requests.
        """
        sampling_params(max_new_tokens, sampling)             # the call's own defaults fail at once
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        results = []
        for start in range(0, len(requests), batch_size):
            t0 = time.perf_counter()
            chunk = requests[start:start + batch_size]
            prepared = [self._prepare(start + i, r, max_new_tokens, sampling) for i, r in enumerate(chunk)]
            encoded = [p if isinstance(p, PruneVidError) else _try(self.encode, **p["visual"]) for p in prepared]
            ok = [not isinstance(p, PruneVidError) for p in prepared]
            out = self._answer_rows(encoded, [p["question"] if k else "" for p, k in zip(prepared, ok)],
                                    [p["system_prompt"] if k else "" for p, k in zip(prepared, ok)],
                                    [p["params"] if k else None for p, k in zip(prepared, ok)])
            for r in out:
                if r["stats"] is not None:
                    r["stats"]["timings"]["end_to_end_s"] = time.perf_counter() - t0     # the batch's
            results += out
            if progress:
                progress(len(results), len(requests))
        return results

    def _prepare(self, i: int, r, max_new_tokens: int, sampling: dict):
        """One request dict checked: {"visual", "question", "system_prompt", "params"}, or the error it makes."""
        try:
            if not isinstance(r, dict):
                raise InputError(f"request {i}: expected a dict such as {{'video_path': ..., 'question': ...}}, "
                                 f"got {type(r).__name__}")
            unknown = sorted(set(r) - set(REQUEST_KEYS))
            if unknown:
                raise InputError(f"request {i}: unknown key(s) {', '.join(map(repr, unknown))}; a request takes "
                                 f"{', '.join(REQUEST_KEYS)}")
            question = r.get("question")
            if not isinstance(question, str) or not question.strip():
                raise InputError(f"request {i}: question is empty: ask something about the video")
            if not isinstance(r.get("system_prompt", ""), str):
                raise InputError(f"request {i}: system_prompt must be a string, got "
                                 f"{type(r['system_prompt']).__name__}")
            params = sampling_params(r.get("max_new_tokens", max_new_tokens),
                                     {**sampling, **{k: r[k] for k in SAMPLING_ARGS if k in r}})
            if not any(r.get(k) is not None for k in VISUAL_KEYS):
                raise InputError(f"request {i}: give a video_path, videos=[...] or images=[...]")
            return {"visual": {k: r[k] for k in VISUAL_KEYS if k in r}, "question": question,
                    "system_prompt": r.get("system_prompt", engine.DEFAULT_SYSTEM_PROMPT), "params": params}
        except PruneVidError as e:
            return e

    def _answer_rows(self, encoded: list, questions: list, system_prompts: list, params: list,
                     progress=None) -> list:
        """The batched prefill, Stage 3 and decoding of every row that is not an error; error rows get error
        results."""
        results = [_error_result(e) if isinstance(e, PruneVidError) else None for e in encoded]
        for b, q in enumerate(questions):
            if results[b] is None and (not isinstance(q, str) or not q.strip()):
                results[b] = _error_result(InputError("question is empty: ask something about the video"))
        rows = [b for b, r in enumerate(results) if r is None]
        if not rows:
            return results
        bp = batch.prefill_batch([encoded[b] for b in rows], [questions[b] for b in rows],
                                 self.config, [system_prompts[b] for b in rows], progress=progress)
        if self.config.enable_cache_compression:
            bp = stage3.compress(bp)
        outs = batch.generate_batch(bp, [params[b] for b in rows])
        for j, (b, out) in enumerate(zip(rows, outs)):
            results[b] = {"answer": out["text"], "ids": out["ids"],
                          "stats": stats.final_stats(bp.stats[j], out["stats"]), "error": None}
        return results


class PruneVidQwen25VL(PruneVid):
    """The seed's name for PruneVid, kept for its users: it loads any supported family as PruneVid does."""


def _try(fn, **kwargs):
    """fn(**kwargs), or the PruneVidError it raised."""
    try:
        return fn(**kwargs)
    except PruneVidError as e:
        return e


def _error_result(e: PruneVidError) -> dict:
    return {"answer": None, "ids": [], "stats": None, "error": str(e)}


def read_video(video_path, config: PruneVidConfig, factor: int = video.FACTOR) -> video.Clip:
    """Decode and sample a video (str, bytes or os.PathLike path) with the config's frame and pixel budgets.

    An over-budget request (config.max_video_tokens) fails from the container's frame count and size, before
    any frame is decoded.
    """
    return video.load_video(video_path, max_frames=config.max_frames, sampling=config.video_sampling,
                            fps=config.sampling_fps, max_pixels=config.max_pixels,
                            max_video_tokens=config.max_video_tokens, factor=factor)
