"""What every model family answers: the loaded checkpoint the engine runs, and the hooks it calls.

A family is a subclass of VideoLLM that declares its facts (class attributes: which transformers class, which
hub ids, patch sizes, the released shapes for the FLOPs model) and overrides the hooks where it differs, as
transformers' modular files do: Qwen2.5-VL is Qwen2-VL with timed temporal positions. The engine, the stages,
the stats and the nodes only ever talk to these hooks, never to a model's modules by name.

The hooks, in the order a prompt meets them:
    visual_tokens()            frames -> LLM tokens, before any weight is loaded (the token budget)
    patches(), vision_features()   frames -> the tower's input -> LLM tokens per temporal group
    visual_streams()           the tokens plus any per-token streams that travel with them (DeepStack levels)
    seconds_per_group(), group_times()   the time one temporal group spans; each group's time in the video
    chat_pieces(), pad_token() the chat template as text around the visual blocks
    block_layout()             a visual block's inside: one vision piece, or per-group text and vision pieces
    positions()                the unpruned positions of a prompt (and decoding's offset)
    embed(), rotary()          token embeddings and the decoder layers' rotary tables
    attention_qk()             the q and k a layer computes, for Stage 2's scoring
    decoder_layer(), logits()  one layer with the KV cache; the final norm and head
    attention_layers, pruning_layer()   which layers attend (Qwen3.5: every fourth) and where Stage 2 may select
    after_layer()              what the model adds to the hidden states after a layer (none; Qwen3-VL: DeepStack)
    keep_in_dtype, llm_of()    what 8/4-bit quantisation leaves alone, and where the decoder layers are
    check_quantization()       refuses a quantisation the family's weights cannot take, before any weight is read
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import adapter, placement
from ..errors import ModelError


@dataclass
class VideoLLM:
    """A loaded checkpoint of one family: the transformers model, its tokenizer, and the family's hooks."""
    model: torch.nn.Module
    tokenizer: object
    name: str
    image_mean: tuple
    image_std: tuple
    eos_token_ids: list
    unloaded: bool = False
    quantization: str = "none"
    weight_bytes: dict | None = None   # {device: bytes} of the weights as loaded (quantize.weight_bytes, per device)

    # ---- what a family declares
    model_type: ClassVar[str] = ""               # config.json's model_type
    display_name: ClassVar[str] = ""             # "Qwen2.5-VL"
    transformers_class: ClassVar[str] = ""       # the transformers class that loads it
    min_transformers: ClassVar[tuple] = ()       # the oldest transformers (major, minor) it runs on; () = any
    hub_ids: ClassVar[dict] = {}                 # released hub ids -> download size in GB (the loader's list)
    flops_shapes: ClassVar[dict] = {}            # released LLMs -> (layers, d, d_kv, d_ff); the first is the headline
    keep_in_dtype: ClassVar[tuple] = ()          # modules 8/4-bit quantisation leaves in the model's dtype
    patch_size: ClassVar[int] = 14
    temporal_patch_size: ClassVar[int] = 2
    merge_size: ClassVar[int] = 2

    # ---- frames -> tokens (no weights needed)

    @classmethod
    def token_factor(cls) -> int:
        """Pixels per LLM token along each side: patch size x spatial merge."""
        return cls.patch_size * cls.merge_size

    @classmethod
    def visual_tokens(cls, frames: int, height: int, width: int) -> int:
        """LLM tokens of `frames` frames of height x width (multiples of token_factor) before Stage 1; an image is
        one frame, and a frame count that is not a multiple of the temporal patch is padded, as the processor does."""
        f = cls.token_factor()
        return -(-frames // cls.temporal_patch_size) * (height // f) * (width // f)

    @classmethod
    def check_quantization(cls, quantization: str, name: str) -> None:
        """ModelError (one line, what to do) when `name` of this family cannot be loaded with `quantization`
        ("8bit" / "4bit"); the loader asks before any download or weight read. Every mode loads, here."""

    # ---- the visual blocks: what every family shares unless it says otherwise

    def visual_streams(self, pixel_values: torch.Tensor, grid_thw: tuple) -> tuple:
        """(tokens [t, h*w, D], [extra per-token streams [t, h*w, D_i]]): the vision tower's LLM tokens and what
        travels with each of them through Stage 1 and Stage 2 (nothing here; Qwen3-VL's DeepStack levels)."""
        return self.vision_features(pixel_values, grid_thw), []

    def group_times(self, clip) -> list:
        """Seconds of each temporal group in the source video: the mean of its first and last frame's time (a
        frame count that is not a multiple of the temporal patch repeats its last frame), as Qwen's processors."""
        ts, tp = list(clip.timestamps), self.temporal_patch_size
        ts += ts[-1:] * (-len(ts) % tp)
        return [(ts[i] + ts[i + tp - 1]) / 2 for i in range(0, len(ts), tp)]

    def block_layout(self, kind: str, groups: int, times: list | None) -> list:
        """The inside of one visual block of `groups` temporal groups, between its chat pieces: ("text", str) and
        ("vision", first group, end group) pieces; ("text", str, g) is a text piece that belongs to group g alone
        (left out with it when Stage 1 emptied it and empty_groups="drop"). One vision piece holding every group, by
        default."""
        return [("vision", 0, groups)]

    def after_layer(self, index: int, hidden: torch.Tensor, seqs: list, visual: list) -> torch.Tensor:
        """Hidden states [B, n, D] after decoder layer `index`, with whatever the model adds there. visual[b] is
        (columns of row b's visual tokens in hidden, their indices into seqs[b]'s merged tokens). Nothing here."""
        return hidden

    def language_model_inputs(self, seq) -> dict:
        """Arguments for transformers' own language model forward on an assembled prompt (batch 1) beyond
        inputs_embeds and position_ids [3, 1, L], so a reference run sees what the engine's loop adds (Qwen3-VL:
        its position ids with a text row, visual_pos_masks and the DeepStack levels)."""
        return {}

    # ---- the loaded model

    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return getattr(self.config, "text_config", self.config)

    @property
    def device(self) -> torch.device:
        """Where the prompt starts: the token embeddings' device (the first of several with a device_map)."""
        return placement.execution_device(self.language_model.embed_tokens)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @staticmethod
    def llm_of(model: torch.nn.Module) -> torch.nn.Module:
        """The language model (embed_tokens, layers, norm, rotary_emb) inside a transformers model of this family."""
        return model.model.language_model

    @classmethod
    def transformers_model_class(cls):
        import transformers
        return getattr(transformers, cls.transformers_class)

    @classmethod
    def meta_model(cls, config: dict) -> torch.nn.Module:
        """The model built from a config.json dict on the meta device (no memory, no init): names and shapes."""
        import json
        model_cls = cls.transformers_model_class()
        with torch.device("meta"):
            return model_cls(model_cls.config_class(**json.loads(json.dumps(config))))

    @property
    def language_model(self):
        return self.llm_of(self.model)

    @property
    def layers(self):
        return self.language_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ModelError(f"the tokenizer of {self.name} has no {token} token: is it a {self.display_name} "
                             "tokenizer?")
        return tid

    def dims(self) -> tuple:
        """(layers, d, d_kv, d_ff) of this language model, for the FLOPs and KV-bytes model."""
        tc = self.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return self.num_layers, tc.hidden_size, tc.num_key_value_heads * head_dim, tc.intermediate_size

    # ---- the LLM: what every decoder-only family shares

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ids [...] -> [..., D]."""
        return self.language_model.embed_tokens(ids)

    def rotary(self, hidden: torch.Tensor, positions: torch.Tensor):
        """The decoder layers' rotary tables for positions [A, L] (batch 1) or [A, B, L] (a batch), in whatever
        layout this family's attention consumes."""
        positions = positions[:, None, :] if positions.ndim == 2 else positions
        return self.language_model.rotary_emb(hidden, positions.to(hidden.device))

    def decoder_layer(self, layer, hidden: torch.Tensor, rope, cache, attention_mask=None,
                      lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One decoder layer on hidden [B, n, D], appending its keys and values to `cache`. lengths [B]: the real
        tokens of each right-padded row (a prompt; None: no padding), which causal attention needs not know."""
        return adapter.decoder_layer(layer, hidden, rope, cache, attention_mask)

    @property
    def attention_layers(self) -> tuple:
        """Indices of the layers with full attention, whose KV cache grows with the prompt: all of them here
        (Qwen3.5: every fourth; the others keep a fixed-size linear-attention state)."""
        return tuple(range(self.num_layers))

    def state_bytes(self) -> int:
        """Bytes of the fixed-size state one prompt keeps besides keys and values (Qwen3.5's linear layers); 0."""
        return 0

    def pruning_layer(self, requested: int) -> int:
        """The layer Stage 2 selects at for a configured pruning_layer: the same one here (Qwen3.5 maps or
        refuses a layer without full attention). ConfigError when there is none."""
        return requested

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm and the head: hidden [B, n, D] -> float32 logits [B, n, vocab]."""
        return self.model.lm_head(self.language_model.norm(hidden)).float()

    @staticmethod
    def attention_qk(layer, hidden: torch.Tensor, query_start: int, rope: tuple | None = None) -> tuple:
        """The q of the query rows and the k of every row that `layer`'s attention computes from hidden [L, D]
        (its input): q [heads, L - query_start, head_dim], k [kv_heads, L, head_dim], before RoPE unless rope
        ((cos, sin), each [L, head_dim], see score_rope) is given. Query heads sharing a KV head are contiguous."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden[None])[0]
        L, hd = x.shape[0], attn.head_dim
        q = attn.q_proj(x[query_start:]).view(L - query_start, -1, hd).transpose(0, 1)
        k = attn.k_proj(x).view(L, -1, hd).transpose(0, 1)
        if rope is not None:
            from ..positions import rotate
            cos, sin = rope
            q, k = rotate(q, cos[query_start:], sin[query_start:]), rotate(k, cos, sin)
        return q, k
