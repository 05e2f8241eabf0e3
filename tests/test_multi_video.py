"""Several videos (and images) in one prompt: each family's own multi-video layout, Stage 1 per video, Stage 2 over
all visual tokens with per-block quotas."""
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from prunevid import PruneVidQwen25VL, engine, stage3
from prunevid.config import get_baseline_config, get_paper_config
from prunevid.errors import BudgetError, InputError
from prunevid.stats import format_stats
from prunevid.video import load_video, sample_video_path

Q = "What changed between the two clips?"

EVERY_FAMILY = True        # each test runs once per family (conftest.py)


@pytest.fixture(scope="module")
def second_clip(qm):
    """4 frames of carphone (2 temporal groups of 5 x 6 tokens): another size and length than `clip`."""
    return load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4, max_pixels=224 * 224,
                      factor=qm.token_factor())


def one_second_per_group(encoded):
    """The same encoding with 1 s per temporal group: transformers 4.57 truncates fractional spacing to an integer,
    and its processor (5.x) cannot be told the real rate of frames given as arrays, so compare at 1 s."""
    return dataclasses.replace(encoded, items=[dataclasses.replace(it, second_per_grid_t=1.0) for it in encoded.items])


def layout_from_ids(qm, encoded, ids):
    """The unpruned positions of a prompt with our rule, from its token ids alone (pads runs = vision blocks; an
    item laid out in several blocks, one per group on Qwen3-VL, has a run per block)."""
    pad = torch.isin(ids, torch.tensor([qm.token_id(qm.pad_token("video")), qm.token_id(qm.pad_token("image"))]))
    pieces, i, k, done = [], 0, 0, {}
    while i < ids.numel():
        j = i
        while j < ids.numel() and bool(pad[j]) == bool(pad[i]):
            j += 1
        if pad[i]:
            it = encoded.items[k]
            runs = sum(p[0] == "vision" for p in qm.block_layout(it.kind, it.grid[0], it.times))
            pieces.append(("vision", (it.grid[0] // runs, *it.grid[1:]), it.second_per_grid_t))
            done[k] = done.get(k, 0) + 1
            k += done[k] == runs
        else:
            pieces.append(("text", j - i))
        i = j
    return qm.positions(pieces)


def block_ranges(qm, ids):
    """[(first, end)] sequence ranges of each vision block's pad tokens in the unpruned prompt."""
    pad = torch.isin(ids, torch.tensor([qm.token_id(qm.pad_token("video")), qm.token_id(qm.pad_token("image"))])).long()
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.long), pad, torch.zeros(1, dtype=torch.long)]))
    return list(zip((edges == 1).nonzero().squeeze(1).tolist(), (edges == -1).nonzero().squeeze(1).tolist()))


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def two_off(qm, clip, second_clip):
    return one_second_per_group(engine.encode(qm, [clip, second_clip], get_baseline_config()))


