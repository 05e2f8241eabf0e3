"""Per-stage statistics and the analytic prefill FLOPs / KV-bytes model.

FLOPs of one decoder layer for n tokens (multiply-add = 2 FLOPs), with hidden d, KV width d_kv, MLP width d_ff:
    F(n) = n * (4 d^2 + 4 d d_kv + 6 d d_ff) + 4 n^2 d
(q, o projections 4d^2; k, v projections 4 d d_kv; gated MLP 6 d d_ff; scores and weighted sum 4 n^2 d).
For Qwen2.5-VL-7B: F(n) = 466 092 032 n + 14 336 n^2. Each family lists the shapes of its released language
models (VideoLLM.flops_shapes); the stats give the ratio for each at the same relative pruning depth.
"""
from __future__ import annotations


def layer_flops(n: int, d: int, d_kv: int, d_ff: int) -> float:
    return n * (4 * d * d + 4 * d * d_kv + 6 * d * d_ff) + 4 * n * n * d


def prefill_flops(tokens_per_layer: list, d: int, d_kv: int, d_ff: int) -> float:
    """Sum of F(tokens in layer) over the layers (the vision tower is not counted: pruning does not change it)."""
    return sum(layer_flops(n, d, d_kv, d_ff) for n in tokens_per_layer)


def tokens_per_layer(layers: int, before: int, after: int, pruning_layer: int) -> list:
    """Token count in each layer: `before` in layers 0..M, `after` from M+1 on (no pruning: M = -1 or >= layers)."""
    if pruning_layer < 0:
        return [before] * layers
    return [before if i <= pruning_layer else after for i in range(layers)]


def flops_ratio(layers: int, d: int, d_kv: int, d_ff: int, unpruned: int, merged: int, kept: int,
                pruning_layer: int) -> float:
    """Pruned over unpruned LLM prefill FLOPs for one model shape, pruning after layer pruning_layer (-1: none)."""
    base = prefill_flops([unpruned] * layers, d, d_kv, d_ff)
    ours = prefill_flops(tokens_per_layer(layers, merged, kept, pruning_layer), d, d_kv, d_ff)
    return ours / base


def video_stats(encoded) -> dict | None:
    """The timing Qwen was given for the (first) video, None for images only: what a run can be checked against.

    frames: sampled frames fed to the vision tower (even: Qwen packs 2 per temporal group); fps: their effective
    rate, which sets the temporal positions; seconds_per_temporal_group = 2 / fps; frame_size: [width, height]
    after resizing; notes: what was assumed or corrected while reading (e.g. a frame rate that had to be assumed).
    A prompt with several videos has one such dictionary per video in videos_stats.
    """
    videos = videos_stats(encoded)
    if not videos:
        return None
    return {**videos[0], "notes": list(encoded.notes) if len(videos) == 1 else videos[0]["notes"]}


def videos_stats(encoded, kept_visual=None) -> list:
    """video_stats for every video of the prompt, in prompt order (each with its source and its own notes), and,
    given the Stage 2 selection (indices into the concatenated merged tokens), each video's own token counts."""
    out, offset = [], 0
    for it in encoded.items:
        start, offset = offset, offset + it.tokens.num_tokens
        if it.kind != "video":
            continue
        t, h, w = it.grid                   # LLM tokens (Qwen2-VL, Qwen2.5-VL: one per 28x28 pixels and 2 frames)
        f, tp = encoded.model.token_factor(), encoded.model.temporal_patch_size
        frames, height, width = (it.frames.shape[:3] if it.frames is not None else (tp * t, f * h, f * w))
        out.append({"frames": int(frames),
                    "fps": tp / it.second_per_grid_t if it.second_per_grid_t else None,
                    "seconds_per_temporal_group": it.second_per_grid_t, "temporal_groups": t,
                    "frame_size": [int(width), int(height)], "tokens_per_group": h * w,
                    "source": getattr(it, "source", None), "notes": list(getattr(it, "notes", []))})
        if kept_visual is not None:
            kept = int(((kept_visual >= start) & (kept_visual < offset)).sum())
            out[-1]["tokens"] = {"original": it.tokens.original_tokens, "after_stage1": it.tokens.num_tokens,
                                 "after_stage2": kept}
    return out


