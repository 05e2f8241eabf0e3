"""The engine's equivalence properties (architecture.md) on the tiny random checkpoint of every family and a real
video."""
import dataclasses
import inspect

import pytest
import torch

from prunevid import engine, stage2, stage3
from prunevid.config import PRESETS, get_baseline_config, get_paper_config, get_preset, get_stage1_only_config
from prunevid.errors import BudgetError, ConfigError, InputError, ModelError

Q = "What is the rabbit doing in this video?"

EVERY_FAMILY = True        # each test runs once per family (conftest.py)


def transformers_inputs(qm, encoded, clip):
    ids = engine.reference_input_ids(qm, encoded, Q)
    pixels, thw = qm.patches(clip.frames)
    return ids, pixels, torch.tensor([thw])


def our_layout(qm, encoded, ids):
    """The unpruned positions from our rule, for the same ids (one video): each run of video pads is one of the
    video's vision blocks (all its groups; on Qwen3-VL one group each), in order."""
    it = encoded.items[0]
    pad = ids == qm.token_id(qm.pad_token("video"))
    runs = torch.diff(pad.long(), prepend=torch.tensor([0]), append=torch.tensor([0]))
    starts, ends = (runs == 1).nonzero().squeeze(1).tolist(), (runs == -1).nonzero().squeeze(1).tolist()
    groups = it.grid[0] // len(starts)
    pieces, cursor = [], 0
    for s, e in zip(starts, ends):
        pieces += [("text", s - cursor), ("vision", (groups, *it.grid[1:]), it.second_per_grid_t)]
        cursor = e
    return qm.positions(pieces + [("text", ids.numel() - cursor)])


def timing_kwargs(qm, encoded, rope_index) -> dict:
    """second_per_grid_ts for the families whose transformers code takes it (timed temporal positions)."""
    if "second_per_grid_ts" not in inspect.signature(rope_index).parameters:
        return {}
    return {"second_per_grid_ts": torch.tensor([it.second_per_grid_t for it in encoded.items if it.kind == "video"])}


@pytest.fixture(scope="module")
def baseline(qm, clip):
    return engine.encode(qm, clip, get_baseline_config())


@pytest.fixture(scope="module")
def paper(qm, clip):
    return engine.encode(qm, clip, get_paper_config())


def test_all_stages_off_logits_equal_transformers_forward(qm, clip, baseline):
    pf = engine.prefill(baseline, Q, get_baseline_config(), return_hidden=True)
    ours = qm.model.lm_head(pf.hidden)
    ids, pixels, thw = transformers_inputs(qm, baseline, clip)
    pos, _ = our_layout(qm, baseline, ids)
    with torch.no_grad():
        ref = qm.model(input_ids=ids[None], pixel_values_videos=pixels, video_grid_thw=thw,
                       position_ids=pos[:, None, :]).logits[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4
    assert (pf.logits - ref[-1]).abs().max() <= 1e-4


def test_extra_streams_reach_the_visual_tokens(qm, clip, baseline):
    """Where the tower returns per-token streams (Qwen3-VL's DeepStack levels), the equality above depends on them:
    leaving them out, or shifting them by one token (each level added to its neighbour's hidden state), moves the
    logits away from transformers' forward."""
    tokens = baseline.items[0].tokens
    if not tokens.extras:
        pytest.skip(f"{qm.display_name}'s vision tower returns no extra streams")
    ids, pixels, thw = transformers_inputs(qm, baseline, clip)
    pos, _ = our_layout(qm, baseline, ids)
    with torch.no_grad():
        ref = qm.model(input_ids=ids[None], pixel_values_videos=pixels, video_grid_thw=thw,
                       position_ids=pos[:, None, :]).logits[0, -1]
    aligned = engine.prefill(baseline, Q, get_baseline_config()).logits
    assert (aligned - ref).abs().max() <= 1e-4
    for extras in ([], [e.roll(1, dims=0) for e in tokens.extras]):
        item = dataclasses.replace(baseline.items[0], tokens=dataclasses.replace(tokens, extras=extras))
        pf = engine.prefill(dataclasses.replace(baseline, items=[item]), Q, get_baseline_config())
        assert (pf.logits - ref).abs().max() > 100 * (aligned - ref).abs().max() + 1e-3


def test_all_stages_off_greedy_tokens_equal_model_generate(qm, clip, baseline):
    # 1 s per temporal group: transformers 4.57 truncates fractional spacing to an integer, so compare there
    baseline = dataclasses.replace(baseline, items=[dataclasses.replace(baseline.items[0], second_per_grid_t=1.0)])
    ids, pixels, thw = transformers_inputs(qm, baseline, clip)
    pos, _ = our_layout(qm, baseline, ids)
    # transformers computes its own positions inside generate(): use it only where its layout equals ours
    rope_index = qm.model.model.get_rope_index
    kwargs = dict(video_grid_thw=thw, **timing_kwargs(qm, baseline, rope_index))
    extra = {}
    if "mm_token_type_ids" in inspect.signature(rope_index).parameters:        # transformers 5.x
        extra["mm_token_type_ids"] = (ids == qm.token_id(qm.pad_token("video"))).long()[None] * 2
    theirs, _ = rope_index(ids[None], **extra, **kwargs)
    assert torch.equal(theirs[:, 0], pos), "precondition: transformers' layout equals ours for this clip"

    pf = engine.prefill(baseline, Q, get_baseline_config())
    ours = engine.generate(pf, engine.SamplingParams(max_new_tokens=12))["ids"]
    with torch.no_grad():
        ref = qm.model.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                                pixel_values_videos=pixels, **kwargs, **extra, max_new_tokens=12,
                                do_sample=False, eos_token_id=qm.eos_token_ids, pad_token_id=qm.eos_token_ids[0])
    assert ours == ref[0, ids.numel():].tolist()[:len(ours)]


