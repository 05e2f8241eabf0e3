"""Where the weights live: one device, or a device_map over several GPUs, the CPU and disk (through accelerate).

    device_map=None                one device (the `device` argument); the default
    device_map="auto"              accelerate fills the GPUs in order, then CPU RAM, then disk (offload_folder);
               "balanced" / "balanced_low_0" / "sequential"   its other strategies; max_memory caps each device
    device_map={"model.language_model.layers.20": "cpu", ...}   an explicit map of module names to devices
                                   (0, "cuda:1", "cpu", "disk"), covering the whole model

Modules placed on "cpu" or "disk" while a GPU computes are offloaded: accelerate's hooks bring their weights to
the GPU for each call. The engine follows the layers from device to device (follow): the hidden states and
their rotary tables move to each layer's device, so its KV cache is written there too, and Stage 2 scores at
layer M on whatever device layer M runs on.
"""
from __future__ import annotations

import torch

from .errors import ConfigError
from .quantize import weight_bytes

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
OFFLOAD = ("cpu", "disk")


def _is_device(d) -> bool:
    if isinstance(d, int) and not isinstance(d, bool):
        return d >= 0
    if isinstance(d, torch.device):
        return True
    return isinstance(d, str) and (d in (*OFFLOAD, "mps", "cuda") or d.startswith(("cuda:", "xpu", "npu")))


def check(device: str, device_map, max_memory, offload_folder) -> None:
    """Raise ConfigError for a device_map / max_memory / offload_folder that cannot work, before any loading."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ConfigError("max_memory and offload_folder apply only with a device_map (e.g. device_map='auto')")
        return
    if device != "auto":
        raise ConfigError(f"give either device ({device!r}) or device_map, not both: the device_map places the "
                          "weights (leave device at 'auto')")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAPS:
            raise ConfigError(f"device_map must be one of {', '.join(DEVICE_MAPS)} or a dict of module names to "
                              f"devices, got {device_map!r}")
    elif isinstance(device_map, dict):
        bad = [f"{k!r}: {v!r}" for k, v in device_map.items() if not isinstance(k, str) or not _is_device(v)]
        if bad or not device_map:
            raise ConfigError(f"device_map maps module names to devices (0, 'cuda:1', 'cpu' or 'disk'); "
                              f"{', '.join(bad) or 'it is empty'}")
        if max_memory is not None:
            raise ConfigError("max_memory applies to device_map 'auto' / 'balanced' / 'sequential', not to an "
                              "explicit device_map dict (which already says where everything goes)")
        if "disk" in device_map.values() and offload_folder is None:
            raise ConfigError("device_map puts modules on 'disk': give offload_folder, a folder with room for them")
    else:
        raise ConfigError(f"device_map must be one of {', '.join(DEVICE_MAPS)} or a dict, "
                          f"got {type(device_map).__name__}")
    if max_memory is not None and not (isinstance(max_memory, dict) and max_memory and all(
            _is_device(k) and isinstance(v, (int, str)) for k, v in max_memory.items())):
        raise ConfigError(f"max_memory must map devices to sizes, like {{0: '20GiB', 'cpu': '64GiB'}}, "
                          f"got {max_memory!r}")


def parse_max_memory(text: str) -> dict:
    """"0=20GiB,1=20GiB,cpu=64GiB" (the CLI's --max-memory) as {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}."""
    out = {}
    for item in text.split(","):
        device, sep, size = (part.strip() for part in item.partition("="))
        if not sep or not device or not size:
            raise ConfigError(f"max_memory {text!r}: write DEVICE=SIZE pairs separated by commas, "
                              "like 0=20GiB,cpu=64GiB")
        out[int(device) if device.isdigit() else device] = size
    return out


def has_gpu(device_map) -> bool:
    """Does this device_map put anything on an accelerator (a string strategy: is there a CUDA GPU)?"""
    if isinstance(device_map, dict):
        return any(v not in OFFLOAD for v in device_map.values())
    return torch.cuda.is_available()


def load_kwargs(dev: torch.device, device_map, max_memory, offload_folder, quantization_config) -> dict:
    """from_pretrained keyword arguments for this placement and quantization ({} = load, then move the model to
    `dev`)."""
    if device_map is None:
        # bitsandbytes quantises while loading, on the device the weights are loaded to
        return {} if quantization_config is None else {"device_map": {"": dev},
                                                        "quantization_config": quantization_config}
    if quantization_config is not None and has_gpu(device_map):
        # bitsandbytes quantises the modules on GPUs; those offloaded to CPU / disk stay in the model's dtype
        quantization_config.llm_int8_enable_fp32_cpu_offload = True
    elif quantization_config is not None and isinstance(device_map, dict) and "disk" in device_map.values():
        raise ConfigError("quantized weights cannot be offloaded to disk without a GPU in the device_map: put those "
                          "modules on 'cpu', or use quantization='none'")
    out = {"device_map": device_map}
    if quantization_config is not None:
        out["quantization_config"] = quantization_config
    if max_memory is not None:
        out["max_memory"] = {(int(k[5:]) if isinstance(k, str) and k.startswith("cuda:") else k): v
                             for k, v in max_memory.items()}
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def target_devices(device: torch.device, device_map) -> list:
    """The devices a load will fill: `device`, or the accelerators a device_map names (a strategy: every CUDA GPU),
    or the CPU when it names none."""
    if device_map is None:
        return [device]
    if isinstance(device_map, dict):
        named = {torch.device(v) for v in device_map.values() if v not in OFFLOAD}
        return sorted(named, key=str) or [torch.device("cpu")]
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its offload hook's execution device, else where its weights are."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev)        # an int is a CUDA index
    for p in module.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def follow(layer: torch.nn.Module, hidden: torch.Tensor, rope: tuple) -> tuple:
    """hidden [1, n, D] and rope (cos, sin) on the device `layer` computes on (unchanged on a one-device model)."""
    dev = execution_device(layer)
    if hidden.device == dev:
        return hidden, rope
    return hidden.to(dev), tuple(r.to(dev) for r in rope)


def weights_by_device(model: torch.nn.Module) -> dict:
    """Weight bytes per device, {"cuda:0": n, "cpu": n, "disk": n}, from accelerate's map when the model has one."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(device_map) <= 1:
        dev = execution_device(model)
        return {str(dev): weight_bytes(model)}
    out: dict = {}
    for name, dev in device_map.items():
        key = str(torch.device(dev)) if isinstance(dev, int) else str(dev)
        out[key] = out.get(key, 0) + weight_bytes(model.get_submodule(name) if name else model)
    return out


def release(model: torch.nn.Module) -> None:
    """Drop every weight of `model` now, even while other objects still hold the model.

    Parameters and buffers become storage-less meta tensors of the same shape and dtype. That also covers what
    `model.to("meta")` cannot: a dispatched model (accelerate refuses to move one; its hooks hold the offloaded
    weights, so they go first) and bitsandbytes layers (their row scales and block statistics hang off the
    weight tensors; an 8-bit layer also keeps its int8 weights in its matmul state).
    """
    from accelerate.hooks import remove_hook_from_module
    remove_hook_from_module(model, recurse=True)
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(_meta(p), requires_grad=False)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = _meta(b)
        state = getattr(module, "state", None)          # bitsandbytes' MatmulLtState (CB, SCB, ...)
        for key, value in list(vars(state).items()) if hasattr(state, "__dict__") else ():
            if isinstance(value, torch.Tensor):
                setattr(state, key, None)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")

