"""A minimal per-layer KV cache that the decoder layers write into.

The families' attention only calls `cache.update(k, v, layer_idx, ...)` on every transformers version (the extra
argument is `cache_kwargs` before 5.24, `kwargs=` from 5.24 on; neither matters here),
so owning the cache keeps the engine version independent and makes Stage 3 a plain slice. Decoding never
writes into a cache it was handed: `fork()` gives a new cache whose buffers have room for the new tokens, so a
cached prefill (ComfyUI shares node outputs) can be decoded from any number of times.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int):
        self.keys: list = [None] * num_layers     # each [B, KV heads, length, head_dim]
        self.values: list = [None] * num_layers
        self.lengths = [0] * num_layers           # valid length of each layer (buffers may be longer)

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *_, **__):
        """Append k, v [B, KV, n, hd] to layer `layer_idx`; return that layer's keys and values so far."""
        n, used = k.shape[2], self.lengths[layer_idx]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if keys is None:
            keys, values = k, v
        elif keys.shape[2] >= used + n:           # room in a preallocated buffer: write in place
            keys[:, :, used:used + n] = k
            values[:, :, used:used + n] = v
        else:
            keys = torch.cat([keys[:, :, :used], k], dim=2)
            values = torch.cat([values[:, :, :used], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        self.lengths[layer_idx] = used + n
        return keys[:, :, :used + n], values[:, :, :used + n]

    def gathered(self, layers: range, index: torch.Tensor) -> "KVCache":
        """A cache whose `layers` hold, for each batch row b, the sequence positions index[b] ([B, n]: rows with
        fewer real positions repeat a valid one, which the caller masks); the other layers are shared."""
        new = KVCache(len(self.keys))
        new.keys, new.values, new.lengths = list(self.keys), list(self.values), list(self.lengths)
        for i in layers:
            k, v = self.keys[i], self.values[i]
            idx = index.to(k.device)[:, None, :, None].expand(k.shape[0], k.shape[1], index.shape[1], k.shape[3])
            new.keys[i], new.values[i] = k.gather(2, idx), v.gather(2, idx)
            new.lengths[i] = index.shape[1]
        return new

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A cache holding only the batch rows `index` [B'] of every layer (buffers keep their room for new tokens)."""
        new = KVCache(len(self.keys))
        new.lengths = list(self.lengths)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            idx = index.to(k.device)
            new.keys[i], new.values[i] = k[idx], v[idx]
        return new

    def fork(self, extra: int) -> "KVCache":
        """A copy with room for `extra` more tokens per layer; this cache is left untouched."""
        new = KVCache(len(self.keys))
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            n = self.lengths[i]
            shape = (k.shape[0], k.shape[1], n + extra, k.shape[3])
            new.keys[i] = k.new_empty(shape)
            new.values[i] = v.new_empty(shape)
            new.keys[i][:, :, :n] = k[:, :, :n]
            new.values[i][:, :, :n] = v[:, :, :n]
            new.lengths[i] = n
        return new

    def nbytes(self) -> int:
        return sum(2 * k[:, :, :n].numel() * k.element_size() for k, n in zip(self.keys, self.lengths))

    def row_nbytes(self, real: torch.Tensor) -> int:
        """Bytes one batch row's real tokens take (real [layers]: its real length in each layer; padding not
        counted): what the row's own cache would hold."""
        return sum(2 * int(n) * k.shape[1] * k.shape[3] * k.element_size() for k, n in zip(self.keys, real))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]


def pad_rows(rows: list, fill=0) -> torch.Tensor:
    """[n_b, ...] tensors -> [B, max n_b, ...], right-padded with `fill` (the engine's batch layout)."""
    out = rows[0].new_full((len(rows), max(r.shape[0] for r in rows), *rows[0].shape[1:]), fill)
    for b, r in enumerate(rows):
        out[b, :r.shape[0]] = r
    return out
