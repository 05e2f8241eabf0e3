"""Model loading, caching and unloading.

ComfyUI's memory management does not see raw transformers models, so the pack keeps its own cache: one loaded
model per (folder, dtype, device, attention, quantization, device_map), never loaded twice; before a load ComfyUI is
asked to unload its own models to make room. Unloading frees the weights in place (so the
copies ComfyUI keeps in its output cache stop holding memory) and bumps a generation counter that the loader's
IS_CHANGED reports, so the next prompt loads the model again instead of reusing the freed one.
"""
from __future__ import annotations

import os

from ..prunevid import families, hub, loader, placement, quantize, stats
from ..prunevid.errors import ModelError
from . import comfy_bridge as comfy
from .types import CATEGORY, MODEL

# download size of each family's hub models (families.*.hub_ids): bf16 weights, 2 bytes per parameter, vision tower
# included, in GB of 10^9 bytes, rounded: what the tooltip tells before a first run
HUB_SIZES_GB = {hub_id: gb for cls in families.FAMILIES.values() for hub_id, gb in cls.hub_ids.items()}
HUB_IDS = tuple(HUB_SIZES_GB)
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"   # the paper's model; a local copy under models/LLM is used first

_LOADED: dict = {}       # key -> the loaded model (a families.VideoLLM)
_KEEP: dict = {}         # key -> keep_loaded
_GENERATION: dict = {}   # key -> times unloaded (the loader's IS_CHANGED)


def _size_label(hub_id: str) -> str:
    """"Qwen/Qwen2.5-VL-7B-Instruct" -> "7B", "Qwen/Qwen3-VL-30B-A3B-Thinking" -> "30B-A3B-Thinking": the release
    within its family, for the loader's tooltip."""
    import re
    return re.sub(r"^Qwen[\d.]*-VL-|-Instruct$", "", hub_id.split("/")[-1])


def local_models() -> list:
    """Folders holding a config.json under every LLM root, as names relative to their root (up to 2 deep)."""
    names = []
    for root in comfy.llm_roots():
        if not os.path.isdir(root):
            continue
        for first in sorted(os.listdir(root)):
            p1 = os.path.join(root, first)
            if not os.path.isdir(p1):
                continue
            if os.path.isfile(os.path.join(p1, "config.json")):
                names.append(first)
                continue
            for second in sorted(os.listdir(p1)):          # e.g. LLM/Qwen/Qwen2.5-VL-7B-Instruct
                if os.path.isfile(os.path.join(p1, second, "config.json")):
                    names.append(f"{first}/{second}")
    return list(dict.fromkeys(names))


def model_choices() -> list:
    return list(dict.fromkeys(local_models() + list(HUB_IDS)))


def resolve(name: str) -> str:
    """A combo value as what loader.load takes: a local folder when there is one, else the hub id or path as given.

    A hub id "Qwen/X" is looked for locally as LLM/Qwen/X and LLM/X before going to the hub.
    """
    name = str(name).strip()
    roots = comfy.llm_roots()
    candidates = [name]
    if name.count("/") == 1 and not os.path.isabs(name):
        candidates.append(name.split("/", 1)[1])
    for root in roots:
        for c in candidates:
            folder = os.path.join(root, c)
            if os.path.isfile(os.path.join(folder, "config.json")):
                return folder
    if os.path.isabs(name) or name.count("/") == 1 or not roots:
        return name                       # an absolute path, or a hub id: loader.load says what is wrong with it
    return os.path.join(roots[0], name)   # a folder name that is not there: loader.load names the missing folder


def offline_message(repo_id: str, endpoint: str) -> str:
    """What a canvas user does when a hub model is neither under models/LLM nor downloadable."""
    roots = comfy.llm_roots()
    folder = os.path.join(roots[0] if roots else os.path.join("ComfyUI", "models", comfy.LLM_FOLDER),
                          repo_id.split("/")[-1])
    return (f"{repo_id} is not downloaded and {endpoint} cannot be reached (or HF_HUB_OFFLINE is set): copy the "
            f"model folder (config.json, *.safetensors, tokenizer files) to {folder}, refresh the page and pick it "
            "in the model list")


def _key(model, dtype, device, attention, quantization="none", device_map="none") -> tuple:
    return (resolve(model), dtype, device, attention, quantization, device_map)


def _key_of(qm):
    return next((k for k, v in _LOADED.items() if v is qm), None)


def unload(qm) -> bool:
    """Unload one model (by identity). Returns whether it was loaded."""
    key = _key_of(qm)
    if key is not None:
        del _LOADED[key]
        _KEEP.pop(key, None)
        _GENERATION[key] = _GENERATION.get(key, 0) + 1
    was_loaded = not qm.unloaded
    loader.free(qm)
    return key is not None or was_loaded


def unload_all() -> int:
    """Unload every cached model (ComfyUI's /free calls this through the hook). Returns how many were loaded."""
    models = list(_LOADED.values())
    for qm in models:
        unload(qm)
    return len(models)


def release_after_use(qm) -> None:
    """Called when a Generate node finishes: unload the model unless its loader said keep_loaded."""
    key = _key_of(qm)
    if key is not None and not _KEEP.get(key, True):
        unload(qm)


