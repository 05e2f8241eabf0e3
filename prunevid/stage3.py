"""Stage 3: KV-cache compression.

After Stage 2 selects at layer M, layers M+1.. only ever see the kept tokens, but layers 0..M cached keys and
values for every token. Slicing those caches to prefix + kept video tokens + suffix (the same indices as
Stage 2) makes every decoding step attend only to kept tokens in every layer.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .kv_cache import pad_rows


def compress(prefill):
    """A new prefill whose layers 0..M cache only each row's kept sequence positions; the input is not modified.

    prefill: an engine.Prefill (one prompt) or a batch.BatchPrefill (rows right-padded; a row with fewer kept
    positions repeats a valid one in its padding columns, which decoding masks). Without a Stage 2 selection
    (pruning_layer -1), or already compressed, the input is returned as is.
    """
    if prefill.pruning_layer < 0 or prefill.compressed:
        return prefill
    single = not isinstance(prefill.keep_seq, list)
    keep = [prefill.keep_seq] if single else prefill.keep_seq
    row_stats = [prefill.stats] if single else prefill.stats
    lengths = (torch.tensor(prefill.cache.lengths)[:, None] if single else prefill.lengths).clone()
    layers = range(prefill.pruning_layer + 1)
    cache = prefill.cache.gathered(layers, pad_rows(keep))
    lengths[layers.start:layers.stop] = torch.tensor([k.numel() for k in keep])
    new_stats = []
    for b, st in enumerate(row_stats):
        after = cache.row_nbytes(lengths[:, b])
        new_stats.append({**st, "stage3": {**st["stage3"], "enabled": True, "kv_bytes_after": after,
                                           "reduction_ratio": 1 - after / max(1, st["stage3"]["kv_bytes_before"])}})
    if single:
        return replace(prefill, cache=cache, stats=new_stats[0], compressed=True)
    return replace(prefill, cache=cache, lengths=lengths, stats=new_stats, compressed=True)
