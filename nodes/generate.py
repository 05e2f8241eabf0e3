"""Decoding: the answer, streamed to the node while it is written, and the pruning statistics."""
from __future__ import annotations

import json

from ..prunevid import engine, stats
from . import comfy_bridge as comfy
from .model import release_after_use
from .types import CATEGORY, PREFILL


class PruneVidGenerate:
    """Answer the question from a prefill (greedy or sampled), streaming the text."""

    CATEGORY = CATEGORY
    FUNCTION = "generate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("answer", "stats")
    OUTPUT_TOOLTIPS = (
        "The model's answer.",
        "JSON: video tokens per stage (original, after Stage 1, after Stage 2), retention, KV-cache bytes before "
        "and after Stage 3, FLOPs ratio and timings.",
    )
    DESCRIPTION = ("Generates the answer from the (pruned) prompt, showing the text on the node as it is written. "
                   "The prefill is not modified, so the same prefill can be answered again (e.g. with another "
                   "seed) without recomputing it.")

    @classmethod
    def INPUT_TYPES(cls):
        defaults = engine.SamplingParams()
        return {
            "required": {
                "prefill": (PREFILL, {"tooltip": "From PruneVid KV Compress (or directly from Stage 2 Select)."}),
                "max_new_tokens": ("INT", {"default": defaults.max_new_tokens, "min": 1, "max": 8192, "step": 1,
                                   "tooltip": "Longest answer, in tokens; generation stops earlier at end of text."}),
                "do_sample": ("BOOLEAN", {"default": False, "label_on": "sample", "label_off": "greedy", "tooltip":
                              "Off = greedy (deterministic). On = sample with temperature and top_p."}),
                "temperature": ("FLOAT", {"default": 0.7, "min": 0.01, "max": 10.0, "step": 0.01, "tooltip":
                                "Sampling temperature (only when do_sample is on). Lower = more focused."}),
                "top_p": ("FLOAT", {"default": 0.9, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                          "Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p "
                          "(only when do_sample is on)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip":
                         "Random seed for sampling: the same seed gives the same answer."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def generate(self, prefill, max_new_tokens, do_sample, temperature, top_p, seed, unique_id=None):
        params = engine.SamplingParams(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                       top_p=top_p, seed=seed)
        try:
            out = engine.generate(prefill, params, on_text=comfy.text_streamer(unique_id),
                                  progress=comfy.progress(max_new_tokens))
        finally:
            release_after_use(prefill.model)
        answer = out["text"]
        report = stats.final_stats(prefill.stats, out["stats"])
        report["model"] = prefill.model.name
        report["sampling"] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                              "top_p": top_p, "seed": seed}
        report = json.dumps(report, indent=2)
        # the stats also go to the UI output, so /history has them even when no node is wired to the socket
        return {"ui": {"text": [answer], "stats": [report]}, "result": (answer, report)}