def processor_inputs(processor, clips, question):
    """transformers' own multi-video path: the chat template's two video placeholders expanded by the processor."""
    messages = [{"role": "system", "content": engine.DEFAULT_SYSTEM_PROMPT},    # Qwen3-VL's template adds none
                {"role": "user", "content": [{"type": "video"}] * len(clips) + [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    extra = {"cap_pixels_per_frame": False} if "cap_pixels_per_frame" in str(
        inspect.signature(type(processor.video_processor).__init__)) else {}
    if hasattr(processor, "_calculate_timestamps"):     # a processor that writes each group's time (Qwen3-VL)
        extra["video_metadata"] = [{"fps": c.source_fps, "total_num_frames": c.source_frames,
                                    "frames_indices": [round(t * c.source_fps) for t in c.timestamps]}
                                   for c in clips]
    return processor(text=[text], videos=[c.frames.numpy() for c in clips], do_resize=False, do_sample_frames=False,
                     return_tensors="pt", **extra)


def test_two_videos_all_stages_off_equal_transformers_forward(qm, clip, second_clip, two_off, processor):
    ref_in = processor_inputs(processor, [clip, second_clip], Q)
    ids = engine.reference_input_ids(qm, two_off, Q)
    assert torch.equal(ids, ref_in["input_ids"][0]), "our prompt is the chat template's, pads expanded alike"
    ours_pixels = torch.cat([qm.patches(c.frames)[0] for c in (clip, second_clip)])
    assert (ours_pixels - ref_in["pixel_values_videos"]).abs().max() <= 1e-5
    assert ref_in["video_grid_thw"].tolist() == [[it.grid[0], it.grid[1] * 2, it.grid[2] * 2] for it in two_off.items]

    pf = engine.prefill(two_off, Q, get_baseline_config(), return_hidden=True)
    ours = qm.model.lm_head(pf.hidden)
    pos, _ = layout_from_ids(qm, two_off, ids)
    with torch.no_grad():
        ref = qm.model(input_ids=ids[None], pixel_values_videos=ref_in["pixel_values_videos"],
                       video_grid_thw=ref_in["video_grid_thw"], position_ids=pos[:, None, :]).logits[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4
    assert (pf.logits - ref[-1]).abs().max() <= 1e-4


def test_two_videos_all_stages_off_greedy_tokens_equal_model_generate(qm, clip, second_clip, two_off, processor):
    ref_in = processor_inputs(processor, [clip, second_clip], Q)
    ids = ref_in["input_ids"][0]
    pos, _ = layout_from_ids(qm, two_off, ids)
    rope_index = qm.model.model.get_rope_index
    # second_per_grid_ts for the families with timed positions (Qwen2-VL's code takes none)
    timing = ({"second_per_grid_ts": torch.tensor([1.0, 1.0])}
              if "second_per_grid_ts" in inspect.signature(rope_index).parameters else {})
    extra = {k: ref_in[k] for k in ("mm_token_type_ids",) if k in ref_in}         # transformers 5.x
    theirs, _ = rope_index(ids[None], **extra, video_grid_thw=ref_in["video_grid_thw"], **timing)
    # transformers computes its own positions inside generate(): these clips' layout is one where it agrees with the
    # original rule on every version (each video's temporal extent is below its width)
    assert torch.equal(theirs[:, 0], pos), "precondition: transformers' layout equals ours for these clips"

    pf = engine.prefill(two_off, Q, get_baseline_config())
    ours = engine.generate(pf, engine.SamplingParams(max_new_tokens=12))["ids"]
    with torch.no_grad():
        ref = qm.model.generate(**{k: v for k, v in ref_in.items() if k != "second_per_grid_ts"},
                                **timing, max_new_tokens=12, do_sample=False,
                                eos_token_id=qm.eos_token_ids, pad_token_id=qm.eos_token_ids[0])
    assert ours == ref[0, ids.numel():].tolist()[:len(ours)]


def test_each_block_keeps_its_unpruned_positions_and_text_follows_its_max(qm, clip, second_clip):
    cfg = get_paper_config()
    image = clip.frames[3]
    enc = engine.encode(qm, [clip, second_clip, image], cfg)
    assert [it.kind for it in enc.items] == ["video", "video", "image"]
    seq = engine.assemble(qm, enc, Q, engine.DEFAULT_SYSTEM_PROMPT)
    ids = engine.reference_input_ids(qm, enc, Q)
    full, delta = layout_from_ids(qm, enc, ids)
    runs = block_ranges(qm, ids)                  # a run of pads per vision block (per group on Qwen3-VL)
    per_item = [sum(p[0] == "vision" for p in qm.block_layout(it.kind, it.grid[0], it.times)) for it in enc.items]
    assert len(runs) == sum(per_item) >= 3
    pads, r = [], 0                               # each item's unpruned pad columns, in its tokens' order
    for k in per_item:
        pads.append(torch.cat([torch.arange(first, end) for first, end in runs[r:r + k]]))
        r += k
    offset = 0
    for cols_pad, it in zip(pads, enc.items):
        n = it.tokens.num_tokens
        cols = seq.visual_cols[offset:offset + n]
        # every merged token sits at its representative's unpruned position
        assert torch.equal(seq.positions[:, cols], full[:, cols_pad[it.tokens.rep_index]])
        offset += n
    for first, end in runs:
        # the text right after a block starts at the block's max position + 1, on all three axes
        assert full[:, end].tolist() == [int(full[:, first:end].max()) + 1] * 3
    # and every text token of the pruned prompt keeps its unpruned position
    text, is_pad = torch.ones(seq.embeds.shape[0], dtype=torch.bool), torch.zeros(ids.numel(), dtype=torch.bool)
    text[seq.visual_cols] = False
    for first, end in runs:
        is_pad[first:end] = True
    assert torch.equal(seq.positions[:, text], full[:, ~is_pad])
    assert seq.next_position == int(full.max()) + 1 == ids.numel() + delta

    pf = stage3.compress(engine.prefill(enc, Q, cfg))
    kept_cols = seq.visual_cols[pf.kept_visual]
    reps = torch.cat([cols_pad[it.tokens.rep_index] for cols_pad, it in zip(pads, enc.items)])
    assert torch.equal(seq.positions[:, kept_cols], full[:, reps[pf.kept_visual]])
    # Stage 2 selects over all blocks of the prompt, int(n * keep_ratio) of each selection block
    sizes = torch.bincount(seq.blocks)
    assert pf.kept_visual.numel() == int(sum(int(int(n) * cfg.keep_ratio) for n in sizes))
    assert {int(seq.blocks[k]) for k in pf.kept_visual} & set(range(int(enc.items[0].tokens.block.max()) + 1))
    assert (seq.blocks[pf.kept_visual] > int(enc.items[0].tokens.block.max())).any(), "the second video kept some"
    assert all(pf.cache.lengths[i] == pf.keep_seq.numel() for i in qm.attention_layers)   # Qwen3.5: not linear ones


def test_stage1_runs_on_each_video_alone(qm, clip, second_clip):
    cfg = get_paper_config()
    both = engine.encode(qm, [clip, second_clip], cfg)
    alone = [engine.encode(qm, c, cfg).items[0] for c in (clip, second_clip)]
    for it, ref in zip(both.items, alone):
        assert it.tokens.segments == ref.tokens.segments
        assert torch.equal(it.tokens.rep_index, ref.tokens.rep_index)
        assert torch.equal(it.tokens.embeds, ref.tokens.embeds)
    assert both.merged_tokens == sum(it.tokens.num_tokens for it in alone)


def test_pipeline_answers_two_videos_and_an_image(tiny_model_dir, sample_video):
    pv = PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_paper_config(max_frames=4), device="cpu",
                          dtype="fp32")
    other = sample_video_path("bikes.mp4")
    out = pv.generate(videos=[str(sample_video), other], question=Q, max_new_tokens=4, return_stats=True)
    s = out["stats"]
    assert isinstance(out["answer"], str)
    assert [v["source"] for v in s["videos"]] == [str(sample_video), str(other)]
    assert s["video"]["source"] == str(sample_video)
    enc = pv.encode(videos=[str(sample_video), other])
    assert s["stage1"]["original_tokens"] == enc.original_tokens
    # each video's own counts: Stage 1 per video, Stage 2's kept tokens split by the video they came from
    per = [v["tokens"] for v in s["videos"]]
    assert [p["after_stage1"] for p in per] == [it.tokens.num_tokens for it in enc.items]
    for key, total in (("original", "video_original"), ("after_stage1", "video_after_stage1"),
                       ("after_stage2", "video_after_stage2")):
        assert sum(p[key] for p in per) == s["tokens"][total]
    assert all(0 < p["after_stage2"] < p["after_stage1"] for p in per)
    line = next(x for x in format_stats(s).splitlines() if x.startswith("Per video"))
    a = per[0]
    assert f"{Path(sample_video).name} {a['original']} -> {a['after_stage1']} -> {a['after_stage2']}" in line
    assert f"bikes.mp4 {per[1]['original']} -> " in line
    frame = load_video(other, max_frames=2).frames[0]
    mixed = pv.encode(video_path=str(sample_video), videos=[other], images=[frame.numpy()])
    assert [it.kind for it in mixed.items] == ["video", "video", "image"]
    assert pv.answer(mixed, Q, max_new_tokens=2)["stats"]["stage2"]["enabled"]
    with pytest.raises(InputError, match="give a video_path, videos"):
        pv.generate(videos=[], question=Q)


def test_each_video_counts_its_own_tokens_when_an_image_comes_first(qm, clip, second_clip):
    """stats["videos"][i]["tokens"]: the Stage 2 selection split by the block it came from, images skipped (an
    image before the videos shifts every video's range of merged tokens)."""
    cfg = get_paper_config()
    image = second_clip.frames[0].numpy()
    pf = engine.prefill(engine.encode(qm, [image, clip, second_clip], cfg), Q, cfg)
    items, kept = pf.encoded.items, pf.kept_visual
    starts = torch.tensor([0] + [it.tokens.num_tokens for it in items]).cumsum(0)
    want = [int(((kept >= starts[b]) & (kept < starts[b + 1])).sum()) for b in (1, 2)]
    per = [v["tokens"] for v in pf.stats["videos"]]
    assert [p["after_stage2"] for p in per] == want and min(want) > 0
    assert [p["after_stage1"] for p in per] == [items[1].tokens.num_tokens, items[2].tokens.num_tokens]
    image_kept = int((kept < starts[1]).sum())
    assert sum(want) + image_kept == pf.stats["tokens"]["video_after_stage2"]


def test_the_token_budget_counts_every_block(qm, clip, second_clip):
    total = engine.visual_token_count([clip, second_clip])
    assert total == engine.visual_token_count(clip) + engine.visual_token_count(second_clip)
    with pytest.raises(BudgetError, match=r"2 video\(s\) make \d+ visual tokens, over max_video_tokens=100"):
        engine.encode(qm, [clip, second_clip], get_paper_config(max_video_tokens=100))
