"""Stage 2 scores against a straightforward full-attention reference, and the selection rule."""
import math

import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qm
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

from prunevid import positions as P
from prunevid import stage2
from prunevid.families import Qwen25VL


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    cfg = Qwen2_5_VLTextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=2,
                               num_hidden_layers=1, rope_scaling={"type": "mrope", "mrope_section": [1, 2, 1]})
    cfg._attn_implementation = "sdpa"
    lay = qm.Qwen2_5_VLDecoderLayer(cfg, layer_idx=0).eval()
    for p in lay.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return lay


def full_reference(layer, hidden, query_start, video_cols, aggregation, rope):
    """Build the whole L x L attention the obvious way (repeat KV heads), then take the question rows."""
    a = layer.self_attn
    x = layer.input_layernorm(hidden[None])[0]
    L, hd = x.shape[0], a.head_dim
    q = a.q_proj(x).view(L, a.config.num_attention_heads, -1)[..., :hd]   # Qwen3.5: a gate follows each head's q
    k = a.k_proj(x).view(L, -1, hd)
    if hasattr(a, "q_norm"):                   # Qwen3's attention normalises q and k per head before RoPE
        q, k = a.q_norm(q), a.k_norm(k)
    q, k = q.transpose(0, 1), k.transpose(0, 1)
    if rope is not None:                       # on the tables' width (Qwen3.5 rotates a quarter of each head)
        r = rope[0].shape[-1]
        q, k = (torch.cat([P.rotate(t[..., :r], *rope), t[..., r:]], dim=-1) for t in (q, k))
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    att = q @ k.transpose(1, 2) / math.sqrt(hd)
    if rope is not None:
        att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    att = att.softmax(-1)[:, query_start:][:, :, video_cols]                    # [H, Q, N]
    return att.amax(dim=(0, 1)) if aggregation == "max" else att.mean(dim=(0, 1))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("with_rope", [False, True])
def test_scores_equal_full_attention_reference(layer, aggregation, with_rope):
    g = torch.Generator().manual_seed(1)
    L, query_start = 40, 30
    hidden = torch.randn(L, 64, generator=g)
    video_cols = torch.arange(5, 25)
    rope = None
    if with_rope:
        pos, _ = P.layout([("text", 5), ("vision", (5, 2, 2), 1.0, 2), ("text", 15)])
        inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))      # head_dim 8
        rope = P.mrope_cos_sin(pos, inv_freq, [1, 2, 1], torch.float32)
    with torch.no_grad():
        q, k = Qwen25VL.attention_qk(layer, hidden, query_start, rope)
        ours = stage2.question_attention(q, k, video_cols, aggregation, causal=rope is not None)
        ref = full_reference(layer, hidden, query_start, video_cols, aggregation, rope)
    assert torch.allclose(ours, ref, atol=1e-6), (ours - ref).abs().max()


def test_block_selection_keeps_floor_per_block_in_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6, 0.4, 0.05])
    block = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    keep = stage2.select(scores, block, 0.4, "block")
    # block 0: floor(2.0) = 2 best -> 1, 4; block 1: floor(1.2) = 1 -> 6; block 2: floor(0.8) = 0
    assert keep.tolist() == [1, 4, 6]


def test_block_quota_is_the_authors_truncated_product():
    """int(n * alpha) as in the authors' code: 90 * 0.7 is 62.99999999999999 in floating point, so 62, not 63."""
    for n in (90, 170, 180, 7, 10):
        scores = torch.linspace(0, 1, n)
        kept = stage2.select(scores, torch.zeros(n, dtype=torch.long), 0.7)
        assert kept.numel() == max(1, int(n * 0.7))
    assert int(90 * 0.7) == 62


def test_global_selection_keeps_top_ceil():
    scores = torch.rand(100, generator=torch.Generator().manual_seed(2))
    keep = stage2.select(scores, torch.zeros(100, dtype=torch.long), 0.25, "global")
    assert keep.numel() == 25 and torch.equal(keep, keep.sort().values)
    assert set(keep.tolist()) == set(scores.topk(25).indices.tolist())


def test_selection_keeps_at_least_one_token():
    keep = stage2.select(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), 0.1)
    assert keep.tolist() == [1]
