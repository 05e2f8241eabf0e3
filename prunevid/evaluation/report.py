"""`prunevid eval-report RESULTS...`: lmms-eval result folders of several presets -> one side-by-side table.

Reads every `*_results.json` lmms-eval wrote under the given folders (and the `*_samples_<task>.jsonl` files
beside it, written with --log_samples), and prints one row per run and task:

    preset | task | accuracy | retention | FLOPs ratio (7B) | TTFT (s) | samples

accuracy is the task's first metric as lmms-eval reports it; retention, FLOPs ratio and TTFT are the means of the
per-sample PruneVid records (prunevid.evaluation.records). A group task (MVBench's 20 subtasks, say) is one row:
the group's score and the means over all its subtasks' samples. Runs of lmms-eval's own models (qwen2_5_vl,
qwen2_vl, qwen3_vl) are rows too, with retention and FLOPs ratio 1 (they keep every token) and no TTFT. It also
writes the table as Markdown and a plot of accuracy against retention (one point per run and task) as PNG.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from . import args as eval_args
from . import records

# lmms-eval's own models of the families: every token kept
UNPRUNED_MODELS = ("qwen2_5_vl", "qwen2_5_vl_chat", "qwen2_vl", "qwen2_vl_chat", "qwen3_vl", "qwen3_vl_chat")


@dataclass
class Row:
    label: str
    task: str
    metric: str
    accuracy: float
    aggregate: dict            # records.aggregate of the samples (samples = 0 when there were none)
    source: Path


def _value(v: str):
    """A model_args value as lmms-eval parses it (true/false, int, float, else text)."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.isnumeric():
        return int(v)
    try:
        return float(v)
    except ValueError:
        return v


def run_label(model: str, model_args: str) -> str:
    if model not in eval_args.MODEL_IDS:
        return model
    kwargs = dict(a.split("=", 1) for a in str(model_args or "").split(",") if "=" in a)
    try:
        return eval_args.parse({k: _value(v) for k, v in kwargs.items()}, model).label()
    except Exception:          # model_args of another version: show them as they are
        return f"{model} ({model_args})"


def _accuracy(entry: dict) -> tuple:
    for key, value in entry.items():
        if key == "alias" or "stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        return key.split(",")[0], float(value)
    return "", math.nan


def _records(samples_file: Path) -> list:
    out = []
    if not samples_file.is_file():
        return out
    with open(samples_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for tc in json.loads(line).get("token_counts") or []:
                if isinstance(tc, dict) and isinstance(tc.get("prunevid"), dict):
                    out.append(tc["prunevid"])
    return out


def read_run(results_file: Path) -> list:
    """The rows of one lmms-eval results file."""
    try:
        res = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {results_file}: {e}") from e
    config = res.get("config") or {}
    model = str(config.get("model", "?"))
    label = run_label(model, config.get("model_args", ""))
    stem = results_file.name[: -len("_results.json")]
    samples = lambda task: _records(results_file.with_name(f"{stem}_samples_{task}.jsonl"))  # noqa: E731
    groups = {g: subs for g, subs in (res.get("group_subtasks") or {}).items() if subs}
    in_group = {t for subs in groups.values() for t in subs}
    scores = {**(res.get("results") or {}), **(res.get("groups") or {})}
    rows = []
    for task, entry in scores.items():
        if task in in_group:
            continue
        metric, acc = _accuracy(entry)
        recs = [r for t in groups.get(task, [task]) for r in samples(t)]
        agg = records.aggregate(recs)
        if not recs and model in UNPRUNED_MODELS:
            agg.update(retention=1.0, flops_ratio_7b=1.0)
        rows.append(Row(label, task, metric, acc, agg, results_file))
    return rows


def collect(paths: list) -> list:
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob("*_results.json"))
        else:
            raise InputError(f"{p} does not exist; give lmms-eval's --output_path folder(s)")
    if not files:
        raise InputError(f"no lmms-eval *_results.json under {', '.join(map(str, paths))}; run lmms-eval with "
                         "--output_path there (and --log_samples for the pruning columns)")
    rows = [row for f in files for row in read_run(f)]
    return sorted(rows, key=lambda r: (r.task, -_num(r.aggregate.get("retention")), r.label))


