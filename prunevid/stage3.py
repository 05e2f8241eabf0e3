"""Stage 3: KV-cache compression.

After Stage 2 selects at layer M, layers M+1.. only ever see the kept tokens, but layers 0..M cached keys and
values for every token. Slicing those caches to prefix + kept video tokens + suffix (the same indices as
Stage 2) makes every decoding step attend only to kept tokens in every layer.
"""
from __future__ import annotations

from dataclasses import replace


def compress(prefill):
    """A new Prefill whose layers 0..M cache only the kept sequence positions; the input is not modified.

    A prefill without Stage 2 selection (pruning_layer -1) or already compressed is returned as is.
    """
    if prefill.pruning_layer < 0 or prefill.compressed:
        return prefill
    keep = prefill.keep_seq.to(prefill.cache.keys[0].device)
    cache = prefill.cache.sliced(range(prefill.pruning_layer + 1), keep)
    stats = dict(prefill.stats)
    stats["stage3"] = {**stats["stage3"], "enabled": True, "kv_bytes_after": cache.nbytes(),
                       "reduction_ratio": 1 - cache.nbytes() / max(1, stats["stage3"]["kv_bytes_before"])}
    return replace(prefill, cache=cache, compressed=True, stats=stats)
