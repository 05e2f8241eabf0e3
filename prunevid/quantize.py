"""8-bit and 4-bit weights (bitsandbytes, through transformers' BitsAndBytesConfig), and what weights weigh.

Only the language model's linear layers are quantised: q/k/v/o and the MLP of every decoder layer, which are about
nine tenths of a Qwen2-VL's or Qwen2.5-VL's parameters (each family names what stays in its dtype: keep_in_dtype).
A family whose weights bitsandbytes cannot take refuses 8/4-bit before loading (check_quantization: Qwen3-VL-MoE,
whose fused 3-D experts are no nn.Linear).
The vision tower, the embeddings, the norms and lm_head stay in the model's dtype (the usual bitsandbytes practice
for lm_head; for the vision tower no test here shows that quantising it is safe). 4-bit is NF4 with double quantisation, computing in the model's dtype (bf16 on GPUs that
have it). The engine calls quantised layers like any other module: its own layer loop, and Stage 2's direct
q_proj / k_proj calls, go through bitsandbytes' Linear8bitLt / Linear4bit forward.
"""
from __future__ import annotations

import json
import logging

import torch

from .errors import ConfigError, ModelError

QUANTIZATIONS = ("none", "8bit", "4bit")
BLOCKSIZE_4BIT = 64            # NF4 block size: one 8-bit absmax per 64 weights (double quantisation),
BLOCKSIZE_ABSMAX = 256         # and one float32 scale per 256 of those absmax values


def check(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    return quantization


def bnb_config(quantization: str, compute_dtype: torch.dtype, keep_in_dtype: tuple):
    """transformers' BitsAndBytesConfig for `quantization` ("8bit" / "4bit"), None for "none"; keep_in_dtype: the
    module names left unquantised (the family's keep_in_dtype).

    Raises ModelError (one line, saying what to install) when bitsandbytes is missing: before any weight is read.
    """
    if check(quantization) == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(f"quantization={quantization!r} needs the bitsandbytes package: pip install "
                         "'bitsandbytes>=0.45' (or pip install 'prunevid-qwen25vl[quant]'), or use quantization='none'"
                         ) from None
    from transformers import BitsAndBytesConfig
    if quantization == "8bit":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_drop_cast_notice)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(keep_in_dtype))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(keep_in_dtype))


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    """LLM.int8 casts every input to fp16 by design, and bitsandbytes says so at every call of every layer."""
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements (its shape and dtype; also right for meta tensors of offloaded weights)."""
    return t.numel() * t.element_size()


def _quant_state_tensors(p) -> list:
    """The tensors bitsandbytes keeps beside a quantised weight: 8-bit row scales (SCB), 4-bit block absmax, the
    NF4 code table and, with double quantisation, the absmax's own absmax and code."""
    out = [getattr(p, "SCB", None)]
    qs = getattr(p, "quant_state", None)
    while qs is not None:
        out += [qs.absmax, qs.code, getattr(qs, "offset", None)]
        qs = getattr(qs, "state2", None)
    return [t for t in out if isinstance(t, torch.Tensor)]


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, quantisation state included (each tensor counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        for x in [t, *_quant_state_tensors(t)]:
            if id(x) not in seen:
                seen.add(id(x))
                total += tensor_bytes(x)
    return total


def _quantised_bytes(numel: int, out_features: int, quantization: str) -> int:
    """Bytes of one quantised weight matrix (numel elements, out_features rows), as bitsandbytes stores it."""
    if quantization == "8bit":
        return numel + 4 * out_features                       # int8 weights + a float32 scale per row
    blocks = -(-numel // BLOCKSIZE_4BIT)
    # 2 weights a byte, an 8-bit absmax per block, a float32 scale per 256 absmax values, and per weight matrix
    # the float32 NF4 code (16), the absmax code (256) and offset (1)
    return -(-numel // 2) + blocks + 4 * -(-blocks // BLOCKSIZE_ABSMAX) + 4 * (16 + 256 + 1)


def estimate_weight_bytes(config: dict, quantization: str = "none", dtype: torch.dtype = torch.bfloat16) -> int:
    """Analytic weight bytes of a checkpoint of a supported family from its config.json, loaded with `quantization`.

    Builds the model on the meta device (no memory, no weights) and counts: the decoder layers' linear weights
    at 1 byte (8-bit, plus a float32 scale per row) or about 0.52 byte (4-bit NF4, block size 64, double
    quantisation) each, everything else (vision tower, embeddings, lm_head, norms, biases) at `dtype`'s size,
    the rotary tables (float32 buffers) at theirs.
    """
    from . import families
    check(quantization)
    family = families.family(config.get("model_type"))
    family.check_quantization(quantization, "its config.json")     # no count for a load that would be refused
    model = family.meta_model(config)
    size = torch.tensor([], dtype=dtype).element_size()
    layers = family.llm_of(model).layers
    quantised = {id(m.weight): m.weight for m in layers.modules() if isinstance(m, torch.nn.Linear)}
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if quantization != "none" and id(p) in quantised:
            total += _quantised_bytes(p.numel(), p.shape[0], quantization)
        else:
            total += p.numel() * size
    return total + sum(tensor_bytes(b) for b in model.buffers())


def planned_weight_bytes(source: str, quantization: str, dtype: torch.dtype) -> int | None:
    """estimate_weight_bytes for a local folder, or a hub id already in the Hugging Face cache, before loading it;
    None when its config.json is not at hand (a hub id still to download) or is not of a supported family."""
    from pathlib import Path

    from transformers.utils import cached_file
    check(quantization)
    try:
        path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False, local_files_only=True)
        config = json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None
    from . import families
    if not config or config.get("model_type") not in families.FAMILIES:
        return None
    return estimate_weight_bytes(config, quantization, dtype)
