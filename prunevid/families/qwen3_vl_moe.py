"""Qwen3-VL-MoE (30B-A3B / 235B-A22B, Instruct and Thinking): Qwen3-VL with sparse expert MLPs, and nothing else.

The vision tower, DeepStack, the per-group timestamped blocks, interleaved M-RoPE and q/k norm are Qwen3-VL's (the
transformers MoE model reuses Qwen3-VL's vision and attention classes), so every hook the engine calls is
inherited. What differs is inside each decoder layer's MLP: a router (`mlp.gate`) picks the top-k of the experts per
token and the experts' weights are fused 3-D tensors (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`). The layer
is called as a whole and returns the hidden states on 4.57 and 5.x alike (4.57's MoE block returns
(hidden, router_logits) and the layer unpacks it), so the engine's loop and Stage 2's q/k need nothing new.

Two facts follow from the experts and are this module's:
- FLOPs: a token runs through num_experts_per_tok experts of moe_intermediate_size each, so the analytic model's d_ff
  is the active width, top-k x moe_intermediate_size (the router's d x num_experts is left out: 0.7 % of a 30B-A3B
  layer's MLP FLOPs).
- 8/4-bit: bitsandbytes replaces nn.Linear modules only; the fused experts are not, so on 4.57 and on 5.x they would
  stay in the compute dtype (93 % of the 30B-A3B's weights, 96 % of the 235B-A22B's) and a "4-bit" 30B-A3B would
  still weigh 60 of its 62 GB. Loading refuses quantisation instead, before any download or weight read
  (check_quantization; tests/test_quantize.py pins what bitsandbytes does to the experts on both lines).
"""
from __future__ import annotations

from ..errors import ModelError
from .qwen3_vl import Qwen3VL


class Qwen3VLMoe(Qwen3VL):
    model_type = "qwen3_vl_moe"
    display_name = "Qwen3-VL-MoE"
    transformers_class = "Qwen3VLMoeForConditionalGeneration"
    hub_ids = {"Qwen/Qwen3-VL-30B-A3B-Instruct": 62.1, "Qwen/Qwen3-VL-30B-A3B-Thinking": 62.1,
               "Qwen/Qwen3-VL-235B-A22B-Instruct": 471, "Qwen/Qwen3-VL-235B-A22B-Thinking": 471}
    # (layers, d, d_kv, active d_ff) of the released language models (Qwen3-30B-A3B / 235B-A22B: 4 KV heads x 128,
    # 128 experts, 8 active of 768 / 1536 wide): d_ff = 8 x moe_intermediate_size, what one token computes
    flops_shapes = {"Qwen3-VL-30B-A3B": (48, 2048, 512, 8 * 768), "Qwen3-VL-235B-A22B": (94, 4096, 512, 8 * 1536)}

    @classmethod
    def check_quantization(cls, quantization: str, name: str) -> None:
        if quantization != "none":
            raise ModelError(
                f"quantization={quantization!r} is not supported for {cls.display_name} ({name}): bitsandbytes "
                "quantises nn.Linear layers only, and the experts (93-96 % of the released models' weights) are "
                "fused 3-D tensors it leaves in the compute dtype, so the model would stay nearly full size; use "
                "quantization='none' (device_map='auto' spreads a model too big for one GPU over the GPUs and CPU "
                "RAM)")

    def dims(self) -> tuple:
        """(layers, d, d_kv, d_ff) with d_ff the mean active MLP width per layer: top-k x moe_intermediate_size in
        the sparse layers, intermediate_size in any dense one (mlp_only_layers, decoder_sparse_step)."""
        layers, d, d_kv, _ = super().dims()
        tc = self.text_config
        sparse = sum(1 for layer in self.layers if hasattr(layer.mlp, "experts"))
        active = tc.num_experts_per_tok * tc.moe_intermediate_size
        total = sparse * active + (layers - sparse) * tc.intermediate_size
        return layers, d, d_kv, total // layers if total % layers == 0 else total / layers
