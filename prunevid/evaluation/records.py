"""The pruning stats of one lmms-eval sample (a flat dict for the logged samples), and their per-task means.

In lmms-eval's samples file each sample's `token_counts[0]` then reads
    {"input_tokens": ..., "output_tokens": ..., "prunevid": {<record>}}
input_tokens is the prompt length the LLM's first layer reads (after Stage 1), output_tokens the answer's length.
"""
from __future__ import annotations

import math

# the three means printed with the accuracy and shown by `prunevid eval-report`
AGGREGATES = (("retention", "mean retention"), ("flops_ratio_7b", "mean FLOPs ratio (7B)"),
              ("ttft_s", "mean TTFT (s)"))


def sample_record(stats: dict, label: str, frames: int, frame_hw: tuple, rank: int = 0) -> dict:
    """One answer's stats (prunevid.stats.final_stats) -> the record logged with the sample.

    retention: video tokens after Stage 2 / video tokens before Stage 1. flops_ratio_7b: analytic LLM prefill FLOPs
    against the unpruned prompt for the shape of the family's headline released model, named in flops_reference
    (Qwen2.5-VL-7B, Qwen2-VL-7B, or Qwen3-VL-8B: the key keeps its first name so that result files stay comparable;
    flops_ratio: for the model that ran). ttft_s: vision
    tower + Stage 1 + prefill + first decoded token (video decoding not included). kv_bytes: the KV cache after
    the prefill (after Stage 3 when it runs); kv_bytes_unpruned: what the unpruned prompt would cache. rank: the
    data-parallel process that answered. frames / frame_hw: the frames (or images) the model saw, and their size.
    """
    tok, s3, t = stats["tokens"], stats["stage3"], stats["timings"]
    return {
        "preset": label, "rank": int(rank),
        "frames": int(frames), "frame_hw": [int(frame_hw[0]), int(frame_hw[1])],
        "video_tokens": tok["video_original"], "after_stage1": tok["video_after_stage1"],
        "after_stage2": tok["video_after_stage2"], "retention": tok["retention"],
        "sequence_unpruned": tok["sequence_unpruned"], "sequence_after_stage1": tok["sequence_after_stage1"],
        "sequence_after_stage2": tok["sequence_after_stage2"],
        "kv_bytes": s3["kv_bytes_after"], "kv_bytes_unpruned": s3["kv_bytes_unpruned"],
        "flops_ratio": stats["flops"]["this_model_ratio"], "flops_ratio_7b": stats["flops"]["reference_ratio"],
        "flops_reference": stats["flops"]["reference"],
        "vision_s": t["vision_s"], "stage1_s": t["stage1_s"], "prefill_s": t["prefill_s"],
        "ttft_s": t["time_to_first_token_s"], "new_tokens": t["new_tokens"],
    }


def aggregate(records: list) -> dict:
    """Means of the AGGREGATES over records (NaN when there are none) and their count."""
    out = {"samples": len(records)}
    for key, _ in AGGREGATES:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def format_aggregates(rows: list, title: str) -> str:
    """rows: [(task, aggregate dict)] -> a small text table."""
    head = ["task", "samples"] + [name for _, name in AGGREGATES]
    body = [[task, str(a["samples"])] + [f"{a[key]:.4f}" if key != "ttft_s" else f"{a[key]:.3f}"
                                         for key, _ in AGGREGATES] for task, a in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([title, line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body])
