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


# ---------------------------------------------------------------- the one entry point the engines call

def target_tokens(config, original_tokens: int) -> int | None:
    """The video tokens to keep after all stages under config's budget, or None (no budget: keep_ratio decides).

    retention r: max(1, round(r * original_tokens)); budget_tokens: that count. original_tokens: the unpruned
    video (and image) tokens of the prompt, before Stage 1.
    """
    if getattr(config, "budget_tokens", 0):
        return int(config.budget_tokens)
    if getattr(config, "retention", 0.0):
        return max(1, round(config.retention * original_tokens))
    return None


def allocate(sizes: torch.Tensor, total: int, weights: torch.Tensor, floor: int = 0) -> torch.Tensor:
    """Share `total` tokens across blocks of `sizes` tokens: first min(size, floor) each (the blocks of largest
    weight first when the floors alone overrun the total), then the rest proportionally to `weights`, capped at
    each block's size, by largest remainder (ties to the lower block index). Returns [B] long quotas summing to
    min(total, sizes.sum()).

    With weights = sizes and floor 0 each block gets floor or ceil of total * n_b / N: within one token of its
    proportional share, and the total exact.
    """
    sizes = sizes.long()
    total = min(int(total), int(sizes.sum()))
    weights = weights.double().clamp_min(0)
    quota = torch.minimum(sizes, torch.full_like(sizes, floor))
    if int(quota.sum()) > total:                         # floors alone overrun: the heaviest blocks get theirs
        order = torch.sort(weights, descending=True, stable=True).indices
        out = torch.zeros_like(sizes)
        left = total
        for b in order.tolist():
            give = min(int(quota[b]), left)
            out[b] = give
            left -= give
        return out
    left = total - int(quota.sum())
    while left > 0:
        room = sizes - quota
        open_ = room > 0
        w = torch.where(open_, weights, torch.zeros_like(weights))
        if float(w.sum()) <= 0:                          # no weight left: share by remaining room
            w = room.double()
        share = w / w.sum() * left
        give = torch.minimum(share.floor().long(), room)
        rest = left - int(give.sum())
        if rest > 0:                                     # largest remainders, among blocks with room
            frac = torch.where(open_ & (give < room), share - share.floor(), torch.full_like(share, -1.0))
            order = torch.sort(frac, descending=True, stable=True).indices
            for b in order.tolist():
                if rest == 0 or frac[b] < 0:
                    break
                give[b] += 1
                rest -= 1
        if int(give.sum()) == 0:                         # cannot happen with room left; guards the loop
            break
        quota += give
        left -= int(give.sum())
    return quota


def _top_per_block(scores: torch.Tensor, block: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """The quota[b] highest-scored tokens of every block b, ascending indices."""
    N = scores.shape[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(block[order], stable=True).indices]
    sizes = torch.bincount(block, minlength=quota.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(N, device=scores.device) - starts[block[order]]
    return order[rank < quota[block[order]]].sort().values


def spread(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """k of the (ascending) candidate indices, evenly spaced over them (round(linspace)): coverage of the video in
    token order (segments and groups in time, raster order inside)."""
    if k <= 0 or candidates.numel() == 0:
        return candidates[:0]
    k = min(k, candidates.numel())
    pos = torch.linspace(0, candidates.numel() - 1, k + 2, dtype=torch.float64)[1:-1].round().long() if k < \
        candidates.numel() else torch.arange(candidates.numel())
    return candidates[pos.unique()]


def choose(scores: torch.Tensor, block: torch.Tensor, config, original_tokens: int) -> torch.Tensor:
    """Stage 2's selection: indices (ascending) of the merged video tokens kept after layer M; see _choose.

    With coverage c > 0, round(c * K) of the K kept tokens are not chosen by attention: K - round(c * K) are chosen
    by the rules below, the rest evenly spaced (spread) over the tokens those left, so a budget too small for the
    question's top tokens still sees the whole scene (the background, both sides of a cut).
    """
    c = getattr(config, "coverage", 0.0)
    keep = _choose(scores, block, config, original_tokens)
    if not c or keep.numel() >= scores.shape[0]:
        return keep
    K = keep.numel()
    k_cov = round(c * K)
    if k_cov == 0:
        return keep
    top = _choose(scores, block, config, original_tokens, total_override=K - k_cov) if K - k_cov > 0 else keep[:0]
    rest = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    rest[top] = False
    extra = spread(rest.nonzero().squeeze(1), K - top.numel())
    return torch.cat([top, extra]).sort().values


def _choose(scores: torch.Tensor, block: torch.Tensor, config, original_tokens: int,
            total_override: int | None = None) -> torch.Tensor:
    """Stage 2's selection: indices (ascending) of the merged video tokens kept after layer M.

    scores, block: [N] (the merged tokens Stage 1 left); original_tokens: the unpruned count (before Stage 1).
    Without a budget (retention = budget_tokens = 0) and with the paper's rules (budget_allocation "size",
    min_tokens_per_block 0) this is exactly `select`: int(n_b * keep_ratio) per block, or the global top
    ceil(keep_ratio * N). With a budget the kept count is exactly the target T (target_tokens), or all N tokens
    when Stage 1 already left N <= T; block granularity shares T across blocks with `allocate` (each block within
    one token of T * n_b / N under "size"), global granularity keeps the top T. The variants:
    budget_allocation "attention" shares the count by each block's summed score, min_tokens_per_block m gives
    every block min(n_b, m) first (the count then stays T with a budget, and grows without one).
    """
    N = scores.shape[0]
    target = target_tokens(config, original_tokens) if total_override is None else total_override
    floor = getattr(config, "min_tokens_per_block", 0)
    by_attention = getattr(config, "budget_allocation", "size") == "attention"
    if target is None and not floor and not by_attention:
        return select(scores, block, config.keep_ratio, config.selection_granularity)
    if target is not None and target >= N:
        return torch.arange(N, device=scores.device)
    if config.selection_granularity == "global":
        total = target if target is not None else max(1, math.ceil(config.keep_ratio * N))
        return scores.topk(total).indices.sort().values
    sizes = torch.bincount(block, minlength=int(block.max()) + 1)
    if target is None:                                   # keep_ratio's own count, the variants shape it
        base = (sizes.double() * config.keep_ratio).long()
        if floor:
            base = torch.maximum(base, torch.minimum(sizes, torch.full_like(sizes, floor)))
        total = max(1, int(base.sum()))
    else:
        total = target
    weights = (torch.zeros(sizes.numel(), dtype=torch.float64).index_add_(0, block, scores.double().cpu())
               if by_attention else sizes.double())
    quota = allocate(sizes.cpu(), total, weights, floor).to(scores.device)
    keep = _top_per_block(scores, block, quota)
    return keep if keep.numel() else scores.argmax().view(1)
