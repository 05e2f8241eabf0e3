"""Batched answering: every request of a batch is pruned on its own and answers exactly as it does alone."""
import pytest
import torch

from prunevid import PruneVidQwen25VL, batch, engine, stage3
from prunevid.config import PRESETS, get_paper_config, get_preset
from prunevid.video import load_video, sample_video_path

QUESTIONS = ["What is the rabbit doing in this video?", "Who sits in the car, and what do they do?",
             "Bikes?", "What changed between the two clips?"]

EVERY_FAMILY = True        # each test runs once per family (conftest.py)


@pytest.fixture(scope="module")
def visuals(qm, clip):
    """Four prompts of different videos and lengths, the last with two videos in one prompt."""
    f = qm.token_factor()
    carphone = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4, max_pixels=224 * 224, factor=f)
    bikes = load_video(sample_video_path("bikes.mp4"), max_frames=6, max_pixels=168 * 168, factor=f)
    return [clip, carphone, bikes, [carphone, bikes]]


@pytest.fixture(scope="module")
def encodings(qm, visuals):
    """Stage 1 output per request, for Stage 1 on (paper's parameters differ per preset) and off."""
    cache = {}

    def get(cfg):
        key = (cfg.enable_stage1, cfg.tau, cfg.cluster_ratio, cfg.temporal_segment_ratio, cfg.dpc_knn_k)
        if key not in cache:
            cache[key] = [engine.encode(qm, v, cfg) for v in visuals]
        return cache[key]
    return get


def params():
    """Each request its own limit; one samples with its own seed."""
    return [engine.SamplingParams(max_new_tokens=4), engine.SamplingParams(max_new_tokens=6),
            engine.SamplingParams(max_new_tokens=2),
            engine.SamplingParams(max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9, seed=5)]


def one_at_a_time(encoded, cfg, p):
    out = []
    for e, q, sp in zip(encoded, QUESTIONS, p):
        pf = engine.prefill(e, q, cfg)
        if cfg.enable_cache_compression:
            pf = stage3.compress(pf)
        out.append((pf, engine.generate(pf, sp, return_logits=True)))
    return out


def batched(encoded, cfg, p):
    bp = batch.prefill_batch(encoded, QUESTIONS, cfg)
    if cfg.enable_cache_compression:
        bp = stage3.compress(bp)
    return bp, batch.generate_batch(bp, p, return_logits=True)


