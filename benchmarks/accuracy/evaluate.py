"""The accuracy table: `python -m benchmarks.accuracy.evaluate` (after train, or on the committed checkpoint).

Every row runs the held-out set (data.HELD_OUT_SEED, never trained on) through the real engine: engine.encode
(vision tower + Stage 1) and engine.prefill (layers, Stage 2 at layer M), and reads the first answer token's logits
restricted to the option letters A-D (MVBench's protocol; chance is 25 %). Rows:

- baseline and every preset, with the oracle's pruning_layer M (model.PRUNING_LAYERS: 2 of 6, Qwen3-VL 1);
- controls at the paper preset's and at Stage 2 only's token budget, with the same number of tokens per selection
  block as that preset kept for that sample: `random` (uniform choice in each block, seeded) and `least attended`
  (the lowest Stage 2 scores in each block);
- `no video after M`: every video token dropped after layer M (no Stage 1): what the question tokens carry out of
  layers 0..M alone. Near chance means the model reads the video after layer M, so the probe can tell good
  selections from bad ones.

Single-letter answers make the first token the whole answer, and Stage 3 only changes decoding after that token,
so no_cache_compression equals paper by construction (it is run anyway). Accuracy comes with a 95 % Wilson
interval; retention is video tokens kept after layer M over the unpruned count, FLOPs the LLM prefill FLOPs over
the baseline's (for this model, and for the Qwen2.5-VL-7B shape with the paper's M = 10 and the same token counts),
both averaged over the samples.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from prunevid import config as C
from prunevid import engine, loader, stats
from prunevid.families import Qwen3VL, Qwen25VL, VideoLLM
from prunevid.video import Clip

from . import data
from . import model as M
from .train import CHECKPOINT, CHECKPOINTS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PRESET_ROWS = ["baseline", "paper", "conservative", "aggressive", "stage1_only", "stage2_only", "no_cache_compression"]
# the selection controls: at a preset's own budget (the same count per selection block), random and least
# attended tokens instead of Stage 2's choice
CONTROLS = {"paper": ("random", "least_attended"),
            "stage2_only": ("random_stage2_only", "least_attended_stage2_only")}
CONTROL_ROWS = [r for pair in CONTROLS.values() for r in pair] + ["no_video_after_M"]


def clip_of(s: data.Sample, qm: VideoLLM | None = None) -> Clip:
    """The sample as a clip; with qm, its frames at that family's oracle side (model.on_grid: Qwen3-VL 128x128)."""
    T = s.frames.shape[0]
    frames = s.frames if qm is None else M.on_grid(qm, s.frames)
    return Clip(torch.as_tensor(frames), s.fps, [i / s.fps for i in range(T)], f"synthetic {s.qtype}", s.fps, T)


def preset(name: str, M_layer: int, **overrides) -> C.PruneVidConfig:
    return C.get_preset(name, pruning_layer=M_layer, max_frames=data.FRAMES, **overrides)