def _num(v) -> float:
    return v if isinstance(v, (int, float)) and not math.isnan(v) else -1.0


def _cells(r: Row) -> list:
    a = r.aggregate
    fmt = lambda v, spec: "n/a" if not isinstance(v, (int, float)) or math.isnan(v) else format(v, spec)  # noqa: E731
    return [r.label, r.task, fmt(r.accuracy, ".2f"), fmt(a.get("retention"), ".3f"), fmt(a.get("flops_ratio_7b"), ".3f"),
            fmt(a.get("ttft_s"), ".3f"), str(a.get("samples", 0))]


HEADER = ["preset", "task", "accuracy", "retention", "FLOPs ratio (7B)", "TTFT (s)", "samples"]


def text_table(rows: list) -> str:
    body = [_cells(r) for r in rows]
    widths = [max(len(x[i]) for x in [HEADER] + body) for i in range(len(HEADER))]
    fmt = lambda x: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))  # noqa: E731
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(x) for x in body])


def markdown(rows: list) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", "---"] + ["---:"] * 5) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    notes = ("\naccuracy: the task's metric as lmms-eval reports it; retention: video tokens kept after Stage 2 / "
             "video tokens before Stage 1; FLOPs ratio: analytic LLM prefill FLOPs against the unpruned prompt for "
             "Qwen2.5-VL-7B's shape; TTFT: vision tower + Stage 1 + prefill + first token (means over the samples).\n")
    return "\n".join(lines) + "\n" + notes


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("the plot needs matplotlib: pip install matplotlib (it comes with the [eval] extra), or "
                         "pass --no-plot") from None
    return plt


def short_labels(rows: list) -> tuple:
    """({label: label without the words every label shares}, the shared words): 'paper max_frames=4' and
    'baseline max_frames=4' plot as 'paper' and 'baseline', with 'max_frames=4' said once in the title."""
    words = [r.label.split(" ") for r in rows]
    common = [w for w in words[0] if all(w in ws[1:] for ws in words)] if len(rows) > 1 else []
    short = {r.label: " ".join(w for w in r.label.split(" ") if w not in common) or r.label for r in rows}
    return short, " ".join(common)


def plot(rows: list, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    tasks = sorted({r.task for r in rows})
    short, common = short_labels(rows)
    for i, task in enumerate(tasks):
        pts = [r for r in rows if r.task == task and _num(r.aggregate.get("retention")) >= 0 and not math.isnan(r.accuracy)]
        if not pts:
            continue
        ax.scatter([r.aggregate["retention"] for r in pts], [r.accuracy for r in pts], label=task,
                   color=f"C{i % 10}", zorder=3)
        # labels alternate above and below their points (in order of retention), so neighbours do not overlap
        for k, r in enumerate(sorted(pts, key=lambda r: r.aggregate["retention"])):
            ax.annotate(short[r.label], (r.aggregate["retention"], r.accuracy), textcoords="offset points",
                        xytext=(4, 6 if k % 2 == 0 else -12), fontsize=7)
    ax.set_xlabel("retention (video tokens kept / video tokens)")
    ax.set_ylabel("accuracy (task metric)")
    ax.set_xlim(0, 1.35)        # room for the labels of the unpruned points
    ax.grid(True, alpha=0.3)
    ax.set_title("Accuracy against retention" + (f"\n(every run: {common})" if common else ""), fontsize=10)
    if tasks:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(paths: list, out: str | None = None, no_plot: bool = False) -> dict:
    """Print the table; write eval-report.md (and eval-report.png) into `out` (default: the first folder)."""
    rows = collect(paths)
    if not no_plot:
        _pyplot()              # a missing matplotlib fails before anything is printed or written
    folder = Path(out) if out else (Path(paths[0]) if Path(paths[0]).is_dir() else Path(paths[0]).parent)
    folder.mkdir(parents=True, exist_ok=True)
    print(text_table(rows))
    md = folder / "eval-report.md"
    md.write_text(markdown(rows), encoding="utf-8")
    written = {"markdown": md}
    if not no_plot:
        png = folder / "eval-report.png"
        plot(rows, png)
        written["plot"] = png
    print("\n" + "\n".join(f"wrote {p}" for p in written.values()))
    return written
