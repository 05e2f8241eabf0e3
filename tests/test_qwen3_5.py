"""What only Qwen3.5 has: Stage 2's M on a model where only every fourth layer attends, and a cache that holds a
fixed-size linear-attention state besides keys and values. (The properties every family shares run on Qwen3.5
through the EVERY_FAMILY modules.) The tiny Qwen3.5 has 8 layers: full attention in 3 and 7."""
import pytest
import torch

from prunevid import engine, stage3
from prunevid.config import get_paper_config
from prunevid.errors import ConfigError

Q = "What is the rabbit doing in this video?"

pytestmark = pytest.mark.parametrize("family", ["qwen3_5"], indirect=True)


@pytest.fixture(scope="module")
def paper(qm, clip):
    return engine.encode(qm, clip, get_paper_config())


def test_the_tiny_model_attends_in_every_fourth_layer(qm):
    assert qm.num_layers == 8 and qm.attention_layers == (3, 7)
    assert [hasattr(layer, "self_attn") for layer in qm.layers] == [i in (3, 7) for i in range(8)]


def test_the_presets_m_maps_to_the_last_full_attention_layer_before_it_and_the_stats_say_so(qm, paper):
    pf = engine.prefill(paper, Q, get_paper_config())             # the presets' M = 10
    assert pf.pruning_layer == 7
    assert pf.stats["stage2"]["pruning_layer"] == 7 and pf.stats["stage2"]["requested_pruning_layer"] == 10
    assert [qm.pruning_layer(m) for m in (3, 7, 10)] == [3, 7, 7]
    from prunevid import stats
    summary = stats.format_stats({**pf.stats, "timings": {"vision_s": 0, "stage1_s": 0, "prefill_s": 0}})
    assert "after layer 7 (pruning_layer 10 mapped to the full-attention layer at or before it)" in summary
    # layers 0..7 cache every token until Stage 3 slices the attention ones
    assert pf.cache.lengths[7] == paper.merged_tokens + pf.stats["tokens"]["text"]


def test_an_explicit_m_must_be_a_full_attention_layer(qm, paper):
    pf = engine.prefill(paper, Q, get_paper_config(pruning_layer=3))
    assert pf.pruning_layer == 3 and pf.stats["stage2"]["requested_pruning_layer"] == 3
    for m in (0, 5, 6, 9, 11):
        with pytest.raises(ConfigError, match=f"pruning_layer {m} is not a full-attention layer .*use one of 3, 7$"):
            engine.prefill(paper, Q, get_paper_config(pruning_layer=m))


def test_kv_bytes_count_the_linear_layers_state(qm, paper):
    pf = engine.prefill(paper, Q, get_paper_config())
    state = pf.cache.state_nbytes()
    assert state == qm.state_bytes() > 0          # 6 linear layers: conv inputs (fp32 here) + float32 recurrent
    attention = sum(2 * pf.cache.keys[i][:, :, :pf.cache.lengths[i]].numel() * 4 for i in qm.attention_layers)
    assert pf.stats["stage3"]["kv_bytes_before"] == pf.cache.nbytes() == attention + state
    comp = stage3.compress(pf)
    kept = pf.keep_seq.numel()
    kv = qm.dims()[2]
    assert comp.stats["stage3"]["kv_bytes_after"] == comp.cache.nbytes() == 2 * 2 * kept * kv * 4 + state
    L0 = pf.stats["tokens"]["sequence_unpruned"]
    assert pf.stats["stage3"]["kv_bytes_unpruned"] == 2 * L0 * 2 * kv * 4 + state


def test_decoding_carries_the_state_without_touching_the_prefills(qm, paper):
    """Each step updates every linear layer's state (the convolution's in place): on a fork, never the prefill's."""
    pf = stage3.compress(engine.prefill(paper, Q, get_paper_config()))
    before = [s.clone() for s in pf.cache.conv + pf.cache.recurrent if s is not None]
    a = engine.generate(pf, engine.SamplingParams(max_new_tokens=4))
    b = engine.generate(pf, engine.SamplingParams(max_new_tokens=4))
    assert a["ids"] == b["ids"]
    after = [s for s in pf.cache.conv + pf.cache.recurrent if s is not None]
    assert len(before) == 2 * 6 and all(torch.equal(x, y) for x, y in zip(before, after))


def test_scoring_tables_equal_its_rotary_module_on_the_rotated_quarter(qm):
    """Stage 2's RoPE tables (Qwen3-VL's interleaved M-RoPE) equal what Qwen3.5's rotary module gives its gated
    attention, which rotates only the first partial_rotary_factor of each head."""
    positions = torch.tensor([[5, 6, 40, 41], [7, 8, 3, 3], [9, 10, 1, 2]])
    cos, sin = qm.rotary(torch.zeros(1, 4, 64), positions)
    ours = qm.score_rope(positions, torch.float32)
    assert ours[0].shape[-1] == cos.shape[-1] == qm.text_config.head_dim // 4
    assert torch.allclose(ours[0], cos[0], atol=1e-6) and torch.allclose(ours[1], sin[0], atol=1e-6)


@pytest.mark.parametrize("compressed", [False, True])
def test_linear_layers_after_m_run_on_the_kept_tokens_and_decoding_equals_one_uncached_pass(qm, paper, compressed):
    """The presets' M is 7, the tiny model's last layer; at M = 3 the linear layers 4..6 run on the kept tokens only
    (their convolution then mixes tokens that were not adjacent) and carry that state into decoding."""
    from test_engine import uncached_reference_logits
    cfg = get_paper_config(pruning_layer=3)
    pf = engine.prefill(paper, Q, cfg)
    assert pf.pruning_layer == 3 and pf.keep_seq.numel() < pf.cache.lengths[3]
    assert pf.cache.lengths[4] == pf.keep_seq.numel()              # a linear layer after M saw the kept tokens
    if compressed:
        pf = stage3.compress(pf)
    out = engine.generate(pf, engine.SamplingParams(max_new_tokens=6), return_logits=True)
    fed = out["ids"][:-1]
    assert len(fed) >= 1
    ref = uncached_reference_logits(qm, paper, Q, cfg, pf, fed, compressed)
    assert (out["logits"] - ref).abs().max() <= 1e-4