def prefill_stats(qm, encoded, seq, kept_visual, keep_seq, config, kv_bytes: int) -> dict:
    """The stats dictionary of one prefill (Stage 3 fills in its part when it runs); kv_bytes: what its cache
    holds."""
    from . import stage2
    n0, n1, n2 = encoded.original_tokens, encoded.merged_tokens, int(kept_visual.numel())
    L0, L1, L2 = seq.unpruned_length, seq.embeds.shape[0], int(keep_seq.numel())
    text = L0 - n0
    used = qm.pruning_layer(config.pruning_layer) if config.enable_stage2 else config.pruning_layer
    M = used if n2 < n1 else -1
    layers, d, d_kv, d_ff = qm.dims()
    segments = [len(it.tokens.segments) for it in encoded.items]
    static = sum(it.tokens.static_locations for it in encoded.items)
    out = {
        "family": qm.display_name,
        "stage1": {"enabled": encoded.stage1 is not None, "original_tokens": n0, "compressed_tokens": n1,
                   "reduction_percentage": 100.0 * (1 - n1 / max(1, n0)), "static_ratio": static / max(1, n0),
                   "segments": sum(segments) if encoded.stage1 else 0},
        # keep_ratio is what was asked; kept_fraction what the per-block quotas int(n * keep_ratio) gave (less
        # than keep_ratio when blocks are small)
        "stage2": {"enabled": M >= 0, "original_tokens": n1, "compressed_tokens": n2,
                   "keep_ratio": config.keep_ratio if M >= 0 else None, "kept_fraction": n2 / max(1, n1),
                   "pruning_layer": M if M >= 0 else None,
                   # what the config asked for; it differs where the family maps it (Qwen3.5: the presets' 10 -> 7,
                   # the last full-attention layer at or before it)
                   "requested_pruning_layer": config.pruning_layer if M >= 0 else None,
                   # a token budget (retention / budget_tokens): its target, and whether Stage 1 alone already met
                   # it (Stage 2 then keeps every token and is reported as not pruning)
                   "target_tokens": stage2.target_tokens(config, n0) if config.enable_stage2 else None,
                   "stage1_met_target": (config.enable_stage2 and config.has_budget
                                         and n1 <= stage2.target_tokens(config, n0))},
        # kv_bytes_unpruned: what the unpruned prompt would cache (every attention layer, every token, and any
        # linear layers' fixed-size state), for the real ratio; the kv_bytes count what the cache really holds
        "stage3": {"enabled": False, "kv_bytes_before": kv_bytes, "kv_bytes_after": kv_bytes,
                   "reduction_ratio": 0.0,
                   "kv_bytes_unpruned": (L0 * len(qm.attention_layers) * 2 * d_kv * qm.dtype.itemsize
                                         + qm.state_bytes())},
        "tokens": {"video_original": n0, "video_after_stage1": n1, "video_after_stage2": n2,
                   "retention": n2 / max(1, n0), "text": text, "sequence_unpruned": L0,
                   "sequence_after_stage1": L1, "sequence_after_stage2": L2},
        # the ratio for this model, and for each released shape of its family with the same M (a preset's M is
        # the same layer index on every depth: docs/method.md, "Presets across depths"); reference: the headline
        # shape (Qwen2.5-VL-7B, Qwen2-VL-7B, Qwen3-VL-8B)
        "flops": {"this_model_ratio": flops_ratio(layers, d, d_kv, d_ff, L0, L1, L2, M),
                  "reference": next(iter(qm.flops_shapes))},
        "video": video_stats(encoded),
        "weights": weights(qm),
        "videos": videos_stats(encoded, kept_visual),   # one entry per video of the prompt, with its own tokens
    }
    for name, (nl, dd, dkv, dff) in qm.flops_shapes.items():
        m = -1 if M < 0 else min(M, nl - 1)
        out["flops"][f"{name}_ratio"] = flops_ratio(nl, dd, dkv, dff, L0, L1, L2, m)
    out["flops"]["reference_ratio"] = out["flops"][f"{out['flops']['reference']}_ratio"]
    return out


def final_stats(prefill_stats: dict, generate_stats: dict) -> dict:
    """One answer's stats: the prefill's, with decoding folded into the timings.

    time_to_first_token_s pays for the vision tower and Stage 1 (a first question); time_to_first_token_reused_s
    is what a further question about the same encoded video costs; decode_first_token_s (from generate) is the
    decoding part of both alone.
    """
    out = dict(prefill_stats)
    t = out["timings"] = {**prefill_stats["timings"], **generate_stats}
    t["time_to_first_token_s"] = t["vision_s"] + t["stage1_s"] + t["prefill_s"] + t["decode_first_token_s"]
    t["time_to_first_token_reused_s"] = t["prefill_s"] + t["decode_first_token_s"]
    return out


