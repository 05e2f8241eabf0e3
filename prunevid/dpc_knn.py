"""DPC-KNN: density-peaks clustering with k nearest neighbours, batched and deterministic.

Used twice by Stage 1: on per-group mean features (temporal segments) and on token features (spatial merge).
All math in fp32. The authors' code breaks density ties with unseeded noise; we break them by index (the lower
index counts as denser), so the same input always gives the same clusters.
"""
from __future__ import annotations

import torch


def dpc_knn(x: torch.Tensor, cluster_num: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each batch row of points into `cluster_num` clusters.

    x: [B, N, C] points. cluster_num in [1, N]; k is clamped to [1, N-1]; the k nearest include the point itself, as in the authors' code.
    Returns (labels [B, N] long in [0, cluster_num), centres [B, cluster_num] long): cluster j's centre is the
    point centres[:, j]; clusters are ranked by density-peak score (j = 0 has the highest).
    """
    B, N, C = x.shape
    cluster_num = max(1, min(int(cluster_num), N))
    x = x.float()
    dist = torch.cdist(x, x) / C ** 0.5                                    # [B, N, N]
    if N == 1:
        zeros = torch.zeros(B, 1, dtype=torch.long, device=x.device)
        return zeros, zeros

    k = max(1, min(int(k), N - 1))
    knn = dist.topk(k, dim=-1, largest=False).values                      # k nearest, self (distance 0) included
    density = torch.exp(-(knn ** 2).mean(dim=-1))                         # [B, N]

    # j is denser than i when rho_j > rho_i, or rho_j == rho_i and j < i (index tie break, no noise)
    idx = torch.arange(N, device=x.device)
    rho_i, rho_j = density[:, :, None], density[:, None, :]
    denser = (rho_j > rho_i) | ((rho_j == rho_i) & (idx[None, None, :] < idx[None, :, None]))
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]          # [B, 1, 1]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values         # densest point gets dist_max

    score = density * delta
    # stable top-k: sort by score descending, ties by index ascending
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    centres = order[:, :cluster_num]                                       # [B, K]

    to_centre = dist.gather(2, centres[:, None, :].expand(B, N, cluster_num))  # [B, N, K]
    labels = to_centre.argmin(dim=-1)
    labels.scatter_(1, centres, torch.arange(cluster_num, device=x.device).expand(B, cluster_num))
    return labels, centres


def merge_clusters(x: torch.Tensor, labels: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """Plain mean of each cluster's members.

    x: [B, N, C], labels: [B, N] in [0, cluster_num). Returns [B, cluster_num, C] in x's dtype.
    """
    B, N, C = x.shape
    sums = torch.zeros(B, cluster_num, C, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, labels[:, :, None].expand(B, N, C), x.float())
    counts = torch.zeros(B, cluster_num, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, labels, torch.ones(B, N, dtype=torch.float32, device=x.device))
    return (sums / counts.clamp(min=1)[:, :, None]).to(x.dtype)
