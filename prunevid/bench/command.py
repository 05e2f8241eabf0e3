"""The `prunevid bench` command (also `python -m benchmarks`, `python -m prunevid.bench`): the options, the plan, and
the worker process that measures it and writes the results. See prunevid/bench/__init__.py for how it measures.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .flops import bench_dims
from .measure import QUESTIONS, VIDEOS, run_once, run_throughput_once, throughput_requests, video_path
from .model import default_root, describe_model, model_path
from .process import CACHING_TUNABLES, available_bytes, prefault, set_allocator
from .report import checked_doc, doc_path, machine_info, render_markdown, render_throughput_markdown, write_results
from .summary import VISION_SHARE_RANGE, evaluate_targets, scaling, summarize_case, summarize_throughput

PRESET_ORDER = ["baseline", "paper", "conservative", "aggressive", "stage1_only", "stage2_only"]
FRAMES = [16, 32, 64]


THROUGHPUT_PRESETS = ["baseline", "paper"]
BATCH_SIZES = [1, 4, 8]
THROUGHPUT_FRAMES = 8


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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker(args) -> int:
    """Runs in the child process: load the model, measure the plan (or the throughput plan), write the results."""
    import torch

    from .. import loader
    from ..config import get_preset
    caching = (not args.default_allocator) and set_allocator("caching")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = Path(args.root) if args.root else default_root()
    path = model_path(args.model, Path(args.models_dir) if args.models_dir else root / "models")
    _log(f"[bench] loading {path}")
    qm = loader.load(str(path), dtype=args.dtype, device=args.device)
    qm.eos_token_ids = []          # exactly --new-tokens tokens per answer, like vLLM's ignore_eos
    dims = bench_dims(qm)
    if args.throughput:
        return throughput_worker(args, qm, dims, path, root, caching, started)
    cases_plan = plan(args)
    configs = {name: get_preset(name, max_pixels=args.max_pixels) for _, _, ps, _ in cases_plan for name in ps}

    if caching:
        _prefault_pool(max(f for _, f, _, _ in cases_plan), 1, args.max_pixels, dims, 8)
    # warm-up (not recorded): lazy kernel set-up and the first touch of the (memory-mapped) weights go here
    v0 = video_path(cases_plan[0][0])
    for name in [n for n in configs if n in ("baseline", "paper")] or list(cases_plan[0][2]):
        run_once(qm, v0, 4, configs[name], 2, True)
    _log(f"[bench] warm-up done after {time.perf_counter() - started:.0f} s")

    cases = []
    for video, frames, presets, second in cases_plan:
        vpath = video_path(video)
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

    runs = [r for c in cases for p in c["presets"].values() for r in p["runs"] + p["memory_runs"]]
    meta = _meta(args, qm, path, dims, caching, runs, command="python -m benchmarks", questions=list(QUESTIONS),
                 memory_runs=("one untimed run per configuration (first question, 2 new tokens), default allocator "
                              "policy") if caching else "every timed run")
    res = {"meta": meta, "cases": cases, "scaling": scaling(cases), "targets": evaluate_targets(cases)}
    _write(args, root, res, render_markdown, "bench", started)
    for c in cases:
        v = c.get("vision_share")
        lo, hi = VISION_SHARE_RANGE
        if v and not lo <= v["bench_flops"] <= hi:
            _log(f"[bench] note: vision share {100 * v['bench_flops']:.1f} % for {c['video']} {c['frames']}f is "
                 f"outside {100 * lo:.0f}-{100 * hi:.0f} % ({v['headline']}: {100 * v['headline_flops']:.1f} %)")
    return 0


def throughput_worker(args, qm, dims, path, root, caching, started) -> int:
    from ..config import get_preset
    presets = _items(args.presets) or THROUGHPUT_PRESETS
    sizes = [int(b) for b in _items(args.batch_sizes)] or BATCH_SIZES
    frames = ([int(f) for f in _items(args.frames)] or [THROUGHPUT_FRAMES])[0]
    videos = _items(args.videos) or list(VIDEOS)
    requests = throughput_requests(args.requests, videos)
    configs = {name: get_preset(name, max_pixels=args.max_pixels) for name in presets}
    if caching:
        _prefault_pool(frames, max(sizes), args.max_pixels, dims, 4)
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
    runs = [r for row in rows.values() for r in row["runs"] + row["memory_runs"]]
    meta = _meta(args, qm, path, dims, caching, runs, command="python -m benchmarks --throughput", kind="throughput",
                 requests=[[Path(p).name, q] for p, q in requests], frames=frames)
    _write(args, root, {"meta": meta, "rows": list(rows.values())}, render_throughput_markdown, "throughput", started)
    return 0


def _prefault_pool(frames: int, batch: int, max_pixels: int, dims: dict, factor: int) -> None:
    """Pre-fault a heap pool for the largest prompt of the plan: the caching policy keeps it resident, so no timed
    run pays first-touch page faults."""
    tokens = (frames // 2 * (max_pixels // 28**2) + 128) * batch
    pool = min(int(factor * tokens * dims["d_ff"] * 4 + 2**28), available_bytes() // 2)
    prefault(pool)
    _log(f"[bench] pre-faulted a {pool / 2**30:.1f} GiB heap pool")


def _meta(args, qm, path, dims: dict, caching: bool, runs: list, command: str, **fields) -> dict:
    """What a result file says about its run: command, settings, model, allocator, memory method, machine."""
    methods = {r["memory"]["method"] for r in runs if "memory" in r}
    return {"name": args.name, **fields, "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "command": args.command or command, "reps": args.reps, "new_tokens": args.new_tokens,
            "max_pixels": args.max_pixels, "dtype": args.dtype, "device": str(qm.device), "model": str(path),
            "model_dims": dims, "model_description": describe_model(qm, dims),
            "allocator": ("glibc caching policy for timed runs (mmap off, no trim); default policy for the memory "
                          "runs") if caching else "default",
            "memory_method": ", ".join(sorted(m for m in methods if m)),
            "machine": machine_info(args.threads), "wall_time_s": None}


def _write(args, root: Path, res: dict, render, kind: str, started: float) -> None:
    """Finish the result (wall time) and write it: JSON, Markdown, and the doc's tables with --readme."""
    res["meta"]["wall_time_s"] = time.perf_counter() - started
    doc = doc_path(args.readme)
    written = write_results(res, render(res), Path(args.out_dir) if args.out_dir else root / "results", args.name,
                            doc, kind)
    _log(f"[bench] wrote {written} and .md{f' and the {kind} tables in {doc}' if doc else ''} in "
         f"{res['meta']['wall_time_s'] / 60:.1f} min")


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
    ap.add_argument("--model", default="bench", help="'bench' (Qwen2.5-VL, built under benchmarks/models), "
                    "'bench:qwen2_vl' (Qwen2-VL), 'bench:qwen3_vl' (Qwen3-VL-8B's balance), 'tiny', "
                    "'tiny:<model_type>', or a folder")
    ap.add_argument("--max-pixels", type=int, default=448 * 448, help="per frame (library default 448*448)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--name", help="result file name (default: 'default', 'full' or 'custom')")
    ap.add_argument("--root", help="benchmarks folder (default: the clone's benchmarks/, else ./benchmarks)")
    ap.add_argument("--out-dir", help="where to write <name>.json and .md (default: <root>/results)")
    ap.add_argument("--models-dir", help="where the bench model is built (default: <root>/models)")
    ap.add_argument("--readme", nargs="?", const="", metavar="FILE",
                    help="also put the tables between their markers in docs/performance.md (or in FILE)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="time with glibc's default malloc policy (see prunevid/bench/__init__.py)")
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
    from ..config import PRESETS
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
    checked_doc(ap, args.readme, "throughput" if args.throughput else "bench")
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
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "prunevid.bench", *argv, "--worker", "--command", command]
    return subprocess.call(cmd, env=env)
