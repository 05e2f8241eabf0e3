"""The token budget (retention / budget_tokens) and the selection variants: Stage 2's count follows from what Stage 1
left so the prompt keeps the target share of the unpruned video tokens, through one function (stage2.choose) that
the single-request engine, the batch engine and multi-video prompts all call."""
import math

import pytest
import torch

from prunevid import batch, cli, engine, stage1, stage2, stats
from prunevid.config import PRESETS, PruneVidConfig, get_paper_config, get_preset, get_stage2_only_config
from prunevid.errors import ConfigError
from prunevid.evaluation import args as eval_args
from prunevid.video import load_video, sample_video_path

Q = "What is the rabbit doing in this video?"


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("bad, field", [
    ({"retention": 1.5}, "retention"), ({"retention": -0.1}, "retention"), ({"retention": True}, "retention"),
    ({"budget_tokens": -1}, "budget_tokens"), ({"budget_tokens": 2.5}, "budget_tokens"),
    ({"retention": 0.1, "budget_tokens": 10}, "not both"),
    ({"budget_allocation": "mass"}, "budget_allocation"), ({"min_tokens_per_block": -1}, "min_tokens_per_block"),
    ({"static_test": "max"}, "static_test"),
])
def test_config_validates_the_budget_and_variants(bad, field):
    with pytest.raises(ConfigError, match=field):
        PruneVidConfig(**bad)


BUDGET_PRESETS = {"attention_coverage"}     # the one preset added with the budget (issue 21); the others predate it


def test_presets_are_unchanged_by_the_new_fields():
    for name in set(PRESETS) - BUDGET_PRESETS:
        cfg = get_preset(name)
        assert cfg.retention == 0.0 and cfg.budget_tokens == 0 and not cfg.has_budget
        assert cfg.budget_allocation == "size" and cfg.min_tokens_per_block == 0 and cfg.static_test == "mean"
    assert get_paper_config(keep_ratio=1.0, retention=0.2).prunes_in_llm
    assert not get_paper_config(keep_ratio=1.0).prunes_in_llm


# ---------------------------------------------------------------- stage2.choose / allocate

def _random_blocks(gen, N, B):
    block = torch.randint(0, B, (N,), generator=gen)
    block[:B] = torch.arange(B)                      # every block id present
    return block


@pytest.mark.parametrize("granularity", ["block", "global"])
def test_without_a_budget_choose_is_the_papers_select(granularity):
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        N = int(torch.randint(5, 200, (1,), generator=gen))
        scores, block = torch.rand(N, generator=gen), _random_blocks(gen, N, min(N, 12))
        for alpha in (0.1, 0.3, 0.4, 0.7, 1.0):
            cfg = get_paper_config(keep_ratio=alpha, selection_granularity=granularity)
            assert torch.equal(stage2.choose(scores, block, cfg, 4 * N),
                               stage2.select(scores, block, alpha, granularity))


def test_a_budget_keeps_exactly_the_target_within_one_token_per_block_of_its_share():
    gen = torch.Generator().manual_seed(1)
    for trial in range(40):
        N, B = int(torch.randint(20, 300, (1,), generator=gen)), int(torch.randint(1, 15, (1,), generator=gen))
        scores, block = torch.rand(N, generator=gen), _random_blocks(gen, N, B)
        N0 = 3 * N                                   # Stage 1 left a third of the unpruned tokens
        sizes = torch.bincount(block, minlength=B)
        for r in (0.01, 0.05, 0.1, 0.2, 0.3):
            keep = stage2.choose(scores, block, get_paper_config(retention=r), N0)
            T = max(1, round(r * N0))
            assert keep.numel() == T and torch.equal(keep, keep.unique())      # exact, ascending, unique
            got = torch.bincount(block[keep], minlength=B).double()
            assert ((got - sizes * T / N).abs() < 1 + 1e-9).all()
            for b in range(B):                       # inside a block, the best-scored tokens
                kept_b = keep[block[keep] == b]
                if 0 < kept_b.numel() < int(sizes[b]):
                    dropped = [i for i in range(N) if block[i] == b and i not in set(kept_b.tolist())]
                    assert scores[kept_b].min() >= scores[dropped].max()


def test_budget_tokens_and_global_top_k():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    block = torch.tensor([0, 0, 0, 1, 1, 1])
    cfg = get_paper_config(budget_tokens=3, selection_granularity="global")
    assert stage2.choose(scores, block, cfg, 100).tolist() == [1, 3, 5]
    assert stage2.choose(scores, block, get_paper_config(budget_tokens=3), 100).numel() == 3


def test_stage1_below_the_target_keeps_everything():
    scores, block = torch.rand(10), torch.arange(10) // 5
    keep = stage2.choose(scores, block, get_paper_config(retention=0.2), 50)   # target 10 = N
    assert keep.tolist() == list(range(10))
    assert stage2.choose(scores, block, get_paper_config(budget_tokens=11), 50).numel() == 10


