"""Smoke test of the benchmark entry point: it runs, writes JSON + Markdown, and its token counts add up.

A benchmark never fails on a timing, so nothing here looks at one.
"""
import json

import pytest

from prunevid.bench import command, flops, model, report, summary


@pytest.fixture(scope="module")
def result(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("bench")
    rc = command.main(["--model", "tiny", "--videos", "carphone", "--frames", "4", "--reps", "1", "--new-tokens", "3",
                     "--presets", "baseline,paper,stage1_only,stage2_only", "--out-dir", str(out), "--name", "smoke"])
    assert rc == 0
    assert (out / "smoke.md").read_text().startswith("### Benchmark `smoke`")
    return json.loads((out / "smoke.json").read_text())


def test_json_layout(result):
    assert {"meta", "cases", "scaling", "targets"} <= set(result)
    assert {"command", "machine", "model_dims", "reps", "new_tokens", "wall_time_s"} <= set(result["meta"])
    assert {"cpu", "logical_cpus", "torch_threads", "torch", "transformers"} <= set(result["meta"]["machine"])
    (case,) = result["cases"]
    assert (case["video"], case["frames"]) == ("carphone", 4)
    assert list(case["presets"]) == ["baseline", "paper", "stage1_only", "stage2_only"]
    for p in case["presets"].values():
        assert len(p["runs"]) == 1 and p["consistent_tokens"]
        assert p["memory_runs"] and "peak_rss_bytes" in p["memory_runs"][0]["memory"]
        assert {"vision_s", "stage1_s", "prefill_s", "stage2_scoring_s", "stage3_s", "ttft_s", "ttft2_s",
                "decode_tokens_per_s", "e2e_s", "peak_rss_bytes", "kv_bytes", "overhead_s"} <= set(p["metrics"])
        assert {"median", "min", "max"} <= set(p["metrics"]["prefill_s"])
        assert {"bench", "Qwen2.5-VL-3B", "Qwen2.5-VL-7B", "Qwen2.5-VL-32B"} <= set(p["analytic"])
        assert {"prefill_speedup", "ttft_speedup", "ttft_bound", "ttft2_speedup", "e2e_speedup", "kv_ratio",
                "peak_ratio", "overhead_share", "flops_ratio_bench", "flops_ratio_7b",
                "ttft_bound_7b"} <= set(p["ratios"])
    assert {t["target"] for t in result["targets"]} == {k for k, _, _ in summary.TARGETS}
    assert 0 < case["vision_share"]["bench_flops"] < 1


def test_token_counts_are_consistent(result):
    presets = result["cases"][0]["presets"]
    n0 = presets["baseline"]["tokens"]["video_original"]
    assert n0 == 2 * 5 * 6          # 4 frames of carphone (140x168): 2 temporal groups of 5 x 6 merged tokens
    for name, p in presets.items():
        t = p["tokens"]
        assert t["video_original"] == n0
        assert t["video_after_stage2"] <= t["video_after_stage1"] <= t["video_original"]
        assert t["sequence_unpruned"] == t["text"] + n0
        assert t["sequence_after_stage1"] == t["text"] + t["video_after_stage1"]
        assert t["sequence_after_stage2"] == t["text"] + t["video_after_stage2"]
        kv = p["runs"][0]["kv"]
        assert 0 < kv["kv_bytes"] <= kv["kv_bytes_unpruned"]
    base, paper = presets["baseline"]["tokens"], presets["paper"]["tokens"]
    assert base["video_after_stage1"] == base["video_after_stage2"] == n0
    assert paper["video_after_stage2"] < paper["video_after_stage1"] < n0
    assert presets["stage1_only"]["tokens"]["video_after_stage1"] == paper["video_after_stage1"]
    assert presets["stage1_only"]["tokens"]["video_after_stage2"] == paper["video_after_stage1"]
    assert presets["stage2_only"]["tokens"]["video_after_stage1"] == n0
    # the KV cache holds exactly the tokens that survive (every layer, after Stage 3)
    ratio = presets["paper"]["ratios"]["kv_ratio"]
    assert ratio == pytest.approx(paper["sequence_after_stage2"] / base["sequence_unpruned"])


def test_analytic_flops_model():
    # the released vision tower: about 2.5 GMAC per merged token at 448x448 (the issue's figure)
    v = flops.vision_flops(2, 32, 32, out_hidden=3584, **flops.QWEN25VL_VISION)
    assert 2.4e9 < v / 2 / (2 * 16 * 16) < 2.8e9
    # the bench model's LLM is the 7B divided by 28 at every length: same ratio for the same token counts
    seq = {"unpruned": 4000, "after_stage1": 1800, "after_stage2": 750}
    b = flops.analytic({"layers": 28, "d": 128, "d_kv": 32, "d_ff": 21568, "vision": flops.QWEN25VL_VISION},
                       (16, 24, 42), seq, 10)
    r = flops.analytic(flops.real_dims()["Qwen2.5-VL-7B"], (16, 24, 42), seq, 10)
    assert b["llm_flops_ratio"] == pytest.approx(r["llm_flops_ratio"], rel=1e-9)
    assert 0.22 < r["vision_share"] < 0.32
    # a released shape of another depth (the 3B: 36 layers) prunes after the same layer M = 10, not a scaled one
    three = flops.real_dims()["Qwen2.5-VL-3B"]
    L, d, d_kv, d_ff = (three[k] for k in ("layers", "d", "d_kv", "d_ff"))
    got = flops.analytic(three, (16, 24, 42), seq, 10)["llm_flops_ratio"]
    assert L == 36 and got == pytest.approx(flops.llm_flops(L, d, d_kv, d_ff, 1800, 750, 10)
                                            / flops.llm_flops(L, d, d_kv, d_ff, 4000, 4000, -1))


def test_cli_entry_point(capsys):
    from prunevid import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: prunevid bench")


@pytest.mark.parametrize("args, message", [
    (["--reps", "0"], "--reps must be at least 1"),
    (["--new-tokens", "0"], "--new-tokens must be at least 1"),
    (["--presets", "paper,papr"], "--presets: unknown papr"),
    (["--presets", "paper,,papr,"], "--presets: unknown papr;"),
    (["--frames", "16,x"], "write whole numbers"),
    (["--frames", "1"], "at least 2"),
    (["--videos", "nosuchclip"], "neither a sample"),
])
def test_bad_arguments_stop_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        command.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_markdown_says_repetition_in_the_singular(result):
    assert "Median of 1 repetition (min" in report.render_markdown(result)


def test_bench_model_is_built_once_with_its_vision_layout(tmp_path):
    spec = dict(model.BENCH_MODEL, num_hidden_layers=2, intermediate_size=64, vision_depth=3)
    path = model.bench_model_path(tmp_path, spec, fullatt=[1, 7])
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["vision_config"]["fullatt_block_indexes"] == [1] and cfg["vision_config"]["depth"] == 3
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert model.bench_model_path(tmp_path, spec, fullatt=[1, 7]) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]          # no build leftovers


