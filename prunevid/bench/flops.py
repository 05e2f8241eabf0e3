"""The analytic FLOPs model of a prefill: vision tower + merger, and the LLM before and after pruning, for the bench
model and the released shapes of its family (Qwen2.5-VL 3B / 7B / 32B, Qwen2-VL 2B / 7B / 72B, Qwen3-VL 2B / 4B / 8B /
32B, Qwen3-VL-MoE 30B-A3B / 235B-A22B with d_ff the active width: the experts a token runs through).
"""
from __future__ import annotations


# The released vision towers (the merger's output width is the LLM's hidden size): Qwen2.5-VL's gated MLP with
# windowed attention but in 4 blocks; Qwen2-VL's plain MLP (4x) with full attention in every block.
QWEN25VL_VISION = dict(hidden=1280, intermediate=3420, depth=32, fullatt=[7, 15, 23, 31], window=112, gated=True)
QWEN2VL_VISION = dict(hidden=1280, intermediate=5120, depth=32, fullatt=list(range(32)), window=112, gated=False)
# Qwen3-VL (2B..32B share it): 27 blocks of width 1152, plain MLP 4304, full attention, 16-px patches, and the
# main merger plus three DeepStack mergers (after blocks 8, 16, 24), each 4w -> 4w -> out on every merged token.
QWEN3VL_VISION = dict(hidden=1152, intermediate=4304, depth=27, fullatt=list(range(27)), window=112, gated=False,
                      patch=16, mergers=4)
# Qwen3-VL-MoE's releases carry the same tower (the merger's output is the MoE LLM's width); Qwen3.5 the same tower
# (transformers' Qwen3_5VisionConfig defaults) without the DeepStack mergers.
QWEN35_VISION = dict(QWEN3VL_VISION, mergers=1)
RELEASED_VISION = {"qwen2_5_vl": QWEN25VL_VISION, "qwen2_vl": QWEN2VL_VISION, "qwen3_vl": QWEN3VL_VISION,
                   "qwen3_vl_moe": QWEN3VL_VISION, "qwen3_5": QWEN35_VISION}
PAPER_FLOPS = (0.20, 0.26)          # PruneVid's reported FLOPs ratios (LLaVA-OneVision .. ST-LLM)


def vision_flops(t: int, gh: int, gw: int, hidden: int, intermediate: int, depth: int, fullatt, out_hidden: int,
                 window: int = 112, gated: bool = True, patch: int = 14, merge: int = 2, temporal_patch: int = 2,
                 channels: int = 3, mergers: int = 1) -> float:
    """FLOPs (multiply-add = 2) of a Qwen vision tower + merger on t temporal groups of gh x gw patches.

    Patch embedding, per block qkv + proj (4 w^2) and the MLP (gated: 3 w w_ff; plain: 2 w w_ff) on every patch,
    attention (QK^T and AV, 4 w per key) inside 112-px windows or, in the full-attention blocks, over each temporal
    group, and the 2x2 merger MLP (4w -> 4w -> out), `mergers` times (Qwen3-VL: the main one and three DeepStack).
    """
    P = t * gh * gw
    flops = 2 * P * channels * temporal_patch * patch * patch * hidden
    flops += depth * 2 * P * (4 * hidden * hidden + (3 if gated else 2) * hidden * intermediate)
    mh, mw, win = gh // merge, gw // merge, max(1, window // merge // patch)
    window_sq = sum((merge * merge * min(win, mh - r) * min(win, mw - c)) ** 2
                    for r in range(0, mh, win) for c in range(0, mw, win))
    nfull = len([i for i in fullatt if 0 <= i < depth])
    flops += (depth - nfull) * t * 4 * hidden * window_sq
    flops += nfull * t * 4 * hidden * (gh * gw) ** 2
    m = merge * merge * hidden
    flops += mergers * 2 * (P // (merge * merge)) * (m * m + m * out_hidden)
    return float(flops)


def llm_flops(layers: int, d: int, d_kv: int, d_ff: int, before: int, after: int, pruning_layer: int) -> float:
    from .. import stats
    return stats.prefill_flops(stats.tokens_per_layer(layers, before, after, pruning_layer), d, d_kv, d_ff)


def bench_dims(qm) -> dict:
    """The LLM and vision dimensions of a loaded model, as the FLOPs model needs them."""
    layers, d, d_kv, d_ff = qm.dims()
    vc = qm.config.vision_config
    if qm.model_type == "qwen2_vl":               # embed_dim wide, a plain MLP, full attention in every block
        vision = dict(hidden=vc.embed_dim, intermediate=vc.embed_dim * vc.mlp_ratio, depth=vc.depth,
                      fullatt=list(range(vc.depth)), window=112, gated=False)
    elif qm.model_type in ("qwen3_vl", "qwen3_vl_moe"):   # a plain MLP, full attention, 16-px, DeepStack mergers
        vision = dict(hidden=vc.hidden_size, intermediate=vc.intermediate_size, depth=vc.depth,
                      fullatt=list(range(vc.depth)), window=112, gated=False, patch=vc.patch_size,
                      mergers=1 + len(vc.deepstack_visual_indexes))
    else:
        vision = dict(hidden=vc.hidden_size, intermediate=vc.intermediate_size, depth=vc.depth,
                      fullatt=list(getattr(vc, "fullatt_block_indexes", []) or []),
                      window=getattr(vc, "window_size", 112), gated=True)
    return {"family": qm.model_type, "layers": layers, "d": d, "d_kv": d_kv, "d_ff": d_ff, "vision": vision}


def real_dims(family: str = "qwen2_5_vl") -> dict:
    """The released shapes of a family (its flops_shapes, with its released vision tower)."""
    from ..families import FAMILIES
    return {name: {"layers": L, "d": d, "d_kv": dkv, "d_ff": dff, "vision": RELEASED_VISION[family]}
            for name, (L, d, dkv, dff) in FAMILIES[family].flops_shapes.items()}


def analytic(dims: dict, patch_grid: tuple, seq: dict, pruning_layer: int) -> dict:
    """Vision share of baseline prefill, LLM FLOPs ratio and the TTFT bound for one model shape and token counts.

    patch_grid: (t, gh, gw) in patches. seq: sequence_unpruned / after_stage1 / after_stage2 lengths.
    pruning_layer: M, the same absolute layer index on every depth, as the engine applies a preset (docs/method.md,
    "Presets across depths").
    """
    L = dims["layers"]
    v = vision_flops(*patch_grid, **dims["vision"], out_hidden=dims["d"])
    base = llm_flops(L, dims["d"], dims["d_kv"], dims["d_ff"], seq["unpruned"], seq["unpruned"], -1)
    pruned = pruning_layer >= 0 and seq["after_stage2"] < seq["after_stage1"]
    M = pruning_layer if pruned else -1
    ours = llm_flops(L, dims["d"], dims["d_kv"], dims["d_ff"], seq["after_stage1"], seq["after_stage2"], M)
    return {"vision_gflops": v / 1e9, "llm_gflops_baseline": base / 1e9, "llm_gflops": ours / 1e9,
            "vision_share": v / (v + base), "llm_flops_ratio": ours / base,
            "ttft_bound": (v + base) / (v + ours)}
