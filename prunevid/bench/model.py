"""The bench model: a random Qwen2.5-VL with the 7B's per-layer balance at 1/28 of its width (see prunevid.bench),
built once under benchmarks/models/ and loaded through from_pretrained like any checkpoint.
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


def default_root() -> Path:
    """benchmarks/ of the source tree when the package runs from a clone, else ./benchmarks."""
    repo = Path(__file__).resolve().parent.parent / "benchmarks"
    return repo if repo.is_dir() else Path.cwd() / "benchmarks"


def bench_model_path(models_dir: Path, spec: dict | None = None, fullatt=None) -> Path:
    """Build the bench model once into models_dir (cached by its spec) and return its folder."""
    from ..testing import build_once, build_tiny_model
    spec = dict(BENCH_MODEL if spec is None else spec)
    fullatt = BENCH_FULLATT if fullatt is None else fullatt
    key = hashlib.sha256(json.dumps([spec, fullatt], sort_keys=True).encode()).hexdigest()[:10]

    def build(folder: Path) -> None:
        build_tiny_model(folder, overwrite=True, **spec)
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["vision_config"]["fullatt_block_indexes"] = [i for i in fullatt if i < spec["vision_depth"]]
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        (folder / "bench_spec.json").write_text(json.dumps({"build_tiny_model": spec, "fullatt": fullatt}, indent=2))
    return build_once(Path(models_dir) / f"bench-qwen2.5-vl-7b-shape-{key}", build)


def describe_model(qm, dims) -> str:
    tc, vc = qm.text_config, qm.config.vision_config
    hd = tc.hidden_size // tc.num_attention_heads
    bal = dims["d"] + dims["d_kv"] + 1.5 * dims["d_ff"]
    return (f"{Path(qm.name).name} — LLM {dims['layers']} layers, d {dims['d']}, "
            f"{tc.num_attention_heads} query heads / {tc.num_key_value_heads} KV heads of {hd}, MLP {dims['d_ff']} "
            f"(d + d_kv + 1.5·d_ff = {bal:.0f}; "
            f"Qwen2.5-VL-7B: 32512); vision {vc.depth} blocks of width {vc.hidden_size} (MLP {vc.intermediate_size}, "
            f"full attention in blocks {dims['vision']['fullatt']}); random weights")


def model_path(model: str, models_dir: Path) -> Path:
    """The checkpoint a benchmark loads: 'bench' (built once into models_dir), 'tiny' (the tests' tiny model) or a
    folder."""
    if model == "bench":
        return bench_model_path(models_dir)
    if model == "tiny":
        from ..testing import tiny_model_path
        return tiny_model_path()
    return Path(model)
