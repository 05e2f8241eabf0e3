"""`prunevid submit`: drive a running ComfyUI from the command line (upload, patch, queue, stream, print)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import samples            # stdlib only, like this package
from ..errors import VideoError
from ..stats import format_stats   # stdlib only, like this package
from .api import ComfyClient, Display, run
from .errors import ComfyError, Interrupted
from .workflow import (GENERATE, _text, apply_set, extract_results, load_workflow, node_label, patch_model,
                       patch_question, patch_videos, resolve_workflow)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="queue a shipped workflow on a running ComfyUI server and print the answer",
        description="Upload a video to a running ComfyUI, queue an API-format PruneVid workflow "
                    "(workflows/api/*.json, or a preset name such as 'paper'), stream its progress and text, "
                    "and print the answer (stdout) and the pruning stats (stderr).")
    p.add_argument("workflow", metavar="WORKFLOW", help="API-format workflow JSON, or a shipped preset name")
    p.add_argument("--server", default="127.0.0.1:8188", help="ComfyUI address HOST:PORT (default 127.0.0.1:8188)")
    p.add_argument("--video", action="append",
                   help="video file to upload (default: the workflow's own choice); give it once per video loader "
                        "for a workflow that reads several, e.g. compare_two_clips")
    p.add_argument("--question", help="the question (default: the workflow's own)")
    p.add_argument("--model", help="the model the server loads: a folder under its models/LLM or a hub id "
                                   "(default: the workflow's own)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change a widget; NODE is a node id, class_type or title (repeatable), e.g. "
                        "--set PruneVidLoadVideo.max_frames=8")
    p.add_argument("--json", metavar="OUT", help="write the answer, stats, outputs and events as JSON ('-' = stdout)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)")
    p.add_argument("--quiet", action="store_true",
                   help="print only the answer (and errors): no progress, streamed text or stats")
    p.set_defaults(func=cmd_submit)


def cmd_submit(a) -> int:
    err = sys.stderr
    try:
        prompt = load_workflow(resolve_workflow(a.workflow))
        if a.question is not None:
            if not a.question.strip():
                raise ComfyError("--question is empty: ask something about the video")
            patch_question(prompt, a.question)
        if a.model is not None:
            if not a.model.strip():
                raise ComfyError("--model is empty: give a folder under models/LLM or a hub id")
            patch_model(prompt, a.model)
        for s in a.sets:
            apply_set(prompt, s)
        try:
            a.video = [samples.resolve(v) for v in a.video or []]   # sample:NAME, as prunevid ask takes
        except VideoError as e:
            raise ComfyError(f"--video: {e}") from None
        for v in a.video:
            if not Path(v).expanduser().is_file():
                raise ComfyError(f"--video {v!r}: no such file")
        if a.video:
            patch_videos(json.loads(json.dumps(prompt)), a.video)   # a count that does not fit fails before uploading
        client = ComfyClient(a.server)
        display = Display(prompt, quiet=a.quiet)
        if a.video:
            names = [client.upload(Path(v).expanduser()) for v in a.video]
            nodes = patch_videos(prompt, names)
            for v, name, node in zip(a.video, names, nodes):
                display.status(f"uploaded {v} as {name!r} (read by {node_label(prompt, node)})")
        result = run(client.server, prompt, timeout=a.timeout, display=display, client=client)
    except Interrupted as e:
        print(f"prunevid submit: {e}", file=err)
        return 130
    except ComfyError as e:
        print(f"prunevid submit: error: {e}", file=err)
        return 1
    except KeyboardInterrupt:                               # before run(): at most an upload happened
        print("prunevid submit: interrupted before the prompt was queued; nothing runs on the server", file=err)
        return 130
    answers = extract_results(prompt, result["outputs"])
    first = answers[0] if answers else {"answer": None, "stats": None}
    report = {"server": str(client.server), "prompt_id": result["prompt_id"], "answer": first["answer"],
              "stats": first["stats"], "answers": answers, "events": result["events"],
              "streamed": result["streamed"], "cached_nodes": result["cached_nodes"], "outputs": result["outputs"],
              "elapsed_s": result["elapsed_s"]}
    if a.json == "-":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        if not answers:
            texts = {nid: _text(o) for nid, o in result["outputs"].items() if _text(o) is not None}
            for nid, t in texts.items():
                print(f"[{node_label(prompt, nid)}] {t}")
            if not texts:
                print(f"prunevid submit: the workflow ran but has no {GENERATE} node and no text output", file=err)
        for r in answers:
            if len(answers) > 1:
                print(f"[{node_label(prompt, r['node'])}]")
            if r["answer"] is None:
                print(f"(no answer in the outputs of {node_label(prompt, r['node'])})")
            elif not (display.stream is display.out and (display.shown.get(r["node"]) or "").strip() == r["answer"].strip()):
                print(r["answer"])                          # (already on the terminal if it was streamed there)
            if r["stats"] is not None and not a.quiet:
                print(format_stats(r["stats"]) if isinstance(r["stats"], dict) else r["stats"], file=err)
        if a.json:
            try:
                with open(a.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=2, ensure_ascii=False)
            except OSError as e:
                print(f"prunevid submit: error: cannot write {a.json!r}: {e.strerror or e}", file=err)
                return 1
    return 0
