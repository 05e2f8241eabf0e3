"""Loading Qwen2.5-VL, and every call whose shape differs between transformers 4.57.x and 5.x.

The engine calls transformers' own modules (embeddings, vision tower, rotary embedding, decoder layers, norm,
lm_head) through the functions here; nothing else in the library looks at the transformers version.
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import placement, quantize
from .errors import ModelError
from .hub import download, hub_offline

SUPPORTED_TRANSFORMERS = ">=4.57,<6"
ATTENTIONS = ("sdpa", "flash_attention_2", "eager")   # what the loaders offer (plus "auto"); every one is tested
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # Qwen2.5-VL's processor defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class QwenModel:
    """A loaded checkpoint: the transformers model, its tokenizer and what the engine needs to know."""
    model: torch.nn.Module
    tokenizer: object
    name: str
    image_mean: tuple
    image_std: tuple
    eos_token_ids: list
    unloaded: bool = False
    quantization: str = "none"
    weight_bytes: dict | None = None   # {device: bytes} of the weights as loaded (quantize.weight_bytes, per device)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the prompt starts: the token embeddings' device (the first of several with a device_map)."""
        return placement.execution_device(self.language_model.embed_tokens)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def layers(self):
        return self.language_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def text_config(self):
        return getattr(self.config, "text_config", self.config)

    @property
    def tokens_per_second(self) -> float:
        return float(getattr(self.config.vision_config, "tokens_per_second", 2))

    @property
    def spatial_merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def mrope_section(self) -> list:
        tc = self.text_config
        rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
        return list(rope.get("mrope_section", [16, 24, 24]))

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer of {self.name} has no {token} token: is it a Qwen2.5-VL tokenizer?")
        return tid


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ModelError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available; use device='auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on CUDA with bf16 support, fp16 on other CUDA / MPS, fp32 on CPU."""
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in table:
        raise ModelError(f"dtype must be one of auto, bf16, fp16, fp32, got {dtype!r}")
    return table[dtype]


def resolve_attention(attention: str, device: torch.device, dtype: torch.dtype) -> str:
    """sdpa everywhere; flash_attention_2 when the flash-attn package is installed and the model runs on CUDA in
    bf16/fp16 (what its kernels take); auto = flash_attention_2 when it can run, else sdpa; eager is the slow
    reference (the engine passes it an explicit causal mask, see decoder_layer)."""
    if attention not in (*ATTENTIONS, "auto"):
        raise ModelError(f"attention must be sdpa, flash_attention_2, eager or auto, got {attention!r}")
    if attention in ("flash_attention_2", "auto"):
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"      # documented fallback: the pack's default workflows must run without flash-attn
        runnable = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
        if runnable:
            return "flash_attention_2"
        if attention == "flash_attention_2":
            raise ModelError(f"attention flash_attention_2 runs only on CUDA in bf16 or fp16, not on {device.type} in "
                             f"{str(dtype).replace('torch.', '')}; choose sdpa, or dtype bf16/fp16 on a CUDA device")
        return "sdpa"
    return attention


def _check_local_folder(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} is not a model folder: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ModelError(f"{config_file} cannot be read as JSON: {e}") from e
    if model_type != "qwen2_5_vl":
        raise ModelError(f"{path} is not a Qwen2.5-VL checkpoint: config.json has model_type {model_type!r} "
                         "(expected 'qwen2_5_vl')")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path} has a Qwen2.5-VL config.json but no weights (*.safetensors or *.bin)")



def _read_processor_stats(source: str, offline: bool = False) -> tuple:
    """image_mean / image_std from preprocessor_config.json (local folder or hub cache); Qwen defaults if absent."""
    from transformers.utils import cached_file
    try:
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                           local_files_only=offline)
    except Exception:
        path = None
    if not path:
        return CLIP_MEAN, CLIP_STD
    cfg = json.loads(Path(path).read_text())
    return tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))


