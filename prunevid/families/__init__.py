"""Model families: everything model-specific lives here, one module per family (see base.py for the hooks).

    base.py         VideoLLM: the loaded checkpoint and the hooks every family answers
    qwen2_vl.py     Qwen2-VL: temporal position = group index
    qwen2_5_vl.py   Qwen2.5-VL = Qwen2-VL + timed temporal positions
    qwen3_vl.py     Qwen3-VL = Qwen2-VL + 16-px patches, per-group timestamped blocks, interleaved M-RoPE,
                    q/k norm, DeepStack
    qwen3_vl_moe.py Qwen3-VL-MoE = Qwen3-VL with sparse expert MLPs: active-width FLOPs, no 8/4-bit
    qwen3_5.py      Qwen3.5 = Qwen3-VL without DeepStack, with linear-attention layers (transformers >= 5.25)

A checkpoint's family is chosen from config.json's model_type.
"""
from __future__ import annotations

from ..errors import ModelError
from .base import VideoLLM
from .qwen2_5_vl import Qwen25VL
from .qwen2_vl import Qwen2VL
from .qwen3_5 import Qwen35
from .qwen3_vl import Qwen3VL
from .qwen3_vl_moe import Qwen3VLMoe

FAMILIES = {cls.model_type: cls for cls in (Qwen25VL, Qwen2VL, Qwen3VL, Qwen3VLMoe, Qwen35)}     # model_type -> family; the default first
DEFAULT = Qwen25VL


def supported() -> str:
    """"qwen2_5_vl (Qwen2.5-VL), qwen2_vl (Qwen2-VL)": the supported model types, for error messages."""
    return ", ".join(f"{t} ({cls.display_name})" for t, cls in FAMILIES.items())


def family(model_type, where: str = "the checkpoint") -> type[VideoLLM]:
    """The family class of a config.json model_type; ModelError naming the supported types otherwise, or the
    transformers version the family needs when the installed one is older."""
    if model_type not in FAMILIES:
        raise ModelError(f"{where} is not a checkpoint of a supported family: model_type {model_type!r} "
                         f"(supported: {supported()})")
    cls = FAMILIES[model_type]
    missing = unavailable(cls)
    if missing:
        raise ModelError(f"{where}: {missing}")
    return cls


def unavailable(cls: type[VideoLLM]) -> str | None:
    """Why `cls` cannot run on the installed transformers ("Qwen3.5 needs transformers >= 5.25, installed
    4.57.6"), or None when it can."""
    import transformers
    installed = transformers.__version__
    if cls.min_transformers and tuple(int(x) for x in installed.split(".")[:2]) < cls.min_transformers:
        need = ".".join(map(str, cls.min_transformers))
        return f"{cls.display_name} needs transformers >= {need}, installed {installed}"
    return None


def for_hub_id(hub_id: str) -> type[VideoLLM] | None:
    """The family of a released hub id this project lists (None for any other id)."""
    return next((cls for cls in FAMILIES.values() if hub_id in cls.hub_ids), None)


__all__ = ["FAMILIES", "DEFAULT", "VideoLLM", "Qwen2VL", "Qwen25VL", "Qwen3VL", "Qwen3VLMoe", "Qwen35", "family",
           "for_hub_id", "supported", "unavailable"]
