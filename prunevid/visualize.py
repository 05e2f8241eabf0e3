"""Pictures of what the pruning did, drawn over the sampled frames (for ComfyUI's IMAGE previews and the CLI).

Every function returns float32 [N, H, W, 3] in 0..1 (ComfyUI's IMAGE layout). A token is a 28x28-pixel cell of
Qwen's grid (32x32 on Qwen3-VL; after the 2x2 merge); a frame shows the tokens of its temporal group (2 frames per
group).

- stage1_map: Stage 1's segments and merges. A coloured bar on top of each frame (and a thin frame around it)
  names its temporal segment, one colour per segment; static tokens (merged across the segment's frames) are
  shown grey, dynamic tokens in their colours; thin dark lines separate tokens merged into different tokens.
- kept_map: Stage 2's selection. Tokens whose merged token survived at layer M are shown as they are; pruned
  ones are dimmed and tinted red.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# colour-blind-friendly palette (Okabe-Ito, then Tableau), cycled per segment
PALETTE = torch.tensor([
    [0.90, 0.62, 0.00], [0.34, 0.71, 0.91], [0.00, 0.62, 0.45], [0.94, 0.89, 0.26], [0.00, 0.45, 0.70],
    [0.84, 0.37, 0.00], [0.80, 0.47, 0.65], [0.58, 0.40, 0.74], [0.55, 0.34, 0.29], [0.09, 0.75, 0.81],
])
PRUNED_TINT = torch.tensor([0.85, 0.10, 0.10])


def as_image(frames) -> torch.Tensor:
    """Frames (uint8 0..255 or float 0..1; torch or numpy) [T, H, W, 3] as ComfyUI IMAGE float32 [T, H, W, 3]."""
    x = torch.as_tensor(frames)
    if x.ndim == 3:
        x = x[None]
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float().clamp(0.0, 1.0)


def _upsample_index(n_out: int, n_cells: int) -> torch.Tensor:
    """For each of n_out pixels (or frames), the cell it falls in when n_cells cells cover them evenly."""
    return (torch.arange(n_out) * n_cells // max(1, n_out)).clamp(max=n_cells - 1)


def _token_layout(item):
    """Index maps from pixels to original tokens: (frames [T, H, W, 3] float, token index [T, H, W] long)."""
    frames = as_image(item.frames)
    T, H, W, _ = frames.shape
    t, h, w = item.grid
    g = _upsample_index(T, t)
    r = _upsample_index(H, h)
    c = _upsample_index(W, w)
    index = g[:, None, None] * (h * w) + r[None, :, None] * w + c[None, None, :]
    return frames, index


def _boundaries(cell_ids: torch.Tensor) -> torch.Tensor:
    """bool [T, H, W]: pixels where the merged token differs from the pixel to the right or below."""
    edge = torch.zeros_like(cell_ids, dtype=torch.bool)
    edge[:, :, :-1] |= cell_ids[:, :, :-1] != cell_ids[:, :, 1:]
    edge[:, :-1, :] |= cell_ids[:, :-1, :] != cell_ids[:, 1:, :]
    return edge


def _stack(images: list) -> torch.Tensor:
    """Concatenate per-item batches; items of another size are resized to the first one's (one IMAGE batch)."""
    H, W = images[0].shape[1:3]
    out = []
    for im in images:
        if im.shape[1:3] != (H, W):
            im = F.interpolate(im.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
            im = im.permute(0, 2, 3, 1)
        out.append(im)
    return torch.cat(out).clamp_(0.0, 1.0).contiguous()


def stage1_map(encoded) -> torch.Tensor:
    """Segments, static/dynamic tokens and merge boundaries of an engine.Encoded, over its frames."""
    images = []
    for item in encoded.items:
        frames, index = _token_layout(item)
        tok = item.tokens
        members = tok.members.cpu()
        merged = members[index]                                         # [T, H, W] merged token of each pixel
        static = tok.is_static.cpu()[merged]
        group_of_frame = _upsample_index(frames.shape[0], item.grid[0])
        segment_of_group = torch.empty(item.grid[0], dtype=torch.long)
        for i, (s, e) in enumerate(tok.segments):
            segment_of_group[s:e] = i
        color = PALETTE[segment_of_group[group_of_frame] % len(PALETTE)]  # [T, 3]

        gray = frames.mean(-1, keepdim=True).expand_as(frames)
        out = torch.where(static[..., None], 0.15 + 0.55 * gray, frames)
        out[_boundaries(merged)] = 0.05
        bar, edge = max(4, frames.shape[1] // 20), max(2, frames.shape[1] // 100)
        c = color[:, None, None, :]
        out[:, :bar], out[:, -edge:], out[:, :, :edge], out[:, :, -edge:] = c, c, c, c
        images.append(out)
    return _stack(images)


def kept_map(prefill) -> torch.Tensor:
    """Which merged tokens survived Stage 2 (engine.Prefill.kept_visual), over the frames of its encoding."""
    images, offset = [], 0
    kept_all = prefill.kept_visual.cpu()
    for item in prefill.encoded.items:
        frames, index = _token_layout(item)
        n = item.tokens.num_tokens
        kept = torch.zeros(n, dtype=torch.bool)
        local = kept_all[(kept_all >= offset) & (kept_all < offset + n)] - offset
        kept[local] = True
        offset += n
        keep_px = kept[item.tokens.members.cpu()[index]]                 # [T, H, W]
        pruned = 0.3 * frames + 0.35 * PRUNED_TINT
        images.append(torch.where(keep_px[..., None], frames, pruned))
    return _stack(images)
