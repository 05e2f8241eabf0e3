"""A minimal per-layer KV cache that the decoder layers write into.

The families' attention only calls `cache.update(k, v, layer_idx, ...)` on every transformers version (the extra
argument is `cache_kwargs` before 5.24, `kwargs=` from 5.24 on; neither matters here),
so owning the cache keeps the engine version independent and makes Stage 3 a plain slice. Decoding never
writes into a cache it was handed: `fork()` gives a new cache whose buffers have room for the new tokens, so a
cached prefill (ComfyUI shares node outputs) can be decoded from any number of times.

Linear-attention layers (Qwen3.5's Gated DeltaNet) keep no keys and values but a fixed-size state: the last inputs of
their causal convolution (`conv[i]`, [B, channels, kernel]) and a recurrent matrix per head (`recurrent[i]`,
[B, heads, k_dim, v_dim]). The layer reads and writes it through the calls of transformers 5.25's Cache
(get_conv_state, update_conv_state, get_recurrent_state, update_recurrent_state, and three it asks about past
recording, which this cache never does). Stage 3 leaves it as it is; every copy of the cache copies it (the layer
updates the convolution state in place during decoding).
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int):
        self.keys: list = [None] * num_layers     # each [B, KV heads, length, head_dim]
        self.values: list = [None] * num_layers
        self.lengths = [0] * num_layers           # valid length of each layer (buffers may be longer); a linear
                                                  # layer: the (padded) tokens its state has seen
        self.conv: list = [None] * num_layers     # linear layers: [B, channels, kernel] convolution inputs
        self.recurrent: list = [None] * num_layers   # linear layers: [B, heads, k_dim, v_dim] recurrent state

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
        new = self._copy_states()
        new.keys, new.values, new.lengths = list(self.keys), list(self.values), list(self.lengths)
        for i in layers:
            k, v = self.keys[i], self.values[i]
            if k is None:                         # a linear layer: its fixed-size state stays
                continue
            idx = index.to(k.device)[:, None, :, None].expand(k.shape[0], k.shape[1], index.shape[1], k.shape[3])
            new.keys[i], new.values[i] = k.gather(2, idx), v.gather(2, idx)
            new.lengths[i] = index.shape[1]
        return new

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A cache holding only the batch rows `index` [B'] of every layer (buffers keep their room for new tokens)."""
        new = self._copy_states(index)
        new.lengths = list(self.lengths)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                idx = index.to(k.device)
                new.keys[i], new.values[i] = k[idx], v[idx]
        return new

    def fork(self, extra: int) -> "KVCache":
        """A copy with room for `extra` more tokens per layer; this cache is left untouched."""
        new = self._copy_states()
        new.lengths = list(self.lengths)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is None:
                continue
            n = self.lengths[i]
            shape = (k.shape[0], k.shape[1], n + extra, k.shape[3])
            new.keys[i] = k.new_empty(shape)
            new.values[i] = v.new_empty(shape)
            new.keys[i][:, :, :n] = k[:, :, :n]
            new.values[i][:, :, :n] = v[:, :, :n]
            new.lengths[i] = n
        return new

    def nbytes(self) -> int:
        """Bytes held: the valid keys and values, and the linear layers' states."""
        return (sum(2 * k[:, :, :n].numel() * k.element_size() for k, n in zip(self.keys, self.lengths)
                    if k is not None) + sum(s.numel() * s.element_size() for s in self._states()))

    def row_nbytes(self, real: torch.Tensor) -> int:
        """Bytes one batch row's real tokens take (real [layers]: its real length in each layer; padding not
        counted), and its share of the linear layers' states: what the row's own cache would hold."""
        kv = sum(2 * int(n) * k.shape[1] * k.shape[3] * k.element_size() for k, n in zip(self.keys, real)
                 if k is not None)
        return kv + sum(s[0].numel() * s.element_size() for s in self._states())

    def state_nbytes(self) -> int:
        """Bytes of one batch row's linear-layer states (0 without linear layers)."""
        return sum(s[0].numel() * s.element_size() for s in self._states())

    # ---- linear-attention state (the calls transformers 5.25's Gated DeltaNet makes on its cache)

    def _states(self) -> list:
        return [s for s in (*self.conv, *self.recurrent) if s is not None]

    def _copy_states(self, index: torch.Tensor | None = None) -> "KVCache":
        """A new cache holding a copy of the linear layers' states (of the batch rows `index`, or all)."""
        new = KVCache(len(self.keys))
        for src, dst in ((self.conv, new.conv), (self.recurrent, new.recurrent)):
            for i, s in enumerate(src):
                if s is not None:
                    dst[i] = s.clone() if index is None else s[index.to(s.device)]
        return new

    def state_row(self, layer_idx: int, b: int) -> "KVCache":
        """A cache holding only batch row b's state of linear layer `layer_idx` (a row run on its own)."""
        new = KVCache(len(self.keys))
        for src, dst in ((self.conv, new.conv), (self.recurrent, new.recurrent)):
            if src[layer_idx] is not None:
                dst[layer_idx] = src[layer_idx][b:b + 1]
        new.lengths[layer_idx] = self.lengths[layer_idx]
        return new

    def set_state(self, layer_idx: int, conv: torch.Tensor, recurrent: torch.Tensor, length: int) -> None:
        self.conv[layer_idx], self.recurrent[layer_idx], self.lengths[layer_idx] = conv, recurrent, length

    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        return self.conv[layer_idx]

    def update_conv_state(self, x: torch.Tensor, layer_idx: int, state_idx: int = 0, conv_kernel_size=None,
                          **__) -> torch.Tensor:
        """x [B, channels, n] new convolution inputs -> the inputs the convolution runs over: the kept ones before
        x (zeros before the first token), then x; keeps the last kernel-size of them."""
        prev = self.conv[layer_idx]
        if prev is None:
            width = conv_kernel_size or x.shape[-1]
            full = torch.nn.functional.pad(x, (max(0, width - x.shape[-1]), 0))
        else:
            width = prev.shape[-1]
            full = torch.cat([prev.to(x.dtype), x], dim=-1)
        self.conv[layer_idx] = full[..., -width:].clone()
        self.lengths[layer_idx] += x.shape[-1]
        return full

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        return self.recurrent[layer_idx]

    def update_recurrent_state(self, state, layer_idx: int, state_idx: int = 0, **__) -> torch.Tensor:
        self.recurrent[layer_idx] = state[-1] if isinstance(state, (list, tuple)) else state
        return self.recurrent[layer_idx]

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        return 0

    def increase_count(self, layer_idx: int, state_idx: int = 0) -> None:
        """A decoding step updated the convolution state in place (causal_conv1d_update): one more token seen."""
        self.lengths[layer_idx] += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]


def pad_rows(rows: list, fill=0) -> torch.Tensor:
    """[n_b, ...] tensors -> [B, max n_b, ...], right-padded with `fill` (the engine's batch layout)."""
    out = rows[0].new_full((len(rows), max(r.shape[0] for r in rows), *rows[0].shape[1:]), fill)
    for b, r in enumerate(rows):
        out[b, :r.shape[0]] = r
    return out
