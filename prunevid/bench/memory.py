"""Memory benchmark: weight bytes and peak prefill memory with quantization none / 8bit / 4bit on the bench model,
and the analytic weight bytes of the released Qwen2.5-VL models.

    python -m prunevid.bench.memory             # 38 min on a shared 2-core VM (docs/performance.md)
    python -m prunevid.bench.memory --readme    # also put the tables between the memory markers of that file

Every configuration runs in a fresh worker process (the weights of one mode must not count in the next), on the
bench model (prunevid.bench.model: random weights, the 7B's layer balance), fp32 / bf16 on the CPU with SDPA and 2
torch threads. It loads the model, runs one warm-up question, then one first question per preset (vision tower,
Stage 1, prefill, Stage 3, 2 new tokens) with glibc's default allocator policy and a trimmed heap, measuring the
process's resident-set high-water mark over the run (process.PeakMemory) as the speed benchmark does. Weight bytes are
counted from the loaded tensors (quantize.weight_bytes). A benchmark measures and reports; it asserts nothing.

The released models' weight bytes are analytic (quantize.estimate_weight_bytes on their configs): what the weights
take on a GPU; activations, the KV cache and the CUDA context come on top.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .measure import VIDEOS, run_once, video_path
from .model import bench_model_path, default_root, model_path
from .process import PeakMemory, _rss, set_allocator
from .report import checked_doc, machine_info, write_results

MODES = [("none", "fp32"), ("none", "bf16"), ("8bit", "bf16"), ("4bit", "bf16")]
PRESETS = ("baseline", "paper")
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, spatial_merge_size=2,
              patch_size=14, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])


def _released(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool) -> dict:
    return {"model_type": "qwen2_5_vl", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab, "tie_word_embeddings": tied, "vision_config": {**VISION, "out_hidden_size": hidden}}


# The language models of the released Qwen2.5-VL-*-Instruct checkpoints (their config.json), all with the same
# 32-block vision tower. They reproduce the published parameter counts 3.75B / 8.29B / 33.5B / 73.4B.
RELEASED = {
    "3B": _released(2048, 11008, 36, 16, 2, 151936, True),
    "7B": _released(3584, 18944, 28, 28, 4, 152064, False),
    "32B": _released(5120, 27648, 64, 40, 8, 152064, False),
    "72B": _released(8192, 29568, 80, 64, 8, 152064, False),
}


def analytic_table() -> list:
    """[(model, {mode: bytes})] for the released models in bf16, 8-bit and 4-bit."""
    import torch

    from ..quantize import QUANTIZATIONS, estimate_weight_bytes
    return [(name, {m: estimate_weight_bytes(cfg, m, torch.bfloat16) for m in QUANTIZATIONS})
            for name, cfg in RELEASED.items()]


def worker(args) -> int:
    """One (quantization, dtype): load, warm up, measure every preset; print one JSON line."""
    import torch

    from .. import loader
    from ..config import get_preset

    torch.set_num_threads(args.threads)
    set_allocator("default")
    path = model_path(args.model, Path(args.models_dir))
    video = video_path(args.video)
    # imports first: their memory is the runtime's, not the model's
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration  # noqa: F401
    if args.quantization != "none":
        import bitsandbytes  # noqa: F401
    before = _rss()
    with PeakMemory() as load:
        t0 = time.perf_counter()
        qm = loader.load(str(path), dtype=args.dtype, device="cpu", quantization=args.quantization)
        load_s = time.perf_counter() - t0
    qm.eos_token_ids = []          # exactly the asked number of tokens, as in the speed benchmark
    configs = {name: get_preset(name, max_pixels=args.max_pixels) for name in PRESETS}
    run_once(qm, video, 4, configs["paper"], 2, False)                     # warm-up, not recorded
    out = {"quantization": args.quantization, "dtype": args.dtype, "weight_bytes": sum(qm.weight_bytes.values()),
           "rss_before_load": before, "load_peak_rss": load.peak, "load_s": load_s, "presets": {}}
    for name, cfg in configs.items():
        rec = run_once(qm, video, args.frames, cfg, 2, False, memory=True)
        mem = rec["memory"]
        out["presets"][name] = {"idle_rss": mem["idle_rss_bytes"], "peak_rss": mem["peak_rss_bytes"],
                                "prefill_s": rec["time"]["prefill_s"], "ttft_s": rec["time"]["ttft_s"],
                                "kv_bytes": rec["kv"]["kv_bytes"],
                                "tokens": rec["tokens"], "method": rec["memory"]["method"]}
    print(json.dumps(out), flush=True)
    return 0


def _machine(threads: int) -> str:
    from importlib.metadata import version

    m = machine_info(threads)
    return (f"{m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {threads}, {m['ram_gib']:.0f} GiB RAM; "
            f"{m['os']}; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
            f"bitsandbytes {version('bitsandbytes')}")


def _mib(n) -> str:
    return f"{n / 2**20:,.0f}"


def _gib(n) -> str:
    return f"{n / 2**30:.1f}"


def render_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"### Memory benchmark ({m['date']})", "",
             f"- Command: `{m['command']}` — wall time {m['wall_time_s'] / 60:.1f} min",
             f"- Machine: {m['machine']}",
             f"- Model: {m['model']}; {m['video']} at {m['frames']} frames (max_pixels {m['max_pixels']}), "
             f"first question, 2 new tokens; CPU, SDPA",
             "- weights: bytes of the loaded tensors, quantisation state included. Memory is the process's resident "
             "set (RSS), counted from just before the model load, after the imports, so the Python / torch / "
             "transformers / bitsandbytes runtime (0.7-1.0 GB here) is left out: loaded = RSS added by the load "
             "and a warm-up question (weights, plus kernels set up on first use: bitsandbytes compiles its CPU "
             f"kernels with torch.compile) and its peak while loading; prefill peak = the high-water mark over one "
             f"question ({m['memory_method']}): weights + frames + activations + KV cache; activations = that peak "
             "minus the RSS just before the question. The prefill times are in memory.json, not here: the "
             "memory runs use glibc's default allocator policy (see prunevid.bench) and are not timing runs.", "",
             "| quantization | dtype | weights MiB | loaded MiB (peak while loading) | "
             + " | ".join(f"{p}: prefill peak MiB (activations) | {p}: KV cache MiB" for p in PRESETS) + " |",
             "|---|---|---|---|" + "---|---|" * len(PRESETS)]
    for r in res["runs"]:
        base = r["rss_before_load"]
        idle = min(x["idle_rss"] for x in r["presets"].values())
        cells = [r["quantization"], r["dtype"], _mib(r["weight_bytes"]),
                 f"{_mib(idle - base)} ({_mib(r['load_peak_rss'] - base)})"]
        for p in PRESETS:
            x = r["presets"][p]
            cells += [f"{_mib(x['peak_rss'] - base)} ({_mib(x['peak_rss'] - x['idle_rss'])})",
                      f"{x['kv_bytes'] / 2**20:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Analytic weight bytes of the released models (GiB; vision tower, embeddings and lm_head in bf16 "
              "in every mode):", "", "| model | bf16 | 8bit | 4bit (NF4) |", "|---|---|---|---|"]
    for name, b in res["analytic"]:
        lines.append(f"| Qwen2.5-VL-{name}-Instruct | {_gib(b['none'])} | {_gib(b['8bit'])} | {_gib(b['4bit'])} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m prunevid.bench.memory", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bench", help="'bench' (built under benchmarks/models) or a folder")
    ap.add_argument("--video", default="bikes", help=f"{', '.join(VIDEOS)} or a path (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=448 * 448)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default=",".join(f"{q}:{d}" for q, d in MODES),
                    help="comma-separated quantization:dtype pairs (default: %(default)s)")
    ap.add_argument("--models-dir", default=str(default_root() / "models"))
    ap.add_argument("--out-dir", default=str(default_root() / "results"))
    ap.add_argument("--readme", nargs="?", const="", metavar="FILE",
                    help="also put the tables between their markers in docs/performance.md (or in FILE)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quantization", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    doc = checked_doc(ap, args.readme, "memory")
    started = time.perf_counter()
    if args.model == "bench":
        bench_model_path(Path(args.models_dir))     # built here once: building must not count in a worker
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    runs = []
    for pair in args.modes.split(","):
        quantization, dtype = pair.split(":")
        print(f"[bench-memory] {quantization} {dtype} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "prunevid.bench.memory", *argv, "--worker", "--quantization", quantization,
               "--dtype", dtype]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[bench-memory] {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    methods = {p["method"] for r in runs for p in r["presets"].values()}
    res = {"meta": {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                    "command": " ".join(["python -m prunevid.bench.memory", *argv]),
                    "machine": _machine(args.threads),
                    "model": "the bench model (prunevid.bench.BENCH_MODEL)" if args.model == "bench" else args.model,
                    "video": args.video, "frames": args.frames, "max_pixels": args.max_pixels,
                    "memory_method": ", ".join(sorted(methods)), "wall_time_s": time.perf_counter() - started},
           "runs": runs, "analytic": analytic_table()}
    write_results(res, render_markdown(res), Path(args.out_dir), "memory", doc, "memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
