"""Qwen2-VL's and Qwen2.5-VL's 3-D (M-RoPE) positions, by the original rule on every transformers version.

A prompt is a sequence of pieces: text runs and vision blocks. Text advances all three axes together. A vision
block of llm grid (t, h, w) starting at `start` gets
    temporal = start + floor(group * step)      step: 1 on Qwen2-VL (the group index), second_per_grid_t *
                                                tokens_per_second on Qwen2.5-VL (fractional until the floor)
    height   = start + row,   width = start + col,
and the next piece starts at max(all positions so far) + 1. transformers 5.x places text after a video at
start + max(h, w) instead (ignoring the temporal extent), and 4.57 truncates Qwen2.5-VL's second_per_grid_t to an
integer before multiplying; both are avoided here.
"""
from __future__ import annotations

import math

import torch


def text_positions(start: int, n: int) -> torch.Tensor:
    """[3, n] positions of n text tokens starting at `start`."""
    return (torch.arange(n) + start).expand(3, n).clone()


def vision_positions(start: int, grid: tuple[int, int, int], *step_factors: float) -> torch.Tensor:
    """[3, t*h*w] positions of a vision block in the tower's raster order (group, row, col).

    grid: (t, h, w) in LLM tokens (after the 2x2 spatial merge). The temporal step per group is the product of
    step_factors (in float64): (1,) for Qwen2-VL, (second_per_grid_t, tokens_per_second) for Qwen2.5-VL; images
    have one group, so their step does not matter.
    """
    t, h, w = grid
    step = 1.0
    for factor in step_factors:
        step *= float(factor)
    temporal = torch.tensor([math.floor(g * step) for g in range(t)], dtype=torch.long)
    tt = temporal.view(t, 1, 1).expand(t, h, w)
    hh = torch.arange(h).view(1, h, 1).expand(t, h, w)
    ww = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def layout(pieces: list) -> tuple[torch.Tensor, int]:
    """Positions of a whole unpruned prompt.

    pieces: a list of ("text", n) and ("vision", (t, h, w), *step_factors) (see vision_positions).
    Returns (positions [3, L], rope_delta): decoding step s continues at L + s + rope_delta on all three axes.
    """
    out, nxt = [], 0
    for piece in pieces:
        if piece[0] == "text":
            pos = text_positions(nxt, piece[1])
        else:
            pos = vision_positions(nxt, *piece[1:])
        if pos.numel():
            out.append(pos)
            nxt = int(pos.max()) + 1
    positions = torch.cat(out, dim=1)
    return positions, nxt - positions.shape[1]


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: list[int],
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for 3-D positions, laid out the way Qwen2-VL's and Qwen2.5-VL's attention consume them.

    positions: [3, L]; inv_freq: [head_dim / 2]; mrope_section: frequencies taken from the temporal, height and
    width axes in turn (sums to head_dim / 2). Returns (cos, sin), each [L, head_dim].
    Used only where we apply RoPE ourselves (Stage 2 scoring with RoPE); the decoder layers get theirs from the
    model's own rotary module.
    """
    freqs = positions[..., None].float() * inv_freq.float().to(positions.device)   # [3, L, head_dim/2]
    chunks = freqs.split(list(mrope_section), dim=-1)
    freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)     # [L, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def mrope_cos_sin_interleaved(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: list[int],
                              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for 3-D positions with Qwen3-VL's interleaved M-RoPE: frequency j follows the height axis
    when j % 3 == 1 and j < 3 * mrope_section[1], the width axis when j % 3 == 2 and j < 3 * mrope_section[2], the
    temporal axis otherwise (T H W T H W ... T T). positions [3, L] -> (cos, sin), each [L, head_dim]."""
    freqs = positions[..., None].float() * inv_freq.float().to(positions.device)   # [3, L, head_dim/2]
    out = freqs[0].clone()
    for axis in (1, 2):
        idx = slice(axis, 3 * mrope_section[axis], 3)
        out[..., idx] = freqs[axis, ..., idx]
    emb = torch.cat([out, out], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [..., L, head_dim] with tables [L, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
