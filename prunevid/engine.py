"""The lean prefill/decode engine: one obvious path from frames to streamed answer tokens.

    encode():   frames -> patches -> vision tower -> Stage 1 merge            (question independent: reusable)
    prefill():  prompt assembly -> layers 0..M on all tokens -> Stage 2 select at M -> layers M+1.. on kept
    compress(): Stage 3, slices the KV cache of layers 0..M to the kept tokens   (see stage3.py)
    generate(): greedy or sampled decoding from a prefill, streaming text; never mutates the prefill

Each step returns a plain dataclass, so a ComfyUI node can hold it in a socket and hand it to several consumers.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import positions as P
from . import placement, qwen, stage1, stage2, stats
from .config import PruneVidConfig
from .errors import BudgetError, ConfigError, InputError, VideoError
from .kv_cache import KVCache
from .qwen import QwenModel
from .video import Clip, to_patches, visual_tokens

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
Progress = Callable[[int, int], None]   # progress(done, total); may raise to interrupt (ComfyUI does)


@dataclass
class VisualItem:
    """One video or image after the vision tower and Stage 1."""
    kind: str                   # "video" or "image"
    grid: tuple                 # (t, h, w) in LLM tokens (after the 2x2 merge)
    second_per_grid_t: float    # seconds of video per temporal group (0 for images)
    tokens: stage1.MergedTokens
    frames: torch.Tensor | None = None   # uint8 [T, H, W, 3] sampled frames, for visualisation
    source: str | None = None            # a video's path or description (Clip.source); None for images
    notes: list = field(default_factory=list)   # what the video reader assumed or corrected for this video


@dataclass
class Encoded:
    """Question-independent state: the visual tokens that will enter the LLM."""
    model: QwenModel
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
    model: QwenModel
    cache: KVCache
    logits: torch.Tensor        # [vocab] float32, logits of the last prompt token
    next_position: int          # 3-D position of the first generated token (all three axes)
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


def visual_token_count(visual) -> int:
    """LLM tokens a Clip, or a list of Clips and [H, W, 3] images, makes before Stage 1: one per 2 frames x 28 x 28
    pixels (an image counts as 2 frames).

    Every Qwen2.5-VL checkpoint has 14-px patches, 2-frame temporal patches and a 2x2 merge (FACTOR = 28), so the
    count needs no model: callers check the budget before paying for a model load.
    """
    total = 0
    for kind, x in visual_items(visual):
        shape = tuple(x.frames.shape) if kind == "video" else (1, *getattr(x, "shape", ()))
        if len(shape) != 4:
            raise VideoError(f"an image of shape {list(shape[1:])}: expected [H, W, 3]")
        total += visual_tokens(shape[0], shape[1], shape[2])
    return total


def _describe(items: list) -> str:
    if len(items) == 1 and items[0][0] == "video":
        f = items[0][1].frames
        return f"{f.shape[0]} frames at {f.shape[2]}x{f.shape[1]}"
    videos = sum(kind == "video" for kind, _ in items)
    parts = ([f"{videos} video(s)"] if videos else []) + ([f"{len(items) - videos} image(s)"]
                                                           if len(items) > videos else [])
    return " and ".join(parts)


def check_budget(visual, config: PruneVidConfig) -> int:
    """Raise BudgetError when `visual` would make more tokens than config.max_video_tokens; return the count."""
    items = visual_items(visual)
    total = visual_token_count([x for _, x in items])
    if total > config.max_video_tokens:
        raise BudgetError(f"{_describe(items)} make {total} visual tokens, over max_video_tokens="
                          f"{config.max_video_tokens}; lower max_frames or max_pixels")
    return total


def encode(qm: QwenModel, visual, config: PruneVidConfig, progress: Progress | None = None) -> Encoded:
    """Vision tower + Stage 1 for a Clip (video), or for several visual blocks of one prompt: an iterable of Clips
    and [H, W, 3] uint8 images, in prompt order (Stage 1 runs on each block alone)."""
    qwen.require_loaded(qm)
    items_in = visual_items(visual)
    if not items_in:
        raise InputError("no video or image given")
    check_budget([x for _, x in items_in], config)
    merge = qm.spatial_merge_size
    prepared = []
    for kind, x in items_in:
        frames = x.frames if kind == "video" else x[None]
        pixels, (t, h, w) = to_patches(frames, qm.image_mean, qm.image_std)
        grid = (t, h // merge, w // merge)
        sec = (2 / x.fps) if kind == "video" else 0.0   # temporal_patch_size frames per group at the sampled fps
        prepared.append((kind, x, frames, pixels, (t, h, w), grid, sec))

    items, t_vision, t_stage1 = [], 0.0, 0.0
    for i, (kind, x, frames, pixels, thw, grid, sec) in enumerate(prepared):
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = qwen.vision_features(qm, pixels, torch.tensor([thw]))
        feats = feats.reshape(grid[0], grid[1] * grid[2], -1)
        t1 = time.perf_counter()
        if config.enable_stage1:
            tokens = stage1.merge_video(feats, config.tau, config.cluster_ratio, config.temporal_segment_ratio,
                                        config.dpc_knn_k, config.static_test)
        else:
            tokens = stage1.unmerged(feats)
        t_vision += t1 - t0
        t_stage1 += time.perf_counter() - t1
        video = kind == "video"
        items.append(VisualItem(kind, grid, sec, tokens, frames, source=x.source if video else None,
                                notes=list(x.notes) if video else []))
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
    positions: torch.Tensor     # [3, L] (merged visual tokens at their representatives' unpruned positions)
    visual_cols: torch.Tensor   # [N] sequence index of each merged visual token (concatenated over items)
    blocks: torch.Tensor        # [N] selection block of each merged visual token
    query_start: int            # first token after the last visual token
    next_position: int          # unpruned max position + 1
    text_ids: torch.Tensor      # [n] the prompt's text token ids
    unpruned_length: int


def chat_pieces(qm: QwenModel, kinds: list, question: str, system_prompt: str) -> list:
    """Qwen2.5-VL's chat template as text pieces around the visual blocks (len(kinds) + 1 strings)."""
    pieces = [f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>"]
    pieces += ["<|vision_end|><|vision_start|>"] * (len(kinds) - 1)
    pieces.append(f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
    return pieces


def reference_input_ids(qm: QwenModel, encoded: Encoded, question: str,
                        system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> torch.Tensor:
    """The unpruned prompt as token ids with the image/video pad placeholders transformers expects. [L]"""
    kinds = [it.kind for it in encoded.items]
    text = chat_pieces(qm, kinds, question, system_prompt)
    ids = []
    for i, piece in enumerate(text):
        ids += qm.tokenizer.encode(piece, add_special_tokens=False)
        if i < len(kinds):
            pad = qm.token_id("<|video_pad|>" if kinds[i] == "video" else "<|image_pad|>")
            ids += [pad] * encoded.items[i].tokens.original_tokens
    return torch.tensor(ids, dtype=torch.long)


def assemble(qm: QwenModel, encoded: Encoded, question: str, system_prompt: str) -> Sequence:
    if not isinstance(question, str) or not question.strip():
        raise InputError("question is empty: ask something about the video")
    kinds = [it.kind for it in encoded.items]
    embed = qm.language_model.embed_tokens
    embeds, layout, text_ids = [], [], []
    visual_cols, blocks = [], []
    length, block_offset = 0, 0
    unpruned_len = 0
    for i, piece in enumerate(chat_pieces(qm, kinds, question, system_prompt)):
        ids = torch.tensor(qm.tokenizer.encode(piece, add_special_tokens=False), dtype=torch.long)
        text_ids.append(ids)
        embeds.append(embed(ids.to(qm.device)))
        layout.append(("text", ids.numel()))
        length += ids.numel()
        unpruned_len += ids.numel()
        if i < len(kinds):
            it = encoded.items[i]
            layout.append(("vision", it.grid, it.second_per_grid_t, qm.tokens_per_second))
            embeds.append(it.tokens.embeds.to(qm.device, qm.dtype))
            n = it.tokens.num_tokens
            visual_cols.append(torch.arange(length, length + n))
            blocks.append(it.tokens.block + block_offset)
            block_offset += int(it.tokens.block.max()) + 1
            length += n
            unpruned_len += it.tokens.original_tokens
    # unpruned positions of every piece, then the visual tokens pick their representatives' positions
    full, delta = P.layout(layout)
    cursor, out = 0, []
    for i, piece in enumerate(layout):
        if piece[0] == "text":
            out.append(full[:, cursor:cursor + piece[1]])
            cursor += piece[1]
        else:
            it = encoded.items[(i - 1) // 2]
            n0 = it.tokens.original_tokens
            out.append(full[:, cursor:cursor + n0][:, it.tokens.rep_index.cpu()])
            cursor += n0
    visual_cols = torch.cat(visual_cols)
    return Sequence(embeds=torch.cat(embeds), positions=torch.cat(out, dim=1), visual_cols=visual_cols,
                    blocks=torch.cat(blocks).cpu(), query_start=int(visual_cols[-1]) + 1,
                    next_position=unpruned_len + delta, text_ids=torch.cat(text_ids), unpruned_length=unpruned_len)


# ---------------------------------------------------------------- prefill (question dependent)

@torch.no_grad()
def prefill(encoded: Encoded, question: str, config: PruneVidConfig, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
            progress: Progress | None = None, keep_visual: torch.Tensor | None = None,
            return_hidden: bool = False) -> Prefill:
    """Run the prompt through the LLM, selecting at layer M (Stage 2) when enabled.

    keep_visual: force the Stage 2 selection (indices into the merged visual tokens), for reference checks.
    """
    qm = encoded.model
    qwen.require_loaded(qm)
    M = config.pruning_layer
    if config.enable_stage2 and M >= qm.num_layers:
        raise ConfigError(f"pruning_layer must be below the model's layer count ({qm.num_layers}), got {M}")
    t0 = time.perf_counter()
    seq = assemble(qm, encoded, question, system_prompt)
    h = seq.embeds[None]                                                   # [1, L, D]
    pos = seq.positions.to(qm.device)
    rope = qwen.rotary(qm, h, pos)
    cache = KVCache(qm.num_layers)
    prune = config.prunes_in_llm or (config.enable_stage2 and keep_visual is not None)
    keep_seq = torch.arange(h.shape[1])
    kept_visual = torch.arange(seq.visual_cols.numel())
    scores, t_score = None, 0.0
    for i, layer in enumerate(qm.layers):
        h, rope = placement.follow(layer, h, rope)     # a sharded model: the hidden states go where the layer is
        if prune and i == M:
            ts = time.perf_counter()
            if keep_visual is None:
                score_rope = (P.mrope_cos_sin(pos.to(h.device), qm.language_model.rotary_emb.inv_freq,
                                              qm.mrope_section, h.dtype) if config.score_with_rope else None)
                scores = stage2.question_attention(layer, h[0], seq.query_start, seq.visual_cols.to(h.device),
                                                   config.attention_aggregation, score_rope)
                scores = scores.cpu()
                kept_visual = stage2.choose(scores, seq.blocks, config, encoded.original_tokens)
            else:
                kept_visual = keep_visual.cpu().sort().values
            is_visual = torch.zeros(h.shape[1], dtype=torch.bool)
            is_visual[seq.visual_cols] = True
            keep_seq = torch.cat([(~is_visual).nonzero().squeeze(1), seq.visual_cols[kept_visual]]).sort().values
            t_score = time.perf_counter() - ts
        h = qwen.decoder_layer(layer, h, rope, cache)
        if prune and i == M:                          # layers > M see only the kept tokens
            idx = keep_seq.to(h.device)
            h = h[:, idx]
            rope = tuple(r[..., idx, :] for r in rope)
        if progress:
            progress(i + 1, qm.num_layers)
    h = qm.language_model.norm(h if return_hidden else h[:, -1:])
    logits = qm.model.lm_head(h[:, -1]).float()[0].to(qm.device)
    prefill_s = time.perf_counter() - t0

    st = stats.prefill_stats(qm, encoded, seq, kept_visual, keep_seq, config, cache)
    st["timings"] = {**encoded.timings, "prefill_s": prefill_s, "stage2_scoring_s": t_score}
    return Prefill(model=qm, cache=cache, logits=logits, next_position=seq.next_position, prompt_ids=seq.text_ids,
                   pruning_layer=M if prune else -1, keep_seq=keep_seq, kept_visual=kept_visual, encoded=encoded,
                   scores=scores, stats=st, hidden=h[0] if return_hidden else None)


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
def generate(pf: Prefill, params: SamplingParams | None = None, on_text: Callable[[str], None] | None = None,
             progress: Progress | None = None, return_logits: bool = False) -> dict:
    """Decode from a prefill (left untouched). Returns {"ids", "text", "stats", ["logits"]}."""
    p = params or SamplingParams()
    qm = pf.model
    qwen.require_loaded(qm)
    t0 = time.perf_counter()
    cache = pf.cache.fork(p.max_new_tokens)
    generator = torch.Generator().manual_seed(int(p.seed))
    embed, lm = qm.language_model.embed_tokens, qm.language_model
    seen = pf.prompt_ids.to(pf.logits.device)
    logits, ids, text, all_logits = pf.logits, [], "", []
    ttft = None
    for step in range(p.max_new_tokens):
        all_logits.append(logits)
        tok = next_token(logits, seen, p, generator)
        if ttft is None:
            ttft = time.perf_counter() - t0
        ids.append(tok)
        if tok in qm.eos_token_ids:
            break
        seen = torch.cat([seen, torch.tensor([tok], device=seen.device)])
        if on_text:
            new_text = qm.tokenizer.decode(ids, skip_special_tokens=True)
            if len(new_text) > len(text) and not new_text.endswith("\ufffd"):
                on_text(new_text[len(text):])
                text = new_text
        if progress:
            progress(step + 1, p.max_new_tokens)
        if step == p.max_new_tokens - 1:
            break
        h = embed(torch.tensor([[tok]], device=qm.device))
        pos = torch.full((3, 1), pf.next_position + step, dtype=torch.long, device=qm.device)
        rope = qwen.rotary(qm, h, pos)
        for layer in qm.layers:
            h, rope = placement.follow(layer, h, rope)
            h = qwen.decoder_layer(layer, h, rope, cache)
        logits = qm.model.lm_head(lm.norm(h)[:, -1]).float()[0].to(qm.device)
    decode_s = time.perf_counter() - t0
    final = qm.tokenizer.decode(ids, skip_special_tokens=True)
    if on_text and len(final) > len(text):
        on_text(final[len(text):])
    n = len(ids)
    # decode_first_token_s counts from the start of decoding only (stats.final_stats adds the encode and the
    # prefill for time_to_first_token_s)
    out = {"ids": ids, "text": final.strip(),
           "stats": {"new_tokens": n, "decode_s": decode_s, "decode_first_token_s": ttft or 0.0,
                     "tokens_per_s": (n - 1) / max(decode_s - (ttft or 0.0), 1e-9) if n > 1 else 0.0}}
    if return_logits:
        out["logits"] = torch.stack(all_logits)
    return out
