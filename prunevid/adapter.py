"""Every transformers call whose signature or return differs between 4.57.x and 5.x, in one place.

The families call transformers' own modules (vision tower, rotary embedding, decoder layers) through these
functions; nothing else in the library looks at the transformers version.
"""
from __future__ import annotations

import inspect

import torch


def dtype_kwarg() -> str:
    """from_pretrained's dtype argument: `dtype` on 5.x, `torch_dtype` on 4.57."""
    import transformers
    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def vision_output(out) -> torch.Tensor:
    """The merged vision tokens a vision tower returned: 4.57 returns the tensor, 5.x an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def vision_streams(out) -> tuple:
    """(merged tokens, [DeepStack levels]) a Qwen3-VL vision tower returned: 4.57 returns a (tensor, list) tuple,
    5.x an output object with .pooler_output and .deepstack_features."""
    if isinstance(out, tuple):
        return out[0], list(out[1])
    return out.pooler_output, list(out.deepstack_features)


def decoder_layer(layer, hidden: torch.Tensor, position_embeddings, cache, attention_mask=None) -> torch.Tensor:
    """One decoder layer on hidden [B, n, D], appending its keys/values to `cache`.

    Rows without padding before their last real token need no mask for SDPA (causal when n > 1, the whole cache when
    n = 1) nor for flash-attention (causal, aligned to the end of the cache); eager attention only adds the mask it
    is given, so it gets an explicit causal one (causal_mask). attention_mask (padding_mask) overrides that.
    """
    mask = attention_mask if attention_mask is not None else causal_mask(layer, hidden, cache)
    out = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                **{_cache_kwarg(layer): cache}, use_cache=True)
    return out[0] if isinstance(out, tuple) else out                        # 4.57: tuple; 5.x: tensor


def padding_mask(layer, valid: torch.Tensor, dtype: torch.dtype):
    """The mask one new token per row needs to skip padding keys: valid [B, keys] bool (True = attend).

    SDPA and eager take an additive [B, 1, 1, keys] mask (0 or the dtype's minimum); flash-attention takes the 2-D
    padding mask transformers itself passes it ([B, keys], 1 = attend).
    """
    if not hasattr(layer, "self_attn"):                # a linear-attention layer: a new token needs no mask
        return None
    if layer.self_attn.config._attn_implementation == "flash_attention_2":
        return valid.long()
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill_(~valid, torch.finfo(dtype).min)[:, None, None, :]


def causal_mask(layer, hidden: torch.Tensor, cache) -> torch.Tensor | None:
    """The additive mask [1, 1, n, past + n] that eager attention needs for n > 1 new tokens after `past` cached ones
    (query i sees keys up to past + i); None for every other implementation and for a single token."""
    n = hidden.shape[1]
    if n == 1 or not hasattr(layer, "self_attn") or layer.self_attn.config._attn_implementation != "eager":
        return None
    past = cache.get_seq_length(layer.self_attn.layer_idx)
    query = torch.arange(past, past + n, device=hidden.device)
    key = torch.arange(past + n, device=hidden.device)
    mask = torch.zeros(n, past + n, dtype=hidden.dtype, device=hidden.device)
    return mask.masked_fill_(key[None, :] > query[:, None], torch.finfo(hidden.dtype).min)[None, None]


def _cache_kwarg(layer) -> str:
    """`cache` since transformers 5.24 (`past_key_values` still works there, with a FutureWarning), before that
    `past_key_values`."""
    cls = type(layer)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


_CACHE_KWARG: dict = {}