def test_blank_list_entries_are_ignored_and_json_is_strict():
    args = command.build_parser().parse_args(["--videos", "bikes,", "--frames", "4,", "--presets", "paper, ,baseline"])
    assert command.plan(args) == [("bikes", 4, ["paper", "baseline"], True)]
    assert report._finite({"a": [1.0, float("nan")], "b": float("inf")}) == {"a": [1.0, None], "b": None}


@pytest.fixture(scope="module")
def throughput(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("throughput")
    rc = command.main(["--throughput", "--model", "tiny", "--videos", "carphone,bikes", "--frames", "2", "--reps", "1",
                     "--new-tokens", "2", "--requests", "3", "--batch-sizes", "1,2", "--out-dir", str(out),
                     "--name", "tp"])
    assert rc == 0
    assert (out / "tp.md").read_text().startswith("### Throughput `tp`")
    return json.loads((out / "tp.json").read_text())


def test_throughput_layout(throughput):
    assert throughput["meta"]["kind"] == "throughput" and len(throughput["meta"]["requests"]) == 3
    assert [r[0] for r in throughput["meta"]["requests"]] == ["carphone_pristine.mp4", "bikes.mp4",
                                                              "carphone_pristine.mp4"]
    rows = {(r["preset"], r["batch_size"]): r for r in throughput["rows"]}
    assert set(rows) == {(p, b) for p in ("baseline", "paper") for b in (1, 2)}
    for (preset, b), r in rows.items():
        run = r["runs"][0]
        assert run["answers"] == 3 and run["new_tokens"] == 3 * 2          # every request answered, EOS ignored
        assert {"answers_per_s", "total_s", "encode_s", "prefill_s", "decode_s", "peak_rss_bytes"} <= set(r["metrics"])
        assert r["memory_runs"] and r["memory_runs"][0]["memory"]["peak_rss_bytes"] > 0
        assert (r["padding_share"] == 0) == (b == 1), "batch 1 has no padding; mixed clips in a batch have some"
        assert r["speedup_vs_batch1"] is not None and (r["speedup_vs_baseline"] is None) == (preset == "baseline")
    assert "| paper | 2 |" in report.render_throughput_markdown(throughput)


@pytest.mark.parametrize("args, message", [
    (["--throughput", "--batch-sizes", "1,x"], "write whole numbers"),
    (["--throughput", "--batch-sizes", "0"], "at least 1"),
    (["--throughput", "--frames", "4,8"], "one frame count"),
    (["--batch-sizes", "4"], "go with --throughput"),
    (["--throughput", "--requests", "0"], "--requests must be at least 1"),
])
def test_bad_throughput_arguments_stop_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        command.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_readme_option_writes_the_tables_of_docs_performance(tmp_path):
    """--readme (bare) targets the clone's docs/performance.md, which holds the markers of all three benchmarks; the
    update replaces only the text between one pair of markers."""
    doc = report.doc_path("")
    assert doc.parts[-2:] == ("docs", "performance.md")
    assert all(report.check_doc(doc, kind) is None for kind in report.MARKERS)
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n<!-- throughput:start -->\nkept\n"
                    "<!-- throughput:end -->\n")
    report.update_doc(page, "new table\n", "bench")
    assert page.read_text() == ("intro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\nafter\n"
                                "<!-- throughput:start -->\nkept\n<!-- throughput:end -->\n")


