"""model_args of the lmms-eval models `prunevid_qwen2_5_vl`, `prunevid_qwen2_vl` and `prunevid_qwen3_vl`, checked
before any model is loaded. One model name per family, as lmms-eval names its own (qwen2_5_vl, qwen2_vl, qwen3_vl);
each accepts a checkpoint of any supported family and differs only in its default `pretrained` and in how its default
video reader counts frames (that of its lmms-eval namesake, inputs.py).

    lmms-eval --model prunevid_qwen2_5_vl --model_args pretrained=...,preset=paper,keep_ratio=0.3,max_frames=16 ...

lmms-eval splits --model_args at commas and turns "true"/"false" and numbers into bool/int/float; each value is
then checked against the field it sets. A name that is not a model_arg is an error naming it (with the closest
valid name), never silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass

from ..config import PRESETS, PruneVidConfig, get_preset
from ..errors import ConfigError
from ..video import MIN_PIXELS

MODEL_ID = "prunevid_qwen2_5_vl"
DEFAULT_PRETRAINED = "Qwen/Qwen2.5-VL-7B-Instruct"
# one model name per family -> its default pretrained
MODEL_IDS = {MODEL_ID: DEFAULT_PRETRAINED, "prunevid_qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
             "prunevid_qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct"}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_READERS = ("qwen_vl_utils", "prunevid")
# PruneVidConfig fields a model_arg may override (verbose and collect_stats are the plugin's business)
CONFIG_FIELDS = [f.name for f in dataclasses.fields(PruneVidConfig) if f.name not in ("verbose", "collect_stats")]
# short names, and the names lmms-eval's own qwen2_5_vl model uses, so its --model_args carry over
ALIASES = {"sampling": "video_sampling", "max_num_frames": "max_frames", "attn_implementation": "attention"}
OWN_ARGS = {"pretrained": str, "preset": str, "min_pixels": int, "video_reader": str, "dtype": str, "device": str,
            "attention": str, "system_prompt": str, "seed": int, "quantization": str, "device_map": str}
# what lmms-eval passes to every model itself (from --batch_size, --max_batch_size, --device)
LMMS_ARGS = ("batch_size", "max_batch_size")


@dataclass(frozen=True)
class EvalSettings:
    model_id: str              # the lmms-eval model name (prunevid_qwen2_5_vl, ...)
    pretrained: str
    preset: str
    config: PruneVidConfig
    overrides: dict            # the PruneVidConfig fields the model_args set
    min_pixels: int
    video_reader: str
    dtype: str
    device: str
    attention: str
    quantization: str          # none | 8bit | 4bit (docs/performance.md, "Memory")
    device_map: str            # "" (one device) | auto | balanced | balanced_low_0 | sequential
    system_prompt: str
    seed: int
    batch_size: int

    def label(self) -> str:
        """preset plus its overrides, e.g. 'paper keep_ratio=0.3' (how reports name a run)."""
        return " ".join([self.preset] + [f"{k}={v}" for k, v in sorted(self.overrides.items())])


def valid_names() -> list:
    return [*OWN_ARGS, *CONFIG_FIELDS, *ALIASES, "fps"]


def _coerce(name: str, value, kind: str):
    """A parsed model_arg value -> the type of the field it sets (lmms-eval makes '7' an int, '0.5' a float)."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"model_arg {name}={value!r}: expected true or false")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"model_arg {name}={value!r}: expected an integer")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"model_arg {name}={value!r}: expected a number")
        return float(value)
    return str(value)


