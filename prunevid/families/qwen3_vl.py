"""Qwen3-VL (2B / 4B / 8B / 32B-Instruct, dense): Qwen2-VL's blocks with five deltas.

- 16-px patches: one LLM token per 32 x 32 pixels and 2 frames after the 2x2 merge.
- Each temporal group of a video is its own block, `<{t:.1f} seconds><|vision_start|>tokens<|vision_end|>`, with t
  the group's time in the video as text (Qwen3VLProcessor.replace_video_token); images keep one block.
- Positions per group block: temporal = start (time is in the text), height/width = start + row/col, the next
  piece at max + 1 (4.57's and 5.x's get_rope_index agree here: a block of one group ends at start + max(h, w) - 1).
- Interleaved M-RoPE: frequency j follows T, H, W in turn (T H W T H W ... T T) instead of chunks.
- Attention normalises q and k per head (q_norm, k_norm) before RoPE.
- DeepStack: the vision tower also returns features of some tower depths (one merger each); the LLM adds level l
  to the visual tokens' hidden states after decoder layer l.
"""
from __future__ import annotations

import torch

from .. import adapter, placement
from .. import positions as P
from .qwen2_vl import Qwen2VL


class Qwen3VL(Qwen2VL):
    model_type = "qwen3_vl"
    display_name = "Qwen3-VL"
    transformers_class = "Qwen3VLForConditionalGeneration"
    hub_ids = {"Qwen/Qwen3-VL-2B-Instruct": 4.3, "Qwen/Qwen3-VL-4B-Instruct": 8.9,
               "Qwen/Qwen3-VL-8B-Instruct": 17.5, "Qwen/Qwen3-VL-32B-Instruct": 66.8}
    # (layers, d, d_kv, d_ff) of the released language models (Qwen3-8B / 4B / 1.7B / 32B: 8 KV heads x 128)
    flops_shapes = {"Qwen3-VL-8B": (36, 4096, 1024, 12288), "Qwen3-VL-4B": (36, 2560, 1024, 9728),
                    "Qwen3-VL-2B": (28, 2048, 1024, 6144), "Qwen3-VL-32B": (64, 5120, 1024, 25600)}
    patch_size = 16

    # ---- vision

    def visual_streams(self, pixel_values: torch.Tensor, grid_thw: tuple) -> tuple:
        """The tower with its mergers: ([t, h/2 * w/2, D] LLM tokens, [DeepStack level [t, h/2 * w/2, D]])."""
        visual = self.model.model.visual
        dev = placement.execution_device(visual)
        out, levels = adapter.vision_streams(visual(pixel_values.to(dev, visual.dtype),
                                                    grid_thw=torch.tensor([grid_thw]).to(dev)))
        t = grid_thw[0]
        return out.reshape(t, -1, out.shape[-1]), [lv.reshape(t, -1, lv.shape[-1]) for lv in levels]

    def vision_features(self, pixel_values: torch.Tensor, grid_thw: tuple) -> torch.Tensor:
        return self.visual_streams(pixel_values, grid_thw)[0]

    # ---- prompt

    def chat_pieces(self, kinds: list, question: str, system_prompt: str) -> list:
        """The chat template around the blocks; the wrappers are block_layout's (a video has one per group)."""
        return ([f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n"] + [""] * (len(kinds) - 1)
                + [f"{question}<|im_end|>\n<|im_start|>assistant\n"])

    def block_layout(self, kind: str, groups: int, times: list | None) -> list:
        """An image: one wrapped block. A video: per group its timestamp (seconds, one decimal, as the processor
        writes it) and its own <|vision_start|> ... <|vision_end|>, each text piece tagged with its group (the
        engine leaves a group's pieces out when Stage 1 emptied it and config.empty_groups is "drop")."""
        if kind != "video":
            return [("text", "<|vision_start|>"), ("vision", 0, groups), ("text", "<|vision_end|>")]
        out = []
        for g in range(groups):
            out += [("text", f"<{times[g]:.1f} seconds><|vision_start|>", g), ("vision", g, g + 1),
                    ("text", "<|vision_end|>", g)]
        return out

    # ---- positions

    @property
    def mrope_section(self) -> list:
        tc = self.text_config
        rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
        return list(rope.get("mrope_section", [24, 20, 20]))

    def score_rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """(cos, sin) [L, head_dim] with interleaved M-RoPE, as Qwen3-VL's rotary module lays them out."""
        return P.mrope_cos_sin_interleaved(positions, self.language_model.rotary_emb.inv_freq, self.mrope_section,
                                           dtype)

    # ---- the LLM

    @staticmethod
    def attention_qk(layer, hidden: torch.Tensor, query_start: int, rope: tuple | None = None) -> tuple:
        """As the base hook, with q_norm / k_norm applied per head before RoPE (what the attention computes)."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden[None])[0]
        L, hd = x.shape[0], attn.head_dim
        q = attn.q_norm(attn.q_proj(x[query_start:]).view(L - query_start, -1, hd)).transpose(0, 1)
        k = attn.k_norm(attn.k_proj(x).view(L, -1, hd)).transpose(0, 1)
        if rope is not None:
            cos, sin = rope
            q, k = P.rotate(q, cos[query_start:], sin[query_start:]), P.rotate(k, cos, sin)
        return q, k

    def after_layer(self, index: int, hidden: torch.Tensor, seqs: list, visual: list) -> torch.Tensor:
        """DeepStack: after layer l < levels, add level l of each visual token still in the row (after Stage 2 at
        M, the kept ones) to its hidden state, as Qwen3VLTextModel._deepstack_process does."""
        for b, (seq, (cols, idx)) in enumerate(zip(seqs, visual)):
            if index < len(seq.extras) and cols.numel():
                cols = cols.to(hidden.device)
                hidden[b, cols] = hidden[b, cols] + seq.extras[index][idx.to(seq.extras[index].device)].to(
                    hidden.device, hidden.dtype)
        return hidden

    def language_model_inputs(self, seq) -> dict:
        """For transformers' own text model on an assembled prompt: position ids with a text row first (given three
        rows, 4.57 takes the temporal row as the text positions its causal mask is built from, and a video's
        repeated temporal ids then read as packed sequences), visual_pos_masks and deepstack_visual_embeds."""
        L = seq.embeds.shape[0]
        out = {"position_ids": torch.cat([torch.arange(L)[None], seq.positions.cpu()])[:, None].to(seq.embeds.device)}
        if seq.extras:
            mask = torch.zeros(1, L, dtype=torch.bool, device=seq.embeds.device)
            mask[0, seq.visual_cols.to(mask.device)] = True
            out.update(visual_pos_masks=mask, deepstack_visual_embeds=list(seq.extras))
        return out
