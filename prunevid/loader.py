"""Loading a checkpoint of any supported family (local folder or hub id): dtype, device, attention, quantisation,
placement, and releasing it again. The family is chosen from config.json's model_type (prunevid.families).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import adapter, families, placement, quantize
from .errors import ModelError
from .families import VideoLLM
from .hub import download, hub_offline

SUPPORTED_TRANSFORMERS = ">=4.57,<6"
ATTENTIONS = ("sdpa", "flash_attention_2", "eager")   # what the loaders offer (plus "auto"); every one is tested
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # the Qwen processors' defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def model_type(config_file: Path) -> str | None:
    """config.json's model_type (ModelError when the file cannot be read as JSON)."""
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ModelError(f"{config_file} cannot be read as JSON: {e}") from e


def _check_local_folder(path: Path) -> type[VideoLLM]:
    """The family of a local checkpoint folder, after checking it has a config.json of a supported type and
    weights."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} is not a model folder: it has no config.json")
    family = families.family(model_type(config_file), str(path))
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path} has a {family.display_name} config.json but no weights (*.safetensors or *.bin)")
    return family


def detect(source: str, offline: bool = True) -> type[VideoLLM] | None:
    """The family of a local folder or a hub id whose config.json is at hand (cached); None when it is not."""
    from transformers.utils import cached_file
    local = Path(os.path.expanduser(str(source)))
    if local.is_dir():
        return _check_local_folder(local)
    try:
        path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False,
                           local_files_only=offline)
    except Exception:
        path = None
    return families.family(model_type(Path(path)), source) if path else None


def resolve_model(arg) -> str:
    """A model argument as load() takes it: "tiny" (a random tiny Qwen2.5-VL) or "tiny:<model_type>" (of that family)
    built on disk once; anything else (a folder, a hub id) as given."""
    text = str(arg)
    if text == "tiny" or text.startswith("tiny:"):
        from .testing import tiny_model_path
        family = text.partition(":")[2] or families.DEFAULT.model_type
        families.family(family, f"--model {text}")
        return str(tiny_model_path(**({} if family == families.DEFAULT.model_type else {"family": family})))
    return arg


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
         offload_folder: str | None = None, progress=None) -> VideoLLM:
    """Load a checkpoint of any supported family from a local folder or a hub id (hub only if it is reachable or
    cached). Returns the family's VideoLLM.

    A hub id is first downloaded into the Hugging Face cache (see `hub.download`; progress(done, total) gets bytes).
    quantization: "none", "8bit" or "4bit" (bitsandbytes; see quantize.py). device_map / max_memory /
    offload_folder: sharding and CPU / disk offload through accelerate (see placement.py).
    """
    from transformers import AutoTokenizer

    placement.check(device, device_map, max_memory, offload_folder)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = resolve_attention(attention, dev, torch_dtype)
    quantize.check(quantization)
    local = Path(os.path.expanduser(str(model_path)))
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"{local} is a file; point model_path at the checkpoint folder that holds config.json")
        family = _check_local_folder(local)
        source = str(local)
    else:
        looks_like_hub_id = str(model_path).count("/") == 1 and not str(model_path).startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise ModelError(f"model folder {model_path} does not exist (nor is it a hub id like "
                             "'Qwen/Qwen2.5-VL-7B-Instruct')")
        source = str(model_path)
        family = families.for_hub_id(source)
        if family is not None and families.unavailable(family):     # refuse before a download, not after
            raise ModelError(f"{source}: {families.unavailable(family)}")
    if family is not None:
        family.check_quantization(quantization, source)      # before a download
    offline = not local.exists() and hub_offline(source)
    files = source                                  # where from_pretrained reads: a folder, or the hub id offline
    if not local.exists() and not offline:
        files = download(source, progress)

    try:
        family = detect(files, offline=True) or family
        if family is None:
            raise ModelError(f"{source} has no config.json (is it a model repository?)")
        family.check_quantization(quantization, source)      # an unlisted hub id: before reading weights
        placed = placement.load_kwargs(dev, device_map, max_memory, offload_folder,
                                       quantize.bnb_config(quantization, torch_dtype, family.keep_in_dtype))
        model = family.transformers_model_class().from_pretrained(
            files, **{adapter.dtype_kwarg(): torch_dtype}, attn_implementation=attn, local_files_only=offline,
            **placed)
        tokenizer = AutoTokenizer.from_pretrained(files, local_files_only=offline)
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        what = family.display_name if family else "a video LLM"
        raise ModelError(f"cannot load {what} from {source!r}: {e}. A hub id needs network access or a "
                         "copy in the Hugging Face cache; otherwise download the model into a local folder.") from e
    if getattr(model.config, "model_type", None) != family.model_type:
        raise ModelError(f"{source} is not a {family.display_name} checkpoint (model_type "
                         f"{model.config.model_type!r})")
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
    return family(model=model, tokenizer=tokenizer, name=source, image_mean=mean, image_std=std,
                  eos_token_ids=sorted(set(eos)), quantization=quantization,
                  weight_bytes=placement.weights_by_device(model))


def free(qm: VideoLLM) -> None:
    """Release the weights now, even while other objects (a cache of node outputs) still hold this model."""
    import gc
    if not qm.unloaded:
        placement.release(qm.model)  # parameters and buffers become storage-less: the memory goes back
        qm.unloaded = True
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def require_loaded(qm: VideoLLM) -> None:
    if qm.unloaded:
        raise ModelError(f"{qm.name} was unloaded (its weights were freed); load it again before using it "
                         "(in ComfyUI: keep_loaded on when several Generate nodes share one model)")
