"""The lean prefill/decode engine: one obvious path from frames to streamed answer tokens, for every model family.

    encode():      frames -> patches -> vision tower -> Stage 1 merge          (question independent: reusable)
    prefill():     prompt assembly -> run_layers()                             (question dependent)
    run_layers():  B prompts right-padded into one batch (B = 1 is a batch) -> layers 0..M on all tokens ->
                   each row's Stage 2 selection at M -> layers M+1.. on each row's kept tokens
    decode():      greedy or sampled decoding of B rows, each stopping on its own; generate() is one row, streaming
Stage 3 (stage3.compress) slices the KV cache of layers 0..M to the kept tokens; batch.py answers several prompts
through the same run_layers() and decode().

Everything model-specific (patches, vision tower, chat template, positions, q/k for scoring, the layer call, the
head) is a hook of the model's family (prunevid.families); this module only orders the hooks.
Each step returns a plain dataclass, so a ComfyUI node can hold it in a socket and hand it to several consumers.
"""
from __future__ import annotations

import dataclasses
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import adapter, families, loader, placement, stage1, stage2, stats
from .config import PruneVidConfig
from .errors import BudgetError, ConfigError, InputError, VideoError
from .families import VideoLLM
from .kv_cache import KVCache, pad_rows
from .video import Clip, to_grid

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
Progress = Callable[[int, int], None]   # progress(done, total); may raise to interrupt (ComfyUI does)


@dataclass
class VisualItem:
    """One video or image after the vision tower and Stage 1."""
    kind: str                   # "video" or "image"
    grid: tuple                 # (t, h, w) in LLM tokens (after the spatial merge)
    second_per_grid_t: float    # seconds of video per temporal group (0 for images)
    tokens: stage1.MergedTokens
    frames: torch.Tensor | None = None   # uint8 [T, H, W, 3] sampled frames, for visualisation
    source: str | None = None            # a video's path or description (Clip.source); None for images
    notes: list = field(default_factory=list)   # what the video reader assumed or corrected for this video
    times: list | None = None            # seconds of each temporal group (the mean of its frames' times; videos)


@dataclass
class Encoded:
    """Question-independent state: the visual tokens that will enter the LLM."""
    model: VideoLLM
    items: list
    stage1: dict                # the Stage 1 parameters used (None when off)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)   # what the video reader assumed or corrected (e.g. a frame rate)

    @property
    def original_tokens(self) -> int:
        return sum(it.tokens.original_tokens for it in self.items)

    @property
    def merged_tokens(self) -> int:
        return sum(it.tokens.num_tokens for it in self.items)


@dataclass
class Prefill:
    """The state after the prompt went through the LLM: everything decoding needs."""
    model: VideoLLM
    cache: KVCache
    logits: torch.Tensor        # [vocab] float32, logits of the last prompt token
    next_position: int          # position of the first generated token (on every axis)
    prompt_ids: torch.Tensor    # [n] text token ids of the prompt (for the repetition penalty)
    pruning_layer: int          # layers 0..M hold the full sequence until Stage 3 slices them
    keep_seq: torch.Tensor      # [n] sequence indices kept after layer M (all of them without Stage 2)
    kept_visual: torch.Tensor   # [k] indices into the concatenated merged tokens that survived Stage 2
    encoded: Encoded
    scores: torch.Tensor | None  # [N] float32 Stage 2 score of every merged visual token (None: no scoring ran)
    stats: dict
    compressed: bool = False
    hidden: torch.Tensor | None = None   # [n, D] final normed hidden states of all tokens (tests only)


# ---------------------------------------------------------------- encode (question independent)

def visual_items(visual) -> list:
    """The visual blocks of one prompt, in prompt order, as [(kind, x)]: ("video", Clip) or ("image", [H, W, 3]).

    visual: a Clip (one video), or an iterable of Clips and [H, W, 3] images (several blocks, mixed as given).
    """
    if isinstance(visual, Clip):
        return [("video", visual)]
    return [("video", x) if isinstance(x, Clip) else ("image", x) for x in visual]


