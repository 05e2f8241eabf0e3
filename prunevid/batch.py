"""Batched answering: several requests through the LLM together, each one pruned on its own.

    prefill_batch():  every request's prompt, right-padded into one [B, L] batch -> layers 0..M -> each row's own
                      Stage 2 selection at layer M -> each row gathered to its kept tokens -> layers M+1..
    compress_batch(): Stage 3 per row: layers 0..M keep only that row's kept tokens
    generate_batch(): decoding all rows together, each row stopping at its own end token or token limit

Every request keeps its own Stage 1 output (its own engine.Encoded), its own Stage 2 selection and its own Stage 3
cache, so sequence lengths differ before and after layer M. Rows are right-padded: row b holds its n_b real tokens
in columns 0..n_b-1, so the plain causal path of SDPA (no mask tensor at all) is exact for every real token during
prefill; padding columns compute values nobody reads. After layer M each row is gathered to its kept tokens and
right-padded again, so layers > M run on max_b(kept_b) columns. Decoding appends every row's new token at the same
column of each layer's cache; one [B, 1, 1, keys] mask per step hides each row's padding columns, the only mask the
batch ever builds. A row that has finished leaves the batch (its cache rows are dropped), so the rest decode on.

Per row, logits and tokens equal the one-request path (engine.prefill -> stage3.compress -> engine.generate) up to
floating-point summation order; tests/test_batch.py checks every preset, with and without Stage 3.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from . import positions as P
from . import qwen, stage2, stats
from .config import PruneVidConfig
from .engine import DEFAULT_SYSTEM_PROMPT, Progress, SamplingParams, assemble, next_token
from .errors import ConfigError, InputError
from .kv_cache import KVCache
from .qwen import QwenModel


@dataclass
class BatchPrefill:
    """B prompts after the LLM: everything batched decoding needs, plus each row's own selection and stats."""
    model: QwenModel
    cache: KVCache              # per layer [B, KV heads, P_i, head_dim], rows right-padded to P_i columns
    lengths: torch.Tensor       # [layers, B] long: real prompt tokens of each row in each layer's cache
    logits: torch.Tensor        # [B, vocab] float32, logits of each row's last prompt token
    next_positions: list        # [B] 3-D position of each row's first generated token (all three axes)
    prompt_ids: list            # [B] tensors [n_b]: each row's text token ids (repetition penalty)
    pruning_layer: int          # -1 without Stage 2 selection
    keep_seq: list              # [B] tensors: sequence indices each row kept after layer M
    kept_visual: list           # [B] tensors: indices into each row's merged visual tokens that survived Stage 2
    encoded: list               # [B] engine.Encoded
    stats: list                 # [B] stats dictionaries (engine.Prefill.stats of each row)
    compressed: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.encoded)


class _Bytes:
    """What stats.prefill_stats reads of a cache (its size), for one row of a batched cache."""

    def __init__(self, n: int):
        self.n = n

    def nbytes(self) -> int:
        return self.n


def row_cache_bytes(cache: KVCache, lengths: torch.Tensor, b: int) -> int:
    """Bytes row b's real tokens take in a batched cache (padding not counted): what its own cache would hold."""
    total = 0
    for i, k in enumerate(cache.keys):
        total += 2 * int(lengths[i, b]) * k.shape[1] * k.shape[3] * k.element_size()
    return total