def _unknown(name: str, model_id: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid_names(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown model_arg {name!r} for {model_id}{hint}; valid: {', '.join(valid_names())}")


def parse(kwargs: dict, model_id: str = MODEL_ID) -> EvalSettings:
    """The keyword arguments lmms-eval passes to the model `model_id` (model_args + batch_size, ...) ->
    EvalSettings."""
    own = {"pretrained": MODEL_IDS[model_id], "preset": "paper", "min_pixels": MIN_PIXELS,
           "video_reader": "qwen_vl_utils", "dtype": "auto", "device": "auto", "attention": "sdpa",
           "system_prompt": DEFAULT_SYSTEM_PROMPT, "seed": 0, "quantization": "none", "device_map": ""}
    types = {f.name: f.type for f in dataclasses.fields(PruneVidConfig)}
    overrides, batch_size = {}, 1
    for name, value in kwargs.items():
        if name in LMMS_ARGS:
            # --batch_size arrives as a string ("1", "auto", "auto:4"); "auto" answers one request at a time
            if name == "batch_size" and value is not None and not str(value).startswith("auto"):
                if not str(value).isdigit():
                    raise ConfigError(f"batch_size={value!r}: expected a positive integer or auto")
                batch_size = int(value)
            continue
        if name == "device" and value is None:      # lmms-eval passes device=None when --device is not given
            continue
        if name == "fps":                           # qwen2_5_vl's fps=N: sample N frames per second
            overrides["sampling_fps"] = _coerce(name, value, "float")
            overrides.setdefault("video_sampling", "fps")
            continue
        field = ALIASES.get(name, name)
        if field in OWN_ARGS:
            own[field] = _coerce(name, value, OWN_ARGS[field].__name__)
        elif field in CONFIG_FIELDS:
            overrides[field] = _coerce(name, value, types[field])
        else:
            raise _unknown(name, model_id)
    if own["preset"] not in PRESETS:
        raise ConfigError(f"model_arg preset={own['preset']!r}: choose one of {', '.join(sorted(PRESETS))}")
    if own["video_reader"] not in VIDEO_READERS:
        raise ConfigError(f"model_arg video_reader={own['video_reader']!r}: choose one of {', '.join(VIDEO_READERS)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    config = get_preset(own["preset"], **overrides)
    if not 0 < own["min_pixels"] <= config.max_pixels:
        raise ConfigError(f"model_arg min_pixels={own['min_pixels']}: must be in [1, max_pixels={config.max_pixels}]")
    prompt = own["system_prompt"]
    if prompt and os.path.isfile(prompt):           # as lmms-eval's models do: a file path holds the prompt
        with open(prompt, encoding="utf-8") as f:
            prompt = f.read().strip()
    return EvalSettings(model_id=model_id, pretrained=own["pretrained"], preset=own["preset"], config=config,
                        overrides=overrides, min_pixels=own["min_pixels"], video_reader=own["video_reader"],
                        dtype=own["dtype"], device=own["device"], attention=own["attention"],
                        quantization=own["quantization"], device_map=own["device_map"], system_prompt=prompt,
                        seed=own["seed"], batch_size=batch_size)


def decoding(gen_kwargs: dict, seed: int = 0) -> tuple:
    """A task's generation_kwargs -> (max_new_tokens, sampling keyword arguments of the engine, stop strings).

    Sampling happens when temperature > 0 and do_sample is not false (an explicit do_sample=false wins, as in
    transformers); otherwise greedy. "\\n\\n" is not used as a stop string: lmms-eval adds it to tasks that name
    none, and its own qwen2_5_vl model drops it too (it would cut Qwen's answers). num_beams > 1 is refused.
    Other keys (task-specific ones some tasks carry) are ignored.
    """
    kw = dict(gen_kwargs or {})
    beams = kw.get("num_beams") or 1
    if beams != 1:
        raise ConfigError(f"num_beams={beams}: the PruneVid engine decodes greedily or samples, it has no beam "
                          "search; set num_beams to 1 (--gen_kwargs num_beams=1)")
    max_new_tokens = int(kw.get("max_new_tokens") or 128)
    temperature = float(kw.get("temperature") or 0.0)
    sample = temperature > 0 and kw.get("do_sample") is not False
    sampling = {}
    if sample:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(kw.get("top_p") or 1.0),
                    "top_k": int(kw.get("top_k") or 0), "seed": seed}
    if kw.get("repetition_penalty") not in (None, 1, 1.0):
        sampling["repetition_penalty"] = float(kw["repetition_penalty"])
    until = kw.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)):
        raise ConfigError(f"generation_kwargs until={until!r}: expected a string or a list of strings")
    until = [u for u in until if u and u != "\n\n"]
    return max_new_tokens, sampling, until


def cut(text: str, until: list) -> str:
    """text up to the first stop string."""
    for stop in until:
        text = text.split(stop)[0]
    return text
