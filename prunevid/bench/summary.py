"""From runs to results: medians with min and max, ratios against the baseline, the scaling with frames, the paper
preset's targets, and the throughput rows' speed-ups.
"""
from __future__ import annotations

import statistics

from .flops import analytic, real_dims

VISION_SHARE_RANGE = (0.22, 0.32)
TARGETS = [  # (key, description, test) for the paper preset; value = the measured number in the ratios
    ("prefill_speedup", "LLM prefill speed-up >= 4x", lambda v: v >= 4.0),
    ("ttft_speedup", "first-question TTFT speed-up >= 2.2x", lambda v: v >= 2.2),
    ("ttft_of_bound", "first-question TTFT speed-up within 5 % of the bound from the token counts (above the "
     "bound by more than 5 % means timing noise)", lambda v: 0.95 <= v <= 1.05),
    ("ttft2_speedup", "second-question TTFT speed-up >= 4x", lambda v: v >= 4.0),
    ("kv_ratio", "KV-cache bytes <= 20 % of baseline", lambda v: v <= 0.20),
    ("peak_over_baseline", "peak memory never above baseline (max of preset <= min of baseline)",
     lambda v: v <= 1.0),
    ("overhead_share", "Stage 1 + Stage 2 scoring <= 3 % of baseline prefill time", lambda v: v <= 0.03),
    ("flops_ratio_7b", "analytic LLM prefill FLOPs ratio for the family's 7B <= 0.25x", lambda v: v <= 0.25),
]


TIME_KEYS = ["video_decode_s", "vision_s", "stage1_s", "prefill_s", "stage2_scoring_s", "stage3_s", "ttft_s",
             "decode_tokens_per_s", "e2e_s", "ttft2_s", "prefill2_s"]
MEM_KEYS = ["peak_rss_bytes", "peak_over_idle_bytes"]


