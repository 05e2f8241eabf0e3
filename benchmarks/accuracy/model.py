"""The oracle model: a small Qwen2.5-VL (or Qwen3-VL, FAMILY_SIZES) built by prunevid.testing, and a batched
forward that feeds it exactly what the engine feeds it at inference.

Same prompt (the family's chat_pieces and block_layout, each text piece tokenized on its own as engine.assemble does:
on Qwen3-VL a timestamp and a <|vision_start|> ... <|vision_end|> wrapper per temporal group), same frame -> patch
path (the family's patches, with the checkpoint's mean/std), same original 3-D positions (the family's positions,
given explicitly), the transformers modules themselves (vision tower, embeddings, rotary, decoder layers, norm,
lm_head), and on Qwen3-VL the DeepStack levels added to the visual tokens after the first layers, as the engine's
after_layer does. The batch is right-padded: attention is causal, so padding after a sample's last token never
reaches it.

Qwen3-VL's tokens cover 32 px (16-px patches, 2x2 merge), so its clips are the same 112x112 scenes upscaled to
128x128 (on_grid: bicubic, the frame reader's rule for growing a frame): 4x4 tokens per temporal group, one token
per 28-px cell of the scene, as on Qwen2.5-VL.
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
DEFAULT_FAMILY = "qwen2_5_vl"
# Qwen3-VL: the same LLM; a 3-block vision tower whose blocks 0, 1, 2 feed the three DeepStack levels (the tiny
# builder's deepstack_visual_indexes), added after LLM layers 0, 1 and 2. Its M is 1 (docs/accuracy.md, "The
# Qwen3-VL oracle"): level 0 is in the input Stage 2 scores, levels 1 and 2 reach only the kept tokens; at M = 2
# the trained model answers ~90 % of the questions with no video token after layer 2, so M = 2 would probe little.
FAMILY_SIZES = {"qwen2_5_vl": SIZES, "qwen3_vl": {**SIZES, "vision_depth": 3}}
PRUNING_LAYERS = {"qwen2_5_vl": PRUNING_LAYER, "qwen3_vl": 1}


def build(path, sizes=None, seed=0, family: str = DEFAULT_FAMILY) -> Path:
    """A fresh random checkpoint of the oracle's shape in `path` (replacing an earlier one)."""
    kw = {} if family == DEFAULT_FAMILY else {"family": family}
    return build_tiny_model(path, **(sizes or FAMILY_SIZES[family]), **kw, seed=seed, overwrite=True)


def side(qm: VideoLLM) -> int:
    """The oracle's frame side for this family: data.GRID tokens per side (112 on Qwen2.5-VL, 128 on Qwen3-VL)."""
    return data.GRID * qm.token_factor()


def on_grid(qm: VideoLLM, frames):
    """A scene's uint8 [T, 112, 112, 3] frames at the family's side (unchanged on Qwen2.5-VL; Qwen3-VL: bicubic
    to 128x128). Other sizes (the --varied shapes) are returned as they are."""
    import numpy as np

    from prunevid.video import _resize
    s = side(qm)
    if frames.shape[1:3] != (data.SIZE, data.SIZE) or s == data.SIZE:
        return frames
    return np.stack([_resize(np.asarray(f), s, s) for f in frames])


def save_weights(qm: VideoLLM, path, dtype=torch.bfloat16) -> None:
    """Write the model's weights into `path`/model.safetensors under the hub checkpoints' names."""
    from safetensors.torch import save_file
    fam = qm.model_type
    state = {_hub_name(k, fam): v.detach().to(dtype).contiguous() for k, v in qm.model.state_dict().items()}
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
        # the video block's inside: [("text", ids) or ("vision", first group, end group)] (Qwen3-VL: per group)
        times = qm.group_times(_Timeline([i / data.FPS for i in range(data.FRAMES)]))
        self.video = [("text", tok.encode(p[1], add_special_tokens=False)) if p[0] == "text" else p
                      for p in qm.block_layout("video", self.grid[0], times)]

    def suffix(self, question: str) -> list:
        """Token ids of the prompt after the video for this question (cached)."""
        if question not in self._suffix:
            _, suf = self.qm.chat_pieces(["video"], question, engine.DEFAULT_SYSTEM_PROMPT)
            self._suffix[question] = self.qm.tokenizer.encode(suf, add_special_tokens=False)
        return self._suffix[question]

    def video_pieces(self, grid) -> list:
        if grid is not None and tuple(grid) != self.grid:
            if len(self.video) != 1:
                raise ValueError(f"{self.qm.display_name}'s oracle takes {data.FRAMES} frames of the scene size only")
            return [("vision", 0, grid[0])]
        return self.video

    def layout(self, n_suffix: int, grid=None, fps: float = data.FPS) -> torch.Tensor:
        sec = self.qm.seconds_per_group(fps)            # as engine.encode
        grid = grid or self.grid
        inside = [("text", len(p[1])) if p[0] == "text" else ("vision", (p[2] - p[1], *grid[1:]), sec)
                  for p in self.video_pieces(grid)]
        pos, _ = self.qm.positions([("text", len(self.prefix)), *inside, ("text", n_suffix)])
        return pos