def same_budget(kept: torch.Tensor, blocks: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per block b, as many tokens as `kept` has in b, taken from `order` (a ranking of all tokens, first = chosen)."""
    want = torch.bincount(blocks[kept], minlength=int(blocks.max()) + 1)
    out = []
    for b in range(want.numel()):
        if want[b]:
            ranked = order[blocks[order] == b]
            out.append(ranked[:want[b]])
    return torch.cat(out).sort().values if out else kept[:0]


# the released shape each family's oracle reads its token counts at, with the paper's M at that depth (Qwen3-VL-8B:
# 36 layers, M = 12 keeps the paper's relative depth, docs/method.md "Presets across depths")
REFERENCE_SHAPES = {"qwen2_5_vl": (Qwen25VL, "Qwen2.5-VL-7B", 10), "qwen3_vl": (Qwen3VL, "Qwen3-VL-8B", 12)}


def flops_7b(st: dict, family: str = "qwen2_5_vl") -> float:
    """LLM prefill FLOPs over the unpruned prompt's for the Qwen2.5-VL-7B shape with the paper's M = 10 (Qwen3-VL:
    the 8B shape with M = 12), for this prompt's token counts (the oracle's own M is set by its depth; this column
    reads its token counts at 7B scale)."""
    t = st["tokens"]
    cls, shape, m_ref = REFERENCE_SHAPES[family]
    layers, d, d_kv, d_ff = cls.flops_shapes[shape]
    m = m_ref if st["stage2"]["enabled"] else -1
    return stats.flops_ratio(layers, d, d_kv, d_ff, t["sequence_unpruned"], t["sequence_after_stage1"],
                             t["sequence_after_stage2"], m)


def wilson(k: int, n: int, z: float = 1.96) -> tuple:
    if n == 0:
        return 0.0, 0.0, 0.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, max(0.0, centre - half), min(1.0, centre + half)


class Evaluator:
    """Runs samples through the engine under every row; keeps per-sample hits and stats."""

    def __init__(self, qm: VideoLLM, rows=None, M_layer: int | None = None, seed: int = 0,
                 overrides: dict | None = None):
        self.qm = qm
        self.M = M.PRUNING_LAYERS[qm.model_type] if M_layer is None else M_layer      # the family's oracle M
        self.overrides = overrides or {}
        self.rows = rows or PRESET_ROWS + CONTROL_ROWS
        self.letters = torch.tensor([qm.tokenizer.encode(L, add_special_tokens=False)[0] for L in data.LETTERS])
        # one generator for the random rows, drawn in row order per clip: the recorded table used --rows' default
        self.gen = torch.Generator().manual_seed(seed)
        self.results = {r: [] for r in self.rows}

    def _record(self, row, s, pf):
        pred = int(pf.logits[self.letters].argmax())
        st = pf.stats
        self.results[row].append({"qtype": s.qtype, "hit": data.LETTERS[pred] == s.answer,
                                  "retention": st["tokens"]["retention"],
                                  "flops": st["flops"]["this_model_ratio"],
                                  "flops_7b": flops_7b(st, self.qm.model_type),
                                  "sequence": st["tokens"]["sequence_after_stage1"],
                                  "sequence_kept": st["tokens"]["sequence_after_stage2"]})

    def run(self, s: data.Sample) -> None:
        clip = clip_of(s, self.qm)
        encoded = {}

        def enc(cfg):
            key = (cfg.enable_stage1, cfg.tau, cfg.cluster_ratio, cfg.temporal_segment_ratio, cfg.dpc_knn_k)
            if not cfg.enable_stage1:
                key = (False,)
            if key not in encoded:
                encoded[key] = engine.encode(self.qm, clip, cfg)
            return encoded[key]

        prefills = {}
        for row in self.rows:
            if row in CONTROL_ROWS:
                continue
            cfg = preset(row, self.M, **self.overrides)
            prefills[row] = pf = engine.prefill(enc(cfg), s.question, cfg)
            self._record(row, s, pf)
        for ref, (random_row, least_row) in CONTROLS.items():
            if random_row not in self.rows and least_row not in self.rows:
                continue
            cfg = preset(ref, self.M, **self.overrides)
            pf = prefills.get(ref) or engine.prefill(enc(cfg), s.question, cfg)
            blocks = engine.assemble(self.qm, pf.encoded, s.question, engine.DEFAULT_SYSTEM_PROMPT).blocks
            if random_row in self.rows:
                order = torch.randperm(blocks.numel(), generator=self.gen)
                keep = same_budget(pf.kept_visual, blocks, order)
                self._record(random_row, s, engine.prefill(pf.encoded, s.question, cfg, keep_visual=keep))
            if least_row in self.rows:
                order = torch.sort(pf.scores, stable=True).indices          # ascending: least attended first
                keep = same_budget(pf.kept_visual, blocks, order)
                self._record(least_row, s, engine.prefill(pf.encoded, s.question, cfg, keep_visual=keep))
        if "no_video_after_M" in self.rows:
            cfg = preset("stage2_only", self.M, **self.overrides)
            pf = engine.prefill(enc(cfg), s.question, cfg, keep_visual=torch.zeros(0, dtype=torch.long))
            self._record("no_video_after_M", s, pf)

    def summary(self) -> dict:
        out = {}
        for row, recs in self.results.items():
            if not recs:
                continue
            k, n = sum(r["hit"] for r in recs), len(recs)
            p, lo, hi = wilson(k, n)
            entry = {"n": n, "accuracy": p, "ci": [lo, hi],
                     "retention": sum(r["retention"] for r in recs) / n,
                     "flops": sum(r["flops"] for r in recs) / n,
                     "flops_7b": sum(r["flops_7b"] for r in recs) / n,
                     # prompt tokens in layers 0..M and after M (text included), mean over the samples
                     "sequence": sum(r["sequence"] for r in recs) / n,
                     "sequence_kept": sum(r["sequence_kept"] for r in recs) / n, "by_type": {}}
            for t in data.TYPES:
                sub = [r for r in recs if r["qtype"] == t]
                if sub:
                    kt = sum(r["hit"] for r in sub)
                    pt, lot, hit = wilson(kt, len(sub))
                    entry["by_type"][t] = {"n": len(sub), "accuracy": pt, "ci": [lot, hit]}
            out[row] = entry
        return out


LABELS = {"baseline": "baseline (no pruning)", "paper": "paper", "conservative": "conservative (more compression)",
          "aggressive": "aggressive (less compression)", "stage1_only": "Stage 1 only", "stage2_only": "Stage 2 only",
          "no_cache_compression": "no_cache_compression", "random": "control: random selection, paper's budget",
          "least_attended": "control: least attended, paper's budget",
          "random_stage2_only": "control: random selection, Stage 2 only's budget",
          "least_attended_stage2_only": "control: least attended, Stage 2 only's budget",
          "no_video_after_M": "control: no video token after layer M"}


def render(res: dict) -> str:
    s = res["summary"]
    pm = lambda e: f"{100 * e['accuracy']:.1f} ({100 * e['ci'][0]:.1f}-{100 * e['ci'][1]:.1f})"  # noqa: E731
    _, shape, m_ref = REFERENCE_SHAPES[res.get("family", "qwen2_5_vl")]
    big = f"({shape.split('-')[-1]}, M = {m_ref})"
    depth = ("the paper's 10 of 28 at the same relative depth" if res["pruning_layer"] == 2
             else "chosen for this oracle: docs/accuracy.md")
    lines = [f"Held-out set: {res['n']} clips ({res['n'] // len(data.TYPES)} per question type), seed "
             f"{data.HELD_OUT_SEED}; chance 25 %. Pruning layer M = {res['pruning_layer']} of {res['layers']} "
             f"({depth}). Accuracy in % with its 95 % Wilson interval.",
             "",
             f"| method | accuracy % (95 % CI) | video tokens kept | LLM prefill FLOPs (this model) | {big} |",
             "|---|---|---|---|---|"]
    for row in res["rows"]:
        e = s[row]
        lines.append(f"| {LABELS[row]} | {pm(e)} | {100 * e['retention']:.1f} % | {e['flops']:.3f}x | "
                     f"{e['flops_7b']:.3f}x |")
    lines += ["", "Per question type (accuracy %, n = " + str(res["n"] // len(data.TYPES)) + " each):", "",
              "| method | " + " | ".join(data.TYPES) + " |", "|---|" + "---|" * len(data.TYPES)]
    for row in res["rows"]:
        bt = s[row]["by_type"]
        lines.append(f"| {LABELS[row]} | " + " | ".join(f"{100 * bt[t]['accuracy']:.1f}" for t in data.TYPES) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(CHECKPOINTS),
                    help="whose committed checkpoint (--model's default) and results name (--name's default)")
    ap.add_argument("--model", default="", help="checkpoint folder (default: the family's committed one)")
    ap.add_argument("--n", type=int, default=2400, help="held-out clips (a multiple of 4: the same count per type)")
    ap.add_argument("--rows", default=",".join(PRESET_ROWS + CONTROL_ROWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pruning-layer", type=int, default=None,
                    help="M for every row (default: the family's, model.PRUNING_LAYERS: 2, Qwen3-VL 1)")
    ap.add_argument("--name", default="", help="results/<name>.json and .md (default oracle, oracle_qwen3_vl)")
    ap.add_argument("--config", default="", help="JSON PruneVidConfig overrides for every row (e.g. empty_groups)")
    args = ap.parse_args(argv)
    args.model = args.model or str(CHECKPOINTS[args.family])
    args.name = args.name or ("oracle" if args.family == "qwen2_5_vl" else f"oracle_{args.family}")
    torch.set_num_threads(args.threads)
    qm = loader.load(args.model, dtype="fp32", device="cpu")
    rows = [r for r in args.rows.split(",") if r]
    ev = Evaluator(qm, rows, M_layer=args.pruning_layer, overrides=json.loads(args.config or "{}"))
    t0 = time.time()
    if args.n < len(data.TYPES) or args.n % len(data.TYPES):
        ap.error(f"--n must be a positive multiple of {len(data.TYPES)} (the same count per question type)")
    samples = data.held_out(args.n)
    for i, s in enumerate(samples):
        ev.run(s)
        if (i + 1) % 120 == 0:
            acc = {r: round(100 * sum(x["hit"] for x in v) / len(v), 1) for r, v in ev.results.items()}
            print(f"{i + 1}/{len(samples)} {time.time() - t0:.0f}s {acc}", flush=True)
    model = Path(args.model).resolve()
    shown = model.relative_to(HERE.parent.parent) if model.is_relative_to(HERE.parent.parent) else model
    res = {"model": str(shown), "family": qm.model_type, "n": len(samples), "rows": rows, "pruning_layer": ev.M,
           "layers": qm.num_layers, **({"config": json.loads(args.config)} if args.config else {}),
           "minutes": (time.time() - t0) / 60, "summary": ev.summary()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1) + "\n")
    md = render(res)
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
