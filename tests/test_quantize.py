"""8-bit and 4-bit weights: the tiny random Qwen2.5-VL loaded through from_pretrained with bitsandbytes' CPU backend.

The tiny model's answers are random, so accuracy is compared only where it is well defined: the first greedy token
where the unquantised model's top-logit margin is large, and how closely the logits follow the unquantised ones.
"""
import sys

import pytest
import torch

from prunevid import engine, loader, quantize, stage3, stats
from prunevid.config import PRESETS, get_preset
from prunevid.errors import ConfigError, ModelError

pytest.importorskip("bitsandbytes")

Q = "What is the rabbit doing in this video?"
MODES = ("8bit", "4bit")
# A first token counts as clearly chosen when the unquantised model's top-two logit margin is at least this. The
# tiny model's logits spread about 0.16 and its margins are 0.004-0.07; 8-bit moves the logits by about 0.01 and
# 4-bit NF4 (on 64-wide layers) by up to 0.15, mostly together: they correlate >= 0.999 and about 0.96 with the
# unquantised ones. Measured here, 4-bit changed only first tokens with margins below 0.008.
CLEAR_MARGIN = {"8bit": 0.005, "4bit": 0.04}      # 4-bit: the tiny Qwen3-VL's aggressive run flips at 0.032
MIN_CORRELATION = {"8bit": 0.995, "4bit": 0.9}
BNB_LINEAR = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}

EVERY_FAMILY = True        # each test runs once per family (conftest.py)


def run(qm, clip, preset: str) -> tuple:
    cfg = get_preset(preset)
    pf = engine.prefill(engine.encode(qm, clip, cfg), Q, cfg)
    if cfg.enable_cache_compression:
        pf = stage3.compress(pf)
    return pf, engine.generate(pf, engine.SamplingParams(max_new_tokens=4))


@pytest.fixture(scope="module")
def reference(qm, clip):
    return {name: run(qm, clip, name)[0].logits for name in PRESETS}


@pytest.fixture(scope="module", params=MODES)
def quantized(request, tiny_model_dir, clip):
    mode = request.param
    qm = loader.load(str(tiny_model_dir), dtype="fp32", device="cpu", quantization=mode)
    yield mode, qm, {name: run(qm, clip, name) for name in PRESETS}
    loader.free(qm)


def test_quantised_layers_are_bitsandbytes_and_the_vision_tower_keeps_its_dtype(quantized):
    mode, qm, _ = quantized
    for layer in qm.layers:
        attn = ((layer.self_attn.q_proj, layer.self_attn.k_proj) if hasattr(layer, "self_attn")
                else (layer.linear_attn.in_proj_qkv, layer.linear_attn.out_proj))    # Qwen3.5's linear layers
        for proj in (*attn, layer.mlp.down_proj):
            assert type(proj).__name__ == BNB_LINEAR[mode]
    visual = qm.model.model.visual
    assert all(type(m) is torch.nn.Linear for m in visual.modules() if "Linear" in type(m).__name__)
    assert {p.dtype for p in visual.parameters()} == {torch.float32}
    assert type(qm.model.lm_head) is torch.nn.Linear


def test_every_preset_runs_end_to_end(quantized, reference):
    mode, qm, runs = quantized
    for name, (pf, out) in runs.items():
        cfg = get_preset(name)
        assert torch.isfinite(pf.logits).all() and pf.logits.shape == reference[name].shape, name
        assert 1 <= len(out["ids"]) <= 4 and isinstance(out["text"], str)
        assert pf.stats["weights"]["quantization"] == mode
        kept = pf.kept_visual.numel()
        assert (kept < pf.encoded.merged_tokens) == (cfg.enable_stage2 and cfg.keep_ratio < 1), name
        if pf.compressed:          # Stage 3 sliced layers 0..M to the sequence layers M+1.. saw (attention layers)
            first, last = qm.attention_layers[0], qm.attention_layers[-1]
            assert pf.cache.get_seq_length(first) == pf.cache.get_seq_length(last) == pf.keep_seq.numel()


