"""The oracle model: a small Qwen2.5-VL built by prunevid.testing, and a batched forward that feeds it exactly what
the engine feeds it at inference.

Same prompt (the family's chat_pieces, each piece tokenized on its own as engine.assemble does), same frame -> patch
path (the family's patches, with the checkpoint's mean/std), same original Qwen2.5-VL 3-D positions (the family's
positions, given explicitly), the transformers modules themselves (vision tower, embeddings, rotary, decoder layers, norm, lm_head).
The batch is right-padded: attention is causal, so padding after a sample's last token never reaches it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from prunevid import engine
from prunevid.families import VideoLLM
from prunevid.testing import _hub_name, build_tiny_model

from . import data

# The oracle's shape (the sizes of prunevid.testing.build_tiny_model); PRUNING_LAYER is the paper's M = 10 of 28
# scaled to this depth, used by every preset row of the evaluation.
SIZES = dict(num_hidden_layers=6, hidden_size=128, intermediate_size=384, num_attention_heads=4,
             num_key_value_heads=2, vision_depth=2, vision_hidden_size=96, vision_intermediate_size=192,
             vision_num_heads=2)
PRUNING_LAYER = 2


def build(path, sizes=None, seed=0) -> Path:
    """A fresh random checkpoint of the oracle's shape in `path` (replacing an earlier one)."""
    return build_tiny_model(path, **(sizes or SIZES), seed=seed, overwrite=True)


def save_weights(qm: VideoLLM, path, dtype=torch.bfloat16) -> None:
    """Write the model's weights into `path`/model.safetensors under the hub checkpoints' legacy names."""
    from safetensors.torch import save_file
    state = {_hub_name(k): v.detach().to(dtype).contiguous() for k, v in qm.model.state_dict().items()}
    save_file(state, str(Path(path) / "model.safetensors"), metadata={"format": "pt"})
    cfg_file = Path(path) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")