def test_readme_without_the_markers_stops_before_any_work(tmp_path, capsys):
    page = tmp_path / "README.md"
    page.write_text("no tables here\n")
    with pytest.raises(SystemExit) as e:
        command.main(["--readme", str(page)])
    assert e.value.code == 2 and "has no <!-- bench:start --> ... <!-- bench:end --> markers" in capsys.readouterr().err


def test_a_qwen2_vl_bench_reports_its_own_family(tmp_path):
    """The bench model and the FLOPs table follow the model's family: Qwen2-VL's released shapes (2B / 7B / 72B)
    with its vision tower (plain MLP, full attention in every block)."""
    rc = command.main(["--model", "tiny:qwen2_vl", "--videos", "carphone", "--frames", "4", "--reps", "1",
                       "--new-tokens", "2", "--presets", "baseline,paper", "--out-dir", str(tmp_path), "--name", "q2",
                       "--no-second-question"])
    assert rc == 0
    res = json.loads((tmp_path / "q2.json").read_text())
    assert res["meta"]["model_dims"]["family"] == "qwen2_vl"
    paper = res["cases"][0]["presets"]["paper"]
    assert set(paper["analytic"]) == {"bench", "Qwen2-VL-7B", "Qwen2-VL-2B", "Qwen2-VL-72B"}
    assert {"flops_ratio_2b", "flops_ratio_7b", "flops_ratio_72b"} <= set(paper["ratios"])
    assert "bench / 2B / 7B / 72B" in (tmp_path / "q2.md").read_text()
    released = flops.real_dims("qwen2_vl")["Qwen2-VL-7B"]["vision"]
    assert not released["gated"] and released["fullatt"] == list(range(32))


