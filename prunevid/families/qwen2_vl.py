"""Qwen2-VL (2B / 7B / 72B-Instruct): the first family, and the one the other Qwen families build on.

14-px patches, 2-frame temporal patches and a 2x2 merge (one LLM token per 28 x 28 pixels and 2 frames); a vision
tower with full attention; the chat template with one <|vision_start|> ... <|vision_end|> block per video or
image; 3-D M-RoPE in chunks (temporal, height, width frequency sections) whose temporal id is the group index.
"""
from __future__ import annotations

import torch

from .. import adapter, placement
from .. import positions as P
from ..video import to_patches
from .base import VideoLLM


class Qwen2VL(VideoLLM):
    model_type = "qwen2_vl"
    display_name = "Qwen2-VL"
    transformers_class = "Qwen2VLForConditionalGeneration"
    hub_ids = {"Qwen/Qwen2-VL-2B-Instruct": 4.4, "Qwen/Qwen2-VL-7B-Instruct": 16.6,
               "Qwen/Qwen2-VL-72B-Instruct": 147}
    # (layers, d, d_kv, d_ff) of the released language models (Qwen2-1.5B / 7B / 72B)
    flops_shapes = {"Qwen2-VL-7B": (28, 3584, 512, 18944), "Qwen2-VL-2B": (28, 1536, 256, 8960),
                    "Qwen2-VL-72B": (80, 8192, 1024, 29568)}
    # "model.visual" is 5.x's name for the vision tower (it matches from the start of a module name); 4.57 matches
    # "model.visual." anywhere in the name, which is the same modules
    keep_in_dtype = ("model.visual", "lm_head")

    # ---- vision

    def patches(self, frames: torch.Tensor) -> tuple:
        """uint8 [T, H, W, 3] -> (pixel_values [P, 3*2*14*14], (t, h, w) in patches), the processor's layout."""
        return to_patches(frames, self.image_mean, self.image_std, patch_size=self.patch_size,
                          temporal_patch_size=self.temporal_patch_size, merge_size=self.merge_size)

    def vision_features(self, pixel_values: torch.Tensor, grid_thw: tuple) -> torch.Tensor:
        """The vision tower with its 2x2 merger: [t, h/2 * w/2, D] LLM tokens per temporal group, raster order."""
        visual = self.model.model.visual
        dev = placement.execution_device(visual)
        out = adapter.vision_output(visual(pixel_values.to(dev, visual.dtype),
                                           grid_thw=torch.tensor([grid_thw]).to(dev)))
        return out.reshape(grid_thw[0], -1, out.shape[-1])

    def seconds_per_group(self, fps: float) -> float:
        """Seconds of video one temporal group spans when frames are sampled at `fps`."""
        return self.temporal_patch_size / fps

    # ---- prompt

    def chat_pieces(self, kinds: list, question: str, system_prompt: str) -> list:
        """The chat template as text pieces around the visual blocks (len(kinds) + 1 strings)."""
        pieces = [f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>"]
        pieces += ["<|vision_end|><|vision_start|>"] * (len(kinds) - 1)
        pieces.append(f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
        return pieces

    def pad_token(self, kind: str) -> str:
        """The placeholder token transformers expects for each LLM token of a "video" or "image" block."""
        return "<|video_pad|>" if kind == "video" else "<|image_pad|>"

    # ---- positions

    @property
    def mrope_section(self) -> list:
        tc = self.text_config
        rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
        return list(rope.get("mrope_section", [16, 24, 24]))

    def temporal_step(self, second_per_grid_t: float) -> tuple:
        """The factors whose product is the temporal position step per group: the group index on Qwen2-VL."""
        return (1,)

    def positions(self, pieces: list) -> tuple:
        """Unpruned positions of a prompt: pieces are ("text", n) and ("vision", (t, h, w), second_per_grid_t).

        Returns (positions [3, L], rope_delta): decoding step s continues at L + s + rope_delta on all axes.
        """
        return P.layout([p if p[0] == "text" else ("vision", p[1], *self.temporal_step(p[2])) for p in pieces])

    def decode_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions [B] of one generated token per row as the rotary module takes them: [3, B, 1]."""
        return positions.view(1, -1, 1).expand(3, -1, -1)

    def score_rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """(cos, sin) [L, head_dim] for Stage 2's scoring with RoPE, as this family's attention applies them."""
        return P.mrope_cos_sin(positions, self.language_model.rotary_emb.inv_freq, self.mrope_section, dtype)