@pytest.mark.parametrize("compress", [True, False], ids=["stage3", "no_stage3"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_request_of_a_batch_equals_its_batch_of_one_run(qm, encodings, preset, compress):
    if compress and not get_preset(preset).enable_stage2:
        pytest.skip("Stage 3 slices what Stage 2 selected: nothing to compress without it")
    cfg = get_preset(preset, enable_cache_compression=compress)
    encoded = encodings(cfg)
    alone = one_at_a_time(encoded, cfg, params())
    bp, together = batched(encoded, cfg, params())
    # the rows really differ in length, so padding is exercised (two of four rows may tie by chance: the tiny
    # Qwen3-VL-MoE's conservative run with Stage 3 keeps 74 tokens in rows 1 and 2)
    assert len({int(bp.lengths[0, b]) for b in range(bp.size)}) > 1, "the rows really differ in length"
    for b, ((pf, ref), out) in enumerate(zip(alone, together)):
        assert out["ids"] == ref["ids"], f"row {b}"
        assert out["logits"].shape == ref["logits"].shape
        assert (out["logits"] - ref["logits"]).abs().max() <= 1e-4, f"row {b}"
        assert out["text"] == ref["text"]
        # the row was pruned on its own: the same selection, the same cache sizes as alone
        assert torch.equal(bp.kept_visual[b], pf.kept_visual) and torch.equal(bp.keep_seq[b], pf.keep_seq)
        for key in ("stage1", "stage2", "tokens", "flops"):
            assert bp.stats[b][key] == pf.stats[key], key
        assert bp.stats[b]["stage3"] == pf.stats["stage3"]
        assert bp.stats[b]["batch"] == {"size": 4, "row": b}
    if cfg.prunes_in_llm:
        assert len({k.numel() for k in bp.keep_seq}) > 1
        assert bp.compressed == compress


def test_each_row_stops_at_its_own_end_token(qm, encodings):
    cfg = get_paper_config()
    encoded = encodings(cfg)
    # sampled, one seed per row: a random model's greedy rows may all repeat the same token
    p = [engine.SamplingParams(max_new_tokens=8, do_sample=True, temperature=2.0, seed=b) for b in range(len(encoded))]
    free_run = batched(encoded, cfg, p)[1]
    # a row that makes a token first at step k >= 1 which some other row never makes
    row, k = next((b, k) for b, out in enumerate(free_run) for k in range(1, len(out["ids"]))
                  if out["ids"][k] not in out["ids"][:k]
                  and any(out["ids"][k] not in o["ids"] for o in free_run if o is not out))
    ids = free_run[row]["ids"]
    stop = ids[k]                                # a token that row makes first at step k becomes an end token
    saved = list(qm.eos_token_ids)
    qm.eos_token_ids = saved + [stop]
    try:
        alone = [out for _, out in one_at_a_time(encoded, cfg, p)]
        bp, together = batched(encoded, cfg, p)
    finally:
        qm.eos_token_ids = saved
    assert together[row]["ids"] == ids[:k + 1]
    assert [o["ids"] for o in together] == [o["ids"] for o in alone]
    assert any(len(o["ids"]) == 8 for o in together), "the other rows decode on after that row left the batch"


def test_a_batched_prefill_is_never_mutated(qm, encodings):
    cfg = get_paper_config()
    bp = stage3.compress(batch.prefill_batch(encodings(cfg), QUESTIONS, cfg))
    lengths = list(bp.cache.lengths)
    states = [s.clone() for s in bp.cache.conv + bp.cache.recurrent if s is not None]   # Qwen3.5's linear layers
    first = batch.generate_batch(bp, params())
    second = batch.generate_batch(bp, params())
    assert [o["ids"] for o in first] == [o["ids"] for o in second]
    assert bp.cache.lengths == lengths and bp.cache.keys[qm.attention_layers[0]].shape[0] == 4
    assert all(torch.equal(a, b) for a, b in zip(states, [s for s in bp.cache.conv + bp.cache.recurrent
                                                           if s is not None]))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_paper_config(max_frames=4), device="cpu",
                            dtype="fp32")


def test_a_failing_request_gets_an_error_and_the_others_answer(model, sample_video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 300)
    bikes = str(sample_video_path("bikes.mp4"))
    requests = [{"video_path": str(sample_video), "question": QUESTIONS[0], "max_new_tokens": 5},
                {"video_path": str(broken), "question": QUESTIONS[1]},
                {"videos": [bikes, str(sample_video)], "question": QUESTIONS[3], "max_new_tokens": 4},
                {"video_path": bikes, "question": "  "},
                {"video_path": bikes, "question": QUESTIONS[2], "temprature": 0.5},
                {"video_path": bikes, "question": QUESTIONS[2], "max_new_tokens": 0},
                {"video_path": bikes, "question": QUESTIONS[2], "max_new_tokens": 3}]
    done = []
    results = model.generate_batch(requests, batch_size=4, progress=lambda d, n: done.append((d, n)))
    assert done == [(4, 7), (7, 7)]
    assert [r["error"] is None for r in results] == [True, False, True, False, False, False, True]
    assert "cannot decode" in results[1]["error"] and str(broken) in results[1]["error"]
    assert "question is empty" in results[3]["error"]
    assert "'temprature'" in results[4]["error"] and "max_new_tokens must be" in results[5]["error"]
    odd = model.generate_batch([{"videos": 5, "question": "Why?"}, {"video_path": bikes, "question": "Why?",
                                                                     "system_prompt": 3}])
    assert "videos must be a list" in odd[0]["error"] and "system_prompt must be a string" in odd[1]["error"]
    for r in (results[1], results[3]):
        assert r["answer"] is None and r["stats"] is None and r["ids"] == []
    # the answers are those of the one-request path
    for r, req in ((results[0], requests[0]), (results[2], requests[2]), (results[6], requests[6])):
        enc = model.encode(**{k: req[k] for k in ("video_path", "videos") if k in req})
        alone = model.answer(enc, req["question"], req["max_new_tokens"])
        assert r["answer"] == alone["answer"] and r["ids"] == alone["ids"]
        assert r["stats"]["stage2"] == alone["stats"]["stage2"]
        assert r["stats"]["timings"]["end_to_end_s"] > 0
    assert results[2]["stats"]["batch"]["size"] == 2 and len(results[2]["stats"]["videos"]) == 2


def test_encode_batch_and_answer_batch(model, sample_video, tmp_path):
    missing = str(tmp_path / "missing.mp4")
    encoded = model.encode_batch([{"video_path": str(sample_video)}, {"video_path": missing}, "clip.mp4"])
    assert isinstance(encoded[0], engine.Encoded)
    assert "not found" in str(encoded[1]) and "expected a dict" in str(encoded[2])
    out = model.answer_batch(encoded, ["What happens?", "What happens?", "What happens?"], max_new_tokens=3)
    assert out[0]["error"] is None and out[1]["error"] == str(encoded[1]) and out[2]["error"] == str(encoded[2])
    assert out[0]["ids"] == model.answer(encoded[0], "What happens?", 3)["ids"]


@pytest.mark.parametrize("preset", ["paper", "no_cache_compression"])
def test_eager_attention_batches_too(tiny_model_dir, visuals, preset):
    """eager attention adds only the masks it is given: the causal one in prefill, the padding one in decoding."""
    from prunevid import loader
    eager = loader.load(str(tiny_model_dir), dtype="fp32", device="cpu", attention="eager")
    cfg = get_preset(preset)
    encoded = [engine.encode(eager, v, cfg) for v in visuals]
    alone = one_at_a_time(encoded, cfg, params())
    _, together = batched(encoded, cfg, params())
    for (_, ref), out in zip(alone, together):
        assert out["ids"] == ref["ids"]
        assert (out["logits"] - ref["logits"]).abs().max() <= 1e-4