def load(model_path: str, dtype: str = "auto", device: str = "auto", attention: str = "sdpa",
         quantization: str = "none", device_map=None, max_memory: dict | None = None,
         offload_folder: str | None = None, progress=None) -> QwenModel:
    """Load a Qwen2.5-VL checkpoint from a local folder or a hub id (hub only if it is reachable or cached).

    A hub id is first downloaded into the Hugging Face cache (see `hub.download`; progress(done, total) gets bytes).
    quantization: "none", "8bit" or "4bit" (bitsandbytes; see quantize.py). device_map / max_memory /
    offload_folder: sharding and CPU / disk offload through accelerate (see placement.py).
    """
    import transformers
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    placement.check(device, device_map, max_memory, offload_folder)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = resolve_attention(attention, dev, torch_dtype)
    placed = placement.load_kwargs(dev, device_map, max_memory, offload_folder,
                                   quantize.bnb_config(quantization, torch_dtype))
    local = Path(os.path.expanduser(str(model_path)))
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"{local} is a file; point model_path at the checkpoint folder that holds config.json")
        _check_local_folder(local)
        source = str(local)
    else:
        looks_like_hub_id = str(model_path).count("/") == 1 and not str(model_path).startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise ModelError(f"model folder {model_path} does not exist (nor is it a hub id like 'Qwen/Qwen2.5-VL-7B-Instruct')")
        source = str(model_path)
    offline = not local.exists() and hub_offline(source)
    files = source                                  # where from_pretrained reads: a folder, or the hub id offline
    if not local.exists() and not offline:
        files = download(source, progress)

    dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            files, **{dtype_kwarg: torch_dtype}, attn_implementation=attn, local_files_only=offline, **placed)
        tokenizer = AutoTokenizer.from_pretrained(files, local_files_only=offline)
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load Qwen2.5-VL from {source!r}: {e}. A hub id needs network access or a "
                         "copy in the Hugging Face cache; otherwise download the model into a local folder.") from e
    if getattr(model.config, "model_type", None) != "qwen2_5_vl":
        raise ModelError(f"{source} is not a Qwen2.5-VL checkpoint (model_type {model.config.model_type!r})")
    if not placed:
        model.to(dev)
    model.eval()

    mean, std = _read_processor_stats(files, offline)
    eos = []
    for cfg in (getattr(model, "generation_config", None), model.config):
        ids = getattr(cfg, "eos_token_id", None)
        eos += ids if isinstance(ids, list) else ([ids] if ids is not None else [])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None:
        eos.append(im_end)
    return QwenModel(model=model, tokenizer=tokenizer, name=source, image_mean=mean, image_std=std,
                     eos_token_ids=sorted(set(eos)), quantization=quantization,
                     weight_bytes=placement.weights_by_device(model))


def free(qm: QwenModel) -> None:
    """Release the weights now, even while other objects (a cache of node outputs) still hold this QwenModel."""
    import gc
    if not qm.unloaded:
        placement.release(qm.model)  # parameters and buffers become storage-less: the memory goes back
        qm.unloaded = True
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def require_loaded(qm: QwenModel) -> None:
    if qm.unloaded:
        raise ModelError(f"{qm.name} was unloaded (its weights were freed); load it again before using it "
                         "(in ComfyUI: keep_loaded on when several Generate nodes share one model)")


# ---- version adapter: the only calls whose signature or return differs between 4.57 and 5.x ----

def vision_features(qm: QwenModel, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Run the vision tower (with its 2x2 merger). pixel_values [P, C*2*14*14], grid_thw [1, 3] long.

    Returns [t * h/2 * w/2, D] in raster order (group, row, col).
    """
    visual = qm.model.model.visual
    dev = placement.execution_device(visual)
    out = visual(pixel_values.to(dev, visual.dtype), grid_thw=grid_thw.to(dev))
    return out if isinstance(out, torch.Tensor) else out.pooler_output      # 4.57: tensor; 5.x: output object


def rotary(qm: QwenModel, hidden: torch.Tensor, positions: torch.Tensor):
    """The decoder layers' (cos, sin) for 3-D positions [3, L] (batch 1) or [3, B, L] (a batch), in whatever layout
    this version uses."""
    positions = positions[:, None, :] if positions.ndim == 2 else positions
    return qm.language_model.rotary_emb(hidden, positions.to(hidden.device))


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
    if layer.self_attn.config._attn_implementation == "flash_attention_2":
        return valid.long()
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill_(~valid, torch.finfo(dtype).min)[:, None, None, :]


def causal_mask(layer, hidden: torch.Tensor, cache) -> torch.Tensor | None:
    """The additive mask [1, 1, n, past + n] that eager attention needs for n > 1 new tokens after `past` cached ones
    (query i sees keys up to past + i); None for every other implementation and for a single token."""
    n = hidden.shape[1]
    if n == 1 or layer.self_attn.config._attn_implementation != "eager":
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
