"""The three PruneVid stages as nodes: each builds the library's config from its widgets and makes one call."""
from __future__ import annotations

from ..prunevid import engine, stage3, visualize
from ..prunevid.config import PruneVidConfig, get_paper_config
from . import comfy_bridge as comfy
from .types import CATEGORY, MODEL, PREFILL, TOKENS, VIDEO

_PAPER = get_paper_config()   # widget defaults; every preset's values are in the shipped workflows


class PruneVidStage1Merge:
    """Vision tower + Stage 1 (spatial-temporal merging). Question independent: reused across questions."""

    CATEGORY = CATEGORY
    FUNCTION = "merge"
    RETURN_TYPES = (TOKENS, "IMAGE")
    RETURN_NAMES = ("tokens", "segment_map")
    OUTPUT_TOOLTIPS = (
        "The video tokens that will enter the LLM (merged when enabled). Does not depend on the question, so "
        "ComfyUI reuses it when only the question changes.",
        "The sampled frames with Stage 1 drawn over them: top bar = temporal segment, grey = static tokens "
        "(merged over the segment), colour = dynamic tokens, dark lines = merge boundaries. With several "
        "videos, the frames of each follow the previous one's.",
    )
    DESCRIPTION = ("Runs Qwen2.5-VL's vision tower on the video, then PruneVid Stage 1: splits the video into "
                   "temporal segments, merges the tokens that stay still across a segment into one, and clusters "
                   "the rest per frame group (DPC-KNN). Off = every vision token goes to the LLM. Connect more "
                   "videos to video_2 .. video_4 to ask one question about several clips (e.g. to compare them): "
                   "they follow `video` in the same prompt, each merged on its own.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From PruneVid Model Loader."}),
            "video": (VIDEO, {"tooltip": "From PruneVid Load Video."}),
            "enable": ("BOOLEAN", {"default": True, "tooltip": "Off = no merging (baseline / Stage 2 only ablation)."}),
            "tau": ("FLOAT", {"default": _PAPER.tau, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Static threshold: a location whose features have mean cosine similarity above tau across a "
                    "segment is static and merged over time. Lower = more static tokens = more compression."}),
            "cluster_ratio": ("FLOAT", {"default": _PAPER.cluster_ratio, "min": 0.01, "max": 1.0, "step": 0.01,
                              "tooltip": "Beta: spatial clusters kept per token group (fraction of its tokens). "
                              "Lower = more compression."}),
            "temporal_segment_ratio": ("FLOAT", {"default": _PAPER.temporal_segment_ratio, "min": 0.01, "max": 1.0,
                                       "step": 0.01, "tooltip": "Gamma: temporal clusters as a fraction of the "
                                       "frame groups (2 frames per group); segments are made contiguous."}),
            "dpc_knn_k": ("INT", {"default": _PAPER.dpc_knn_k, "min": 1, "max": 64, "step": 1, "tooltip":
                          "Neighbours for DPC-KNN's local density (authors' code: 7, seed README: 5)."}),
        }, "optional": {
            f"video_{k}": (VIDEO, {"tooltip": f"Optional: a {nth} video (another PruneVid Load Video) in the same "
                           "prompt, after the ones above, so one question can compare the clips. Each video keeps "
                           "its own time positions and is merged on its own."})
            for k, nth in ((2, "second"), (3, "third"), (4, "fourth"))
        }}

    def merge(self, model, video, enable, tau, cluster_ratio, temporal_segment_ratio, dpc_knn_k, video_2=None,
              video_3=None, video_4=None):
        config = PruneVidConfig(enable_stage1=enable, tau=tau, cluster_ratio=cluster_ratio,
                                temporal_segment_ratio=temporal_segment_ratio, dpc_knn_k=dpc_knn_k)
        videos = [video] + [v for v in (video_2, video_3, video_4) if v is not None]
        encoded = engine.encode(model, videos, config, progress=comfy.progress(len(videos)))
        return (encoded, visualize.stage1_map(encoded))