def test_image_all_stages_off_greedy_tokens_equal_model_generate(qm, clip):
    image = clip.frames[0]
    encoded = engine.encode(qm, [image], get_baseline_config())
    ids = engine.reference_input_ids(qm, encoded, Q)
    pixels, thw = qm.patches(image[None])
    extra = {}
    if "mm_token_type_ids" in inspect.signature(qm.model.model.get_rope_index).parameters:   # transformers 5.x
        extra["mm_token_type_ids"] = (ids == qm.token_id(qm.pad_token("image"))).long()[None]
    pf = engine.prefill(encoded, Q, get_baseline_config())
    ours = engine.generate(pf, engine.SamplingParams(max_new_tokens=12))["ids"]
    with torch.no_grad():
        ref = qm.model.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], pixel_values=pixels,
                                image_grid_thw=torch.tensor([thw]), **extra, max_new_tokens=12, do_sample=False,
                                eos_token_id=qm.eos_token_ids, pad_token_id=qm.eos_token_ids[0])
    assert ours == ref[0, ids.numel():].tolist()[:len(ours)]


def test_text_only_prompt_through_the_layer_loop_equals_model_generate(qm):
    """No visual token at all: the loop and decoding alone (Qwen3.5: the linear layers' state carried from the
    prompt through every step) against transformers' generate."""
    ids = torch.tensor(qm.tokenizer.encode(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"))
    L, none = ids.numel(), torch.zeros(0, dtype=torch.long)
    seq = engine.Sequence(embeds=qm.embed(ids), positions=torch.arange(L).expand(3, L), visual_cols=none,
                          blocks=none, query_start=L, next_position=L, text_ids=ids, unpruned_length=L)
    rows = engine.run_layers(qm, [seq], get_baseline_config())
    ours = engine.decode(qm, rows.cache, rows.lengths, rows.logits, [L], [ids],
                         [engine.SamplingParams(max_new_tokens=12)])[0]["ids"]
    with torch.no_grad():
        ref = qm.model.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=12,
                                do_sample=False, eos_token_id=qm.eos_token_ids, pad_token_id=qm.eos_token_ids[0])
    assert ours == ref[0, L:].tolist()[:len(ours)]


def test_merged_and_kept_tokens_carry_their_representatives_unpruned_positions(qm, paper):
    cfg = get_paper_config()
    seq = engine.assemble(qm, paper, Q, engine.DEFAULT_SYSTEM_PROMPT)
    ids = engine.reference_input_ids(qm, paper, Q)
    full, delta = our_layout(qm, paper, ids)
    video = (ids == qm.token_id(qm.pad_token("video"))).nonzero().squeeze(1)
    rep = paper.items[0].tokens.rep_index
    assert torch.equal(seq.positions[:, seq.visual_cols], full[:, video[rep]])
    # text before and after the video keeps its unpruned positions; decoding continues after the unpruned layout
    n_pre = int(video[0])
    assert torch.equal(seq.positions[:, :n_pre], full[:, :n_pre])
    assert torch.equal(seq.positions[:, seq.query_start - 1 + 1:], full[:, int(video[-1]) + 1:])
    # every text token (timestamps and per-group wrappers included) keeps its unpruned position
    text = torch.ones(seq.embeds.shape[0], dtype=torch.bool)
    text[seq.visual_cols] = False
    assert torch.equal(seq.positions[:, text], full[:, ids != qm.token_id(qm.pad_token("video"))])
    assert seq.next_position == int(full.max()) + 1 == ids.numel() + delta
    pf = engine.prefill(paper, Q, cfg)
    kept_seq_positions = seq.positions[:, pf.keep_seq]
    kept_video = seq.visual_cols[pf.kept_visual]
    assert torch.equal(seq.positions[:, kept_video], full[:, video[rep[pf.kept_visual]]])
    assert kept_seq_positions.shape[1] == pf.keep_seq.numel()


def uncached_reference_logits(qm, encoded, question, cfg, pf, new_ids, compressed):
    """Run prompt + generated tokens in one pass with explicit masks, no cache, same kept tokens.

    Layers 0..M see every prompt token (causal); a generated token there sees only kept ones when the cache is
    compressed. Layers > M see kept prompt tokens and the generated ones. A linear-attention layer (Qwen3.5) takes no
    mask: it runs causally over every token it is given, as its carried state does (Stage 3 leaves that state).
    """
    seq = engine.assemble(qm, encoded, question, engine.DEFAULT_SYSTEM_PROMPT)
    emb = qm.language_model.embed_tokens
    h = torch.cat([seq.embeds, emb(torch.tensor(new_ids))])[None]
    L, G = seq.embeds.shape[0], len(new_ids)
    gen_pos = torch.arange(G) + pf.next_position
    pos = torch.cat([seq.positions, gen_pos.expand(3, G)], dim=1)
    allowed = torch.ones(L + G, L + G, dtype=torch.bool).tril()
    if compressed:
        dropped = torch.ones(L, dtype=torch.bool)
        dropped[pf.keep_seq] = False
        allowed[L:, :L] &= ~dropped
    keep = torch.cat([pf.keep_seq, torch.arange(L, L + G)])
    M = pf.pruning_layer
    visual = [(seq.visual_cols, torch.arange(seq.visual_cols.numel()))]
    with torch.no_grad():
        rope = qm.rotary(h, pos)
        for i, layer in enumerate(qm.layers):
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[None, None]
            out = layer(h, attention_mask=mask if i in qm.attention_layers else None, position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
            if i == M:
                h, rope = h[:, keep], tuple(r[..., keep, :] for r in rope)
                allowed = allowed[keep][:, keep]
                visual = [(torch.searchsorted(keep, seq.visual_cols[pf.kept_visual]), pf.kept_visual)]
            h = qm.after_layer(i, h, [seq], visual)       # what the family adds after a layer (DeepStack)
        return qm.model.lm_head(qm.language_model.norm(h))[0, -G - 1:]   # last prompt token + each fed token


def assert_cached_equals_uncached(qm, encoded, cfg, compressed):
    pf = engine.prefill(encoded, Q, cfg)
    if compressed:
        pf = stage3.compress(pf)
    out = engine.generate(pf, engine.SamplingParams(max_new_tokens=6), return_logits=True)
    fed = out["ids"][:-1]                      # every generated token but the last was fed back
    assert len(fed) >= 1
    ref = uncached_reference_logits(qm, encoded, Q, cfg, pf, fed, compressed)
    assert out["logits"].shape == ref.shape
    assert (out["logits"] - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cached_decoding_equals_uncached_reference(qm, clip, paper, preset):
    """Every preset (Stage 3 where it compresses): the cached answer's logits equal one uncached pass."""
    cfg = get_preset(preset)
    encoded = paper if preset == "paper" else engine.encode(qm, clip, cfg)
    M = engine.prefill(encoded, Q, cfg).pruning_layer
    assert_cached_equals_uncached(qm, encoded, cfg, cfg.enable_cache_compression and M >= 0)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("M", [10, 1])
def test_cached_decoding_equals_uncached_reference_at_m(qm, paper, compressed, M):
    """M = 1 selects before the tiny Qwen3-VL's last DeepStack layer (2): the later level goes to the kept tokens only."""
    if M not in qm.attention_layers and M != 10:       # Qwen3.5: layer 1 is linear (test_qwen3_5.py uses M = 3)
        pytest.skip(f"{qm.display_name} selects only at a full-attention layer {qm.attention_layers}")
    assert_cached_equals_uncached(qm, paper, get_paper_config(pruning_layer=M), compressed)


def test_empty_groups_drop_leaves_only_their_text_out(qm, clip):
    """empty_groups="drop" leaves out the timestamp and wrapper of each group Stage 1 emptied (Qwen3-VL; a no-op on
    families with one block per video): every other token, visual and text, keeps its embedding and its position,
    decoding continues at the same position, and Stage 2 keeps as many tokens per block (which ones follows the
    attention, which the left-out text changes)."""
    import dataclasses
    still = dataclasses.replace(clip, frames=clip.frames[:1].repeat(clip.frames.shape[0], 1, 1, 1))
    cfg = get_paper_config()
    enc = engine.encode(qm, still, cfg)                 # a still clip: Stage 1 merges later groups into the first
    keep = engine.assemble(qm, enc, Q, engine.DEFAULT_SYSTEM_PROMPT)
    drop = engine.assemble(qm, enc, Q, engine.DEFAULT_SYSTEM_PROMPT, "drop")
    groups = enc.items[0].grid[0]
    filled = len(set((enc.items[0].tokens.rep_index // (enc.items[0].grid[1] * enc.items[0].grid[2])).tolist()))
    per_group = len(qm.tokenizer.encode("<0.0 seconds><|vision_start|><|vision_end|>", add_special_tokens=False))
    from prunevid.families import Qwen3VL
    if isinstance(qm, Qwen3VL):                         # one timestamped block per group (Qwen3-VL, its MoE, Qwen3.5)
        assert filled < groups and drop.dropped_text >= (groups - filled) * (per_group - 1) > 0
    else:
        assert drop.dropped_text == 0
    assert keep.dropped_text == 0 and drop.embeds.shape[0] == keep.embeds.shape[0] - drop.dropped_text
    # drop is keep with some columns left out: match every column of drop, in order, to the same column of keep
    j, matched = 0, []
    for i in range(keep.embeds.shape[0]):
        if j < drop.embeds.shape[0] and torch.equal(keep.embeds[i], drop.embeds[j]) \
                and torch.equal(keep.positions[:, i], drop.positions[:, j]):
            matched.append(i)
            j += 1
    assert j == drop.embeds.shape[0]
    assert torch.equal(torch.tensor(matched)[drop.visual_cols], keep.visual_cols)
    assert drop.next_position == keep.next_position and torch.equal(drop.blocks, keep.blocks)
    a, b = engine.prefill(enc, Q, cfg), engine.prefill(enc, Q, cfg.replace(empty_groups="drop"))
    assert torch.equal(torch.bincount(keep.blocks[a.kept_visual], minlength=int(keep.blocks.max()) + 1),
                       torch.bincount(drop.blocks[b.kept_visual], minlength=int(keep.blocks.max()) + 1))
    assert b.stats["tokens"]["sequence_after_stage1"] == a.stats["tokens"]["sequence_after_stage1"] - drop.dropped_text


def test_stage3_leaves_prefix_kept_and_suffix_in_every_layer(qm, paper):
    cfg = get_paper_config()
    pf = engine.prefill(paper, Q, cfg)
    full_len = pf.cache.get_seq_length(0)
    comp = stage3.compress(pf)
    kept = pf.keep_seq.numel()
    assert all(comp.cache.lengths[i] == kept for i in qm.attention_layers)
    for i in set(range(qm.num_layers)) - set(qm.attention_layers):     # linear layers: the fixed-size state stays
        assert torch.equal(comp.cache.recurrent[i], pf.cache.recurrent[i])
        assert torch.equal(comp.cache.conv[i], pf.cache.conv[i])
    assert comp.stats["stage3"]["kv_bytes_after"] < comp.stats["stage3"]["kv_bytes_before"]
    assert pf.cache.get_seq_length(0) == full_len            # the input prefill is untouched
    assert comp.stats["tokens"]["sequence_after_stage2"] == kept


def test_stage2_keeps_the_configured_fraction_per_block(qm, paper):
    cfg = get_paper_config()
    pf = engine.prefill(paper, Q, cfg)
    blocks = paper.items[0].tokens.block
    expected = sum(int(int((blocks == b).sum()) * 0.4) for b in blocks.unique())
    assert pf.kept_visual.numel() == max(1, expected)
    assert pf.stats["stage2"]["compressed_tokens"] == pf.kept_visual.numel()
    # the configured ratio and the fraction small blocks let it keep, side by side
    assert pf.stats["stage2"]["keep_ratio"] == 0.4
    assert pf.stats["stage2"]["kept_fraction"] == pf.kept_visual.numel() / paper.merged_tokens < 0.4
    assert pf.stats["stage1"]["compressed_tokens"] == paper.merged_tokens < paper.original_tokens


@pytest.mark.parametrize("with_rope", [False, True])
def test_stage2_scores_the_input_of_layer_m(qm, paper, with_rope):
    """Stage 2 reads layer M's attention on layer M's input, the hidden states after layers 0..M-1 of an unpruned
    forward (transformers' own, here): a selection made one layer early or late fails, which the accuracy oracle
    cannot always tell (its M - 1 scores pick nearly the same tokens). Where only some layers attend (Qwen3.5),
    M is the one the family maps the preset's to, and its neighbours are the nearest attending layers."""
    from test_stage2 import full_reference
    cfg = get_paper_config(score_with_rope=with_rope)
    pf = engine.prefill(paper, Q, cfg)
    M = pf.stats["stage2"]["pruning_layer"]
    attending = qm.attention_layers
    at = attending.index(M)
    neighbours = attending[max(0, at - 1):at] + attending[at + 1:at + 2]
    seq = engine.assemble(qm, paper, Q, engine.DEFAULT_SYSTEM_PROMPT)
    with torch.no_grad():
        kwargs = {"position_ids": seq.positions[:, None], **qm.language_model_inputs(seq)}
        hidden = qm.language_model(inputs_embeds=seq.embeds[None], output_hidden_states=True, use_cache=False,
                                   **kwargs).hidden_states
        rope = qm.score_rope(seq.positions, torch.float32) if with_rope else None
        ref = {m: full_reference(qm.layers[m], hidden[m][0], seq.query_start, seq.visual_cols, "max", rope)
               for m in (M, *neighbours)}
    assert torch.allclose(pf.scores, ref[M], rtol=1e-4, atol=1e-6), (pf.scores - ref[M]).abs().max()
    assert neighbours
    for other in neighbours:                     # the tolerance above tells neighbouring layers apart
        assert not torch.allclose(pf.scores, ref[other], rtol=1e-2, atol=1e-4)
    assert torch.equal(pf.kept_visual, stage2.select(ref[M], seq.blocks, cfg.keep_ratio, cfg.selection_granularity))


def test_deterministic_and_prefill_is_never_mutated(qm, paper):
    cfg = get_paper_config()
    a = engine.prefill(paper, Q, cfg)
    b = engine.prefill(paper, Q, cfg)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.keep_seq, b.keep_seq)
    comp = stage3.compress(a)
    lengths = list(comp.cache.lengths)
    p = engine.SamplingParams(max_new_tokens=5, do_sample=True, temperature=0.9, top_p=0.9, seed=3)
    first, second = engine.generate(comp, p), engine.generate(comp, p)
    assert first["ids"] == second["ids"]
    assert comp.cache.lengths == lengths


def test_streaming_callback_sees_the_whole_answer(qm, paper):
    pf = engine.prefill(paper, Q, get_paper_config())
    chunks = []
    out = engine.generate(pf, engine.SamplingParams(max_new_tokens=8), on_text=chunks.append)
    assert "".join(chunks).strip() == out["text"]


def test_no_deprecated_transformers_calls(qm, paper):
    """A deprecation warning from transformers today is a TypeError in a later release (5.24 renamed the
    decoder layers' past_key_values to cache): prefill and decoding must not trigger any."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pf = stage3.compress(engine.prefill(paper, Q, get_paper_config()))
        engine.generate(pf, engine.SamplingParams(max_new_tokens=3))
    # by category, not by file: the warning's stack level can point at torch's Module.__call__
    deprecations = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)
                    or (issubclass(w.category, DeprecationWarning) and "transformers" in w.filename)]
    assert deprecations == []


def test_token_budget_is_counted_without_the_model(qm, clip, paper):
    assert engine.visual_token_count(clip, type(qm)) == paper.original_tokens
    f = qm.token_factor()                                                # 28 px per token, 32 on Qwen3-VL
    images = [clip.frames[0].numpy(), clip.frames[1, :2 * f, :3 * f]]    # numpy and torch, two sizes
    encoded = engine.encode(qm, iter(images), get_paper_config())         # any iterable, counted once
    assert engine.visual_token_count(images, type(qm)) == encoded.original_tokens
    with pytest.raises(BudgetError):
        engine.encode(qm, iter(images), get_paper_config(max_video_tokens=4))


def test_stage1_only_runs_every_layer_on_the_merged_tokens(qm, paper):
    pf = engine.prefill(paper, Q, get_stage1_only_config())
    assert pf.pruning_layer == -1 and pf.kept_visual.numel() == paper.merged_tokens
    assert stage3.compress(pf) is pf


def test_bad_inputs_get_clear_errors(qm, clip, paper, tmp_path):
    with pytest.raises(InputError, match="question is empty"):
        engine.prefill(paper, "   ", get_paper_config())
    with pytest.raises(ConfigError, match="pruning_layer"):
        engine.prefill(paper, Q, get_paper_config(pruning_layer=qm.num_layers))
    with pytest.raises(ConfigError, match="keep_ratio"):
        get_paper_config(keep_ratio=1.5)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    from prunevid import loader
    with pytest.raises(ModelError, match="model_type 'llama'"):
        loader.load(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        loader.load(str(tmp_path / "nope"))
    with pytest.raises(BudgetError, match="max_video_tokens=8"):
        engine.encode(qm, clip, get_paper_config(max_video_tokens=8))


def test_frames_read_for_another_grid_are_fitted_to_the_family(qm, sample_video):
    """A model-independent reader (ComfyUI's video node) sizes frames for 28 px; a Qwen3-VL model needs 32 (and the
    other way round): encode resizes them to the family's grid and says so."""
    from prunevid.video import load_video
    f = qm.token_factor()
    clip = load_video(sample_video, max_frames=4, max_pixels=224 * 224, factor=60 - f)      # 28 <-> 32
    assert clip.frames.shape[1] % f or clip.frames.shape[2] % f
    enc = engine.encode(qm, clip, get_baseline_config())
    t, h, w = enc.items[0].grid
    assert enc.items[0].frames.shape[1:3] == (h * f, w * f)
    assert enc.original_tokens == t * h * w
    assert abs(h * w * f * f / (clip.frames.shape[1] * clip.frames.shape[2]) - 1) < 0.3      # about the same pixels
    assert any(f"{f}-px grid" in n for n in enc.notes)