def weights(qm) -> dict:
    """The weights as loaded: bytes in all and per device ("disk" = offloaded), quantisation state included."""
    by_device = dict(qm.weight_bytes or {})
    return {"quantization": qm.quantization, "bytes": sum(by_device.values()), "by_device": by_device}


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def format_weights(w: dict) -> str:
    """"Weights: 5.42 GiB (4bit) on cuda:0" or, sharded, "... on cuda:0 3.10 GiB, cpu 2.32 GiB"."""
    where = (next(iter(w["by_device"])) if len(w["by_device"]) == 1 else
             ", ".join(f"{d} {format_bytes(b)}" for d, b in w["by_device"].items()))
    mode = "" if w["quantization"] == "none" else f" ({w['quantization']})"
    return f"Weights: {format_bytes(w['bytes'])}{mode} on {where}"


def format_stats(stats: dict) -> str:
    """A short human-readable summary of the stats dictionary."""
    s1, s2, s3, t = stats["stage1"], stats["stage2"], stats["stage3"], stats["timings"]
    # stats from a server running an older pack have no weights (nor kept_fraction, below)
    lines = [f"Model family: {stats['family']}"] if "family" in stats else []
    lines += [format_weights(stats["weights"])] if "weights" in stats else []
    lines += [
        f"Stage 1: {s1['original_tokens']} -> {s1['compressed_tokens']} video tokens "
        f"({s1['reduction_percentage']:.1f}% fewer, {s1['segments']} segment{'' if s1['segments'] == 1 else 's'}, static {100 * s1['static_ratio']:.1f}%)"
        if s1["enabled"] else f"Stage 1: off ({s1['original_tokens']} video tokens)",
        f"Stage 2: {s2['original_tokens']} -> {s2['compressed_tokens']} video tokens after layer {s2['pruning_layer']}"
        + (f" (pruning_layer {s2['requested_pruning_layer']} mapped to the full-attention layer at or before it)"
           if s2.get("requested_pruning_layer") not in (None, s2["pruning_layer"]) else "")
        + (f" (kept {100 * s2['kept_fraction']:.1f}% at keep_ratio {s2['keep_ratio']:g})" if "kept_fraction" in s2
           else "")
        if s2["enabled"] else ("Stage 2: kept every token (Stage 1 already met the token budget of "
                               f"{s2['target_tokens']})" if s2.get("stage1_met_target") else "Stage 2: off"),
    ]
    videos = stats.get("videos") or []
    if len(videos) > 1 and all("tokens" in v for v in videos):
        lines.append("Per video (tokens original -> Stage 1 -> Stage 2): " + "; ".join(
            f"{_name(v.get('source'), i)} {v['tokens']['original']} -> {v['tokens']['after_stage1']} -> "
            f"{v['tokens']['after_stage2']}" for i, v in enumerate(videos)))
    lines += [
        f"Stage 3: KV cache {s3['kv_bytes_before'] / 2**20:.2f} MiB -> {s3['kv_bytes_after'] / 2**20:.2f} MiB"
        if s3["enabled"] else f"Stage 3: off (KV cache {s3['kv_bytes_after'] / 2**20:.2f} MiB)",
        f"KV cache vs unpruned prompt: {s3['kv_bytes_after'] / 2**20:.2f} / {s3['kv_bytes_unpruned'] / 2**20:.2f} MiB "
        f"({100 * s3['kv_bytes_after'] / max(1, s3['kv_bytes_unpruned']):.1f}%)",
        f"Video tokens kept: {100 * stats['tokens']['retention']:.1f}%; LLM prefill FLOPs vs unpruned: "
        f"{stats['flops']['this_model_ratio']:.3f}x ({_reference(stats['flops'])})",
        f"Time: vision {t['vision_s']:.2f}s, stage 1 {t['stage1_s']:.2f}s, prefill {t['prefill_s']:.2f}s, "
        f"time to first token {t.get('time_to_first_token_s', 0):.2f}s, decode {t.get('tokens_per_s', 0):.1f} tok/s",
    ]
    return "\n".join(lines)


def _name(source, i: int) -> str:
    """A video's file name for the summary (frames without a file: "video N")."""
    return str(source).replace("\\", "/").rsplit("/", 1)[-1] if source else f"video {i + 1}"


def _reference(flops: dict) -> str:
    """"Qwen2.5-VL-7B shape: 0.310x" (stats from a server running an older pack name no reference)."""
    name = flops.get("reference", "Qwen2.5-VL-7B")
    return f"{name} shape: {flops[f'{name}_ratio']:.3f}x"
