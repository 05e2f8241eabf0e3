"""Writing the results: the machine, the Markdown tables (rendered from the result JSON), the JSON and Markdown files,
and the tables between markers in docs/performance.md.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from .flops import PAPER_FLOPS, real_dims

def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _rng(m, nd=2, scale=1.0):
    if not m:
        return "–"
    return f"{m['median'] * scale:.{nd}f} ({m['min'] * scale:.{nd}f}–{m['max'] * scale:.{nd}f})"


def _mib(m):
    return "–" if not m else f"{m['median'] / 2**20:.0f}"


def _kib_mib(m):
    if not m:
        return "–"
    v = m["median"] / 2**20
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def render_markdown(res: dict) -> str:
    meta, L = res["meta"], []
    mach = meta["machine"]
    L.append(f"### Benchmark `{meta['name']}` ({meta['date']})")
    L.append("")
    L.append(f"- Command: `{meta['command']}` — wall time {meta['wall_time_s'] / 60:.1f} min")
    L.append(f"- Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, torch threads {mach['torch_threads']}, "
             f"{'?' if mach['ram_gib'] is None else round(mach['ram_gib'])} GiB RAM; {mach['os']}; Python {mach['python']}, torch {mach['torch']}, "
             f"transformers {mach['transformers']}; {meta['dtype']} on {meta['device']}, SDPA")
    L.append(f"- Model: {meta['model_description']}")
    vs = [c["vision_share"] for c in res["cases"] if c.get("vision_share")]
    if vs:
        L.append("- Vision tower share of baseline prefill FLOPs: "
                 + ", ".join(f"{c['video']} {c['frames']}f {100 * c['vision_share']['bench_flops']:.1f} %"
                             for c in res["cases"] if c.get("vision_share"))
                 + f" ({vs[0].get('headline', 'Qwen2.5-VL-7B')} at the same token counts: "
                 + ", ".join(f"{100 * v.get('headline_flops', v.get('qwen2.5-vl-7b_flops')):.1f} %" for v in vs)
                 + "); measured time share: "
                 + ", ".join("–" if v["bench_time"] is None else f"{100 * v['bench_time']:.1f} %" for v in vs))
    L.append(f"- Median of {meta['reps']} repetition{'s' if meta['reps'] != 1 else ''} (min–max), presets interleaved per repetition; "
             f"{meta['new_tokens']} new tokens per answer. TTFT = vision tower + Stage 1 + LLM prefill + Stage 3 + "
             "first token (video decoding excluded); end-to-end adds video decoding and the remaining tokens; "
             "2nd-q TTFT = a second question on the kept Stage-1 output (vision tower not re-run). Peak = process "
             f"RSS high-water mark ({meta['memory_method']}), {meta['memory_runs']}. Allocator: {meta['allocator']}.")
    L.append("")
    L.append("#### Measurements (seconds unless noted)")
    L.append("")
    L.append("| video | frames | preset | video tokens: in → S1 → S2 | vision | LLM prefill | TTFT | 2nd-q TTFT "
             "| decode tok/s | end-to-end | peak RSS MiB | KV MiB |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in res["cases"]:
        for name, p in c["presets"].items():
            t, m = p["tokens"], p["metrics"]
            L.append(f"| {c['video']} | {c['frames']} | {name} | {t['video_original']} → "
                     f"{t['video_after_stage1']} → {t['video_after_stage2']} | {_rng(m['vision_s'])} | "
                     f"{_rng(m['prefill_s'])} | "
                     f"{_rng(m['ttft_s'])} | {_rng(m['ttft2_s'])} | {_rng(m['decode_tokens_per_s'], 1)} | "
                     f"{_rng(m['e2e_s'])} | {_mib(m['peak_rss_bytes'])} | {_kib_mib(m['kv_bytes'])} |")
    L.append("")
    L.append("#### Against baseline (same run)")
    L.append("")
    family = meta.get("model_dims", {}).get("family", "qwen2_5_vl")
    sizes = [n.split("-")[-1] for n in real_dims(family)]
    sizes = sorted(sizes, key=lambda n: float(n[:-1]))            # 3B / 7B / 32B, 2B / 7B / 72B
    L.append("| video | frames | preset | prefill × | TTFT × | TTFT bound × | 2nd-q TTFT × | end-to-end × | KV % "
             f"| peak % | S1+S2 overhead % | LLM FLOPs ratio bench / {' / '.join(sizes)} | 7B TTFT bound × |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in res["cases"]:
        for name, p in c["presets"].items():
            r = p.get("ratios")
            if not r or name == "baseline":
                continue
            pct = lambda x: "–" if x is None else f"{100 * x:.1f}"     # noqa: E731
            flops = " / ".join(_f(r.get(k), 3) for k in ["flops_ratio_bench"] + [f"flops_ratio_{n.lower()}"
                                                                                   for n in sizes])
            L.append(f"| {c['video']} | {c['frames']} | {name} | {_f(r['prefill_speedup'])} | "
                     f"{_f(r['ttft_speedup'])} | {_f(r['ttft_bound'])} | {_f(r['ttft2_speedup'])} | "
                     f"{_f(r['e2e_speedup'])} | {pct(r['kv_ratio'])} | {pct(r['peak_ratio'])} | "
                     f"{pct(r['overhead_share'])} | {flops} | {_f(r['ttft_bound_7b'])} |")
    L.append("")
    L.append(f"The paper reports {PAPER_FLOPS[0]:.2f}–{PAPER_FLOPS[1]:.2f}× FLOPs (PLLaVA, ST-LLM, "
             "LLaVA-OneVision). "
             "TTFT bound: the TTFT speed-up if only the LLM prefill shrank, exactly by the bench model's FLOPs "
             "ratio, and Stages 1–3 cost nothing; 7B TTFT bound: the same from the analytic FLOPs of the real "
             f"{next(iter(real_dims(family)))} (vision tower + LLM) at these token counts.")
    if res.get("scaling"):
        L.append("")
        L.append("#### Scaling of LLM prefill time with frames")
        L.append("")
        L.append("| video | preset | " + " | ".join(f"{r['frames']} frames" for r in res["scaling"][0]["rows"])
                 + " | time growth | FLOPs growth | video-token growth |")
        L.append("|---|---|" + "---|" * (len(res["scaling"][0]["rows"]) + 3))
        for s in res["scaling"]:
            cells = " | ".join(f"{_rng(r['prefill_s'])} s ({r['llm_tokens_layer0']} tok)" for r in s["rows"])
            L.append(f"| {s['video']} | {s['preset']} | {cells} | {_f(s['time_growth'])}× | "
                     f"{_f(s['flops_growth'])}× | {_f(s['token_growth'])}× |")
    L.append("")
    L.append("#### Targets (paper preset)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in res["targets"]:
        vals = ", ".join(f"{r['case']}: {_f(r['value'], 3)}{'' if r['met'] else ' ✗'}" for r in t["cases"]) or "–"
        L.append(f"| {t['description']} | {vals} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(L) + "\n"


def render_throughput_markdown(res: dict) -> str:
    meta, L = res["meta"], []
    mach = meta["machine"]
    clips = sorted({p for p, _ in meta["requests"]})
    L.append(f"### Throughput `{meta['name']}` ({meta['date']})")
    L.append("")
    L.append(f"- Command: `{meta['command']}` — wall time {meta['wall_time_s'] / 60:.1f} min")
    L.append(f"- Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, torch threads {mach['torch_threads']}; "
             f"torch {mach['torch']}, transformers {mach['transformers']}; {meta['dtype']} on {meta['device']}, SDPA")
    L.append(f"- Model: {meta['model_description']}")
    L.append(f"- {len(meta['requests'])} requests ({', '.join(clips)} cycled, two questions), {meta['frames']} frames "
             f"each at max_pixels {meta['max_pixels']}, {meta['new_tokens']} new tokens per answer (end-of-sequence "
             f"ignored). Answers/s = requests / wall time from reading the video files to the last token, through "
             f"`prunevid.batch` (what `model.generate_batch` runs); median of {meta['reps']} repetition"
             f"{'s' if meta['reps'] != 1 else ''} (min–max), configurations interleaved per repetition. Time columns "
             "sum over the batches: video decoding + vision tower + Stage 1, LLM prefill (+ Stage 3), decoding. "
             f"Padding = share of the prefill's layer-0 columns that were padding. Peak = process RSS high-water mark "
             f"({meta['memory_method']}), one untimed run per configuration (2 new tokens). Allocator: "
             f"{meta['allocator']}.")
    L.append("")
    L.append("| preset | batch | answers/s | × batch 1 | × baseline | video + vision + S1 s | LLM prefill s | decode s "
             "| padding % | peak RSS MiB | peak × batch 1 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in res["rows"]:
        m = row["metrics"]
        L.append(f"| {row['preset']} | {row['batch_size']} | {_rng(m['answers_per_s'], 3)} | "
                 f"{_f(row['speedup_vs_batch1'])} | {_f(row['speedup_vs_baseline'])} | {_rng(m['encode_s'], 1)} | "
                 f"{_rng(m['prefill_s'], 1)} | {_rng(m['decode_s'], 1)} | {100 * row['padding_share']:.0f} | "
                 f"{_mib(m['peak_rss_bytes'])} | {_f(row['peak_vs_batch1'])} |")
    L.append("")
    return "\n".join(L) + "\n"


# docs/performance.md holds the latest tables of each benchmark between these markers (--readme rewrites them)
MARKERS = {"bench": ("<!-- bench:start -->", "<!-- bench:end -->"),
           "throughput": ("<!-- throughput:start -->", "<!-- throughput:end -->"),
           "memory": ("<!-- memory-bench:start -->", "<!-- memory-bench:end -->")}


def doc_path(readme: str | None) -> Path | None:
    """The file --readme names: None without the option, the clone's docs/performance.md for a bare --readme (else
    ./docs/performance.md), or the given file."""
    if readme is None:
        return None
    if readme:
        return Path(readme)
    clone = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
    return clone if clone.is_file() else Path.cwd() / "docs" / "performance.md"


def check_doc(path: Path | None, kind: str) -> str | None:
    """Why the tables of `kind` cannot go into `path` (checked before a run that takes minutes), or None."""
    if path is None:
        return None
    start, end = MARKERS[kind]
    try:
        text = path.read_text()
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if start not in text or end not in text:
        return f"{path} has no {start} ... {end} markers (the tables live in docs/performance.md)"
    return None


def checked_doc(ap, readme: str | None, kind: str) -> Path | None:
    """The --readme file, checked before a run that takes minutes: missing markers are a usage error of `ap`."""
    doc = doc_path(readme)
    problem = check_doc(doc, kind)
    if problem:
        ap.error(f"--readme: {problem}")
    return doc


def update_doc(path: Path, md: str, kind: str) -> None:
    """Replace the text between the markers of `kind` in `path` with the latest tables."""
    problem = check_doc(path, kind)
    if problem:
        raise SystemExit(problem)
    start, end = MARKERS[kind]
    head, rest = path.read_text().split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{md}{end}{tail}")


def write_results(res: dict, md: str, out_dir: Path, name: str, doc: Path | None, kind: str) -> Path:
    """<out_dir>/<name>.json (strict JSON) and <name>.md, the Markdown on stdout, and with `doc` the tables between
    its `kind` markers. Returns the JSON file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(_finite(res), indent=1, default=_json_default) + "\n")
    (out_dir / f"{name}.md").write_text(md)
    print(md)
    if doc is not None:
        update_doc(doc, md, kind)
    return out_dir / f"{name}.json"


def machine_info(threads: int) -> dict:
    import torch
    import transformers
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads, "ram_gib": ram,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def _json_default(o):
    return str(o)                  # Paths, numpy scalars and the like


def _finite(x):
    """NaN and infinities become null: json.dumps would write NaN, which strict JSON readers reject."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