def visual_token_count(visual, family: type[VideoLLM] = families.DEFAULT) -> int:
    """LLM tokens a Clip, or a list of Clips and [H, W, 3] images, makes in `family` before Stage 1 (Qwen2-VL and
    Qwen2.5-VL: one per 2 frames x 28 x 28 pixels; an image counts as 2 frames).

    The family's patch sizes fix the count, so it needs no weights: callers check the budget before a model load.
    """
    total = 0
    for kind, x in visual_items(visual):
        shape = tuple(x.frames.shape) if kind == "video" else (1, *getattr(x, "shape", ()))
        if len(shape) != 4:
            raise VideoError(f"an image of shape {list(shape[1:])}: expected [H, W, 3]")
        total += family.visual_tokens(shape[0], shape[1], shape[2])
    return total


def describe(items: list) -> str:
    """"16 frames at 448x252", or "2 video(s) and 1 image(s)": what a prompt's visual blocks are, in words."""
    if len(items) == 1 and items[0][0] == "video":
        f = items[0][1].frames
        return f"{f.shape[0]} frames at {f.shape[2]}x{f.shape[1]}"
    videos = sum(kind == "video" for kind, _ in items)
    parts = ([f"{videos} video(s)"] if videos else []) + ([f"{len(items) - videos} image(s)"]
                                                           if len(items) > videos else [])
    return " and ".join(parts)


def check_budget(visual, config: PruneVidConfig, family: type[VideoLLM] = families.DEFAULT) -> int:
    """Raise BudgetError when `visual` would make more tokens than config.max_video_tokens; return the count."""
    items = visual_items(visual)
    total = visual_token_count([x for _, x in items], family)
    if total > config.max_video_tokens:
        raise BudgetError(f"{describe(items)} make {total} visual tokens, over max_video_tokens="
                          f"{config.max_video_tokens}; lower max_frames or max_pixels")
    return total