def test_min_tokens_per_block_never_drops_a_block():
    # after Stage 1 many blocks hold 1-3 tokens; int(n * 0.4) gives them nothing
    block = torch.tensor([0, 1, 1, 2, 2, 2] + [3] * 20)
    scores = torch.rand(block.numel(), generator=torch.Generator().manual_seed(2))
    paper = stage2.choose(scores, block, get_paper_config(), 100)
    assert set(block[paper].tolist()) == {2, 3}                            # blocks of 1 and 2 lose everything
    floor = stage2.choose(scores, block, get_paper_config(min_tokens_per_block=1), 100)
    assert set(block[floor].tolist()) == {0, 1, 2, 3}
    budget = stage2.choose(scores, block, get_paper_config(budget_tokens=8, min_tokens_per_block=1), 100)
    assert budget.numel() == 8 and set(block[budget].tolist()) == {0, 1, 2, 3}


def test_attention_allocation_follows_the_mass():
    block = torch.tensor([0] * 10 + [1] * 10)
    scores = torch.cat([torch.full((10,), 0.9), torch.full((10,), 0.1)]) + torch.arange(20) * 1e-3
    by_size = stage2.choose(scores, block, get_paper_config(budget_tokens=10), 100)
    by_mass = stage2.choose(scores, block, get_paper_config(budget_tokens=10, budget_allocation="attention"), 100)
    assert torch.bincount(block[by_size]).tolist() == [5, 5]
    assert torch.bincount(block[by_mass]).tolist() == [9, 1]


def test_allocate_sums_and_caps():
    sizes = torch.tensor([1, 2, 3, 50])
    for total in range(0, 57):
        for w in (sizes.double(), torch.tensor([5.0, 0.0, 1.0, 0.1])):
            for floor in (0, 1, 2):
                q = stage2.allocate(sizes, total, w, floor)
                assert int(q.sum()) == total and (q >= 0).all() and (q <= sizes).all()
                if total >= int(torch.minimum(sizes, torch.tensor(floor)).sum()):
                    assert (q >= torch.minimum(sizes, torch.tensor(floor))).all()


# ---------------------------------------------------------------- Stage 1 variant

def test_min_static_test_sees_a_change_in_one_group():
    g, n, C = 8, 3, 16
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(n, C, generator=gen)
    feats = base.expand(g, n, C).clone()
    feats[5, 1] = torch.randn(C, generator=gen)      # location 1 changes in one group of eight (a flash)
    assert stage1.static_mask(feats, 0.7).tolist() == [True, True, True]      # the mean hides it
    assert stage1.static_mask(feats, 0.7, "min").tolist() == [True, False, True]


# ---------------------------------------------------------------- through the engines

@pytest.mark.parametrize("preset, r", [("paper", 0.1), ("paper", 0.05), ("stage2_only", 0.1), ("stage2_only", 0.3)])
def test_engine_hits_the_retention(qm, clip, preset, r):
    cfg = get_preset(preset, retention=r)
    enc = engine.encode(qm, clip, cfg)
    pf = engine.prefill(enc, Q, cfg)
    T = max(1, round(r * enc.original_tokens))
    assert enc.merged_tokens > T
    assert pf.kept_visual.numel() == T and pf.stats["tokens"]["video_after_stage2"] == T
    assert pf.stats["stage2"]["target_tokens"] == T and not pf.stats["stage2"]["stage1_met_target"]
    assert math.isclose(pf.stats["tokens"]["retention"], T / enc.original_tokens)
    assert pf.keep_seq.numel() == pf.stats["tokens"]["sequence_after_stage2"]


def test_engine_says_when_stage1_already_met_the_target(qm, clip):
    cfg = get_paper_config(retention=0.9)
    enc = engine.encode(qm, clip, cfg)
    pf = engine.prefill(enc, Q, cfg)
    assert pf.kept_visual.numel() == enc.merged_tokens < round(0.9 * enc.original_tokens)
    s2 = pf.stats["stage2"]
    assert s2["stage1_met_target"] and not s2["enabled"] and s2["compressed_tokens"] == s2["original_tokens"]
    pf.stats["timings"].update(tokens_per_s=0.0)
    assert "Stage 1 already met the token budget" in stats.format_stats(pf.stats)


def test_a_batch_selects_each_row_as_alone(qm, clip):
    carphone = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4, max_pixels=224 * 224)
    visuals = [clip, carphone, [carphone, clip]]
    questions = [Q, "Who is in the car?", "What differs?"]
    for cfg in (get_paper_config(retention=0.1), get_stage2_only_config(budget_tokens=20)):
        encs = [engine.encode(qm, v, cfg) for v in visuals]
        bp = batch.prefill_batch(encs, questions, cfg)
        for b, (e, q) in enumerate(zip(encs, questions)):
            alone = engine.prefill(e, q, cfg)
            assert torch.equal(bp.kept_visual[b], alone.kept_visual)
            assert bp.kept_visual[b].numel() == stage2.target_tokens(cfg, e.original_tokens)