def _take(r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-row columns of a rotary table: r [..., B, L, head_dim], idx [B, K] -> [..., B, K, head_dim]."""
    return r.gather(-2, idx[..., None].expand(*r.shape[:-3], *idx.shape, r.shape[-1]).to(r.device))


def _pad_rows(rows: list, fill=0) -> torch.Tensor:
    """[n_b, ...] tensors -> [B, max n_b, ...], right-padded with `fill`."""
    out = rows[0].new_full((len(rows), max(r.shape[0] for r in rows), *rows[0].shape[1:]), fill)
    for b, r in enumerate(rows):
        out[b, :r.shape[0]] = r
    return out


@torch.no_grad()
def prefill_batch(encoded: list, questions: list, config: PruneVidConfig, system_prompts: list | None = None,
                  progress: Progress | None = None) -> BatchPrefill:
    """Run B prompts through the LLM together; each row selects its own kept tokens at layer M (Stage 2).

    encoded: [B] engine.Encoded of one model; questions: [B] str; system_prompts: [B] str (default prompt if None).
    """
    if not encoded or len(encoded) != len(questions):
        raise InputError(f"a batch needs one question per encoded input, got {len(encoded)} inputs and "
                         f"{len(questions)} questions")
    qm = encoded[0].model
    if any(e.model is not qm for e in encoded):
        raise InputError("every request of a batch must be encoded with the same model")
    qwen.require_loaded(qm)
    M = config.pruning_layer
    if config.enable_stage2 and M >= qm.num_layers:
        raise ConfigError(f"pruning_layer must be below the model's layer count ({qm.num_layers}), got {M}")
    system_prompts = system_prompts or [DEFAULT_SYSTEM_PROMPT] * len(encoded)
    t0 = time.perf_counter()
    seqs = [assemble(qm, e, q, s) for e, q, s in zip(encoded, questions, system_prompts)]
    B, dev = len(seqs), qm.device
    n = torch.tensor([s.embeds.shape[0] for s in seqs])
    h = _pad_rows([s.embeds for s in seqs])                                 # [B, L, D]
    pos = _pad_rows([s.positions.T for s in seqs]).permute(2, 0, 1).to(dev)  # [3, B, L]
    rope = qwen.rotary(qm, h, pos)
    cache = KVCache(qm.num_layers)
    lengths = n.repeat(qm.num_layers, 1)                                    # [layers, B]
    prune = config.prunes_in_llm
    keep_seq = [torch.arange(int(k)) for k in n]
    kept_visual = [torch.arange(s.visual_cols.numel()) for s in seqs]
    scores, t_score = [None] * B, 0.0
    for i, layer in enumerate(qm.layers):
        if prune and i == M:
            ts = time.perf_counter()
            for b, seq in enumerate(seqs):                 # Stage 2 on each row's own real tokens
                L = int(n[b])
                score_rope = (P.mrope_cos_sin(pos[:, b, :L].to(h.device), qm.language_model.rotary_emb.inv_freq,
                                              qm.mrope_section, h.dtype) if config.score_with_rope else None)
                scores[b] = stage2.question_attention(layer, h[b, :L], seq.query_start, seq.visual_cols.to(h.device),
                                                      config.attention_aggregation, score_rope).cpu()
                kept_visual[b] = stage2.choose(scores[b], seq.blocks, config, encoded[b].original_tokens)
                is_visual = torch.zeros(L, dtype=torch.bool)
                is_visual[seq.visual_cols] = True
                keep_seq[b] = torch.cat([(~is_visual).nonzero().squeeze(1),
                                         seq.visual_cols[kept_visual[b]]]).sort().values
            t_score = time.perf_counter() - ts
        h = qwen.decoder_layer(layer, h, rope, cache)
        if prune and i == M:                              # layers > M see only each row's kept tokens
            idx = _pad_rows(keep_seq).to(h.device)                           # [B, K] (padding repeats index 0)
            h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
            rope = tuple(_take(r, idx) for r in rope)
            n = torch.tensor([k.numel() for k in keep_seq])
            lengths[i + 1:] = n
        if progress:
            progress(i + 1, qm.num_layers)
    last = h[torch.arange(B, device=h.device), (n - 1).to(h.device)]      # [B, D] each row's last real token
    logits = qm.model.lm_head(qm.language_model.norm(last[:, None]))[:, 0].float()
    prefill_s = time.perf_counter() - t0

    row_stats = []
    for b, (e, seq) in enumerate(zip(encoded, seqs)):
        st = stats.prefill_stats(qm, e, seq, kept_visual[b], keep_seq[b], config,
                                 _Bytes(row_cache_bytes(cache, lengths, b)))
        st["timings"] = {**e.timings, "prefill_s": prefill_s, "stage2_scoring_s": t_score}
        st["batch"] = {"size": B, "row": b}
        row_stats.append(st)
    return BatchPrefill(model=qm, cache=cache, lengths=lengths, logits=logits,
                        next_positions=[s.next_position for s in seqs], prompt_ids=[s.text_ids for s in seqs],
                        pruning_layer=M if prune else -1, keep_seq=keep_seq, kept_visual=kept_visual,
                        encoded=list(encoded), stats=row_stats, timings={"prefill_s": prefill_s})


def compress_batch(bp: BatchPrefill) -> BatchPrefill:
    """Stage 3 for every row: layers 0..M keep only the row's kept sequence positions. The input is not modified.

    Without a Stage 2 selection (pruning_layer -1), or already compressed, the input is returned as is.
    """
    if bp.pruning_layer < 0 or bp.compressed:
        return bp
    layers = range(bp.pruning_layer + 1)
    cache = bp.cache.gathered(layers, _pad_rows(bp.keep_seq))
    lengths = bp.lengths.clone()
    lengths[layers.start:layers.stop] = torch.tensor([k.numel() for k in bp.keep_seq])
    row_stats = []
    for b, st in enumerate(bp.stats):
        after = row_cache_bytes(cache, lengths, b)
        row_stats.append({**st, "stage3": {**st["stage3"], "enabled": True, "kv_bytes_after": after,
                                           "reduction_ratio": 1 - after / max(1, st["stage3"]["kv_bytes_before"])}})
    return replace(bp, cache=cache, lengths=lengths, stats=row_stats, compressed=True)


@torch.no_grad()
def generate_batch(bp: BatchPrefill, params: list | None = None, progress: Progress | None = None,
                   return_logits: bool = False) -> list:
    """Decode every row of a batched prefill (left untouched) together; each row stops at its own end token or its
    own max_new_tokens, then leaves the batch.

    params: [B] SamplingParams (one per row, each with its own seed), or None for greedy defaults.
    progress(done, total): rows finished so far, out of B.
    Returns [B] dicts as engine.generate returns them: {"ids", "text", "stats", ["logits"]}.
    """
    qm = bp.model
    qwen.require_loaded(qm)
    B = bp.size
    params = params or [SamplingParams() for _ in range(B)]
    if len(params) != B:
        raise InputError(f"generate_batch needs one SamplingParams per row: {B} rows, {len(params)} given")
    t0 = time.perf_counter()
    embed, lm = qm.language_model.embed_tokens, qm.language_model
    cache = bp.cache.fork(max(p.max_new_tokens for p in params))
    prompt_len = list(bp.cache.lengths)                  # padded prompt columns of each layer
    lengths = bp.lengths.clone()                         # [layers, B'] real prompt tokens of the active rows
    generators = [torch.Generator().manual_seed(int(p.seed)) for p in params]
    seen = [ids.to(bp.logits.device) for ids in bp.prompt_ids]
    out_ids = [[] for _ in range(B)]
    all_logits = [[] for _ in range(B)]
    first, end = [0.0] * B, [0.0] * B
    rows = list(range(B))                                # the original row of each active batch row
    logits, step, finished = bp.logits, 0, 0
    while True:
        stay = []
        for j, b in enumerate(rows):
            all_logits[b].append(logits[j])
            tok = next_token(logits[j], seen[b], params[b], generators[b])
            out_ids[b].append(tok)
            if step == 0:
                first[b] = time.perf_counter() - t0
            if tok in qm.eos_token_ids or len(out_ids[b]) >= params[b].max_new_tokens:
                end[b] = time.perf_counter() - t0
                finished += 1
                if progress:
                    progress(finished, B)
            else:
                seen[b] = torch.cat([seen[b], torch.tensor([tok], device=seen[b].device)])
                stay.append(j)
        if not stay:
            break
        if len(stay) < len(rows):                        # finished rows leave the batch
            keep = torch.tensor(stay)
            cache, lengths = cache.rows(keep), lengths[:, keep]
            rows = [rows[j] for j in stay]
        h = embed(torch.tensor([[out_ids[b][-1]] for b in rows], device=qm.device))          # [B', 1, D]
        pos = torch.tensor([bp.next_positions[b] + step for b in rows], device=qm.device)
        rope = qwen.rotary(qm, h, pos.view(1, -1, 1).expand(3, -1, -1))
        masks = {}
        for i, layer in enumerate(qm.layers):
            key = (prompt_len[i], tuple(lengths[i].tolist()), h.device)
            if key not in masks:                         # two distinct masks per step at most (layers <= M, > M)
                masks[key] = _decode_mask(layer, lengths[i], prompt_len[i], step, h.dtype, h.device)
            h = qwen.decoder_layer(layer, h, rope, cache, attention_mask=masks[key])
        logits = qm.model.lm_head(lm.norm(h)[:, -1]).float()
        step += 1
    results = []
    for b in range(B):
        ids = out_ids[b]
        n = len(ids)
        text = qm.tokenizer.decode(ids, skip_special_tokens=True).strip()
        res = {"ids": ids, "text": text,
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
    return qwen.padding_mask(layer, valid, dtype)
