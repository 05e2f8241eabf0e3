"""The accuracy oracle: a small Qwen2.5-VL trained on synthetic video QA (benchmarks/accuracy) answers through the
engine, and pruning keeps the answer. These tests fail when a change ruins accuracy but keeps every shape right
(a wrong position after merging, Stage 2 keeping the least attended tokens, a wrong layer).

Floors come from the measured held-out accuracies of the committed checkpoint (benchmarks/accuracy/results/
oracle.md), lowered by a margin larger than the sampling noise of the subset used here.
"""
import pytest
import torch

from benchmarks.accuracy import data, evaluate
from benchmarks.accuracy import model as M
from benchmarks.accuracy.train import CHECKPOINT
from prunevid import engine, qwen
from prunevid.config import get_baseline_config

N_PER_TYPE = 40                       # 240 held-out clips
FLOORS = {"baseline": None, "paper": None}   # filled in from the measured table
LEAST_BELOW_PAPER = None
NO_VIDEO_CEILING = None


@pytest.fixture(scope="module")
def oracle():
    return qwen.load(str(CHECKPOINT), dtype="fp32", device="cpu")


def test_checkpoint_is_small_and_loads_like_any_qwen25vl():
    from transformers import Qwen2_5_VLForConditionalGeneration
    size = sum(f.stat().st_size for f in CHECKPOINT.iterdir() if f.is_file())
    assert size <= 10 * 2**20
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(CHECKPOINT, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_training_forward_is_what_the_engine_computes(oracle):
    """The trainer's batched forward (prompt, patches, 3-D positions, fast vision attention) gives the logits
    engine.prefill gives: the model was trained on exactly what inference feeds it."""
    pr = M.Prompter(oracle)
    scenes = [data.scene(3, i) for i in range(3)]
    items = [(sc.frames, [(q, None) for _, q, _ in sc.questions]) for sc in scenes]
    with torch.no_grad(), M.fast_vision_attention():
        ours = M.forward(oracle, pr, items)[:, 0]
    samples = [s for sc in scenes for s in sc.samples()]
    assert len(samples) == ours.shape[0]
    for i, s in enumerate(samples):
        cfg = get_baseline_config()
        pf = engine.prefill(engine.encode(oracle, evaluate.clip_of(s), cfg), s.question, cfg)
        assert (pf.logits - ours[i]).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def measured(oracle):
    ev = evaluate.Evaluator(oracle, rows=["baseline", "paper", "least_attended", "no_video_after_M"])
    for s in data.held_out(N_PER_TYPE * len(data.TYPES)):
        ev.run(s)
    return ev.summary()
