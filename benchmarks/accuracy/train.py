"""Train the oracle from scratch on CPU: `python -m benchmarks.accuracy.train` (seeded, one command).

A random Qwen2.5-VL of the oracle's shape is written by prunevid.testing.build_tiny_model, loaded with
prunevid.loader.load, trained on the synthetic video QA stream (data.py) with a curriculum, and its weights are written
back under the hub checkpoints' names (bf16) so the result loads through the same from_pretrained path as any
Qwen2.5-VL. The loss is on the answer letter and on the <|im_end|> after it. Curves go to <out>/train_log.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from prunevid import loader

from . import data
from . import model as M

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint"                     # the committed model (read by evaluate and the test)
CHECKPOINT_VARIED = HERE / "checkpoint_varied"       # committed too: CHECKPOINT fine-tuned with --varied (fair lines)
REPLAY = HERE.parent / "models" / "oracle"             # where training writes by default (git-ignored)
# per family (--family): the committed checkpoint and where training writes by default
CHECKPOINTS = {"qwen2_5_vl": CHECKPOINT, "qwen3_vl": HERE / "checkpoint_qwen3_vl"}
REPLAYS = {"qwen2_5_vl": REPLAY, "qwen3_vl": HERE.parent / "models" / "oracle_qwen3_vl"}
TRAIN_SEED, VAL_SEED = 1000, 2          # the held-out set is data.HELD_OUT_SEED, used by nobody here

# Curriculum: (fraction of the steps at which a stage starts, question types asked, scene mode of data.make_scene).
# Easy scenes (no cut, mover or flash) with the background question first; then scenes with a single shape, whose
# colour and motion are easy to find; then full scenes, where the other shapes are distractors. Every question of
# an asked type that a scene has is asked.
CURRICULUM = [(0.0, ["background"], "easy"),
              (0.03, data.TYPES, "solo"),
              (0.12, data.TYPES, "full")]


def phase(step: int, steps: int, curriculum=None):
    """(question types asked, scene mode) at this step."""
    current = None
    for start, types, mode in (curriculum or CURRICULUM):
        if step >= start * steps:
            current = (types, mode)
    return current


def batch_at(step: int, batch: int, steps: int, curriculum=None) -> list:
    """The training items of one step: `batch` scenes of seed TRAIN_SEED with their asked questions."""
    types, mode = phase(step, steps, curriculum)
    items, i = [], step * batch * 4        # 4 candidate scenes per slot: enough to skip scenes with no question
    while len(items) < batch:
        sc = data.scene(TRAIN_SEED, i, mode=mode)
        i += 1
        qs = [(q, data.LETTERS[a]) for t, q, a in sc.questions if t in types]
        if qs:
            items.append((sc.frames, qs))
    return items


# --varied: the clip shapes a user gets with fewer frames (max_frames) or smaller ones (max_pixels), one per step
VARIED_FRAMES, VARIED_SIDES = (16, 8, 4, 2), (112, 84, 56, 28)


def shape_at(step: int, seed: int = 0) -> tuple:
    """(frames, side) of one step's clips under --varied: 16 x 112 a quarter of the steps, otherwise one of the
    15 other combinations, uniformly (seeded by the step)."""
    rng = random.Random(seed * 1_000_003 + step)
    if rng.random() < 0.25:
        return 16, 112
    others = [(f, s) for f in VARIED_FRAMES for s in VARIED_SIDES if (f, s) != (16, 112)]
    return others[rng.randrange(len(others))]


def resample(items: list, frames: int, side: int) -> tuple:
    """Items with their clips read as max_frames=frames, max_pixels=side*side would (the reader's rules), and the
    resulting frame rate."""
    from prunevid.video import clip_from_frames
    out, fps = [], data.FPS
    for f, qs in items:
        c = clip_from_frames(f, data.FPS, max_frames=frames, max_pixels=side * side, min_pixels=28 * 28)
        out.append((c.frames.numpy(), qs))
        fps = c.fps
    return out, fps


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def validate(qm, pr, n_scenes: int, drop_video_after: int | None = None) -> dict:
    """Letter accuracy per question type over every question of n_scenes scenes of a validation stream (not the
    held-out seed); with drop_video_after=M, of the control that drops every video token after layer M."""
    qm.model.eval()
    hits, counts = {}, {}
    for j in range(0, n_scenes, 16):
        scenes = [data.scene(VAL_SEED, i) for i in range(j, min(n_scenes, j + 16))]
        items = [(sc.frames, [(q, None) for _, q, _ in sc.questions]) for sc in scenes]
        logits = M.forward(qm, pr, items, drop_video_after=drop_video_after)[:, 0, pr.letter_ids]
        k = 0
        for sc in scenes:
            for t, _, a in sc.questions:
                hits[t] = hits.get(t, 0) + int(int(logits[k].argmax()) == a)
                counts[t] = counts.get(t, 0) + 1
                k += 1
    qm.model.train()
    return {t: round(hits[t] / counts[t], 3) for t in data.TYPES if t in counts}


def _code_version() -> dict:
    """The checkout and library versions the run used (so a checkpoint can be traced to its code)."""
    import transformers
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", str(HERE.parent.parent)))
    except OSError:
        commit, dirty = None, None
    return {"commit": commit or None, "dirty": dirty, "transformers": transformers.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default=M.DEFAULT_FAMILY, choices=sorted(M.FAMILY_SIZES),
                    help="the architecture (model_type): Qwen2.5-VL (the first oracle) or Qwen3-VL with DeepStack")
    ap.add_argument("--out", default="",
                    help="checkpoint folder to write (replaced); default benchmarks/models/oracle[_qwen3_vl]; the "
                         "committed ones are benchmarks/accuracy/checkpoint[_qwen3_vl]")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8, help="scenes per step (each asked all its questions)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-n", type=int, default=64, help="validation scenes")
    ap.add_argument("--pruning-layer", default=str(M.PRUNING_LAYER),
                    help="M of the validation control (comma-separated: several)")
    ap.add_argument("--varied", action="store_true",
                    help="train on varied frame counts and sizes (shape_at), not only 16 frames of 112x112")
    ap.add_argument("--init", default="", help="start from this checkpoint's weights (probes)")
    ap.add_argument("--curriculum", default="", help="JSON list of [fraction, types, mode] (probes)")
    ap.add_argument("--sizes", default="", help="JSON overrides of model.SIZES (probes)")
    ap.add_argument("--time-limit", type=float, default=0, help="stop after this many minutes (0: no limit)")
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop after this step, keeping the learning-rate schedule of --steps (replays a run that a "
                         "time limit stopped)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out or REPLAYS[args.family])
    args.out = str(out)
    if args.varied and args.family != M.DEFAULT_FAMILY:
        ap.error("--varied trains the Qwen2.5-VL oracle only")
    sizes = {**M.FAMILY_SIZES[args.family], **json.loads(args.sizes or "{}")}
    M.build(out, sizes=sizes, seed=args.seed, family=args.family)
    if args.init:
        shutil.copy(Path(args.init) / "model.safetensors", out / "model.safetensors")
    qm = loader.load(str(out), dtype="fp32", device="cpu")
    controls = [int(m) for m in args.pruning_layer.split(",")]
    curriculum = json.loads(args.curriculum) if args.curriculum else CURRICULUM
    pr = M.Prompter(qm)
    model = qm.model
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    log_file = out / "train_log.jsonl"
    log = log_file.open("w")
    t0 = time.time()
    run = {"args": vars(args), "sizes": sizes, "curriculum": curriculum, "code": _code_version(),
           "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    log.write(json.dumps({"run": run}) + "\n")
    print(json.dumps(run))
    window = []
    with M.fast_vision_attention():
        for step in range(args.steps):
            items = batch_at(step, args.batch, args.steps, curriculum)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
            fps = data.FPS
            if args.varied:
                items, fps = resample(items, *shape_at(step, args.seed))
            logits = M.forward(qm, pr, items, fps=fps)
            answers = [pr.letter_ids[data.LETTERS.index(a)] for _, qs in items for _, a in qs]
            target = torch.stack([torch.stack(answers), torch.full((len(answers),), pr.im_end)], 1)
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            loss = losses.view(-1, 2).mean(0)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            window.append(loss[0].item())
            if (step + 1) % 25 == 0:
                types, mode = phase(step, args.steps, curriculum)
                rec = {"step": step + 1, "answer_loss": float(np.mean(window)), "end_loss": loss[1].item(),
                       "lr": opt.param_groups[0]["lr"], "stage": f"{mode}{len(types)}",
                       "minutes": (time.time() - t0) / 60}
                window = []
                if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
                    rec["val"] = validate(qm, pr, args.val_n)
                    for m in controls:
                        rec[f"val_no_video_after_{m}"] = validate(qm, pr, args.val_n, m)
                    M.save_weights(qm, out)         # an interrupted run leaves its latest checkpoint
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if args.stop_at and step + 1 >= args.stop_at:
                break
            if args.time_limit and time.time() - t0 > args.time_limit * 60:
                print(f"time limit reached at step {step + 1}")
                break
    minutes = (time.time() - t0) / 60
    model.eval()
    M.save_weights(qm, out)
    final = {"done": {"steps": step + 1, "minutes": minutes, "val": validate(qm, pr, args.val_n),
                      **{f"val_no_video_after_{m}": validate(qm, pr, args.val_n, m) for m in controls}}}
    log.write(json.dumps(final) + "\n")
    log.close()
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