class _Timeline:
    """What VideoLLM.group_times reads of a clip: its frames' timestamps."""

    def __init__(self, timestamps):
        self.timestamps = timestamps


def pixels(qm, frames_list) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of several clips, concatenated, and their grid_thw [B, 3] (the engine's to_patches)."""
    out, thw = [], []
    for frames in frames_list:
        p, g = qm.patches(torch.as_tensor(on_grid(qm, frames)))
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
    levels = []                                    # DeepStack: [B, n_video, D] per level (Qwen3-VL)
    if isinstance(vis, tuple) or hasattr(vis, "deepstack_features"):
        from prunevid import adapter
        vis, levels = adapter.vision_streams(vis)
        levels = [lv.view(B, n_video, -1) for lv in levels]
    vis = (vis if isinstance(vis, torch.Tensor) else vis.pooler_output).view(B, n_video, -1)
    n_pre = len(pr.prefix)
    hw = grid[1] * grid[2]
    span, vis_cols, n_span = [], [], 0           # the video block's inside, and the columns of its visual tokens
    for p in pr.video_pieces(grid):
        if p[0] == "text":
            span.append(lm.embed_tokens(torch.tensor(p[1]))[None].expand(B, -1, -1))
            n_span += len(p[1])
        else:
            span.append(vis[:, p[1] * hw:p[2] * hw])
            vis_cols.append(torch.arange(n_pre + n_span, n_pre + n_span + (p[2] - p[1]) * hw))
            n_span += (p[2] - p[1]) * hw
    vis_cols = torch.cat(vis_cols)
    start = n_pre + n_span
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
    h = torch.cat([lm.embed_tokens(torch.tensor(pr.prefix))[None].expand(B, -1, -1), *span, lm.embed_tokens(ids)], 1)
    rope = lm.rotary_emb(h, pos)
    attn = mask[:, None]
    keep = None
    for i, layer in enumerate(lm.layers):
        out = layer(h, attention_mask=attn, position_embeddings=rope)
        h = out[0] if isinstance(out, tuple) else out
        if i == drop_video_after:
            is_video = torch.zeros(L, dtype=torch.bool)
            is_video[vis_cols] = True
            keep = (~is_video).nonzero().squeeze(1)
            h, rope, attn = h[:, keep], tuple(r[..., keep, :] for r in rope), attn[..., keep[:, None], keep]
        if i < len(levels) and keep is None:       # DeepStack after layer i (none once the video is dropped)
            h = h.index_add(1, vis_cols, levels[i])
    b_idx = torch.tensor([g[0] for g in gather])
    last = torch.tensor([g[1] for g in gather])
    if keep is not None:
        last = last - n_video
    idx = torch.stack([last, last + 1], 1) if with_answer else last[:, None]
    return m.lm_head(lm.norm(h[b_idx[:, None], idx]))


# ---------------------------------------------------------------- training speed

def _equal_chunk_vision_attention(original, mq):
    """A drop-in for the vision attention's forward, for training only: when every attention chunk (a window or one
    temporal group) has the same length, one batched SDPA call replaces transformers' per-chunk loop. Same maths
    (checked against the original in tests/test_oracle.py); any other input goes to the original forward. mq: the
    family's modeling module (its apply_rotary_pos_emb_vision)."""
    import torch.nn.functional as F

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
    """Context manager: Qwen2.5-VL's and Qwen3-VL's vision attention run equal-length chunks in one call (training
    speed)."""

    def __enter__(self):
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq
        from transformers.models.qwen3_vl import modeling_qwen3_vl as mq3
        self.patched = []
        for mod, cls in ((mq, mq.Qwen2_5_VLVisionAttention), (mq3, mq3.Qwen3VLVisionAttention)):
            self.patched.append((cls, cls.forward))
            cls.forward = _equal_chunk_vision_attention(cls.forward, mod)
        return self

    def __exit__(self, *exc):
        for cls, original in self.patched:
            cls.forward = original
