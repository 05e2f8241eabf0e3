"""Stage 2: question-guided selection of video tokens with layer M's attention.

Only the question rows of layer M's attention are computed (queries = every token after the last video token):
q for those rows, k for all rows, a softmax over all keys, then the video columns aggregated over query tokens
and heads. The full L x L matrix is never built and the decoder layers keep running on SDPA.
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def question_attention(q: torch.Tensor, k: torch.Tensor, video_cols: torch.Tensor, aggregation: str = "max",
                       causal: bool = False) -> torch.Tensor:
    """How much the question attends to each video token at a decoder layer.

    q: [H, Q, hd] queries of the last Q rows of the sequence (question + template tail), k: [KV, L, hd] keys of all
    L rows, as the layer's attention computes them (the family's attention_qk: q/k norms, grouped-query layout
    with the query heads of one KV head contiguous). video_cols: [N] long, sequence indices of the video tokens.
    aggregation: "max" (over heads and query tokens, the paper's max-max) or "mean".
    causal: query row i (absolute L - Q + i) sees keys <= its own index (scoring with RoPE, the paper's wording);
    False scores every key (q, k before RoPE and no mask: the authors' code).
    Returns [N] float32 scores. Peak extra memory is one KV head's [groups * queries, L] block.
    """
    kv_heads, L = k.shape[0], k.shape[1]
    Q, hd = q.shape[1], q.shape[2]
    q = q.reshape(kv_heads, -1, hd)              # query heads sharing a KV head are contiguous: [KV, G*Q, hd]

    mask = None
    if causal:
        rows = torch.arange(L - Q, L, device=q.device).repeat(q.shape[1] // Q)
        mask = torch.arange(L, device=q.device)[None, :] > rows[:, None]

    out = None
    for h in range(kv_heads):                    # one KV head at a time bounds the peak memory
        logits = (q[h].float() @ k[h].float().T) / math.sqrt(hd)          # [G*Q, L]
        if mask is not None:
            logits.masked_fill_(mask, float("-inf"))
        probs = logits.softmax(dim=-1)[:, video_cols]                     # [G*Q, N]
        part = probs.amax(0) if aggregation == "max" else probs.sum(0)
        out = part if out is None else (torch.maximum(out, part) if aggregation == "max" else out + part)
    return out if aggregation == "max" else out / (q.shape[0] * q.shape[1])


def select(scores: torch.Tensor, block: torch.Tensor, keep_ratio: float, granularity: str = "block") -> torch.Tensor:
    """Indices (ascending, so order is preserved) of the video tokens to keep.

    scores, block: [N]. granularity "block" keeps int(n_b * keep_ratio) of each block b (a segment's static block
    or one group's dynamic block), exactly as the authors' code: the float product truncated, no rounding guard,
    so 90 * 0.7 = 62.999... keeps 62. "global" keeps the top ceil(keep_ratio * N). At least one token is always kept.
    """
    N = scores.shape[0]
    if granularity == "global":
        keep = scores.topk(max(1, math.ceil(keep_ratio * N))).indices
        return keep.sort().values
    # sort by block, then by score descending within a block (two stable sorts), then rank inside each block
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(block[order], stable=True).indices]
    sizes = torch.bincount(block, minlength=int(block.max()) + 1)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(N, device=scores.device) - starts[block[order]]
    quota = (sizes.double() * keep_ratio).long()           # float64 product truncated: Python's int(n * alpha)
    keep = order[rank < quota[block[order]]]
    if keep.numel() == 0:
        keep = scores.argmax().view(1)
    return keep.sort().values
