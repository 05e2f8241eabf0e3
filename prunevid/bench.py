"""Benchmarks: speed-up, memory saving and overhead of PruneVid against the unpruned baseline, side by side.

    python -m benchmarks            (or: prunevid bench)         the default table, ~14 min on 2 CPU cores
    python -m benchmarks --full                                  every video x 16/32/64 frames x every preset
    python -m benchmarks --throughput                            answers/s at batch 1 / 4 / 8, baseline vs paper

A benchmark measures and reports; it never fails on a timing. Results go to benchmarks/results/<name>.json and
<name>.md (the Markdown is rendered from the JSON).

The bench model (random weights, built once under benchmarks/models/ and loaded through from_pretrained like any
checkpoint) keeps what sets the ratios of Qwen2.5-VL-7B:
- 28 decoder layers, pruning layer 10, grouped-query attention (4 query heads per KV head);
- the 7B's per-layer balance between attention and the rest: a layer costs 4 d n (d + d_kv + 1.5 d_ff + n) FLOPs
  for n tokens, and d + d_kv + 1.5 d_ff = 32 512 as in the 7B (3584 + 512 + 1.5 * 18944). With d = 128 the bench
  LLM is the 7B divided by 28 at every sequence length, so its pruned / unpruned FLOPs ratio for given token counts
  IS the 7B's. (Shrinking d alone would leave the n^2 attention term relatively 8-30x heavier and flatter every
  speed-up.)
- a vision tower (32 blocks, window attention with full attention in blocks 7/15/23/31, like the 7B's) whose FLOPs
  per merged token are the 7B tower's divided by the same 28, so its share of baseline prefill FLOPs is the 7B's
  (about 27 %); the benchmark prints that share, and the measured time share.

Measurement rules:
- everything runs in one worker process, a child of the command (the allocator settings below must not leak into a
  caller such as a test runner or a notebook, and the caller's memory must not count); fp32, SDPA, torch threads 2;
- presets are interleaved inside every repetition (baseline, paper, ..., baseline, paper, ...) so drift hits all
  alike; every number is the median of the repetitions, with min and max;
- timed runs use glibc malloc with mmap off and no trimming (GLIBC_TUNABLES given to the worker), i.e. freed
  memory is reused as a GPU caching allocator reuses it, from a heap pool pre-faulted before the warm-up. With the
  default policy every tensor above 32 MiB is a fresh mmap, page-faulted in and unmapped again: on a 2-core VM
  that kernel work was more than half of the baseline prefill (the bench model's wide MLP makes 350 MB
  temporaries), which says nothing about the method. --default-allocator times with the default policy;
- peak memory comes from one extra, untimed run per configuration (first question, 2 new tokens) with the default
  allocator policy restored and the heap trimmed first: the kernel's resident-set high-water mark (VmHWM), reset
  through /proc/self/clear_refs just before the run, so one process measures every configuration (ru_maxrss
  only grows) and the number is everything the process holds (weights, frames, activations, KV cache), not just
  torch tensors, without the caching policy's fragmentation. Where clear_refs is unavailable a 2 ms RSS sampler
  is used; where mallopt is unavailable (not glibc) the timed runs measure memory themselves;
- decoding ignores end-of-sequence so every run generates exactly --new-tokens tokens (random weights).

--throughput measures batched answering instead (prunevid.batch, what model.generate_batch runs): the same
--requests requests (the sample clips and questions, cycled) answered batch_size at a time, for every batch size
and preset, interleaved inside every repetition; answers per second = requests / wall time from reading the video
files to the last token of the last answer. Peak memory as above: one untimed run per configuration.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .memory import CACHING_TUNABLES, PeakMemory, available_bytes, prefault, set_allocator

PRESET_ORDER = ["baseline", "paper", "conservative", "aggressive", "stage1_only", "stage2_only"]
VIDEOS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
FRAMES = [16, 32, 64]
QUESTIONS = ("What is happening in this video? Describe the main action.",
             "Which objects and colours can be seen in the background?")

# The bench model: see the module docstring. d + d_kv + 1.5 d_ff = 128 + 32 + 32352 = 32512, the 7B's value.
BENCH_MODEL = dict(num_hidden_layers=28, hidden_size=128, intermediate_size=21568, num_attention_heads=4,
                   num_key_value_heads=1, vision_depth=32, vision_hidden_size=256, vision_intermediate_size=480,
                   vision_num_heads=4, seed=0)
BENCH_FULLATT = [7, 15, 23, 31]
# The released vision tower of Qwen2.5-VL-3B/7B/32B (the merger's output width is the LLM's hidden size).
QWEN25VL_VISION = dict(hidden=1280, intermediate=3420, depth=32, fullatt=[7, 15, 23, 31], window=112)
PAPER_FLOPS = (0.20, 0.26)          # PruneVid's reported FLOPs ratios (LLaVA-OneVision .. ST-LLM)
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
    ("flops_ratio_7b", "analytic LLM prefill FLOPs ratio for Qwen2.5-VL-7B <= 0.25x", lambda v: v <= 0.25),
]


# ---------------------------------------------------------------- analytic FLOPs

def vision_flops(t: int, gh: int, gw: int, hidden: int, intermediate: int, depth: int, fullatt, out_hidden: int,
                 window: int = 112, patch: int = 14, merge: int = 2, temporal_patch: int = 2,
                 channels: int = 3) -> float:
    """FLOPs (multiply-add = 2) of Qwen2.5-VL's vision tower + merger on t temporal groups of gh x gw patches.

    Patch embedding, per block qkv + proj (4 w^2) and the gated MLP (3 w w_ff) on every patch, attention (QK^T and
    AV, 4 w per key) inside 112-px windows or, in the full-attention blocks, over each temporal group, and the 2x2
    merger MLP (4w -> 4w -> out).
    """
    P = t * gh * gw
    flops = 2 * P * channels * temporal_patch * patch * patch * hidden
    flops += depth * 2 * P * (4 * hidden * hidden + 3 * hidden * intermediate)
    mh, mw, win = gh // merge, gw // merge, max(1, window // merge // patch)
    window_sq = sum((merge * merge * min(win, mh - r) * min(win, mw - c)) ** 2
                    for r in range(0, mh, win) for c in range(0, mw, win))
    nfull = len([i for i in fullatt if 0 <= i < depth])
    flops += (depth - nfull) * t * 4 * hidden * window_sq
    flops += nfull * t * 4 * hidden * (gh * gw) ** 2
    m = merge * merge * hidden
    flops += 2 * (P // (merge * merge)) * (m * m + m * out_hidden)
    return float(flops)


def llm_flops(layers: int, d: int, d_kv: int, d_ff: int, before: int, after: int, pruning_layer: int) -> float:
    from . import stats
    return stats.prefill_flops(stats.tokens_per_layer(layers, before, after, pruning_layer), d, d_kv, d_ff)


def bench_dims(qm) -> dict:
    """The LLM and vision dimensions of a loaded model, as the FLOPs model needs them."""
    from . import stats
    layers, d, d_kv, d_ff = stats.model_dims(qm)
    vc = qm.config.vision_config
    return {"layers": layers, "d": d, "d_kv": d_kv, "d_ff": d_ff,
            "vision": dict(hidden=vc.hidden_size, intermediate=vc.intermediate_size, depth=vc.depth,
                           fullatt=list(getattr(vc, "fullatt_block_indexes", []) or []),
                           window=getattr(vc, "window_size", 112))}


def real_dims() -> dict:
    from . import stats
    return {name: {"layers": L, "d": d, "d_kv": dkv, "d_ff": dff, "vision": QWEN25VL_VISION}
            for name, (L, d, dkv, dff) in stats.QWEN25VL_DIMS.items()}


def analytic(dims: dict, patch_grid: tuple, seq: dict, pruning_layer: int, ref_layers: int = 28) -> dict:
    """Vision share of baseline prefill, LLM FLOPs ratio and the TTFT bound for one model shape and token counts.

    patch_grid: (t, gh, gw) in patches. seq: sequence_unpruned / after_stage1 / after_stage2 lengths.
    pruning_layer is the measured model's (of ref_layers layers); other depths keep its relative depth.
    """
    L = dims["layers"]
    v = vision_flops(*patch_grid, **dims["vision"], out_hidden=dims["d"])
    base = llm_flops(L, dims["d"], dims["d_kv"], dims["d_ff"], seq["unpruned"], seq["unpruned"], -1)
    pruned = pruning_layer >= 0 and seq["after_stage2"] < seq["after_stage1"]
    M = round(pruning_layer * L / ref_layers) if pruned else -1
    ours = llm_flops(L, dims["d"], dims["d_kv"], dims["d_ff"], seq["after_stage1"], seq["after_stage2"], M)
    return {"vision_gflops": v / 1e9, "llm_gflops_baseline": base / 1e9, "llm_gflops": ours / 1e9,
            "vision_share": v / (v + base), "llm_flops_ratio": ours / base,
            "ttft_bound": (v + base) / (v + ours)}


# ---------------------------------------------------------------- the bench model

def default_root() -> Path:
    """benchmarks/ of the source tree when the package runs from a clone, else ./benchmarks."""
    repo = Path(__file__).resolve().parent.parent / "benchmarks"
    return repo if repo.is_dir() else Path.cwd() / "benchmarks"


def bench_model_path(models_dir: Path, spec: dict | None = None, fullatt=None) -> Path:
    """Build the bench model once into models_dir (cached by its spec) and return its folder."""
    from .testing import build_once, build_tiny_model
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


# ---------------------------------------------------------------- one measured run

def _usage() -> dict:
    try:
        import resource
    except ImportError:
        return {}
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": u.ru_utime, "sys_s": u.ru_stime, "minor_faults": u.ru_minflt}


def _sync(qm):
    import torch
    if qm.device.type == "cuda":
        torch.cuda.synchronize()


def run_once(qm, video_path: str, frames: int, config, new_tokens: int, second_question: bool,
             memory: bool = False) -> dict:
    """Decode the video, answer question 1 (new_tokens tokens), then question 2 through the reuse path.

    TTFT = vision tower (with patchify) + Stage 1 + LLM prefill + Stage 3 + the first token (video decoding is
    excluded: it is the same for every preset). End-to-end = video decoding + TTFT + the remaining tokens.
    The second question reuses the encoded video (Stage-1 output): prefill + Stage 3 + first token.
    memory: trim the heap and record the process's peak resident memory over the run.
    """
    import contextlib

    from . import engine, stage3
    from .video import load_video

    def first_token_clock():
        mark = {}

        def progress(done, total):
            if done == 1 and "t" not in mark:
                _sync(qm)
                mark["t"] = time.perf_counter()
        return mark, progress

    gc.collect()
    rec = {}
    usage0 = _usage()
    with (PeakMemory() if memory else contextlib.nullcontext()) as mem:
        t0 = time.perf_counter()
        clip = load_video(video_path, max_frames=frames, sampling=config.video_sampling, fps=config.sampling_fps,
                          max_pixels=config.max_pixels)
        t1 = time.perf_counter()
        enc = engine.encode(qm, clip, config)
        pf = engine.prefill(enc, QUESTIONS[0], config)
        _sync(qm)
        t2 = time.perf_counter()
        if config.enable_cache_compression:
            pf = stage3.compress(pf)
        _sync(qm)
        t3 = time.perf_counter()
        mark, progress = first_token_clock()
        out = engine.generate(pf, engine.SamplingParams(max_new_tokens=new_tokens), progress=progress)
        _sync(qm)
        t4 = time.perf_counter()
        st, tm = pf.stats, pf.stats["timings"]
        grid = enc.items[0].grid
        del pf, out
        rec["time"] = {
            "video_decode_s": t1 - t0, "vision_s": tm["vision_s"], "stage1_s": tm["stage1_s"],
            "prefill_s": tm["prefill_s"], "stage2_scoring_s": tm["stage2_scoring_s"], "stage3_s": t3 - t2,
            "ttft_s": mark["t"] - t1, "e2e_s": t4 - t0,
            "decode_tokens_per_s": (new_tokens - 1) / (t4 - mark["t"]) if new_tokens > 1 else None,
        }
        usage1 = _usage()
        if second_question:
            t5 = time.perf_counter()
            pf2 = engine.prefill(enc, QUESTIONS[1], config)
            if config.enable_cache_compression:
                pf2 = stage3.compress(pf2)
            mark2, progress2 = first_token_clock()
            engine.generate(pf2, engine.SamplingParams(max_new_tokens=1), progress=progress2)
            rec["time"]["ttft2_s"] = mark2["t"] - t5
            rec["time"]["prefill2_s"] = pf2.stats["timings"]["prefill_s"]
            del pf2
        del enc, clip
    # process CPU time and page faults of the first question (diagnostics: kernel time means allocator churn)
    rec["cpu"] = {k: usage1[k] - usage0[k] for k in usage0}
    rec["tokens"] = {k: st["tokens"][k] for k in ("video_original", "video_after_stage1", "video_after_stage2",
                                                  "text", "sequence_unpruned", "sequence_after_stage1",
                                                  "sequence_after_stage2")}
    rec["patch_grid"] = [grid[0], grid[1] * qm.spatial_merge_size, grid[2] * qm.spatial_merge_size]
    rec["kv"] = {"kv_bytes": st["stage3"]["kv_bytes_after"], "kv_bytes_unpruned": st["stage3"]["kv_bytes_unpruned"]}
    if memory:
        rec["memory"] = {"idle_rss_bytes": mem.idle, "peak_rss_bytes": mem.peak,
                         "peak_over_idle_bytes": mem.peak - mem.idle, "method": mem.method}
    rec["flops"] = dict(st["flops"])
    return rec


# ---------------------------------------------------------------- aggregation

TIME_KEYS = ["video_decode_s", "vision_s", "stage1_s", "prefill_s", "stage2_scoring_s", "stage3_s", "ttft_s",
             "decode_tokens_per_s", "e2e_s", "ttft2_s", "prefill2_s"]
MEM_KEYS = ["peak_rss_bytes", "peak_over_idle_bytes"]


def _agg(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize_case(case: dict, dims: dict) -> None:
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
        p["analytic"] = {"bench": analytic(dims, grid, seq, M, dims["layers"])}
        p["analytic"].update({n: analytic(d, grid, seq, M, dims["layers"]) for n, d in real_dims().items()})
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
        for n in real_dims():
            r[f"flops_ratio_{n.split('-')[-1].lower()}"] = p["analytic"][n]["llm_flops_ratio"]
        r["ttft_bound_7b"] = p["analytic"]["Qwen2.5-VL-7B"]["ttft_bound"]
        p["ratios"] = r
    vb, pbm = med(base, "vision_s"), med(base, "prefill_s")
    case["vision_share"] = {"bench_flops": base["analytic"]["bench"]["vision_share"],
                            "qwen2.5-vl-7b_flops": base["analytic"]["Qwen2.5-VL-7B"]["vision_share"],
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


# ---------------------------------------------------------------- throughput (batched answering)

THROUGHPUT_PRESETS = ["baseline", "paper"]
BATCH_SIZES = [1, 4, 8]
THROUGHPUT_FRAMES = 8


def throughput_requests(n: int, videos: list) -> list:
    """n (video path, question) requests: the clips and the two questions, cycled (clip i % V, question i // V % 2)."""
    paths = [_video_path(v) for v in videos]
    return [(paths[i % len(paths)], QUESTIONS[(i // len(paths)) % len(QUESTIONS)]) for i in range(n)]


def run_throughput_once(qm, requests: list, frames: int, config, batch_size: int, new_tokens: int,
                        memory: bool = False) -> dict:
    """Answer every request, batch_size at a time, as model.generate_batch does: per batch, read and encode each
    request's video (vision tower + Stage 1), one batched prefill (+ Stage 3), batched decoding.

    Returns the wall time and its parts, and (memory=True) the process's peak resident memory over the run.
    """
    import contextlib

    from . import batch, engine
    from .video import load_video

    gc.collect()
    parts = {"encode_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0}
    real = padded = answers = tokens = 0
    with (PeakMemory() if memory else contextlib.nullcontext()) as mem:
        t0 = time.perf_counter()
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            t1 = time.perf_counter()
            encoded = [engine.encode(qm, load_video(path, max_frames=frames, sampling=config.video_sampling,
                                                    fps=config.sampling_fps, max_pixels=config.max_pixels), config)
                       for path, _ in chunk]
            t2 = time.perf_counter()
            bp = batch.prefill_batch(encoded, [q for _, q in chunk], config)
            real += int(bp.lengths[0].sum())
            padded += bp.size * bp.cache.lengths[0]
            if config.enable_cache_compression:
                bp = batch.compress_batch(bp)
            _sync(qm)
            t3 = time.perf_counter()
            outs = batch.generate_batch(bp, [engine.SamplingParams(max_new_tokens=new_tokens)] * bp.size)
            _sync(qm)
            t4 = time.perf_counter()
            parts["encode_s"] += t2 - t1
            parts["prefill_s"] += t3 - t2
            parts["decode_s"] += t4 - t3
            answers += len(outs)
            tokens += sum(len(o["ids"]) for o in outs)
            del bp, outs, encoded
        total = time.perf_counter() - t0
    rec = {"time": {"total_s": total, "answers_per_s": answers / total, **parts}, "answers": answers,
           "new_tokens": tokens, "padding_share": 1 - real / max(1, padded)}
    if memory:
        rec["memory"] = {"idle_rss_bytes": mem.idle, "peak_rss_bytes": mem.peak,
                         "peak_over_idle_bytes": mem.peak - mem.idle, "method": mem.method}
    return rec


def throughput_worker(args, qm, dims, path, root, caching, started) -> int:
    from .config import get_preset
    presets = _items(args.presets) or THROUGHPUT_PRESETS
    sizes = [int(b) for b in _items(args.batch_sizes)] or BATCH_SIZES
    frames = ([int(f) for f in _items(args.frames)] or [THROUGHPUT_FRAMES])[0]
    videos = _items(args.videos) or list(VIDEOS)
    requests = throughput_requests(args.requests, videos)
    configs = {name: get_preset(name, max_pixels=args.max_pixels) for name in presets}
    if caching:
        tokens = (frames // 2 * (args.max_pixels // 28**2) + 128) * max(sizes)
        pool = min(int(4 * tokens * dims["d_ff"] * 4 + 2**28), available_bytes() // 2)
        prefault(pool)
        _log(f"[bench] pre-faulted a {pool / 2**30:.1f} GiB heap pool")
    for name in presets:                   # warm-up (not recorded)
        run_throughput_once(qm, requests[:2], 4, configs[name], 2, 2)
    _log(f"[bench] warm-up done after {time.perf_counter() - started:.0f} s")
    rows = {(n, b): {"preset": n, "batch_size": b, "runs": [], "memory_runs": []} for b in sizes for n in presets}
    for rep in range(args.reps):
        for b in sizes:
            for name in presets:
                rec = run_throughput_once(qm, requests, frames, configs[name], b, args.new_tokens,
                                          memory=not caching)
                rows[name, b]["runs"].append(rec)
                t = rec["time"]
                _log(f"[bench] throughput rep {rep + 1}/{args.reps} batch {b} {name:>8}: {t['answers_per_s']:.3f} "
                     f"answers/s ({t['total_s']:.1f} s: encode {t['encode_s']:.1f}, prefill {t['prefill_s']:.1f}, "
                     f"decode {t['decode_s']:.1f}; padding {100 * rec['padding_share']:.0f} %)  "
                     f"[{time.perf_counter() - started:.0f}s]")
    if caching:
        set_allocator("default")
        for (name, b), row in rows.items():
            rec = run_throughput_once(qm, requests, frames, configs[name], b, 2, memory=True)
            row["memory_runs"].append(rec)
            _log(f"[bench] throughput memory batch {b} {name:>8}: peak {rec['memory']['peak_rss_bytes'] / 2**20:.0f} "
                 f"MiB  [{time.perf_counter() - started:.0f}s]")
    summarize_throughput(rows)
    mem_methods = {r["memory"]["method"] for row in rows.values() for r in row["runs"] + row["memory_runs"]
                   if "memory" in r}
    res = {"meta": {"name": args.name, "kind": "throughput", "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                    "command": args.command or "python -m benchmarks --throughput", "reps": args.reps,
                    "new_tokens": args.new_tokens, "requests": [[Path(p).name, q] for p, q in requests],
                    "frames": frames, "max_pixels": args.max_pixels, "dtype": args.dtype, "device": str(qm.device),
                    "model": str(path), "model_dims": dims, "model_description": describe_model(qm, dims),
                    "allocator": ("glibc caching policy for timed runs (mmap off, no trim); default policy for the "
                                  "memory runs") if caching else "default",
                    "memory_method": ", ".join(sorted(m for m in mem_methods if m)),
                    "machine": machine_info(args.threads), "wall_time_s": None},
           "rows": list(rows.values())}
    res["meta"]["wall_time_s"] = time.perf_counter() - started
    out_dir = Path(args.out_dir) if args.out_dir else root / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_throughput_markdown(res)
    (out_dir / f"{args.name}.json").write_text(json.dumps(_finite(res), indent=1, default=_json_default) + "\n")
    (out_dir / f"{args.name}.md").write_text(md)
    print(md)
    if args.readme:
        update_readme(Path(args.readme), md, THROUGHPUT_START, THROUGHPUT_END)
        _log(f"[bench] updated the throughput table in {args.readme}")
    _log(f"[bench] wrote {out_dir / (args.name + '.json')} and .md in {res['meta']['wall_time_s'] / 60:.1f} min")
    return 0


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


def render_throughput_markdown(res: dict) -> str:
    meta, L = res["meta"], []
    mach = meta["machine"]
    clips = sorted({p for p, _ in meta["requests"]})
    L.append(f"### Throughput `{meta['name']}` ({meta['date']})")
    L.append("")
    L.append(f"- Command: `{meta['command']}` — wall time {meta['wall_time_s'] / 60:.1f} min")
    L.append(f"- Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, torch threads {mach['torch_threads']}; "
             f"torch {mach['torch']}, transformers {mach['transformers']}; {meta['dtype']} on {meta['device']}, SDPA")
    L.append(f"- Model: {meta['model_description']}")
    L.append(f"- {len(meta['requests'])} requests ({', '.join(clips)} cycled, two questions), {meta['frames']} frames "
             f"each at max_pixels {meta['max_pixels']}, {meta['new_tokens']} new tokens per answer (end-of-sequence "
             f"ignored). Answers/s = requests / wall time from reading the video files to the last token, through "
             f"`prunevid.batch` (what `model.generate_batch` runs); median of {meta['reps']} repetition"
             f"{'s' if meta['reps'] != 1 else ''} (min–max), configurations interleaved per repetition. Time columns "
             "sum over the batches: video decoding + vision tower + Stage 1, LLM prefill (+ Stage 3), decoding. "
             f"Padding = share of the prefill's layer-0 columns that were padding. Peak = process RSS high-water mark "
             f"({meta['memory_method']}), one untimed run per configuration (2 new tokens). Allocator: "
             f"{meta['allocator']}.")
    L.append("")
    L.append("| preset | batch | answers/s | × batch 1 | × baseline | video + vision + S1 s | LLM prefill s | decode s "
             "| padding % | peak RSS MiB | peak × batch 1 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in res["rows"]:
        m = row["metrics"]
        L.append(f"| {row['preset']} | {row['batch_size']} | {_rng(m['answers_per_s'], 3)} | "
                 f"{_f(row['speedup_vs_batch1'])} | {_f(row['speedup_vs_baseline'])} | {_rng(m['encode_s'], 1)} | "
                 f"{_rng(m['prefill_s'], 1)} | {_rng(m['decode_s'], 1)} | {100 * row['padding_share']:.0f} | "
                 f"{_mib(m['peak_rss_bytes'])} | {_f(row['peak_vs_batch1'])} |")
    L.append("")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- Markdown

def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _rng(m, nd=2, scale=1.0):
    if not m:
        return "–"
    return f"{m['median'] * scale:.{nd}f} ({m['min'] * scale:.{nd}f}–{m['max'] * scale:.{nd}f})"


def _mib(m):
    return "–" if not m else f"{m['median'] / 2**20:.0f}"


def _kib_mib(m):
    if not m:
        return "–"
    v = m["median"] / 2**20
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def render_markdown(res: dict) -> str:
    meta, L = res["meta"], []
    mach = meta["machine"]
    L.append(f"### Benchmark `{meta['name']}` ({meta['date']})")
    L.append("")
    L.append(f"- Command: `{meta['command']}` — wall time {meta['wall_time_s'] / 60:.1f} min")
    L.append(f"- Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, torch threads {mach['torch_threads']}, "
             f"{'?' if mach['ram_gib'] is None else round(mach['ram_gib'])} GiB RAM; {mach['os']}; Python {mach['python']}, torch {mach['torch']}, "
             f"transformers {mach['transformers']}; {meta['dtype']} on {meta['device']}, SDPA")
    L.append(f"- Model: {meta['model_description']}")
    vs = [c["vision_share"] for c in res["cases"] if c.get("vision_share")]
    if vs:
        L.append("- Vision tower share of baseline prefill FLOPs: "
                 + ", ".join(f"{c['video']} {c['frames']}f {100 * c['vision_share']['bench_flops']:.1f} %"
                             for c in res["cases"] if c.get("vision_share"))
                 + " (Qwen2.5-VL-7B at the same token counts: "
                 + ", ".join(f"{100 * v['qwen2.5-vl-7b_flops']:.1f} %" for v in vs)
                 + "); measured time share: "
                 + ", ".join("–" if v["bench_time"] is None else f"{100 * v['bench_time']:.1f} %" for v in vs))
    L.append(f"- Median of {meta['reps']} repetition{'s' if meta['reps'] != 1 else ''} (min–max), presets interleaved per repetition; "
             f"{meta['new_tokens']} new tokens per answer. TTFT = vision tower + Stage 1 + LLM prefill + Stage 3 + "
             "first token (video decoding excluded); end-to-end adds video decoding and the remaining tokens; "
             "2nd-q TTFT = a second question on the kept Stage-1 output (vision tower not re-run). Peak = process "
             f"RSS high-water mark ({meta['memory_method']}), {meta['memory_runs']}. Allocator: {meta['allocator']}.")
    L.append("")
    L.append("#### Measurements (seconds unless noted)")
    L.append("")
    L.append("| video | frames | preset | video tokens: in → S1 → S2 | vision | LLM prefill | TTFT | 2nd-q TTFT "
             "| decode tok/s | end-to-end | peak RSS MiB | KV MiB |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in res["cases"]:
        for name, p in c["presets"].items():
            t, m = p["tokens"], p["metrics"]
            L.append(f"| {c['video']} | {c['frames']} | {name} | {t['video_original']} → "
                     f"{t['video_after_stage1']} → {t['video_after_stage2']} | {_rng(m['vision_s'])} | "
                     f"{_rng(m['prefill_s'])} | "
                     f"{_rng(m['ttft_s'])} | {_rng(m['ttft2_s'])} | {_rng(m['decode_tokens_per_s'], 1)} | "
                     f"{_rng(m['e2e_s'])} | {_mib(m['peak_rss_bytes'])} | {_kib_mib(m['kv_bytes'])} |")
    L.append("")
    L.append("#### Against baseline (same run)")
    L.append("")
    L.append("| video | frames | preset | prefill × | TTFT × | TTFT bound × | 2nd-q TTFT × | end-to-end × | KV % "
             "| peak % | S1+S2 overhead % | LLM FLOPs ratio bench / 3B / 7B / 32B | 7B TTFT bound × |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in res["cases"]:
        for name, p in c["presets"].items():
            r = p.get("ratios")
            if not r or name == "baseline":
                continue
            pct = lambda x: "–" if x is None else f"{100 * x:.1f}"     # noqa: E731
            flops = " / ".join(_f(r[k], 3) for k in ("flops_ratio_bench", "flops_ratio_3b", "flops_ratio_7b",
                                                      "flops_ratio_32b"))
            L.append(f"| {c['video']} | {c['frames']} | {name} | {_f(r['prefill_speedup'])} | "
                     f"{_f(r['ttft_speedup'])} | {_f(r['ttft_bound'])} | {_f(r['ttft2_speedup'])} | "
                     f"{_f(r['e2e_speedup'])} | {pct(r['kv_ratio'])} | {pct(r['peak_ratio'])} | "
                     f"{pct(r['overhead_share'])} | {flops} | {_f(r['ttft_bound_7b'])} |")
    L.append("")
    L.append(f"The paper reports {PAPER_FLOPS[0]:.2f}–{PAPER_FLOPS[1]:.2f}× FLOPs (PLLaVA, ST-LLM, "
             "LLaVA-OneVision). "
             "TTFT bound: the TTFT speed-up if only the LLM prefill shrank, exactly by the bench model's FLOPs "
             "ratio, and Stages 1–3 cost nothing; 7B TTFT bound: the same from the analytic FLOPs of the real "
             "Qwen2.5-VL-7B (vision tower + LLM) at these token counts.")
    if res.get("scaling"):
        L.append("")
        L.append("#### Scaling of LLM prefill time with frames")
        L.append("")
        L.append("| video | preset | " + " | ".join(f"{r['frames']} frames" for r in res["scaling"][0]["rows"])
                 + " | time growth | FLOPs growth | video-token growth |")
        L.append("|---|---|" + "---|" * (len(res["scaling"][0]["rows"]) + 3))
        for s in res["scaling"]:
            cells = " | ".join(f"{_rng(r['prefill_s'])} s ({r['llm_tokens_layer0']} tok)" for r in s["rows"])
            L.append(f"| {s['video']} | {s['preset']} | {cells} | {_f(s['time_growth'])}× | "
                     f"{_f(s['flops_growth'])}× | {_f(s['token_growth'])}× |")
    L.append("")
    L.append("#### Targets (paper preset)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in res["targets"]:
        vals = ", ".join(f"{r['case']}: {_f(r['value'], 3)}{'' if r['met'] else ' ✗'}" for r in t["cases"]) or "–"
        L.append(f"| {t['description']} | {vals} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(L) + "\n"


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


THROUGHPUT_START, THROUGHPUT_END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def update_readme(path: Path, md: str, start: str = README_START, end: str = README_END) -> None:
    """Replace the text between the bench markers (or the given ones) in a README with the latest measured tables."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{md}{end}{tail}")


# ---------------------------------------------------------------- machine

def machine_info(threads: int) -> dict:
    import torch
    import transformers
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads, "ram_gib": ram,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def describe_model(qm, dims) -> str:
    tc, vc = qm.text_config, qm.config.vision_config
    hd = tc.hidden_size // tc.num_attention_heads
    bal = dims["d"] + dims["d_kv"] + 1.5 * dims["d_ff"]
    return (f"{Path(qm.name).name} — LLM {dims['layers']} layers, d {dims['d']}, "
            f"{tc.num_attention_heads} query heads / {tc.num_key_value_heads} KV heads of {hd}, MLP {dims['d_ff']} "
            f"(d + d_kv + 1.5·d_ff = {bal:.0f}; "
            f"Qwen2.5-VL-7B: 32512); vision {vc.depth} blocks of width {vc.hidden_size} (MLP {vc.intermediate_size}, "
            f"full attention in blocks {dims['vision']['fullatt']}); random weights")


# ---------------------------------------------------------------- plan and worker

def plan(args) -> list:
    """[(video, frames, presets, second_question)] in run order."""
    presets = _items(args.presets) or None
    second = not args.no_second_question
    if args.full or args.videos or args.frames:
        videos = _items(args.videos) or list(VIDEOS)
        frames = [int(f) for f in _items(args.frames)] or FRAMES
        return [(v, f, presets or PRESET_ORDER, second) for f in frames for v in videos]
    # default: every preset on the three videos at 16 frames (the library's default max_frames), and baseline +
    # paper on bigbuckbunny at 32 and 64 frames for the scaling table (first question only)
    main = [(v, 16, presets or PRESET_ORDER, second) for v in VIDEOS]
    scale = [("bigbuckbunny", f, presets or ["baseline", "paper"], False) for f in (32, 64)]
    return main + scale


def _items(arg: str | None) -> list:
    """A comma-separated option as a list, blanks dropped ("paper," is just paper)."""
    return [x.strip() for x in (arg or "").split(",") if x.strip()]


def _video_path(name: str) -> str:
    from .video import sample_video_path
    if name in VIDEOS:
        return str(sample_video_path(VIDEOS[name]))
    if Path(name).is_file():
        return name
    return str(sample_video_path(name))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker(args) -> int:
    import torch

    from . import qwen
    from .config import get_preset
    caching = (not args.default_allocator) and set_allocator("caching")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = Path(args.root) if args.root else default_root()
    if args.model == "bench":
        path = bench_model_path(Path(args.models_dir) if args.models_dir else root / "models")
    elif args.model == "tiny":
        from .testing import tiny_model_path
        path = tiny_model_path()
    else:
        path = Path(args.model)
    _log(f"[bench] loading {path}")
    qm = qwen.load(str(path), dtype=args.dtype, device=args.device)
    qm.eos_token_ids = []          # exactly --new-tokens tokens per answer, like vLLM's ignore_eos
    dims = bench_dims(qm)
    if args.throughput:
        return throughput_worker(args, qm, dims, path, root, caching, started)
    cases_plan = plan(args)
    configs = {name: get_preset(name, max_pixels=args.max_pixels) for _, _, ps, _ in cases_plan for name in ps}

    if caching:
        # a pre-faulted pool: the caching policy keeps it resident, so no timed run pays first-touch page faults
        tokens = max(f for _, f, _, _ in cases_plan) // 2 * (args.max_pixels // 28**2) + 128
        pool = min(int(8 * tokens * dims["d_ff"] * 4 + 2**28), available_bytes() // 2)
        prefault(pool)
        _log(f"[bench] pre-faulted a {pool / 2**30:.1f} GiB heap pool")
    # warm-up (not recorded): lazy kernel set-up and the first touch of the (memory-mapped) weights go here
    v0 = _video_path(cases_plan[0][0])
    for name in [n for n in configs if n in ("baseline", "paper")] or list(cases_plan[0][2]):
        run_once(qm, v0, 4, configs[name], 2, True)
    _log(f"[bench] warm-up done after {time.perf_counter() - started:.0f} s")

    cases = []
    for video, frames, presets, second in cases_plan:
        vpath = _video_path(video)
        case = {"video": video, "frames": frames, "video_path": vpath, "second_question": second,
                "pruning_layer": {n: configs[n].pruning_layer if configs[n].prunes_in_llm else -1 for n in presets},
                "presets": {n: {"config": configs[n].to_dict(), "runs": [], "memory_runs": []} for n in presets}}
        for rep in range(args.reps):
            for name in presets:
                rec = run_once(qm, vpath, frames, configs[name], args.new_tokens, second, memory=not caching)
                rec["rep"] = rep
                case["presets"][name]["runs"].append(rec)
                t, tok = rec["time"], rec["tokens"]
                _log(f"[bench] {video} {frames}f rep {rep + 1}/{args.reps} {name:>12}: tokens "
                     f"{tok['video_original']}->{tok['video_after_stage1']}->{tok['video_after_stage2']}  "
                     f"vision {t['vision_s']:.2f}s prefill {t['prefill_s']:.2f}s ttft {t['ttft_s']:.2f}s "
                     f"ttft2 {t.get('ttft2_s', float('nan')):.2f}s e2e {t['e2e_s']:.2f}s  "
                     f"(cpu sys {rec['cpu'].get('sys_s', 0):.1f}s, {rec['cpu'].get('minor_faults', 0)} faults)  "
                     f"[{time.perf_counter() - started:.0f}s]")
        cases.append(case)

    if caching:                    # peak memory: one untimed run per configuration under the default policy
        set_allocator("default")
        for case in cases:
            for name, p in case["presets"].items():
                rec = run_once(qm, case["video_path"], case["frames"], configs[name], 2, False, memory=True)
                p["memory_runs"].append(rec)
                m = rec["memory"]
                _log(f"[bench] {case['video']} {case['frames']}f memory {name:>12}: peak "
                     f"{m['peak_rss_bytes'] / 2**20:.0f} MiB (idle {m['idle_rss_bytes'] / 2**20:.0f} MiB)  "
                     f"[{time.perf_counter() - started:.0f}s]")
    for case in cases:
        summarize_case(case, dims)

    mem_methods = {r["memory"]["method"] for c in cases for p in c["presets"].values()
                   for r in p["runs"] + p["memory_runs"] if "memory" in r}
    res = {"meta": {"name": args.name, "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                    "command": args.command or "python -m benchmarks", "reps": args.reps,
                    "new_tokens": args.new_tokens, "questions": list(QUESTIONS), "max_pixels": args.max_pixels,
                    "dtype": args.dtype, "device": str(qm.device), "model": str(path),
                    "model_dims": dims, "model_description": describe_model(qm, dims),
                    "allocator": ("glibc caching policy for timed runs (mmap off, no trim); default policy for the "
                                  "memory runs") if caching else "default",
                    "memory_method": ", ".join(sorted(m for m in mem_methods if m)),
                    "memory_runs": ("one untimed run per configuration (first question, 2 new tokens), default "
                                    "allocator policy") if caching else "every timed run",
                    "machine": machine_info(args.threads), "wall_time_s": None},
           "cases": cases}
    res["scaling"] = scaling(cases)
    res["targets"] = evaluate_targets(cases)
    res["meta"]["wall_time_s"] = time.perf_counter() - started
    out_dir = Path(args.out_dir) if args.out_dir else root / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_markdown(res)
    (out_dir / f"{args.name}.json").write_text(json.dumps(_finite(res), indent=1, default=_json_default) + "\n")
    (out_dir / f"{args.name}.md").write_text(md)
    print(md)
    if args.readme:
        update_readme(Path(args.readme), md)
        _log(f"[bench] updated the measured table in {args.readme}")
    _log(f"[bench] wrote {out_dir / (args.name + '.json')} and .md in {res['meta']['wall_time_s'] / 60:.1f} min")
    for c in cases:
        v = c.get("vision_share")
        lo, hi = VISION_SHARE_RANGE
        if v and not lo <= v["bench_flops"] <= hi:
            _log(f"[bench] note: vision share {100 * v['bench_flops']:.1f} % for {c['video']} {c['frames']}f is "
                 f"outside {100 * lo:.0f}-{100 * hi:.0f} % (Qwen2.5-VL-7B: {100 * v['qwen2.5-vl-7b_flops']:.1f} %)")
    return 0


def _json_default(o):
    return str(o)                  # Paths, numpy scalars and the like


def _finite(x):
    """NaN and infinities become null: json.dumps would write NaN, which strict JSON readers reject."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _command_line(argv) -> str:
    prog = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if prog is not None and prog.name == "__main__.py" and prog.parent.name == "benchmarks":
        head = "python -m benchmarks"
    elif prog is not None and prog.name == "prunevid":
        head = "prunevid bench"
    else:
        head = "python -m prunevid.bench"
    return " ".join([head] + [shlex.quote(a) for a in argv])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prunevid bench", description=(
        "Measure PruneVid against the unpruned baseline: token counts, vision / prefill / TTFT / decode / "
        "end-to-end time, peak memory, KV-cache bytes, ratios and the analytic FLOPs model. Default: every preset "
        "on bigbuckbunny, bikes and carphone at 16 frames (the library's default max_frames), plus baseline and "
        "paper on bigbuckbunny at 32 and 64 frames (scaling); about 14 min on 2 CPU cores."))
    ap.add_argument("--full", action="store_true",
                    help="every video x 16/32/64 frames x every preset (estimated ~45 min)")
    ap.add_argument("--videos", help=f"comma-separated: {', '.join(VIDEOS)} or video paths")
    ap.add_argument("--frames", help="comma-separated frame counts (default 16,32,64 with --videos)")
    ap.add_argument("--presets", help=f"comma-separated (default: {','.join(PRESET_ORDER)})")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per configuration (median, min, max)")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated for the first question")
    ap.add_argument("--no-second-question", action="store_true", help="skip the reuse-path question")
    ap.add_argument("--model", default="bench", help="'bench' (built under benchmarks/models), 'tiny', or a folder")
    ap.add_argument("--max-pixels", type=int, default=448 * 448, help="per frame (library default 448*448)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--name", help="result file name (default: 'default', 'full' or 'custom')")
    ap.add_argument("--root", help="benchmarks folder (default: the clone's benchmarks/, else ./benchmarks)")
    ap.add_argument("--out-dir", help="where to write <name>.json and .md (default: <root>/results)")
    ap.add_argument("--models-dir", help="where the bench model is built (default: <root>/models)")
    ap.add_argument("--readme", help="also put the tables between the bench markers of this README")
    ap.add_argument("--default-allocator", action="store_true",
                    help="time with glibc's default malloc policy (see the module docstring)")
    ap.add_argument("--throughput", action="store_true",
                    help="measure answers/s of batched answering instead: --requests requests at every --batch-sizes "
                         f"(default {','.join(map(str, BATCH_SIZES))}), presets baseline,paper, "
                         f"{THROUGHPUT_FRAMES} frames unless --frames")
    ap.add_argument("--batch-sizes", help="with --throughput: comma-separated batch sizes")
    ap.add_argument("--requests", type=int, default=8, help="with --throughput: requests answered per configuration")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--command", help=argparse.SUPPRESS)
    return ap


def check_args(ap: argparse.ArgumentParser, args) -> None:
    """Bad values stop here with a usage error, not minutes later inside the worker."""
    from .config import PRESETS
    for name in ("reps", "new_tokens", "threads", "requests"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    unknown = [p for p in _items(args.presets) if p not in PRESETS]
    if unknown:
        ap.error(f"--presets: unknown {', '.join(unknown)}; choose from {', '.join(sorted(PRESETS))}")
    try:
        frames = [int(f) for f in _items(args.frames)]
    except ValueError:
        ap.error(f"--frames {args.frames!r}: write whole numbers separated by commas, e.g. 16,32")
    if any(f < 2 for f in frames):
        ap.error("--frames: every frame count must be at least 2")
    try:
        sizes = [int(b) for b in _items(args.batch_sizes)]
    except ValueError:
        ap.error(f"--batch-sizes {args.batch_sizes!r}: write whole numbers separated by commas, e.g. 1,4,8")
    if any(b < 1 for b in sizes):
        ap.error("--batch-sizes: every batch size must be at least 1")
    if args.throughput and len(frames) > 1:
        ap.error("--throughput takes one frame count (--frames 8)")
    if (args.batch_sizes is not None or args.requests != 8) and not args.throughput:
        ap.error("--batch-sizes and --requests go with --throughput")
    for v in _items(args.videos):
        if v not in VIDEOS and not Path(v).is_file():
            ap.error(f"--videos: {v!r} is neither a sample ({', '.join(VIDEOS)}) nor a file")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    check_args(ap, args)
    command = _command_line(argv)
    if args.name is None:
        args.name = ("throughput" if args.throughput else "full" if args.full else
                     "custom" if (args.videos or args.frames or args.presets) else "default")
        argv += ["--name", args.name]
    # run the measurements in a fresh process: the allocator policy must not leak into the caller, and the
    # caller's own memory (a test runner, a notebook) must not count
    env = dict(os.environ)
    if not args.default_allocator and platform.system() == "Linux":
        env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), CACHING_TUNABLES) if t)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "prunevid.bench", *argv, "--worker", "--command", command]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
