"""Batched answering: several requests through the LLM together, each one pruned on its own.

    prefill_batch():   every request's prompt through engine.run_layers (right-padded into one [B, L] batch,
                       each row's own Stage 2 selection at layer M, each row gathered to its kept tokens)
    stage3.compress(): Stage 3 per row, as for one request
    generate_batch():  engine.decode on all rows, each row stopping at its own end token or token limit

Every request keeps its own Stage 1 output (its own engine.Encoded), its own Stage 2 selection and its own Stage 3
cache, so sequence lengths differ before and after layer M. One request is the same path with B = 1, so per row,
logits and tokens equal the one-request path (engine.prefill -> stage3.compress -> engine.generate) up to
floating-point summation order; tests/test_batch.py checks every preset, with and without Stage 3.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import engine, stats
from .config import PruneVidConfig
from .engine import DEFAULT_SYSTEM_PROMPT, Progress, SamplingParams
from .errors import InputError
from .families import VideoLLM
from .kv_cache import KVCache


@dataclass
class BatchPrefill:
    """B prompts after the LLM: everything batched decoding needs, plus each row's own selection and stats."""
    model: VideoLLM
    cache: KVCache              # per layer [B, KV heads, P_i, head_dim], rows right-padded to P_i columns
    lengths: torch.Tensor       # [layers, B] long: real prompt tokens of each row in each layer's cache
    logits: torch.Tensor        # [B, vocab] float32, logits of each row's last prompt token
    next_positions: list        # [B] position of each row's first generated token (on every axis)
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
    engine.check_pruning_layer(qm, config)
    system_prompts = system_prompts or [DEFAULT_SYSTEM_PROMPT] * len(encoded)
    t0 = time.perf_counter()
    seqs = [engine.assemble(qm, e, q, s, config.empty_groups)
            for e, q, s in zip(encoded, questions, system_prompts)]
    rows = engine.run_layers(qm, seqs, config, progress=progress)
    timings = {**rows.timings, "prefill_s": time.perf_counter() - t0}
    row_stats = []
    for b, (e, seq) in enumerate(zip(encoded, seqs)):
        st = stats.prefill_stats(qm, e, seq, rows.kept_visual[b], rows.keep_seq[b], config, rows.kv_bytes(b))
        st["timings"] = {**e.timings, **timings}
        st["batch"] = {"size": len(seqs), "row": b}
        row_stats.append(st)
    return BatchPrefill(model=qm, cache=rows.cache, lengths=rows.lengths, logits=rows.logits,
                        next_positions=[s.next_position for s in seqs], prompt_ids=[s.text_ids for s in seqs],
                        pruning_layer=rows.pruning_layer, keep_seq=rows.keep_seq, kept_visual=rows.kept_visual,
                        encoded=list(encoded), stats=row_stats, timings={"prefill_s": timings["prefill_s"]})


def generate_batch(bp: BatchPrefill, params: list | None = None, progress: Progress | None = None,
                   return_logits: bool = False) -> list:
    """Decode every row of a batched prefill (left untouched) together; each row stops at its own end token or its
    own max_new_tokens, then leaves the batch.

    params: [B] SamplingParams (one per row, each with its own seed), or None for greedy defaults.
    progress(done, total): rows finished so far, out of B.
    Returns [B] dicts as engine.generate returns them: {"ids", "text", "stats", ["logits"]}.
    """
    B = bp.size
    params = params or [SamplingParams() for _ in range(B)]
    if len(params) != B:
        raise InputError(f"generate_batch needs one SamplingParams per row: {B} rows, {len(params)} given")
    finished = [0]

    def on_token(b, ids, done):
        if done and progress:
            finished[0] += 1
            progress(finished[0], B)

    return engine.decode(bp.model, bp.cache, bp.lengths, bp.logits, bp.next_positions, bp.prompt_ids, params,
                         on_token, return_logits)
