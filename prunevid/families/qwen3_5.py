"""Qwen3.5 (dense; transformers 5.x only): Qwen3-VL's vision, prompt and positions on a hybrid language model.

The deltas from Qwen3-VL:
- No DeepStack: the vision tower returns the merged tokens only.
- `layer_types`: every fourth decoder layer is full attention (3, 7, 11, ...); the others are Gated DeltaNet, linear
  attention whose state is a fixed-size recurrent matrix per head plus the last few inputs of a short causal
  convolution. KVCache holds that state per layer (kv_cache.py); decoding carries it from step to step.
- Full attention is gated (q_proj returns each head's query and a gate side by side) and rotates only the first
  partial_rotary_factor of each head (0.25 on the released models).
- Stage 2 scores attention, so M must be a full-attention layer (pruning_layer below).
"""
from __future__ import annotations

import torch

from .. import adapter
from .. import positions as P
from ..errors import ConfigError
from .qwen2_vl import Qwen2VL
from .qwen3_vl import Qwen3VL

PRESET_M = 10    # the presets' pruning_layer (PruneVidConfig's default): mapped, not refused (pruning_layer below)


class Qwen35(Qwen3VL):
    model_type = "qwen3_5"
    display_name = "Qwen3.5"
    transformers_class = "Qwen3_5ForConditionalGeneration"
    min_transformers = (5, 25)   # the linear layers' cache calls KVCache answers are 5.25's (earlier 5.x differ)
    # the dense ids transformers' Qwen3.5 page names; GB estimated as 2 bytes per parameter (bf16), not measured
    hub_ids = {"Qwen/Qwen3.5-9B": 19.3, "Qwen/Qwen3.5-27B": 55.6}
    # (layers, d, d_kv, d_ff): Qwen3.5-9B's language model (transformers' Qwen3_5TextConfig defaults: 32 layers,
    # 4096, 4 KV heads x 256, 12288). The FLOPs model counts every layer as attention: see docs/method.md, "Qwen3.5"
    flops_shapes = {"Qwen3.5-9B": (32, 4096, 1024, 12288)}
    # and the linear layers' in_proj_a / in_proj_b (d x value heads): tiny, they set each head's decay and write
    # strength, and bitsandbytes' 4-bit kernel refuses so few output rows
    keep_in_dtype = (*Qwen3VL.keep_in_dtype, "in_proj_a", "in_proj_b")

    # ---- vision: no DeepStack

    def visual_streams(self, pixel_values: torch.Tensor, grid_thw: tuple) -> tuple:
        """The tower with its one merger (Qwen2-VL's path: the output is the LLM tokens, no DeepStack levels)."""
        return Qwen2VL.vision_features(self, pixel_values, grid_thw), []

    # ---- which layers attend

    @property
    def attention_layers(self) -> tuple:
        """Indices of the full-attention layers (config.layer_types); the others are linear attention."""
        return tuple(i for i, t in enumerate(self.text_config.layer_types) if t == "full_attention")

    def pruning_layer(self, requested: int) -> int:
        """The layer Stage 2 selects at: `requested` when it is a full-attention layer; the presets' M (10) maps to
        the last full-attention layer at or before it (7 on 3, 7, 11, ...; the model's last one below 10 on a
        shallower model); any other M is refused, naming the valid ones."""
        full = self.attention_layers
        if requested in full:
            return requested
        below = [i for i in full if i <= min(requested, self.num_layers - 1)]
        if requested == PRESET_M and below:
            return below[-1]
        raise ConfigError(f"pruning_layer {requested} is not a full-attention layer of {self.name} ({self.display_name} "
                          f"scores attention only there); use one of {', '.join(map(str, full))}")

    # ---- the LLM

    def decoder_layer(self, layer, hidden: torch.Tensor, rope, cache, attention_mask=None,
                      lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One layer. A linear layer takes no mask (a new token never is padding) and, where right-padded rows
        differ in length, runs each row alone on its real tokens: padding must not reach its recurrent state."""
        if hasattr(layer, "self_attn"):
            return adapter.decoder_layer(layer, hidden, rope, cache, attention_mask)
        B, n = hidden.shape[:2]
        if lengths is None or bool((lengths == n).all()):
            return adapter.decoder_layer(layer, hidden, rope, cache)
        i = layer.linear_attn.layer_idx
        out, rows = torch.zeros_like(hidden), []
        for b in range(B):
            row = cache.state_row(i, b)
            k = int(lengths[b])
            out[b, :k] = adapter.decoder_layer(layer, hidden[b:b + 1, :k], None, row)[0]
            rows.append(row)
        cache.set_state(i, torch.cat([r.conv[i] for r in rows]), torch.cat([r.recurrent[i] for r in rows]),
                        cache.lengths[i] + n)
        return out

    @staticmethod
    def attention_qk(layer, hidden: torch.Tensor, query_start: int, rope: tuple | None = None) -> tuple:
        """As Qwen3-VL's, with the gate split off each head's q_proj output and RoPE on the first
        rope-width dimensions of each head only (partial rotary)."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden[None])[0]
        L, hd = x.shape[0], attn.head_dim
        q = attn.q_proj(x[query_start:]).view(L - query_start, -1, 2 * hd)[..., :hd]
        q = attn.q_norm(q).transpose(0, 1)
        k = attn.k_norm(attn.k_proj(x).view(L, -1, hd)).transpose(0, 1)
        if rope is not None:
            cos, sin = rope
            r = cos.shape[-1]
            q = torch.cat([P.rotate(q[..., :r], cos[query_start:], sin[query_start:]), q[..., r:]], dim=-1)
            k = torch.cat([P.rotate(k[..., :r], cos, sin), k[..., r:]], dim=-1)
        return q, k

    def state_bytes(self) -> int:
        """One prompt's linear-layer state: per linear layer the convolution's last kernel-size inputs of q, k and
        v (model dtype) and a k_dim x v_dim recurrent matrix per value head (float32: the delta rule runs in it)."""
        tc = self.text_config
        conv = (2 * tc.linear_num_key_heads * tc.linear_key_head_dim
                + tc.linear_num_value_heads * tc.linear_value_head_dim) * tc.linear_conv_kernel_dim
        recurrent = tc.linear_num_value_heads * tc.linear_key_head_dim * tc.linear_value_head_dim
        linear = self.num_layers - len(self.attention_layers)
        return linear * (conv * self.dtype.itemsize + recurrent * 4)

    def dims(self) -> tuple:
        """(layers, d, d_kv, d_ff); d_kv is the full-attention layers' (head_dim is explicit on Qwen3.5)."""
        tc = self.text_config
        return self.num_layers, tc.hidden_size, tc.num_key_value_heads * tc.head_dim, tc.intermediate_size