def test_the_qwen3_vl_bench_model_has_the_8b_balance_and_deepstack_layout(tmp_path):
    """bench:qwen3_vl: 36 layers with Qwen3-VL-8B's d + d_kv + 1.5 d_ff at width 128, and a 27-block tower with
    DeepStack after blocks 8, 16, 24 as released."""
    from prunevid.families import Qwen3VL
    spec = {**model.BENCH_MODEL, **model.BENCH_VISION["qwen3_vl"]}
    layers, d, d_kv, d_ff = Qwen3VL.flops_shapes["Qwen3-VL-8B"]
    head = spec["hidden_size"] // spec["num_attention_heads"]
    bench = spec["hidden_size"] + spec["num_key_value_heads"] * head + 1.5 * spec["intermediate_size"]
    assert spec["num_hidden_layers"] == layers and abs(bench - (d + d_kv + 1.5 * d_ff)) <= 1
    small = dict(spec, num_hidden_layers=2, intermediate_size=64)         # the same tower, a 2-layer LLM
    cfg = json.loads((model.bench_model_path(tmp_path, small, family="qwen3_vl") / "config.json").read_text())
    assert cfg["vision_config"]["depth"] == 27 and cfg["vision_config"]["deepstack_visual_indexes"] == [8, 16, 24]
    assert cfg["vision_config"]["intermediate_size"] == 956


def test_moe_flops_count_the_experts_a_token_runs_through():
    """Qwen3-VL-MoE's d_ff is the active width, top-k x moe_intermediate_size: on transformers 5.x exactly what the
    MLP computes (the router's 2 d E per token aside; counted on 5.x's eager experts, which compute what its default
    grouped_mm does, uncounted by torch's FLOP counter). 4.57's inference path runs every expert on every token and
    zeroes the unchosen ones, E / top-k times that: the model counts the method's cost, not 4.57's."""
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from prunevid import loader
    from prunevid.testing import tiny_model_path
    qm = loader.load(str(tiny_model_path(family="qwen3_vl_moe")), dtype="fp32", device="cpu")
    tc = qm.text_config
    layers, d, d_kv, d_ff = qm.dims()
    assert d_ff == tc.num_experts_per_tok * tc.moe_intermediate_size == 2 * 48
    n, experts = 37, tc.num_experts
    if hasattr(qm.model, "set_experts_implementation"):
        qm.model.set_experts_implementation("eager")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        qm.layers[0].mlp(torch.randn(1, n, d))
    router = 2 * n * d * experts
    runs = experts if transformers.__version__.startswith("4.") else tc.num_experts_per_tok
    assert counter.get_total_flops() == router + n * 6 * d * tc.moe_intermediate_size * runs
    assert counter.get_total_flops() - router == n * 6 * d * d_ff * runs // tc.num_experts_per_tok
    # the released shapes: 8 of 128 experts per token
    from prunevid.families import Qwen3VLMoe
    assert Qwen3VLMoe.flops_shapes == {"Qwen3-VL-30B-A3B": (48, 2048, 512, 6144),
                                       "Qwen3-VL-235B-A22B": (94, 4096, 512, 12288)}
    assert flops.real_dims("qwen3_vl_moe")["Qwen3-VL-30B-A3B"]["vision"] == flops.QWEN3VL_VISION
    loader.free(qm)


def test_a_family_without_a_bench_model_is_a_clear_error(tmp_path):
    from prunevid.errors import ModelError
    with pytest.raises(ModelError, match="no bench model of qwen3_vl_moe .*tiny:qwen3_vl_moe"):
        model.model_path("bench:qwen3_vl_moe", tmp_path)