def test_several_videos_share_one_budget(qm, clip):
    bikes = load_video(sample_video_path("bikes.mp4"), max_frames=6, max_pixels=168 * 168)
    cfg = get_stage2_only_config(retention=0.15)
    enc = engine.encode(qm, [clip, bikes], cfg)
    pf = engine.prefill(enc, "What differs?", cfg)
    T = round(0.15 * enc.original_tokens)
    assert pf.kept_visual.numel() == T
    per_video = [v["tokens"]["after_stage2"] for v in pf.stats["videos"]]
    assert sum(per_video) == T and all(k > 0 for k in per_video)


# ---------------------------------------------------------------- CLI and lmms-eval model args

def test_cli_retention_flag_sets_the_config():
    import argparse
    ap = argparse.ArgumentParser()
    cli.add_run_flags(ap)
    a = ap.parse_args(["--retention", "0.1"])
    a.config = None
    cfg = cli._config(a)
    assert cfg.retention == 0.1 and cfg.keep_ratio == get_paper_config().keep_ratio
    a = ap.parse_args(["--retention", "2"])
    a.config = None
    with pytest.raises(ConfigError, match="retention"):
        cli._config(a)


def test_lmms_eval_model_args_take_the_budget():
    s = eval_args.parse({"preset": "paper", "retention": 0.1, "budget_allocation": "attention"})
    assert s.config.retention == 0.1 and s.config.budget_allocation == "attention"
    assert "retention=0.1" in s.label()
    assert eval_args.parse({"budget_tokens": 64}).config.budget_tokens == 64
    with pytest.raises(ConfigError, match="retention"):
        eval_args.parse({"retention": 1.5})


def test_coverage_spreads_part_of_the_count_over_what_attention_left():
    scores = torch.zeros(128)
    scores[:16] = torch.linspace(1.0, 0.5, 16)      # attention piles on the first group
    block = torch.arange(128) // 16
    cfg = get_stage2_only_config(budget_tokens=8, selection_granularity="global")
    assert stage2.choose(scores, block, cfg, 128).tolist() == list(range(8))
    half = stage2.choose(scores, block, cfg.replace(coverage=0.5), 128)
    assert half.numel() == 8 and half[:4].tolist() == [0, 1, 2, 3]           # the 4 best, then 4 spread out
    assert (half[4:] >= 16).all() and len(set((half[4:] // 16).tolist())) == 4
    assert stage2.choose(scores, block, get_paper_config(coverage=0.5), 500).numel() == \
        stage2.choose(scores, block, get_paper_config(), 500).numel()       # keep_ratio's count, shared
    with pytest.raises(ConfigError, match="coverage"):
        PruneVidConfig(coverage=1.5)


# ---------------------------------------------------------------- the attention_coverage preset

def test_attention_coverage_preset_is_stage2_only_with_a_budget_and_coverage():
    """Stage 1 off, Stage 2 at the paper's M with the paper's other settings, retention 0.10, coverage 0.5."""
    cfg = get_preset("attention_coverage")
    assert not cfg.enable_stage1 and cfg.enable_stage2 and cfg.enable_cache_compression
    assert cfg.retention == 0.10 and cfg.coverage == 0.5 and cfg.has_budget
    assert cfg.replace(enable_stage1=True, retention=0.0, coverage=0.0) == get_paper_config()
    assert get_preset("attention_coverage", retention=0.2).retention == 0.2


def test_attention_coverage_preset_spreads_half_its_budget_through_the_engine(qm, clip):
    """Through the engine the preset keeps 10 % of the tokens, and its coverage reaches stage2.choose: the kept set
    is choose's with coverage 0.5, not the attention-only one (this fails if the preset's coverage is dropped)."""
    cfg = get_preset("attention_coverage")
    enc = engine.encode(qm, clip, cfg)
    pf = engine.prefill(enc, Q, cfg)
    T = round(0.10 * enc.original_tokens)
    assert enc.merged_tokens == enc.original_tokens > T and pf.kept_visual.numel() == T
    block = enc.items[0].tokens.block
    assert torch.equal(pf.kept_visual, stage2.choose(pf.scores, block, cfg, enc.original_tokens))
    attention_only = stage2.choose(pf.scores, block, cfg.replace(coverage=0.0), enc.original_tokens)
    assert attention_only.numel() == T and not torch.equal(pf.kept_visual, attention_only)
    top = stage2.choose(pf.scores, block, cfg.replace(coverage=0.0, retention=0.0, budget_tokens=T - round(T / 2)),
                        enc.original_tokens)
    assert set(top.tolist()) <= set(pf.kept_visual.tolist())       # half by attention, the other half spread


def test_attention_coverage_preset_is_offered_by_the_cli_and_lmms_eval():
    import argparse
    ap = argparse.ArgumentParser()
    cli.add_run_flags(ap)
    a = ap.parse_args(["--preset", "attention_coverage"])
    a.config = None
    assert cli._config(a) == get_preset("attention_coverage", verbose=False)
    a = ap.parse_args(["--preset", "attention_coverage", "--retention", "0.2"])
    a.config = None
    assert cli._config(a).retention == 0.2 and cli._config(a).coverage == 0.5
    s = eval_args.parse({"preset": "attention_coverage"})
    assert s.config.retention == 0.1 and s.config.coverage == 0.5 and not s.config.enable_stage1