class Prompter:
    """Token ids and 3-D positions of the engine's prompt for every question type (the clip size is fixed)."""

    def __init__(self, qm: VideoLLM):
        self.qm = qm
        tok = qm.tokenizer
        self.grid = (data.FRAMES // 2, data.GRID, data.GRID)
        self.n_video = self.grid[0] * self.grid[1] * self.grid[2]
        self.letter_ids = torch.tensor([tok.encode(L, add_special_tokens=False)[0] for L in data.LETTERS])
        self.im_end = qm.token_id("<|im_end|>")
        self.pad = qm.token_id("<|endoftext|>")
        pre, _ = qm.chat_pieces(["video"], "?", engine.DEFAULT_SYSTEM_PROMPT)
        self.prefix = tok.encode(pre, add_special_tokens=False)
        self._suffix = {}

    def suffix(self, question: str) -> list:
        """Token ids of the prompt after the video for this question (cached)."""
        if question not in self._suffix:
            _, suf = self.qm.chat_pieces(["video"], question, engine.DEFAULT_SYSTEM_PROMPT)
            self._suffix[question] = self.qm.tokenizer.encode(suf, add_special_tokens=False)
        return self._suffix[question]

    def layout(self, n_suffix: int, grid=None, fps: float = data.FPS) -> torch.Tensor:
        sec = self.qm.seconds_per_group(fps)            # as engine.encode
        pos, _ = self.qm.positions([("text", len(self.prefix)), ("vision", grid or self.grid, sec),
                                    ("text", n_suffix)])
        return pos


def pixels(qm, frames_list) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of several clips, concatenated, and their grid_thw [B, 3] (the engine's to_patches)."""
    out, thw = [], []
    for frames in frames_list:
        p, g = qm.patches(torch.as_tensor(frames))
        out.append(p)
        thw.append(g)
    return torch.cat(out), torch.tensor(thw)


def forward(qm: VideoLLM, pr: Prompter, items, drop_video_after: int | None = None,
            fps: float = data.FPS) -> torch.Tensor:
    """Logits of every question of every clip, [Q, 2, vocab]: at the prompt's last token (the answer) and at the
    answer token (which should predict <|im_end|>); [Q, 1, vocab] when no answers are given.

    items: [(frames uint8 [T, H, W, 3], [(question, answer letter or None), ...]), ...]. The questions about one clip
    share its prompt prefix and video in one packed row: question k sees the prefix, the video and its own tokens
    only, at the positions it would have alone, so each question's logits are exactly those of its own prompt
    (an attention mask does the separation). drop_video_after=M removes every video token after layer M (the "no
    video after M" control, for validation curves). Every clip of one call has the same frame count and size (the
    default 16 x 112 x 112 or another one, for the varied-input checkpoint) and frame rate `fps`.
    """
    m, lm = qm.model, qm.language_model
    B = len(items)
    pix, thw = pixels(qm, [frames for frames, _ in items])
    if not bool((thw == thw[0]).all()):
        raise ValueError("every clip of one forward must have the same frame count and size")
    grid = (int(thw[0, 0]), int(thw[0, 1]) // 2, int(thw[0, 2]) // 2)      # LLM tokens after the 2x2 merge
    n_video = grid[0] * grid[1] * grid[2]
    vis = m.model.visual(pix, grid_thw=thw)
    vis = (vis if isinstance(vis, torch.Tensor) else vis.pooler_output).view(B, n_video, -1)
    n_pre = len(pr.prefix)
    start = n_pre + n_video
    with_answer = items[0][1][0][1] is not None
    if any((a is not None) != with_answer for _, qs in items for _, a in qs):
        raise ValueError("give an answer for every question or for none")
    suffixes = [[pr.suffix(q) + ([int(pr.letter_ids[data.LETTERS.index(a)])] if with_answer else []) for q, a in qs]
                for _, qs in items]
    width = max(sum(len(x) for x in r) for r in suffixes)
    L = start + width
    alone = pr.layout(width, grid, fps)            # positions of one question right after the video
    ids = torch.full((B, width), pr.pad, dtype=torch.long)
    mask = torch.zeros(B, L, L, dtype=torch.bool)
    mask[:, :start, :start] = torch.ones(start, start, dtype=torch.bool).tril()
    pos = alone[:, None].repeat(1, B, 1)
    gather = []                                    # (row, index of the prompt's last token) per question
    for b, row in enumerate(suffixes):
        off = start
        for (q, _), suf in zip(items[b][1], row):
            n = len(suf)
            ids[b, off - start:off - start + n] = torch.tensor(suf)
            mask[b, off:off + n, :start] = True
            mask[b, off:off + n, off:off + n] = torch.ones(n, n, dtype=torch.bool).tril()
            pos[:, b, off:off + n] = alone[:, start:start + n]
            gather.append((b, off + len(pr.suffix(q)) - 1))
            off += n
        mask[b, off:, off:] = torch.eye(L - off, dtype=torch.bool)   # padding sees itself only
    h = torch.cat([lm.embed_tokens(torch.tensor(pr.prefix))[None].expand(B, -1, -1), vis, lm.embed_tokens(ids)], 1)
    rope = lm.rotary_emb(h, pos)
    attn = mask[:, None]
    keep = None
    for i, layer in enumerate(lm.layers):
        out = layer(h, attention_mask=attn, position_embeddings=rope)
        h = out[0] if isinstance(out, tuple) else out
        if i == drop_video_after:
            keep = torch.cat([torch.arange(n_pre), torch.arange(start, L)])
            h, rope, attn = h[:, keep], tuple(r[..., keep, :] for r in rope), attn[..., keep[:, None], keep]
    b_idx = torch.tensor([g[0] for g in gather])
    last = torch.tensor([g[1] for g in gather])
    if keep is not None:
        last = last - n_video
    idx = torch.stack([last, last + 1], 1) if with_answer else last[:, None]
    return m.lm_head(lm.norm(h[b_idx[:, None], idx]))


# ---------------------------------------------------------------- training speed

def _equal_chunk_vision_attention(original):
    """A drop-in for the vision attention's forward, for training only: when every attention chunk (a window or one
    temporal group) has the same length, one batched SDPA call replaces transformers' per-chunk loop. Same maths
    (checked against the original in tests/test_oracle.py); any other input goes to the original forward."""
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, **kwargs):
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if position_embeddings is None or not bool((lengths == lengths[0]).all()):
            return original(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
        L, n = hidden_states.shape[0], int(lengths[0])
        q, k, v = self.qkv(hidden_states).reshape(L, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = mq.apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        q, k, v = (x.reshape(L // n, n, self.num_heads, -1).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)        # [chunks, heads, n, head_dim]
        return self.proj(out.transpose(1, 2).reshape(L, -1))
    return forward


class fast_vision_attention:
    """Context manager: Qwen2.5-VL's vision attention runs equal-length chunks in one call (training speed)."""

    def __enter__(self):
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq
        self.cls = mq.Qwen2_5_VLVisionAttention
        self.original = self.cls.forward
        self.cls.forward = _equal_chunk_vision_attention(self.original)
        return self

    def __exit__(self, *exc):
        self.cls.forward = self.original
