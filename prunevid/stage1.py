"""Stage 1: spatial-temporal token merging (question independent).

Unit of time = one Qwen temporal group (2 raw frames -> one grid slice of h*w merged vision tokens).
1. temporal segmentation: DPC-KNN on per-group mean features, made contiguous;
2. per segment, locations whose features stay put (mean pairwise cosine similarity > tau) are static;
3. static locations: averaged over the segment's groups, then spatially clustered;
4. dynamic locations: spatially clustered per group (every group keeps the same count);
5. order per segment: the static block, then each group's dynamic block.
Every merged token remembers a representative original token (the DPC centre) whose unpruned 3-D position it
takes, and every original token remembers the merged token that stands for it (provenance).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .dpc_knn import dpc_knn, merge_clusters

MIN_TOKENS_TO_CLUSTER = 15  # groups of <= 14 tokens are not clustered (authors' rule)


@dataclass
class MergedTokens:
    """The video tokens that enter the LLM, and how they relate to the unpruned ones.

    Original tokens are numbered in the vision tower's order: index = group * (h * w) + row * w + col.
    """
    embeds: torch.Tensor      # [N1, D] merged token features
    rep_index: torch.Tensor   # [N1] long: original index of each merged token's representative
    block: torch.Tensor       # [N1] long: selection block (a segment's static block or one group's dynamic block)
    is_static: torch.Tensor   # [N1] bool
    members: torch.Tensor     # [N0] long: for each original token, the merged token that stands for it
    segments: list            # [(first_group, end_group)] half-open group ranges
    static_locations: int     # number of (segment, location) pairs found static, weighted by segment length
    original_tokens: int      # N0
    extras: list = field(default_factory=list)   # [N1, D_i] per extra stream (Qwen3-VL's DeepStack levels), merged
                                                 # with the same clusters and averaging as embeds

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    @property
    def static_ratio(self) -> float:
        return self.static_locations / max(1, self.original_tokens)


def segment_groups(group_feats: torch.Tensor, ratio: float, k: int) -> list[tuple[int, int]]:
    """Split G temporal groups into contiguous segments.

    group_feats: [G, C] mean feature of each group. DPC-KNN with int(G * ratio) clusters (>= 1) labels the groups,
    then contiguous_segments makes the labels contiguous. Returns half-open ranges covering 0..G in order; each is
    >= 2 groups long when G >= 2.
    """
    G = group_feats.shape[0]
    if G < 2:
        return [(0, G)]
    labels, _ = dpc_knn(group_feats[None], max(1, int(G * ratio)), k)
    return contiguous_segments(labels[0].tolist())


def contiguous_segments(labels: list) -> list[tuple[int, int]]:
    """The authors' rule for turning per-group cluster labels into segments.

    Each label keeps its longest run(s); a label whose longest run is one group is dissolved; every other run
    becomes unassigned. Left to right, each unassigned stretch takes the label of the neighbour whose same-label
    stretch is longer, counted in the labels as refilled so far (ties go left). Segments are then cut where the
    label changes, so two kept runs of one label joined by a refilled stretch form ONE segment:
    A A B A A B B B -> (0, 5), (5, 8). Nothing kept at all -> one segment.
    """
    G = len(labels)
    runs = _runs(labels)
    longest = {}
    for lab, s, e in runs:
        longest[lab] = max(longest.get(lab, 0), e - s)
    refined = list(labels)
    for lab, s, e in runs:
        if e - s < longest[lab] or longest[lab] < 2:
            refined[s:e] = [None] * (e - s)
    if all(lab is None for lab in refined):
        return [(0, G)]

    def extent(i: int, step: int) -> int:
        """Length of the same-label stretch that starts at i and runs in direction step."""
        j = i
        while 0 <= j < G and refined[j] == refined[i]:
            j += step
        return abs(j - i)

    g = 0
    while g < G:
        if refined[g] is not None:
            g += 1
            continue
        end = g
        while end < G and refined[end] is None:
            end += 1
        left = extent(g - 1, -1) if g > 0 else 0
        right = extent(end, 1) if end < G else 0
        refined[g:end] = [refined[g - 1] if g > 0 and left >= right else refined[end]] * (end - g)
        g = end
    return [(s, e) for _, s, e in _runs(refined)]


def _runs(labels: list) -> list[list]:
    """Maximal runs of equal labels as [label, start, end] (end exclusive)."""
    runs = []
    for g, lab in enumerate(labels):
        if runs and runs[-1][0] == lab:
            runs[-1][2] = g + 1
        else:
            runs.append([lab, g, g + 1])
    return runs


def static_mask(groups: torch.Tensor, tau: float, test: str = "mean") -> torch.Tensor:
    """Locations whose features stay put across a segment.

    groups: [g, n, C] merged vision tokens of one segment (g temporal groups, n locations).
    Returns a bool [n] mask: mean cosine similarity over ordered pairs of distinct groups > tau (test "mean", the
    paper's), or the smallest pairwise similarity > tau (test "min": a change in one group cannot hide in the mean).
    A segment of one group has no static location.
    """
    g = groups.shape[0]
    if g < 2:
        return torch.zeros(groups.shape[1], dtype=torch.bool, device=groups.device)
    u = F.normalize(groups.float(), dim=-1)
    if test == "min":
        sim = torch.einsum("inc,jnc->nij", u, u)                          # [n, g, g]
        sim = sim + 2 * torch.eye(g, device=u.device)                     # the diagonal never is the minimum
        return sim.flatten(1).amin(1) > tau
    # sum over i != j of <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2, without a [n, g, g] tensor
    pair_sum = u.sum(0).pow(2).sum(-1) - u.pow(2).sum(-1).sum(0)
    return pair_sum / (g * (g - 1)) > tau


def _cluster(x: torch.Tensor, ratio: float, k: int, channels: int | None = None):
    """Spatial DPC-KNN merge of each row of x [B, n, C] (n tokens) when n is large enough.

    channels: cluster on the first `channels` features only (the main tokens) and average every channel (the main
    tokens and their extra streams) with those clusters. Returns (merged [B, K, C], labels [B, n], centres [B, K]).
    """
    B, n, _ = x.shape
    if n < MIN_TOKENS_TO_CLUSTER:
        ar = torch.arange(n, device=x.device).expand(B, n)
        return x, ar, ar
    num = max(1, int(n * ratio))
    labels, centres = dpc_knn(x if channels is None else x[..., :channels], num, k)
    return merge_clusters(x, labels, num), labels, centres


def merge_video(feats: torch.Tensor, tau: float, cluster_ratio: float, temporal_segment_ratio: float,
                k: int, static_test: str = "mean", extras: list | None = None) -> MergedTokens:
    """Run Stage 1 on one video (or one image: G = 1 gets only the spatial merge).

    feats: [G, n, D] vision-tower output, G temporal groups of n = h * w tokens in raster order.
    static_test: "mean" (paper) or "min", see static_mask.
    extras: [G, n, D_i] per-token streams that travel with the tokens (Qwen3-VL's DeepStack levels): segments,
    static locations and clusters are decided on feats alone, and each stream is averaged over exactly the same
    members as the token it belongs to (the streams ride along as extra channels of one merge).
    """
    G, n, D = feats.shape
    dev = feats.device
    segments = segment_groups(feats.float().mean(1), temporal_segment_ratio, k)
    widths = [e.shape[-1] for e in extras or []]
    main = feats
    if widths:
        feats = torch.cat([feats, *[e.to(feats.dtype) for e in extras]], dim=-1)   # [G, n, D + sum(D_i)]

    embeds, rep, block, is_static = [], [], [], []
    members = torch.empty(G * n, dtype=torch.long, device=dev)
    count, num_blocks, static_locations = 0, 0, 0

    def emit(tokens, rep_idx, static):
        nonlocal count, num_blocks
        embeds.append(tokens)
        rep.append(rep_idx)
        block.append(torch.full((tokens.shape[0],), num_blocks, dtype=torch.long, device=dev))
        is_static.append(torch.full((tokens.shape[0],), static, dtype=torch.bool, device=dev))
        num_blocks += 1
        start = count
        count += tokens.shape[0]
        return start

    for s, e in segments:
        seg = feats[s:e]                                                   # [g, n, D]
        g = e - s
        mask = static_mask(main[s:e], tau, static_test)
        static_loc = mask.nonzero().squeeze(1)
        dynamic_loc = (~mask).nonzero().squeeze(1)
        group_ids = torch.arange(s, e, device=dev)

        if static_loc.numel():
            static_locations += g * static_loc.numel()
            merged, labels, centres = _cluster(seg[:, static_loc].mean(0, keepdim=True), cluster_ratio, k,
                                              D if widths else None)
            start = emit(merged[0], s * n + static_loc[centres[0]], True)
            # every group's copy of a static location is stood for by the same merged token
            members[(group_ids[:, None] * n + static_loc[None, :]).flatten()] = (start + labels[0]).repeat(g)

        if dynamic_loc.numel():
            merged, labels, centres = _cluster(seg[:, dynamic_loc], cluster_ratio, k, D if widths else None)
            for i in range(g):
                start = emit(merged[i], (s + i) * n + dynamic_loc[centres[i]], False)
                members[(s + i) * n + dynamic_loc] = start + labels[i]

    merged = torch.cat(embeds)
    streams = list(merged[:, D:].split(widths, dim=-1)) if widths else []
    return MergedTokens(
        embeds=merged[:, :D] if widths else merged, rep_index=torch.cat(rep), block=torch.cat(block),
        is_static=torch.cat(is_static), members=members, segments=segments, static_locations=static_locations,
        original_tokens=G * n, extras=[x.to(e.dtype) for x, e in zip(streams, extras or [])])


def unmerged(feats: torch.Tensor, extras: list | None = None) -> MergedTokens:
    """Stage 1 switched off: every original token is its own merged token, one selection block per group."""
    G, n, D = feats.shape
    ar = torch.arange(G * n, device=feats.device)
    return MergedTokens(
        embeds=feats.reshape(G * n, D), rep_index=ar, block=ar // n,
        is_static=torch.zeros(G * n, dtype=torch.bool, device=feats.device), members=ar,
        segments=[(g, g + 1) for g in range(G)], static_locations=0, original_tokens=G * n,
        extras=[e.reshape(G * n, -1) for e in extras or []])