class PruneVidStage2Select:
    """Prompt through the LLM with Stage 2: keep the video tokens the question attends to most at layer M."""

    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = (PREFILL, "IMAGE")
    RETURN_NAMES = ("prefill", "kept_map")
    OUTPUT_TOOLTIPS = (
        "The prompt after the LLM (KV cache + next-token logits), ready for Stage 3 and generation.",
        "The sampled frames with the tokens Stage 2 dropped dimmed in red; bright tokens were kept.",
    )
    DESCRIPTION = ("Builds Qwen2.5-VL's chat prompt (system prompt, video tokens, question) and runs it through "
                   "the LLM. PruneVid Stage 2 scores every video token by the question's attention at layer M and "
                   "keeps the top keep_ratio of them (per segment block); layers after M see only those. With "
                   "retention > 0 the count instead follows a budget over both stages; with coverage > 0 part of it is "
                   "spread evenly over the video instead of chosen by attention.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": (TOKENS, {"tooltip": "From PruneVid Stage 1 Merge."}),
            "question": ("STRING", {"multiline": True, "default": "Describe what happens in this video.",
                         "tooltip": "The question about the video (must not be empty)."}),
            "system_prompt": ("STRING", {"multiline": True, "default": engine.DEFAULT_SYSTEM_PROMPT,
                              "tooltip": "The system message of Qwen's chat template."}),
            "enable": ("BOOLEAN", {"default": True, "tooltip": "Off = every video token goes through all layers."}),
            "keep_ratio": ("FLOAT", {"default": _PAPER.keep_ratio, "min": 0.01, "max": 1.0, "step": 0.01,
                           "tooltip": "Alpha: fraction of the video tokens kept after layer M (1.0 keeps all)."}),
            "pruning_layer": ("INT", {"default": _PAPER.pruning_layer, "min": 0, "max": 127, "step": 1, "tooltip":
                              "M (0-based): the question's attention is read at this layer; layers after it see only "
                              "the kept tokens. Must be below the model's layer count (28 for 7B, 36 for 3B)."}),
            "attention_aggregation": (["max", "mean"], {"default": _PAPER.attention_aggregation, "tooltip":
                                      "How a video token's score combines the question tokens and heads: max "
                                      "(paper) or mean (ablation)."}),
        }, "optional": {
            # appended last: a workflow saved before it has no value for it and gets the default, 0 = keep_ratio
            "retention": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                          "Token budget: the fraction of the unpruned video tokens kept after Stage 1 and Stage 2 "
                          "together (e.g. 0.10). Stage 2 keeps what it takes to hit it (all tokens when Stage 1 "
                          "already left fewer). 0 = use keep_ratio."}),
            # appended after retention, for the same reason: an older workflow gets 0 = attention picks every token
            "coverage": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                         "Share of the kept tokens NOT chosen by attention but spread evenly over the rest of the "
                         "video, so a small budget still sees the whole scene (the background, both sides of a "
                         "cut). 0 = attention chooses them all (the paper); the attention_coverage preset uses 0.5 "
                         "with retention 0.10."}),
        }}

    def select(self, tokens, question, system_prompt, enable, keep_ratio, pruning_layer, attention_aggregation,
               retention=0.0, coverage=0.0):
        config = PruneVidConfig(enable_stage2=enable, keep_ratio=keep_ratio, pruning_layer=pruning_layer,
                                attention_aggregation=attention_aggregation, retention=retention, coverage=coverage)
        pf = engine.prefill(tokens, question, config, system_prompt=system_prompt,
                            progress=comfy.progress(tokens.model.num_layers))
        return (pf, visualize.kept_map(pf))


class PruneVidKVCompress:
    """Stage 3: keep only the selected video tokens in the KV cache of layers 0..M."""

    CATEGORY = CATEGORY
    FUNCTION = "compress"
    RETURN_TYPES = (PREFILL,)
    RETURN_NAMES = ("prefill",)
    OUTPUT_TOOLTIPS = ("The same prefill with a smaller KV cache (a new object; the input is left as it was).",)
    DESCRIPTION = ("PruneVid Stage 3: drops the pruned video tokens from the KV cache of layers 0..M too, so every "
                   "decoding step reads less memory. Does nothing when Stage 2 kept every token.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prefill": (PREFILL, {"tooltip": "From PruneVid Stage 2 Select."}),
            "enable": ("BOOLEAN", {"default": True, "tooltip": "Off = keep the full cache in layers 0..M (ablation)."}),
        }}

    def compress(self, prefill, enable):
        return (stage3.compress(prefill) if enable else prefill,)