def _agg(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize_case(case: dict, dims: dict) -> None:
    shapes = real_dims(dims.get("family", "qwen2_5_vl"))   # the released shapes of the bench model's family
    headline = next(iter(shapes))                            # its 7B
    """Medians / min / max per preset, ratios against baseline, analytic FLOPs for the bench and real shapes."""
    base = case["presets"].get("baseline")
    for name, p in case["presets"].items():
        runs = p["runs"]
        p["tokens"] = runs[0]["tokens"]
        p["consistent_tokens"] = all(r["tokens"] == runs[0]["tokens"] for r in runs)
        p["metrics"] = {k: _agg([r["time"].get(k) for r in runs]) for k in TIME_KEYS}
        p["metrics"]["kv_bytes"] = _agg([r["kv"]["kv_bytes"] for r in runs])
        mem_runs = [r for r in p.get("memory_runs", []) + runs if "memory" in r]
        p["metrics"].update({k: _agg([r["memory"][k] for r in mem_runs]) for k in MEM_KEYS})
        p["metrics"]["overhead_s"] = _agg([r["time"]["stage1_s"] + r["time"]["stage2_scoring_s"] for r in runs])
        seq = {"unpruned": p["tokens"]["sequence_unpruned"], "after_stage1": p["tokens"]["sequence_after_stage1"],
               "after_stage2": p["tokens"]["sequence_after_stage2"]}
        grid = tuple(runs[0]["patch_grid"])
        M = case["pruning_layer"][name]
        p["analytic"] = {"bench": analytic(dims, grid, seq, M)}
        p["analytic"].update({n: analytic(d, grid, seq, M) for n, d in shapes.items()})
    if base is None:
        return
    med = lambda p, k: (p["metrics"].get(k) or {}).get("median")     # noqa: E731
    for name, p in case["presets"].items():
        r = {}

        def ratio(a, b):
            return a / b if a is not None and b not in (None, 0) else None
        r["prefill_speedup"] = ratio(med(base, "prefill_s"), med(p, "prefill_s"))
        r["ttft_speedup"] = ratio(med(base, "ttft_s"), med(p, "ttft_s"))
        # the bound: only the LLM prefill shrinks, exactly by the bench model's FLOPs ratio; everything else
        # (vision tower, first token) costs what the baseline's did, and Stages 1-3 cost nothing
        fr = p["analytic"]["bench"]["llm_flops_ratio"]
        tb, pb = med(base, "ttft_s"), med(base, "prefill_s")
        r["ttft_bound"] = tb / (tb - pb * (1 - fr)) if tb and pb else None
        r["ttft_of_bound"] = ratio(r["ttft_speedup"], r["ttft_bound"])
        r["ttft2_speedup"] = ratio(med(base, "ttft2_s"), med(p, "ttft2_s"))
        r["e2e_speedup"] = ratio(med(base, "e2e_s"), med(p, "e2e_s"))
        r["decode_speedup"] = ratio(med(p, "decode_tokens_per_s"), med(base, "decode_tokens_per_s"))
        r["kv_ratio"] = ratio(med(p, "kv_bytes"), med(base, "kv_bytes"))
        r["peak_ratio"] = ratio(med(p, "peak_rss_bytes"), med(base, "peak_rss_bytes"))
        pk, bk = p["metrics"]["peak_rss_bytes"], base["metrics"]["peak_rss_bytes"]
        r["peak_over_baseline"] = ratio(pk["max"], bk["min"]) if pk and bk else None
        r["overhead_share"] = ratio(med(p, "overhead_s"), pb)
        r["flops_ratio_bench"] = fr
        for n in shapes:
            r[f"flops_ratio_{n.split('-')[-1].lower()}"] = p["analytic"][n]["llm_flops_ratio"]
        r["ttft_bound_7b"] = p["analytic"][headline]["ttft_bound"]
        p["ratios"] = r
    vb, pbm = med(base, "vision_s"), med(base, "prefill_s")
    case["vision_share"] = {"bench_flops": base["analytic"]["bench"]["vision_share"],
                            "headline": headline, "headline_flops": base["analytic"][headline]["vision_share"],
                            "bench_time": vb / (vb + pbm) if vb and pbm else None}


def scaling(cases: list) -> list:
    """Prefill time against frames for baseline and paper, per video with more than one frame count."""
    out = []
    by_video = {}
    for c in cases:
        by_video.setdefault(c["video"], []).append(c)
    for video, cs in by_video.items():
        cs = sorted(cs, key=lambda c: c["frames"])
        if len(cs) < 2:
            continue
        for preset in ("baseline", "paper"):
            rows = []
            for c in cs:
                p = c["presets"].get(preset)
                if p is None:
                    continue
                rows.append({"frames": c["frames"], "video_tokens": p["tokens"]["video_original"],
                             "llm_tokens_layer0": p["tokens"]["sequence_after_stage1"],
                             "prefill_s": p["metrics"]["prefill_s"],
                             "bench_llm_gflops": p["analytic"]["bench"]["llm_gflops"]})
            if len(rows) >= 2:
                first, last = rows[0], rows[-1]
                out.append({"video": video, "preset": preset, "rows": rows,
                            "time_growth": last["prefill_s"]["median"] / first["prefill_s"]["median"],
                            "flops_growth": last["bench_llm_gflops"] / first["bench_llm_gflops"],
                            "token_growth": last["video_tokens"] / first["video_tokens"],
                            "from_frames": first["frames"], "to_frames": last["frames"]})
    return out


def evaluate_targets(cases: list, preset: str = "paper") -> list:
    out = []
    for key, desc, ok in TARGETS:
        rows = []
        for c in cases:
            p = c["presets"].get(preset)
            if p is None or "ratios" not in p or p["ratios"].get(key) is None:
                continue
            v = p["ratios"][key]
            rows.append({"case": f"{c['video']} {c['frames']}f", "value": v, "met": bool(ok(v))})
        out.append({"target": key, "description": desc, "cases": rows,
                    "met": bool(rows) and all(r["met"] for r in rows)})
    return out


def summarize_throughput(rows: dict) -> None:
    """Medians (min, max) per configuration; speed-ups against batch 1 of the same preset and against the baseline
    at the same batch size; peak memory against batch 1."""
    for row in rows.values():
        runs = row["runs"]
        row["metrics"] = {k: _agg([r["time"][k] for r in runs]) for k in runs[0]["time"]}
        mem = [r for r in row["memory_runs"] + runs if "memory" in r]
        row["metrics"]["peak_rss_bytes"] = _agg([r["memory"]["peak_rss_bytes"] for r in mem])
        row["padding_share"] = statistics.median(r["padding_share"] for r in runs)
        row["answers"] = runs[0]["answers"]
    med = lambda row, k: (row["metrics"].get(k) or {}).get("median")     # noqa: E731
    for (name, b), row in rows.items():
        one, base = rows.get((name, min(bb for n, bb in rows if n == name))), rows.get(("baseline", b))
        row["speedup_vs_batch1"] = med(row, "answers_per_s") / med(one, "answers_per_s") if one else None
        row["speedup_vs_baseline"] = (med(row, "answers_per_s") / med(base, "answers_per_s")
                                      if base and name != "baseline" else None)
        p1, pb = med(one, "peak_rss_bytes") if one else None, med(row, "peak_rss_bytes")
        row["peak_vs_batch1"] = pb / p1 if p1 and pb else None