def encode(qm: VideoLLM, visual, config: PruneVidConfig, progress: Progress | None = None) -> Encoded:
    """Vision tower + Stage 1 for a Clip (video), or for several visual blocks of one prompt: an iterable of Clips
    and [H, W, 3] uint8 images, in prompt order (Stage 1 runs on each block alone)."""
    loader.require_loaded(qm)
    items_in = visual_items(visual)
    if not items_in:
        raise InputError("no video or image given")
    check_budget([x for _, x in items_in], config, type(qm))
    prepared, f = [], qm.token_factor()
    for kind, x in items_in:
        frames, resized = to_grid(x.frames if kind == "video" else torch.as_tensor(x)[None], f)
        if resized:      # read for another family's grid (a model-independent video node): fit it to this one
            shape = f"{x.frames.shape[2]}x{x.frames.shape[1]}" if kind == "video" else f"{x.shape[1]}x{x.shape[0]}"
            note = (f"frames of {shape} are not on {qm.display_name}'s {f}-px grid: resized to "
                    f"{frames.shape[2]}x{frames.shape[1]}")
            if kind == "video":
                x = dataclasses.replace(x, frames=frames, notes=[*x.notes, note])
        pixels, (t, h, w) = qm.patches(frames)
        grid = (t, h // qm.merge_size, w // qm.merge_size)
        sec = qm.seconds_per_group(x.fps) if kind == "video" else 0.0
        prepared.append((kind, x, frames, pixels, (t, h, w), grid, sec))

    items, t_vision, t_stage1 = [], 0.0, 0.0
    for i, (kind, x, frames, pixels, thw, grid, sec) in enumerate(prepared):
        t0 = time.perf_counter()
        with torch.no_grad():
            feats, extras = qm.visual_streams(pixels, thw)               # [t, h*w, C], [[t, h*w, C_i]]
        t1 = time.perf_counter()
        if config.enable_stage1:
            tokens = stage1.merge_video(feats, config.tau, config.cluster_ratio, config.temporal_segment_ratio,
                                        config.dpc_knn_k, config.static_test, extras=extras)
        else:
            tokens = stage1.unmerged(feats, extras=extras)
        t_vision += t1 - t0
        t_stage1 += time.perf_counter() - t1
        video = kind == "video"
        items.append(VisualItem(kind, grid, sec, tokens, frames, source=x.source if video else None,
                                notes=list(x.notes) if video else [], times=qm.group_times(x) if video else None))
        if progress:
            progress(i + 1, len(prepared))
    params = ({k: getattr(config, k) for k in ("tau", "cluster_ratio", "temporal_segment_ratio", "dpc_knn_k")}
              if config.enable_stage1 else None)
    videos = [it for it in items if it.kind == "video"]
    # one video: its notes as they are; several: each note says which video it is about
    notes = [n if len(videos) == 1 else f"video {k + 1} ({it.source}): {n}"
             for k, it in enumerate(videos) for n in it.notes]
    return Encoded(qm, items, params, {"vision_s": t_vision, "stage1_s": t_stage1}, notes=notes)


# ---------------------------------------------------------------- prompt assembly

@dataclass
class Sequence:
    """The prompt as the LLM sees it before Stage 2."""
    embeds: torch.Tensor        # [L, D]
    positions: torch.Tensor     # [A, L] (A position axes; merged visual tokens at their representatives' positions)
    visual_cols: torch.Tensor   # [N] sequence index of each merged visual token (concatenated over items)
    blocks: torch.Tensor        # [N] selection block of each merged visual token
    query_start: int            # first token after the last visual token
    next_position: int          # unpruned max position + 1
    text_ids: torch.Tensor      # [n] the prompt's text token ids
    unpruned_length: int
    extras: list = field(default_factory=list)  # [N, C_i] per extra stream of the merged tokens (DeepStack levels)
    dropped_text: int = 0       # text tokens of the unpruned prompt left out (empty groups' wrappers, empty_groups)


def prompt_pieces(qm: VideoLLM, encoded: Encoded, question: str, system_prompt: str) -> list:
    """The prompt in order as ("text", str) and ("vision", item, first group, end group) pieces: the chat template
    around each visual block, and inside each block the family's layout (one vision piece on Qwen2-VL and
    Qwen2.5-VL; on Qwen3-VL a timestamp and a <|vision_start|> ... <|vision_end|> wrapper per temporal group, as
    ("text", str, item, group) pieces)."""
    kinds = [it.kind for it in encoded.items]
    out = []
    for i, piece in enumerate(qm.chat_pieces(kinds, question, system_prompt)):
        out.append(("text", piece))
        if i < len(kinds):
            it = encoded.items[i]
            out += [("text", p[1], i, p[2]) if p[0] == "text" and len(p) > 2 else p if p[0] == "text"
                    else ("vision", i, *p[1:]) for p in qm.block_layout(it.kind, it.grid[0], it.times)]
    return out


def reference_input_ids(qm: VideoLLM, encoded: Encoded, question: str,
                        system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> torch.Tensor:
    """The unpruned prompt as token ids with the image/video pad placeholders transformers expects. [L]"""
    ids = []
    for piece in prompt_pieces(qm, encoded, question, system_prompt):
        if piece[0] == "text":
            ids += qm.tokenizer.encode(piece[1], add_special_tokens=False)
        else:
            _, i, g0, g1 = piece
            it = encoded.items[i]
            ids += [qm.token_id(qm.pad_token(it.kind))] * ((g1 - g0) * it.grid[1] * it.grid[2])
    return torch.tensor(ids, dtype=torch.long)


def assemble(qm: VideoLLM, encoded: Encoded, question: str, system_prompt: str,
             empty_groups: str = "keep") -> Sequence:
    """The prompt around the merged visual tokens, each at its representative's unpruned position.

    A merged token goes into the vision piece of its representative's temporal group (Stage 1 emits them in group
    order, so the sequence keeps the merged tokens' order); every text piece (timestamps and wrappers included, even
    around a group whose tokens were all merged into earlier ones) stays, at its unpruned positions. With
    empty_groups="drop" the text pieces of a group left without tokens (Qwen3-VL's timestamp and wrapper) are left
    out; every other token keeps the same position.
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("question is empty: ask something about the video")
    pieces = prompt_pieces(qm, encoded, question, system_prompt)
    embeds, layout, text_ids, visual_cols, blocks, placed = [], [], [], [], [], []
    offsets, block_offsets, n_merged, n_blocks = [], [], 0, 0
    for it in encoded.items:                      # each item's first merged token and block in the whole prompt
        offsets.append(n_merged)
        block_offsets.append(n_blocks)
        n_merged += it.tokens.num_tokens
        n_blocks += int(it.tokens.block.max()) + 1
    length, sels = 0, []
    for piece in pieces:
        if piece[0] == "text":
            ids = torch.tensor(qm.tokenizer.encode(piece[1], add_special_tokens=False), dtype=torch.long)
            text_ids.append(ids)
            embeds.append(qm.embed(ids.to(qm.device)))
            layout.append(("text", ids.numel()))
            length += ids.numel()
            sels.append(None)
            continue
        _, i, g0, g1 = piece
        it = encoded.items[i]
        group = it.tokens.rep_index.cpu() // (it.grid[1] * it.grid[2])
        sel = ((group >= g0) & (group < g1)).nonzero().squeeze(1)        # this piece's merged tokens
        layout.append(("vision", (g1 - g0, *it.grid[1:]), it.second_per_grid_t))
        embeds.append(it.tokens.embeds[sel.to(it.tokens.embeds.device)].to(qm.device, qm.dtype))
        visual_cols.append(torch.arange(length, length + sel.numel()))
        blocks.append(it.tokens.block.cpu()[sel] + block_offsets[i])
        placed.append(sel + offsets[i])
        sels.append(sel)
        length += sel.numel()
    if not torch.equal(torch.cat(placed), torch.arange(n_merged)):
        raise RuntimeError("Stage 1's merged tokens are not in temporal-group order; the prompt cannot hold them")
    # unpruned positions of every piece; an item's original tokens are its vision pieces' columns, in order
    full, delta = qm.positions(layout)
    spans, cursor = [], 0
    for lay in layout:
        n0 = lay[1] if lay[0] == "text" else lay[1][0] * lay[1][1] * lay[1][2]
        spans.append(torch.arange(cursor, cursor + n0))
        cursor += n0
    originals = {}
    for piece, span in zip(pieces, spans):
        if piece[0] == "vision":
            originals.setdefault(piece[1], []).append(span)
    originals = {i: torch.cat(cols) for i, cols in originals.items()}
    # text keeps its positions; each merged token takes its representative's
    out = [full[:, span] if sel is None
           else full[:, originals[piece[1]][encoded.items[piece[1]].tokens.rep_index.cpu()[sel]]]
           for piece, span, sel in zip(pieces, spans, sels)]
    dropped = 0
    if empty_groups == "drop":
        filled = [set((it.tokens.rep_index.cpu() // (it.grid[1] * it.grid[2])).tolist()) for it in encoded.items]
        gone = [p[0] == "text" and len(p) == 4 and p[3] not in filled[p[2]] for p in pieces]
        if any(gone):
            text_ids = [ids for ids, p, g in zip(text_ids, [p for p in pieces if p[0] == "text"],
                                                  [g for g, p in zip(gone, pieces) if p[0] == "text"]) if not g]
            cols, n = [], 0
            for piece, e, g in zip(pieces, embeds, gone):
                if piece[0] == "vision":
                    cols.append(torch.arange(n, n + e.shape[0]))
                n += 0 if g else e.shape[0]
                dropped += e.shape[0] if g else 0
            visual_cols = cols
            embeds = [e for e, g in zip(embeds, gone) if not g]
            out = [o for o, g in zip(out, gone) if not g]
    visual_cols = torch.cat(visual_cols)
    levels = min((len(it.tokens.extras) for it in encoded.items), default=0)
    extras = [torch.cat([it.tokens.extras[lv] for it in encoded.items]) for lv in range(levels)]
    return Sequence(embeds=torch.cat(embeds), positions=torch.cat(out, dim=1), visual_cols=visual_cols,
                    blocks=torch.cat(blocks), query_start=int(visual_cols[-1]) + 1,
                    next_position=cursor + delta, text_ids=torch.cat(text_ids), unpruned_length=cursor,
                    extras=extras, dropped_text=dropped)


# ---------------------------------------------------------------- prefill (question dependent)

def check_pruning_layer(qm: VideoLLM, config: PruneVidConfig) -> int:
    """Stage 2 selects after layer M: M must be one of the model's layers, and one the family can score at
    (qm.pruning_layer: Qwen3.5 maps the presets' M to a full-attention layer). Returns the M used."""
    if not config.enable_stage2:
        return config.pruning_layer
    M = qm.pruning_layer(config.pruning_layer)
    if M >= qm.num_layers:
        raise ConfigError(f"pruning_layer must be below the layer count of {qm.name} ({qm.num_layers}), got "
                          f"{config.pruning_layer}; use 0..{qm.num_layers - 1}")
    return M


@dataclass
class Rows:
    """B prompts after run_layers(): each row's cache, last-token logits and Stage 2 selection."""
    cache: KVCache              # per layer [B, KV heads, P_i, head_dim], rows right-padded to P_i columns
    lengths: torch.Tensor       # [layers, B] long: real prompt tokens of each row in each layer's cache
    logits: torch.Tensor        # [B, vocab] float32, logits of each row's last prompt token
    pruning_layer: int          # -1 without a Stage 2 selection
    keep_seq: list              # [B] tensors: sequence indices each row kept after layer M (all without Stage 2)
    kept_visual: list           # [B] tensors: indices into each row's merged visual tokens that survived Stage 2
    scores: list                # [B] float32 Stage 2 scores of each row's merged visual tokens (None: no scoring)
    timings: dict               # prefill_s, stage2_scoring_s (the whole batch's)
    hidden: torch.Tensor | None = None   # [L, D] final normed hidden states of every token (B = 1, tests only)

    def kv_bytes(self, b: int) -> int:
        return self.cache.row_nbytes(self.lengths[:, b])


def _kept_sequence(seq: Sequence, kept_visual: torch.Tensor) -> torch.Tensor:
    """Sequence indices that go on after layer M: every text token and the kept visual tokens, in order."""
    is_visual = torch.zeros(seq.embeds.shape[0], dtype=torch.bool)
    is_visual[seq.visual_cols] = True
    return torch.cat([(~is_visual).nonzero().squeeze(1), seq.visual_cols[kept_visual]]).sort().values


def _select(qm: VideoLLM, layer, hidden: torch.Tensor, positions: torch.Tensor, seq: Sequence,
            config: PruneVidConfig) -> tuple:
    """Stage 2 for one row at layer M: (kept visual indices, scores). hidden [L, D] is the layer's input."""
    rope = qm.score_rope(positions, hidden.dtype) if config.score_with_rope else None
    q, k = qm.attention_qk(layer, hidden, seq.query_start, rope)
    scores = stage2.question_attention(q, k, seq.visual_cols.to(hidden.device), config.attention_aggregation,
                                       causal=rope is not None).cpu()
    original = seq.unpruned_length - seq.text_ids.numel() - seq.dropped_text     # the row's unpruned visual tokens
    return stage2.choose(scores, seq.blocks, config, original), scores


def _take(r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-row columns of a rotary table: r [..., B, L, head_dim], idx [B, K] -> [..., B, K, head_dim]."""
    return r.gather(-2, idx[..., None].expand(*r.shape[:-3], *idx.shape, r.shape[-1]).to(r.device))


@torch.no_grad()
def run_layers(qm: VideoLLM, seqs: list, config: PruneVidConfig, keep_visual: list | None = None,
               progress: Progress | None = None, return_hidden: bool = False) -> Rows:
    """B assembled prompts through the LLM together, each row selecting its own kept tokens at layer M.

    Rows are right-padded: row b holds its n_b real tokens in columns 0..n_b-1, so the plain causal path of SDPA
    (no mask tensor at all) is exact for every real token; padding columns compute values nobody reads. After
    layer M each row is gathered to its kept tokens and right-padded again. A batch of one has no padding.
    keep_visual: [B] forced Stage 2 selections (indices into each row's merged visual tokens), for reference checks.
    """
    loader.require_loaded(qm)
    M = check_pruning_layer(qm, config)
    t0 = time.perf_counter()
    B, dev = len(seqs), qm.device
    n = torch.tensor([s.embeds.shape[0] for s in seqs])
    h = pad_rows([s.embeds for s in seqs])                                   # [B, L, D]
    pos = pad_rows([s.positions.T for s in seqs]).permute(2, 0, 1).to(dev)   # [A, B, L]
    rope = qm.rotary(h, pos)
    cache = KVCache(qm.num_layers)
    lengths = n.repeat(qm.num_layers, 1)                                     # [layers, B]
    prune = config.prunes_in_llm or (config.enable_stage2 and keep_visual is not None)
    keep_seq = [torch.arange(int(k)) for k in n]
    kept_visual = [torch.arange(s.visual_cols.numel()) for s in seqs]
    scores, t_score = [None] * B, 0.0
    visual = [(s.visual_cols, torch.arange(s.visual_cols.numel())) for s in seqs]   # (columns, merged index)
    for i, layer in enumerate(qm.layers):
        h, rope = placement.follow(layer, h, rope)     # a sharded model: the hidden states go where the layer is
        if prune and i == M:
            ts = time.perf_counter()
            for b, seq in enumerate(seqs):              # Stage 2 on each row's own real tokens
                if keep_visual is None:
                    L = int(n[b])
                    kept_visual[b], scores[b] = _select(qm, layer, h[b, :L], pos[:, b, :L].to(h.device), seq,
                                                        config)
                else:
                    kept_visual[b] = keep_visual[b].cpu().sort().values
                keep_seq[b] = _kept_sequence(seq, kept_visual[b])
            t_score = time.perf_counter() - ts
        h = qm.decoder_layer(layer, h, rope, cache, lengths=n)
        if prune and i == M:                            # layers > M see only each row's kept tokens
            idx = pad_rows(keep_seq).to(h.device)      # [B, K] (padding repeats index 0)
            h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
            rope = tuple(_take(r, idx) for r in rope)
            n = torch.tensor([k.numel() for k in keep_seq])
            lengths[i + 1:] = n
            visual = [(torch.searchsorted(keep_seq[b], s.visual_cols[kept_visual[b]]), kept_visual[b])
                      for b, s in enumerate(seqs)]
        h = qm.after_layer(i, h, seqs, visual)          # e.g. Qwen3-VL's DeepStack: only kept tokens after M
        if progress:
            progress(i + 1, qm.num_layers)
    last = h[torch.arange(B, device=h.device), (n - 1).to(h.device)]      # [B, D] each row's last real token
    logits = qm.logits(last[:, None])[:, 0].to(dev)
    hidden = qm.language_model.norm(h)[0] if return_hidden else None
    return Rows(cache=cache, lengths=lengths, logits=logits, pruning_layer=M if prune else -1, keep_seq=keep_seq,
                kept_visual=kept_visual, scores=scores, hidden=hidden,
                timings={"prefill_s": time.perf_counter() - t0, "stage2_scoring_s": t_score})


def prefill(encoded: Encoded, question: str, config: PruneVidConfig, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
            progress: Progress | None = None, keep_visual: torch.Tensor | None = None,
            return_hidden: bool = False) -> Prefill:
    """Run one prompt through the LLM (run_layers with B = 1), selecting at layer M (Stage 2) when enabled.

    keep_visual: force the Stage 2 selection (indices into the merged visual tokens), for reference checks.
    """
    qm = encoded.model
    loader.require_loaded(qm)
    check_pruning_layer(qm, config)
    t0 = time.perf_counter()
    seq = assemble(qm, encoded, question, system_prompt, config.empty_groups)
    rows = run_layers(qm, [seq], config, None if keep_visual is None else [keep_visual], progress, return_hidden)
    st = stats.prefill_stats(qm, encoded, seq, rows.kept_visual[0], rows.keep_seq[0], config, rows.kv_bytes(0))
    st["timings"] = {**encoded.timings, **rows.timings, "prefill_s": time.perf_counter() - t0}
    return Prefill(model=qm, cache=rows.cache, logits=rows.logits[0], next_position=seq.next_position,
                   prompt_ids=seq.text_ids, pruning_layer=rows.pruning_layer, keep_seq=rows.keep_seq[0],
                   kept_visual=rows.kept_visual[0], encoded=encoded, scores=rows.scores[0], stats=st,
                   hidden=rows.hidden)


# ---------------------------------------------------------------- decode

@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        def check(name, ok, valid):
            if not ok:
                raise ConfigError(f"{name} must be {valid}, got {getattr(self, name)!r}")

        def integer(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool)
        check("max_new_tokens", integer(self.max_new_tokens) and 1 <= self.max_new_tokens <= 8192,
              "an integer in [1, 8192]")
        check("do_sample", isinstance(self.do_sample, bool), "True or False")
        check("temperature", real(self.temperature) and 0.0 < self.temperature <= 10.0, "in (0, 10]")
        check("top_p", real(self.top_p) and 0.0 < self.top_p <= 1.0, "in (0, 1]")
        check("top_k", integer(self.top_k) and self.top_k >= 0, "an integer >= 0 (0 = off)")
        check("repetition_penalty", real(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
              "in (0, 10]")
        check("seed", integer(self.seed) and -2 ** 63 <= self.seed < 2 ** 64, "an integer in [-2**63, 2**64)")


def next_token(logits: torch.Tensor, seen: torch.Tensor, p: SamplingParams, generator) -> int:
    """Pick the next token from logits [vocab] (float32)."""
    logits = logits.clone()
    if p.repetition_penalty != 1.0 and seen.numel():
        s = logits[seen]
        logits[seen] = torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty)
    if not p.do_sample:
        return int(logits.argmax())
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = logits.topk(min(p.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p      # keep the smallest prefix reaching top_p
        logits[order[drop]] = float("-inf")
    probs = logits.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def decode(qm: VideoLLM, cache: KVCache, lengths: torch.Tensor, logits: torch.Tensor, next_positions: list,
           prompt_ids: list, params: list, on_token: Callable | None = None, return_logits: bool = False) -> list:
    """Decode B rows together from their prompts' cache (left untouched); each row stops at its own end token or
    its own max_new_tokens, then leaves the batch (its cache rows are dropped), so the rest decode on.

    cache: per layer [B, KV heads, P_i, head_dim] holding lengths[i, b] real tokens of row b (right-padded);
    logits [B, vocab] of each row's last prompt token; next_positions [B]; prompt_ids [B] tensors (repetition
    penalty); params [B] SamplingParams. on_token(b, ids, done) is called after each token of row b (ids so far;
    done when that token ended the row). Every new token sits at the same column of each layer's cache; one
    [B, 1, 1, keys] mask per step hides each row's padding columns, and a batch without padding has none.
    Returns [B] dicts {"ids", "text", "stats", ["logits"]}.
    """
    loader.require_loaded(qm)
    B = len(params)
    t0 = time.perf_counter()
    cache = cache.fork(max(p.max_new_tokens for p in params))
    prompt_len = list(cache.lengths)                     # padded prompt columns of each layer
    lengths = lengths.clone()                            # [layers, B'] real prompt tokens of the active rows
    generators = [torch.Generator().manual_seed(int(p.seed)) for p in params]
    seen = [ids.to(logits.device) for ids in prompt_ids]
    out_ids, all_logits = [[] for _ in range(B)], [[] for _ in range(B)]
    first, end = [0.0] * B, [0.0] * B
    rows = list(range(B))                                # the original row of each active batch row
    attending = set(qm.attention_layers)
    step = 0
    while True:
        stay = []
        for j, b in enumerate(rows):
            all_logits[b].append(logits[j])
            tok = next_token(logits[j], seen[b], params[b], generators[b])
            out_ids[b].append(tok)
            if step == 0:
                first[b] = time.perf_counter() - t0
            done = tok in qm.eos_token_ids or len(out_ids[b]) >= params[b].max_new_tokens
            if done:
                end[b] = time.perf_counter() - t0
            else:
                seen[b] = torch.cat([seen[b], torch.tensor([tok], device=seen[b].device)])
                stay.append(j)
            if on_token:
                on_token(b, out_ids[b], done)
        if not stay:
            break
        if len(stay) < len(rows):                        # finished rows leave the batch
            keep = torch.tensor(stay)
            cache, lengths = cache.rows(keep), lengths[:, keep]
            rows = [rows[j] for j in stay]
        h = qm.embed(torch.tensor([[out_ids[b][-1]] for b in rows], device=qm.device))        # [B', 1, D]
        pos = torch.tensor([next_positions[b] + step for b in rows], device=qm.device)
        rope = qm.rotary(h, qm.decode_positions(pos))
        masks = {}
        for i, layer in enumerate(qm.layers):
            h, rope = placement.follow(layer, h, rope)
            # a linear-attention layer (Qwen3.5) takes no mask: it never shares one with an attention layer
            key = (prompt_len[i], tuple(lengths[i].tolist()), h.device, i in attending)
            if key not in masks:                         # two distinct masks per step at most (layers <= M, > M)
                masks[key] = _decode_mask(layer, lengths[i], prompt_len[i], step, h.dtype, h.device)
            h = qm.decoder_layer(layer, h, rope, cache, attention_mask=masks[key])
        logits = qm.logits(h)[:, -1].to(qm.device)
        step += 1
    results = []
    for b in range(B):
        ids, n = out_ids[b], len(out_ids[b])
        res = {"ids": ids, "text": qm.tokenizer.decode(ids, skip_special_tokens=True).strip(),
               "stats": {"new_tokens": n, "decode_s": end[b], "decode_first_token_s": first[b],
                         "tokens_per_s": (n - 1) / max(end[b] - first[b], 1e-9) if n > 1 else 0.0}}
        if return_logits:
            res["logits"] = torch.stack(all_logits[b])
        results.append(res)
    return results


def _decode_mask(layer, real: torch.Tensor, prompt_len: int, step: int, dtype, device):
    """Mask for one new token per row after `step` earlier ones: keys are the layer's prompt_len padded prompt
    columns (row b's first real[b] real) and the step + 1 generated ones. None when no row has padding."""
    if bool((real == prompt_len).all()):
        return None
    col = torch.arange(prompt_len + step + 1, device=device)
    valid = (col[None, :] < real.to(device)[:, None]) | (col[None, :] >= prompt_len)
    return adapter.padding_mask(layer, valid, dtype)


def generate(pf: Prefill, params: SamplingParams | None = None, on_text: Callable[[str], None] | None = None,
             progress: Progress | None = None, return_logits: bool = False) -> dict:
    """Decode one prefill (left untouched), streaming text to on_text; progress(tokens, max_new_tokens).
    Returns {"ids", "text", "stats", ["logits"]}."""
    p = params or SamplingParams()
    streamed = [""]

    def on_token(_, ids, done):
        if done and ids[-1] in pf.model.eos_token_ids:
            return                                       # the end token shows nothing and counts no progress
        if on_text:
            text = pf.model.tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(streamed[0]) and not text.endswith("\ufffd"):
                on_text(text[len(streamed[0]):])
                streamed[0] = text
        if progress:
            progress(len(ids), p.max_new_tokens)

    lengths = torch.tensor(pf.cache.lengths)[:, None]
    out = decode(pf.model, pf.cache, lengths, pf.logits[None], [pf.next_position], [pf.prompt_ids], [p],
                 on_token, return_logits)[0]
    final = pf.model.tokenizer.decode(out["ids"], skip_special_tokens=True)
    if on_text and len(final) > len(streamed[0]):
        on_text(final[len(streamed[0]):])
    return out