def test_first_greedy_token_agrees_where_the_margin_is_large(quantized, reference):
    mode, qm, runs = quantized
    if mode == "4bit" and qm.model_type == "qwen3_5":
        pytest.skip("4-bit NF4 moves the tiny Qwen3.5's first-token logits by up to 0.71 (spread 0.31, correlation "
                    "0.82-0.92 with the unquantised): first tokens flip at margins up to 0.14, above every preset's "
                    "margin, so nothing here can be compared (measured 2026-12-07; 8-bit is compared)")
    clear = 0
    for name, (pf, out) in runs.items():
        ref = reference[name]
        top = ref.topk(2).values
        if top[0] - top[1] >= CLEAR_MARGIN[mode]:
            clear += 1
            assert out["ids"][0] == int(ref.argmax()), f"{name}: margin {float(top[0] - top[1]):.3f}"
        corr = torch.corrcoef(torch.stack([ref, pf.logits]))[0, 1]
        assert corr >= MIN_CORRELATION[mode], f"{name}: logits correlate {float(corr):.3f} with the unquantised"
    assert clear >= 3, "too few presets with a clear first token to compare"


@pytest.fixture(scope="module")
def wide_model_dir():
    """Layers 256 wide: NF4's per-matrix code tables weigh 1 KiB, which 64-wide matrices do not amortise."""
    from prunevid.testing import tiny_model_path
    return tiny_model_path(num_hidden_layers=2, hidden_size=256, intermediate_size=1024)


def test_weight_bytes_shrink_2x_and_3_5x_and_match_the_analytic_count(wide_model_dir):
    import json
    config = json.loads((wide_model_dir / "config.json").read_text())
    linear, vision = {}, {}
    for mode in quantize.QUANTIZATIONS:
        qm = loader.load(str(wide_model_dir), dtype="bf16", device="cpu", quantization=mode)
        linear[mode] = sum(quantize.weight_bytes(m) for m in qm.layers.modules()
                           if not list(m.children()) and "Linear" in type(m).__name__)
        vision[mode] = quantize.weight_bytes(qm.model.model.visual)
        total = sum(qm.weight_bytes.values())
        assert total == quantize.weight_bytes(qm.model) == quantize.estimate_weight_bytes(config, mode, torch.bfloat16)
        loader.free(qm)
    assert 1.9 <= linear["none"] / linear["8bit"] <= 2.0
    assert 3.5 <= linear["none"] / linear["4bit"] <= 4.0
    assert vision["none"] == vision["8bit"] == vision["4bit"], "the vision tower is not quantised"


def test_released_models_weigh_what_their_parameter_counts_say():
    """The analytic table's configs reproduce the published parameter counts (3.75B, 8.29B, 33.5B, 73.4B)."""
    from prunevid.bench.memory import RELEASED
    published = {"3B": 3.75e9, "7B": 8.29e9, "32B": 33.5e9, "72B": 73.4e9}
    for name, config in RELEASED.items():
        params = quantize.estimate_weight_bytes(config, "none", torch.bfloat16) / 2
        assert params == pytest.approx(published[name], rel=2e-3), name      # published to 3 digits
        b8, b4 = (quantize.estimate_weight_bytes(config, m, torch.bfloat16) for m in MODES)
        assert params * 2 > b8 > b4


def test_missing_bitsandbytes_is_a_one_line_error_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)         # what `import bitsandbytes` sees when absent
    with pytest.raises(ModelError, match="pip install") as e:
        loader.load(str(tiny_model_dir), dtype="fp32", device="cpu", quantization="4bit")
    assert "\n" not in str(e.value) and "bitsandbytes" in str(e.value)
    with pytest.raises(ConfigError, match="quantization must be one of none, 8bit, 4bit"):
        loader.load(str(tiny_model_dir), dtype="fp32", device="cpu", quantization="3bit")


def test_cli_ask_with_4bit_prints_the_weight_size(tiny_model_dir, capsys):
    from prunevid import cli
    code = cli.main(["ask", "sample:bikes.mp4", "What is happening?", "--model", str(tiny_model_dir),
                     "--quantization", "4bit", "--stats", "--max-new-tokens", "3", "--max-frames", "8"])
    err = capsys.readouterr().err
    assert code == 0
    qm = loader.load(str(tiny_model_dir), dtype="auto", device="cpu", quantization="4bit")   # what the CLI loaded
    shown = stats.format_weights(stats.weights(qm))
    loader.free(qm)
    assert shown.endswith(" MiB (4bit) on cpu")     # 1.56 MiB on Qwen2.5-VL
    assert shown in err and "Stage 2:" in err


def test_cli_rejects_a_bad_max_memory_before_reading_the_video(capsys):
    from prunevid import cli
    code = cli.main(["ask", "missing.mp4", "What?", "--device-map", "auto", "--max-memory", "lots"])
    err = capsys.readouterr().err
    assert code == 1 and "DEVICE=SIZE" in err and "missing.mp4" not in err
