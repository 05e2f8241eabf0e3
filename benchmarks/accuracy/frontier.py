"""Accuracy against retention on the oracle: `python -m benchmarks.accuracy.frontier` (issue 21).

Every method keeps a share of the unpruned video tokens (retention = video tokens after all stages over the
unpruned count) and answers through the real engine (engine.encode, engine.prefill), MVBench's protocol as in
evaluate.py. Methods:

- token methods at each retention in RETENTIONS, through the budget knob (PruneVidConfig.retention):
  paper (the paper preset's Stage 1 + Stage 2 per-block quotas), stage2_block (Stage 1 off, per-group quotas),
  stage2_global (Stage 1 off, one top-k at layer M, FastV-style), random (Stage 1 off, a uniformly random set of
  the same size, seeded), and the variants (VARIANTS: the paper preset with one option changed);
- what a user would do instead, with no pruning at all: fewer frames (uniform subsampling, as max_frames does),
  smaller frames (as max_pixels does; INTER_AREA), and both; their retention is their token count over 128.

Accuracy has a 95 % Wilson interval; FLOPs are the LLM prefill FLOPs over the unpruned prompt's for the
Qwen2.5-VL-7B shape with M = 10 (evaluate.flops_7b) for the same token counts. A fewer/smaller-frames point's
FLOPs count its shorter prompt with no pruning. --seed picks the stream: data.HELD_OUT_SEED (7) is the held-out
set; any other seed is a validation stream for choosing variant settings.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunevid import config as C
from prunevid import engine, loader
from prunevid.families import Qwen25VL
from prunevid.video import clip_from_frames

from . import data, evaluate
from . import model as M
from .train import CHECKPOINT

RETENTIONS = (0.05, 0.10, 0.15, 0.20, 0.30, 0.50)
# token methods: (preset, overrides) evaluated at every retention
TOKEN_METHODS = {
    "paper": ("paper", {}),
    "stage2_block": ("stage2_only", {}),
    "stage2_global": ("stage2_only", {"selection_granularity": "global"}),
    "random": ("stage2_only", {}),                    # Stage 2's count, random tokens (see Frontier.run)
    "attention_coverage": ("attention_coverage", {}), # the shipped preset (= stage2_cov50), its retention swept
}
VARIANTS = {
    "paper_min_static": ("paper", {"static_test": "min"}),
    "paper_min1": ("paper", {"min_tokens_per_block": 1}),
    "paper_attention": ("paper", {"budget_allocation": "attention"}),
    "paper_global": ("paper", {"selection_granularity": "global"}),
    "paper_min_static_attention": ("paper", {"static_test": "min", "budget_allocation": "attention"}),
    "paper_min_static_global": ("paper", {"static_test": "min", "selection_granularity": "global"}),
    "paper_all": ("paper", {"static_test": "min", "budget_allocation": "attention", "min_tokens_per_block": 1}),
    "stage2_attention": ("stage2_only", {"budget_allocation": "attention"}),
    "stage2_cov25": ("stage2_only", {"coverage": 0.25}),
    "stage2_cov50": ("stage2_only", {"coverage": 0.5}),
    "stage2_global_cov50": ("stage2_only", {"selection_granularity": "global", "coverage": 0.5}),
    "paper_all_cov25": ("paper", {"static_test": "min", "budget_allocation": "attention", "min_tokens_per_block": 1,
                                  "coverage": 0.25}),
    "paper_all_cov50": ("paper", {"static_test": "min", "budget_allocation": "attention", "min_tokens_per_block": 1,
                                  "coverage": 0.5}),
    "uniform_tokens": ("stage2_only", {"coverage": 1.0}),     # evenly spaced tokens, no attention at all
}
# what a user would do instead: (frames, side in px); retention = frames/16 * (side/112)^2
ALTERNATIVES = {
    "fewer_frames": [(8, 112), (4, 112), (2, 112)],
    "smaller_frames": [(16, 84), (16, 56), (16, 28)],
    "fewer_and_smaller": [(8, 84), (4, 84), (8, 56), (2, 84), (4, 56)],
}


def resampled(s: data.Sample, frames: int, side: int):
    """The clip a user gets with max_frames=frames and max_pixels=side*side (the reader's own rules)."""
    return clip_from_frames(s.frames, s.fps, max_frames=frames, max_pixels=side * side, min_pixels=28 * 28,
                            source=f"synthetic {s.qtype}")


class Frontier:
    def __init__(self, qm, methods, retentions, alternatives=True, M_layer: int = M.PRUNING_LAYER, seed: int = 0,
                 baseline: bool = True):
        self.qm, self.M, self.baseline = qm, M_layer, baseline
        self.methods, self.retentions, self.alternatives = methods, retentions, alternatives
        self.letters = torch.tensor([qm.tokenizer.encode(L, add_special_tokens=False)[0] for L in data.LETTERS])
        self.gen = torch.Generator().manual_seed(seed)
        self.records = {}

    def _record(self, key, s, pf):
        pred = int(pf.logits[self.letters].argmax())
        st = pf.stats
        self.records.setdefault(key, []).append({
            "qtype": s.qtype, "hit": data.LETTERS[pred] == s.answer, "retention": st["tokens"]["retention"],
            "flops_7b": evaluate.flops_7b(st)})

    def run(self, s: data.Sample) -> None:
        clip = evaluate.clip_of(s)
        encoded = {}

        def enc(cfg):
            key = ((cfg.tau, cfg.cluster_ratio, cfg.temporal_segment_ratio, cfg.dpc_knn_k, cfg.static_test)
                   if cfg.enable_stage1 else (False,))
            if key not in encoded:
                encoded[key] = engine.encode(self.qm, clip, cfg)
            return encoded[key]

        base = C.get_baseline_config(max_frames=data.FRAMES)
        if self.baseline:
            self._record(("baseline", 1.0), s, engine.prefill(enc(base), s.question, base))
        for name in self.methods:
            preset, over = {**TOKEN_METHODS, **VARIANTS}[name]
            for r in self.retentions:
                cfg = C.get_preset(preset, pruning_layer=self.M, max_frames=data.FRAMES, retention=r, **over)
                e = enc(cfg)
                if name == "random":
                    n, target = e.merged_tokens, max(1, round(r * e.original_tokens))
                    keep = torch.randperm(n, generator=self.gen)[:min(n, target)].sort().values
                    pf = engine.prefill(e, s.question, cfg, keep_visual=keep)
                else:
                    pf = engine.prefill(e, s.question, cfg)
                self._record((name, r), s, pf)
        if self.alternatives:
            for name, points in ALTERNATIVES.items():
                for frames, side in points:
                    c = resampled(s, frames, side)
                    pf = engine.prefill(engine.encode(self.qm, c, base), s.question, base)
                    st = pf.stats
                    # retention against the 16-frame 112x112 clip's 128 tokens
                    n = st["tokens"]["video_original"]
                    pred = int(pf.logits[self.letters].argmax())
                    flops = _flops_vs_full(st, data_tokens=128)
                    self.records.setdefault((name, f"{frames}x{side}"), []).append({
                        "qtype": s.qtype, "hit": data.LETTERS[pred] == s.answer, "retention": n / 128,
                        "flops_7b": flops})

    def summary(self) -> list:
        out = []
        for (name, point), recs in self.records.items():
            k, n = sum(r["hit"] for r in recs), len(recs)
            p, lo, hi = evaluate.wilson(k, n)
            by_type = {t: sum(r["hit"] for r in recs if r["qtype"] == t) / max(1, sum(r["qtype"] == t for r in recs))
                       for t in data.TYPES}
            out.append({"method": name, "point": point, "n": n, "hits": k, "accuracy": p, "ci": [lo, hi],
                        "retention": sum(r["retention"] for r in recs) / n,
                        "flops_7b": sum(r["flops_7b"] for r in recs) / n, "by_type": by_type})
        return out


def _flops_vs_full(st: dict, data_tokens: int) -> float:
    """7B-shape prefill FLOPs of this (unpruned, shorter) prompt over the full clip's unpruned prompt's."""
    from prunevid import stats
    t = st["tokens"]
    layers, d, d_kv, d_ff = Qwen25VL.flops_shapes["Qwen2.5-VL-7B"]
    full = t["sequence_unpruned"] - t["video_original"] + data_tokens
    ours = sum(stats.layer_flops(t["sequence_unpruned"], d, d_kv, d_ff) for _ in range(layers))
    ref = sum(stats.layer_flops(full, d, d_kv, d_ff) for _ in range(layers))
    return ours / ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", "--checkpoint", default=str(CHECKPOINT),
                    help="the oracle checkpoint (default: the committed one; checkpoint_varied: the fine-tune on "
                         "fewer and smaller clips, for a fair fewer/smaller-frames comparison)")
    ap.add_argument("--n", type=int, default=800, help="clips (a multiple of 4)")
    ap.add_argument("--seed", type=int, default=data.HELD_OUT_SEED, help="stream (7 = held out)")
    ap.add_argument("--methods", default=",".join(list(TOKEN_METHODS) + list(VARIANTS)))
    ap.add_argument("--retentions", default=",".join(map(str, RETENTIONS)))
    ap.add_argument("--no-alternatives", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="frontier")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    qm = loader.load(args.model, dtype="fp32", device="cpu")
    fr = Frontier(qm, [m for m in args.methods.split(",") if m], [float(r) for r in args.retentions.split(",")],
                  not args.no_alternatives)
    samples = [data.sample(args.seed, i, data.TYPES[i % 4]) for i in range(args.n)]
    t0 = time.time()
    out = Path(evaluate.RESULTS) / f"{args.name}.json"
    for i, s in enumerate(samples):
        fr.run(s)
        if (i + 1) % 40 == 0 or i + 1 == len(samples):
            res = {"model": args.model, "seed": args.seed, "n": i + 1, "pruning_layer": fr.M,
                   "minutes": (time.time() - t0) / 60, "rows": fr.summary()}
            out.write_text(json.dumps(res, indent=1) + "\n")
            print(f"{i + 1}/{len(samples)} {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
