"""Qwen2.5-VL (3B / 7B / 32B / 72B-Instruct): Qwen2-VL with timed temporal positions and a windowed vision tower.

The temporal position of group g is floor(g * second_per_grid_t * tokens_per_second): seconds, not the group index,
so the sampled fps matters. The windowed vision tower changes nothing the engine calls.
"""
from __future__ import annotations

from .qwen2_vl import Qwen2VL


class Qwen25VL(Qwen2VL):
    model_type = "qwen2_5_vl"
    display_name = "Qwen2.5-VL"
    transformers_class = "Qwen2_5_VLForConditionalGeneration"
    hub_ids = {"Qwen/Qwen2.5-VL-3B-Instruct": 7.5, "Qwen/Qwen2.5-VL-7B-Instruct": 16.6,
               "Qwen/Qwen2.5-VL-32B-Instruct": 67, "Qwen/Qwen2.5-VL-72B-Instruct": 147}
    flops_shapes = {"Qwen2.5-VL-7B": (28, 3584, 512, 18944), "Qwen2.5-VL-3B": (36, 2048, 256, 11008),
                    "Qwen2.5-VL-32B": (64, 5120, 1024, 27648)}

    @property
    def tokens_per_second(self) -> float:
        return float(getattr(self.config.vision_config, "tokens_per_second", 2))

    def temporal_step(self, second_per_grid_t: float) -> tuple:
        """Seconds per group x temporal positions per second (kept fractional until the floor)."""
        return (second_per_grid_t, self.tokens_per_second)
