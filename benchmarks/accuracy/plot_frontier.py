"""The frontier figure and table from frontier.py's results: `python -m benchmarks.accuracy.plot_frontier RESULTS.json
[--out docs/frontier.png] [--table] [--ghost OTHER.json --ghost-methods a,b --ghost-label "..."]` (needs
matplotlib for the figure; the table needs nothing).

One line per method: accuracy against the measured retention (video tokens kept over the unpruned 128), the 95 %
Wilson interval as a band.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

LABELS = {
    "paper": "PruneVid, paper's rules (Stage 1 + Stage 2 block quotas)",
    "stage2_block": "Stage 2 only, block quotas",
    "stage2_global": "Stage 2 only, global top-k (FastV-style)",
    "random": "random tokens",
    "attention_coverage": "attention_coverage preset (Stage 2 only + coverage 0.5)",
    "uniform_tokens": "evenly spaced tokens (no attention)",
    "fewer_frames": "fewer frames (no pruning)",
    "smaller_frames": "smaller frames (no pruning)",
    "fewer_and_smaller": "fewer and smaller frames (no pruning)",
    "paper_min_static": "paper + static_test=min",
    "paper_min1": "paper + min_tokens_per_block=1",
    "paper_attention": "paper + budget_allocation=attention",
    "paper_global": "paper + global top-k",
    "paper_all": "paper + min static, min 1 per block, attention allocation",
    "stage2_attention": "Stage 2 only + attention allocation",
    "stage2_cov25": "Stage 2 only + coverage 0.25",
    "stage2_cov50": "Stage 2 only + coverage 0.5",
    "stage2_global_cov50": "Stage 2 only, global top-k + coverage 0.5",
    "paper_all_cov25": "paper_all + coverage 0.25",
    "paper_all_cov50": "paper_all + coverage 0.5",
}
STYLE = {"paper": ("k", "-", 2.2), "paper_min_static": ("tab:orange", "-", 1.2),
         "paper_min1": ("tab:green", "-", 1.2), "paper_attention": ("tab:red", "-", 1.2),
         "paper_all": ("tab:purple", "-", 2.0), "stage2_block": ("tab:blue", "-", 1.6),
         "stage2_global": ("tab:cyan", "-", 1.4), "stage2_cov50": ("magenta", "-", 1.8),
         "attention_coverage": ("magenta", "-", 2.2),
         "random": ("grey", "--", 1.6), "fewer_frames": ("tab:brown", ":", 1.8),
         "smaller_frames": ("tab:olive", ":", 1.8), "fewer_and_smaller": ("tab:pink", ":", 1.4)}


def lines(res: dict) -> dict:
    """{method: [row sorted by retention]} (the baseline apart)."""
    out = defaultdict(list)
    for r in res["rows"]:
        out[r["method"]].append(r)
    return {m: sorted(v, key=lambda r: r["retention"]) for m, v in out.items()}


def plot(res: dict, path: str, methods=None, title: str = "", ghost: dict | None = None, ghost_methods=None,
         ghost_label: str = "") -> None:
    """The figure; with ghost (another results file), its ghost_methods drawn thin and faint, no band, their labels
    suffixed with ghost_label (e.g. the same lines on another checkpoint)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ls = lines(res)
    fig, ax = plt.subplots(figsize=(9.5, 6.2), dpi=110)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3)
    for m in methods or ls:
        if m == "baseline" or m not in ls:
            continue
        rows = ls[m]
        x = [100 * r["retention"] for r in rows]
        y = [100 * r["accuracy"] for r in rows]
        lo = [100 * r["ci"][0] for r in rows]
        hi = [100 * r["ci"][1] for r in rows]
        c, style, width = STYLE[m] if m in STYLE else (next(colours), "-", 1.4)
        ax.plot(x, y, style, color=c, lw=width, marker="o", ms=3.5, label=LABELS.get(m, m))
        ax.fill_between(x, lo, hi, color=c, alpha=0.12, lw=0)
    if ghost is not None:
        gl = lines(ghost)
        for m in ghost_methods or []:
            if m not in gl:
                continue
            x = [100 * r["retention"] for r in gl[m]]
            y = [100 * r["accuracy"] for r in gl[m]]
            c = STYLE[m][0] if m in STYLE else "grey"
            ax.plot(x, y, "--", color=c, lw=0.9, alpha=0.55, marker="x", ms=3,
                    label=f"{LABELS.get(m, m)}, {ghost_label}")
    if "baseline" in ls:
        b = ls["baseline"][0]
        ax.axhline(100 * b["accuracy"], color="green", lw=0.8, ls="-.", label="unpruned (16 frames, 112 px)")
    ax.axhline(25, color="red", lw=0.8, ls="-.", label="chance")
    ax.set_xscale("log")
    ticks = [5, 10, 15, 20, 30, 50, 100]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t} %" for t in ticks])
    ax.set_xlim(4, 110)
    ax.set_ylim(20, 102)
    ax.set_xlabel("video tokens kept (retention, of the unpruned 128; log scale)")
    ax.set_ylabel("accuracy % (95 % Wilson band)")
    ax.set_title(title or f"Oracle, {res['n']} clips of seed {res['seed']}: accuracy against retention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def table(res: dict, methods=None) -> str:
    ls = lines(res)
    out = ["| method | point | retention | accuracy % (95 % CI) | background / cut / mover / flash | FLOPs (7B) |",
           "|---|---|---|---|---|---|"]
    for m in methods or ls:
        for r in ls.get(m, []):
            point = r["point"] if isinstance(r["point"], str) else f"target {100 * r['point']:g} %"
            bt = " / ".join(f"{100 * r['by_type'][t]:.0f}" for t in ("background", "cut", "mover", "flash"))
            out.append(f"| {LABELS.get(m, m)} | {point} | {100 * r['retention']:.1f} % | {100 * r['accuracy']:.1f} "
                       f"({100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f}) | {bt} | {r['flops_7b']:.3f}x |")
    return "\n".join(out) + "\n"


def compact(res: dict, methods=None) -> str:
    """Token methods: one row each, one column per target retention, "accuracy (CI) retention, FLOPs" per cell;
    then the fewer/smaller-frames points, one row each."""
    ls = lines(res)
    token = [m for m in (methods or ls) if m in ls and all(not isinstance(r["point"], str) for r in ls[m])
             and m != "baseline"]
    targets = sorted({r["point"] for m in token for r in ls[m]})
    out = ["| method | " + " | ".join(f"target {100 * t:g} %" for t in targets) + " |",
           "|---|" + "---|" * len(targets)]
    for m in token:
        by = {r["point"]: r for r in ls[m]}
        cells = []
        for t in targets:
            r = by.get(t)
            cells.append("" if r is None else f"**{100 * r['accuracy']:.1f}** ({100 * r['ci'][0]:.0f}-"
                         f"{100 * r['ci'][1]:.0f}) {100 * r['retention']:.1f} %, {r['flops_7b']:.2f}x")
        out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    alt = [m for m in (methods or ls) if m in ls and any(isinstance(r["point"], str) for r in ls[m])]
    if alt:
        out += ["", "| instead of pruning | frames x side | retention | accuracy % (95 % CI) | "
                "background / cut / mover / flash | FLOPs (7B) |", "|---|---|---|---|---|---|"]
        for m in alt:
            for r in ls[m]:
                bt = " / ".join(f"{100 * r['by_type'][t]:.0f}" for t in ("background", "cut", "mover", "flash"))
                out.append(f"| {LABELS.get(m, m)} | {r['point']} | {100 * r['retention']:.1f} % | "
                           f"{100 * r['accuracy']:.1f} ({100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f}) | {bt} | "
                           f"{r['flops_7b']:.3f}x |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", default="")
    ap.add_argument("--methods", default="")
    ap.add_argument("--title", default="")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--ghost", default="", help="another results file whose --ghost-methods are drawn faintly")
    ap.add_argument("--ghost-methods", default="")
    ap.add_argument("--ghost-label", default="other run")
    ap.add_argument("--compact", action="store_true", help="one row per method, one column per target")
    a = ap.parse_args(argv)
    res = json.loads(open(a.results).read())
    methods = [m for m in a.methods.split(",") if m] or None
    if a.out:
        ghost = json.loads(open(a.ghost).read()) if a.ghost else None
        plot(res, a.out, methods, a.title, ghost, [m for m in a.ghost_methods.split(",") if m], a.ghost_label)
    if a.table:
        print(table(res, methods))
    if a.compact:
        print(compact(res, methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
