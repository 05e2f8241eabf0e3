"""The bench model: a random checkpoint of a family (Qwen2.5-VL by default, `bench:qwen2_vl`, `bench:qwen3_vl`) with
the per-layer balance of its reference release (the first of its flops_shapes: Qwen2.5-VL-7B, Qwen2-VL-7B,
Qwen3-VL-8B) at width 128 (see prunevid.bench), built once under benchmarks/models/ and loaded through
from_pretrained like any checkpoint. Qwen2-VL-7B and Qwen2.5-VL-7B share their language model's shape.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


# The bench model: see prunevid.bench (__init__.py). d + d_kv + 1.5 d_ff = 128 + 32 + 32352 = 32512, the 7B's value.
BENCH_MODEL = dict(num_hidden_layers=28, hidden_size=128, intermediate_size=21568, num_attention_heads=4,
                   num_key_value_heads=1, vision_depth=32, vision_hidden_size=256, vision_intermediate_size=480,
                   vision_num_heads=4, seed=0)
BENCH_FULLATT = [7, 15, 23, 31]
# What a family's bench model changes. Qwen2-VL's vision MLP is plain and 4x wide (Qwen2.5-VL's is gated): the same
# 1/5 width, its own ratio. Qwen3-VL-8B: 36 layers, d + d_kv + 1.5 d_ff = 4096 + 1024 + 18432 = 23552 = 128 + 32 +
# 1.5 * 15595 (rounded: 23552.5); its tower: 27 blocks of 1152, plain MLP 4304, DeepStack after blocks 8, 16, 24
# -> 27 blocks of 256 (1/4.5), MLP 956.
BENCH_VISION = {"qwen2_5_vl": {}, "qwen2_vl": {"vision_intermediate_size": 4 * BENCH_MODEL["vision_hidden_size"]},
                "qwen3_vl": {"num_hidden_layers": 36, "intermediate_size": 15595, "vision_depth": 27,
                             "vision_intermediate_size": 956, "deepstack_visual_indexes": [8, 16, 24]},
                "qwen3_5": {}}      # not balanced for Qwen3.5 (its linear layers cost differently): not measured yet


def default_root() -> Path:
    """benchmarks/ of the source tree when the package runs from a clone, else ./benchmarks."""
    repo = Path(__file__).resolve().parent.parent / "benchmarks"
    return repo if repo.is_dir() else Path.cwd() / "benchmarks"


def bench_model_path(models_dir: Path, spec: dict | None = None, fullatt=None, family: str = "qwen2_5_vl") -> Path:
    """Build the bench model of `family` once into models_dir (cached by its spec) and return its folder."""
    from ..testing import build_once, build_tiny_model
    if spec is None and family not in BENCH_VISION:      # Qwen3-VL-MoE: no bench model with its balance yet
        from ..errors import ModelError
        raise ModelError(f"there is no bench model of {family} (bench:{', bench:'.join(BENCH_VISION)}); benchmark "
                         f"tiny:{family} or a checkpoint folder instead")
    spec = dict({**BENCH_MODEL, **BENCH_VISION[family]} if spec is None else spec)
    fullatt = BENCH_FULLATT if fullatt is None else fullatt
    key = hashlib.sha256(json.dumps([spec, fullatt], sort_keys=True).encode()).hexdigest()[:10]

    def build(folder: Path) -> None:
        build_tiny_model(folder, family=family, overwrite=True, **spec)
        if family == "qwen2_5_vl":                 # windowed attention but in these blocks (Qwen2-VL: all full)
            cfg_path = folder / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["vision_config"]["fullatt_block_indexes"] = [i for i in fullatt if i < spec["vision_depth"]]
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        (folder / "bench_spec.json").write_text(json.dumps({"build_tiny_model": spec, "fullatt": fullatt,
                                                            "family": family}, indent=2))
    size = {"qwen3_vl": "8b"}.get(family, "7b")
    name = "bench-qwen2.5-vl-7b-shape" if family == "qwen2_5_vl" else f"bench-{family}-{size}-shape"
    return build_once(Path(models_dir) / f"{name}-{key}", build)


def describe_model(qm, dims) -> str:
    tc, v = qm.text_config, dims["vision"]
    hd = tc.hidden_size // tc.num_attention_heads
    bal = dims["d"] + dims["d_kv"] + 1.5 * dims["d_ff"]
    ref, (_, d, d_kv, d_ff) = next(iter(qm.flops_shapes.items()))
    full = ("every block" if len(v["fullatt"]) == v["depth"] else f"blocks {v['fullatt']}")
    return (f"{Path(qm.name).name} ({qm.display_name}) — LLM {dims['layers']} layers, d {dims['d']}, "
            f"{tc.num_attention_heads} query heads / {tc.num_key_value_heads} KV heads of {hd}, MLP {dims['d_ff']} "
            f"(d + d_kv + 1.5·d_ff = {bal:.0f}; "
            f"{ref}: {d + d_kv + 1.5 * d_ff:.0f}); vision {v['depth']} blocks of width {v['hidden']} "
            f"({'gated ' if v['gated'] else ''}MLP {v['intermediate']}, full attention in {full}); random weights")


def model_path(model: str, models_dir: Path) -> Path:
    """The checkpoint a benchmark loads: 'bench' or 'bench:<model_type>' (built once into models_dir), 'tiny' or
    'tiny:<model_type>' (the tests' tiny models) or a folder."""
    if model == "bench" or model.startswith("bench:"):
        return bench_model_path(models_dir, family=model.partition(":")[2] or "qwen2_5_vl")
    if model == "tiny" or model.startswith("tiny:"):
        from ..loader import resolve_model
        return Path(resolve_model(model))
    return Path(model)