class PruneVidModelLoader:
    """Load a checkpoint of any supported family once and keep it for the following prompts."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model (transformers) with its tokenizer; feed it to PruneVid Stage 1. The node "
                       "shows the detected family, the weights' size and where they are.",)
    DESCRIPTION = ("Loads a video LLM (" + ", ".join(c.display_name for c in families.FAMILIES.values()) + ") from a "
                   "folder under models/LLM (any folder holding a config.json; the family is read from it) or from "
                   "a Hugging Face hub id (downloaded on first use unless a copy exists under models/LLM). The model "
                   "is cached: the same choice is never loaded twice.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(), {"default": DEFAULT_MODEL, "tooltip":
                      "A checkpoint of a supported family (" + families.supported() + "): a folder under "
                      "models/LLM, or a hub id (looked for first as models/LLM/<org>/<name> and models/LLM/<name>, "
                      "else downloaded once to the Hugging Face cache, with its progress on this node). Download "
                      "sizes, approximate (bf16 weights): " + "; ".join(
                          f"{c.display_name} " + ", ".join(f"{_size_label(i)} ~{gb:g} GB" for i, gb in
                                                           c.hub_ids.items()) for c in families.FAMILIES.values())
                      + "."}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto", "tooltip":
                      "Weight precision. auto = bf16 on GPUs that support it, fp16 on other GPUs and Apple MPS, "
                      "fp32 on CPU."}),
            "device": (["auto", "cuda", "cpu", "mps"], {"default": "auto", "tooltip":
                       "Where the model runs. auto = CUDA if available, else Apple MPS, else CPU."}),
            "attention": (list(loader.ATTENTIONS), {"default": "sdpa", "tooltip":
                          "Attention kernel. flash_attention_2 needs the flash-attn package (falls back to sdpa "
                          "without it), a CUDA GPU and bf16/fp16; eager is the slow reference."}),
            "keep_loaded": ("BOOLEAN", {"default": True, "label_on": "keep loaded", "label_off": "unload after run",
                            "tooltip": "On: the model stays in memory for the next prompt. Off: it is unloaded "
                            "when PruneVid Generate finishes (frees memory, reloads next time)."}),
        }, "optional": {
            "quantization": (list(quantize.QUANTIZATIONS), {"default": "none", "tooltip":
                             "Load the language model's linear layers in 8 or 4 bits (bitsandbytes; 4bit = NF4): "
                             "about 0.55x / 0.35x the weight memory of bf16 for a 7B. The vision tower stays in "
                             "dtype. Needs the bitsandbytes package."}),
            "device_map": (["none", *placement.DEVICE_MAPS], {"default": "none", "tooltip":
                           "none = everything on 'device'. auto = spread a model too big for one GPU over every "
                           "GPU, then CPU RAM (slower); needs device 'auto'."}),
        }}

    @classmethod
    def IS_CHANGED(cls, model, dtype, device, attention, keep_loaded, quantization="none", device_map="none"):
        # changes after an unload, so ComfyUI runs the loader again instead of reusing the freed model
        return _GENERATION.get(_key(model, dtype, device, attention, quantization, device_map), 0)

    def load(self, model, dtype, device, attention, keep_loaded, quantization="none", device_map="none"):
        key = _key(model, dtype, device, attention, quantization, device_map)
        qm = _LOADED.get(key)
        if qm is None:
            placed = None if device_map == "none" else device_map
            dev = loader.resolve_device(device)
            need = quantize.planned_weight_bytes(key[0], quantization, loader.resolve_dtype(dtype, dev))
            comfy.free_memory(need, placement.target_devices(dev, placed))   # ComfyUI's own models make room
            try:
                qm = loader.load(key[0], dtype=dtype, device=device, attention=attention, quantization=quantization,
                               device_map=placed, progress=comfy.progress(1))
            except hub.HubUnreachable as e:
                raise ModelError(offline_message(e.repo_id, e.endpoint)) from None
            _LOADED[key] = qm
        _KEEP[key] = bool(keep_loaded)
        comfy.hook_unload_all(unload_all)
        return {"ui": {"text": [f"{qm.name}\nFamily: {qm.display_name}\n{stats.format_weights(stats.weights(qm))}"]},
                "result": (qm,)}


class PruneVidUnloadModel:
    """Free a PruneVid model's memory now."""

    CATEGORY = CATEGORY
    FUNCTION = "unload"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    DESCRIPTION = ("Unloads the model (weights freed, GPU cache emptied). Connect the answer of PruneVid Generate to "
                   "'after' so this runs once generation is done; the next prompt loads the model again.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": (MODEL, {"tooltip": "The model to unload (from PruneVid Model Loader)."})},
            "optional": {"after": ("STRING", {"forceInput": True, "tooltip":
                                   "Connect PruneVid Generate's answer here so the model is unloaded after it."})},
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")   # always runs

    def unload(self, model, after=None):
        freed = unload(model)
        return {"ui": {"text": [f"unloaded {model.name}" if freed else f"{model.name} was not loaded"]}}
