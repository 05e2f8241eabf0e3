"""Every attention implementation and dtype the loader offers runs the same engine.

eager attention adds only the mask it is given (no causal path of its own), so the engine must pass one; bf16 and
fp16 (CUDA and Apple users) must run every stage with no dtype mismatch and select the same tokens where the scores
are not near-tied (the scoring softmax stays fp32).
"""
import sys
import types

import pytest
import torch

from prunevid import adapter, engine, loader, stage3
from prunevid.config import PRESETS, get_baseline_config, get_stage2_only_config
from prunevid.errors import ModelError
from prunevid.video import to_patches

Q = "What is the rabbit doing in this video?"


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """One tiny model per attention implementation and dtype, loaded the way users load them."""
    cache = {}

    def get(attention="sdpa", dtype="fp32"):
        if (attention, dtype) not in cache:
            cache[attention, dtype] = loader.load(str(tiny_model_dir), dtype=dtype, device="cpu", attention=attention)
        return cache[attention, dtype]
    return get


def run(qm, clip, preset, new_tokens=4):
    cfg = PRESETS[preset]()
    pf = engine.prefill(engine.encode(qm, clip, cfg), Q, cfg)
    if cfg.enable_cache_compression:
        pf = stage3.compress(pf)
    return pf, engine.generate(pf, engine.SamplingParams(max_new_tokens=new_tokens))["ids"]


# flash_attention_2 cannot run on a CPU: the loader resolves it to sdpa here, which the next test still covers
@pytest.mark.parametrize("attention", [a for a in loader.ATTENTIONS if a not in ("sdpa", "flash_attention_2")])
def test_every_offered_attention_gives_the_sdpa_prefill_for_every_preset(models, clip, attention):
    sdpa, other = models("sdpa"), models(attention)
    for preset in PRESETS:
        ref, ref_ids = run(sdpa, clip, preset)
        pf, ids = run(other, clip, preset)
        assert (pf.logits - ref.logits).abs().max() <= 1e-4, preset
        assert torch.equal(pf.kept_visual, ref.kept_visual), preset
        assert ids == ref_ids, preset


@pytest.mark.parametrize("attention", loader.ATTENTIONS)
def test_prefill_equals_transformers_forward_with_the_same_attention(models, clip, attention):
    qm = models(attention)
    cfg = get_baseline_config()
    encoded = engine.encode(qm, clip, cfg)
    pf = engine.prefill(encoded, Q, cfg, return_hidden=True)
    ids = engine.reference_input_ids(qm, encoded, Q)
    pixels, thw = to_patches(clip.frames, qm.image_mean, qm.image_std)
    with torch.no_grad():
        ref = qm.model(input_ids=ids[None], pixel_values_videos=pixels, video_grid_thw=torch.tensor([thw]),
                       position_ids=engine.assemble(qm, encoded, Q, engine.DEFAULT_SYSTEM_PROMPT).positions[:, None],
                       ).logits[0]
    assert (qm.model.lm_head(pf.hidden) - ref).abs().max() <= 1e-4


def test_eager_gets_a_causal_mask_that_continues_after_the_cache(models):
    layer = models("eager").layers[0]
    cache = types.SimpleNamespace(get_seq_length=lambda i: 3)
    mask = adapter.causal_mask(layer, torch.zeros(1, 2, 8), cache)
    assert mask.shape == (1, 1, 2, 5)
    allowed = mask[0, 0] == 0
    assert allowed.tolist() == [[True] * 4 + [False], [True] * 5]
    assert adapter.causal_mask(layer, torch.zeros(1, 1, 8), cache) is None          # one token sees the whole cache
    assert adapter.causal_mask(models("sdpa").layers[0], torch.zeros(1, 2, 8), cache) is None   # sdpa is causal


def test_flash_attention_is_chosen_only_where_it_can_run(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(sys.modules, "flash_attn", None)                      # not installed
    assert loader.resolve_attention("flash_attention_2", cuda, torch.bfloat16) == "sdpa"
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert loader.resolve_attention("flash_attention_2", cuda, torch.bfloat16) == "flash_attention_2"
    assert loader.resolve_attention("auto", cuda, torch.float16) == "flash_attention_2"
    assert loader.resolve_attention("auto", cpu, torch.float32) == "sdpa"
    with pytest.raises(ModelError, match="flash_attention_2 runs only on CUDA in bf16 or fp16, not on cpu in float32"):
        loader.resolve_attention("flash_attention_2", cpu, torch.float32)
    with pytest.raises(ModelError, match="attention must be"):
        loader.resolve_attention("flash", cpu, torch.float32)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs_every_stage_of_every_preset(models, clip, dtype):
    qm = models(dtype=dtype)
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert qm.dtype == want
    for preset in PRESETS:
        pf, ids = run(qm, clip, preset, new_tokens=3)
        assert pf.logits.dtype == torch.float32 and torch.isfinite(pf.logits).all(), preset
        assert all(k.dtype == want for k in pf.cache.keys), preset
        assert len(ids) >= 1, preset
        if pf.scores is not None:
            assert pf.scores.dtype == torch.float32 and torch.isfinite(pf.scores).all(), preset


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_keeps_the_fp32_selection_where_scores_are_not_near_tied(models, clip, dtype):
    """Stage 1 off, so both runs score the same tokens. Per block, fp32's cut lies between its last kept and first
    dropped score; every token further than 0.2 % from that cut must land on the same side in half precision."""
    cfg = get_stage2_only_config()
    ref = engine.prefill(engine.encode(models(), clip, cfg), Q, cfg)
    half = engine.prefill(engine.encode(models(dtype=dtype), clip, cfg), Q, cfg)
    kept_ref = torch.zeros_like(ref.scores, dtype=torch.bool)
    kept_ref[ref.kept_visual] = True
    kept_half = torch.zeros_like(kept_ref)
    kept_half[half.kept_visual] = True
    blocks = ref.encoded.items[0].tokens.block
    clear = torch.zeros_like(kept_ref)
    for b in blocks.unique():
        idx = (blocks == b).nonzero().squeeze(1)
        s = ref.scores[idx]
        lowest_kept = s[kept_ref[idx]].min() if kept_ref[idx].any() else s.max() + 1
        highest_dropped = s[~kept_ref[idx]].max() if (~kept_ref[idx]).any() else s.min() - 1
        cut = (lowest_kept + highest_dropped) / 2
        clear[idx] = (s - cut).abs() > 2e-3 * cut.abs()
    assert clear.float().mean() > 0.5, "the check would be vacuous: most scores are near-tied"
    assert torch.equal(kept_half[clear], kept_ref[clear])
