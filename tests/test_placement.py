"""device_map, max_memory and offload (accelerate) on the tiny random Qwen2.5-VL, loaded through from_pretrained.

A CPU-only machine has one compute device, so what can be pinned here is offload: decoder layers whose weights
live on disk (accelerate's hooks bring them in for each call), among them the pruning layer M that Stage 2 scores
with its own q_proj / k_proj calls. Sharding over several GPUs runs the same code path (placement.follow moves
the hidden states to each layer's device) but is not exercised here.
"""
import pytest
import torch

from conftest import live_tensor_bytes
from prunevid import batch, engine, families, loader, placement, quantize, stage3
from prunevid.config import PRESETS, get_preset
from prunevid.errors import ConfigError, ModelError

Q = "What is the rabbit doing in this video?"
ON_DISK = range(6, 15)      # around the pruning layer 10 of every preset

EVERY_FAMILY = True        # each test runs once per family (conftest.py)


def device_map(num_layers: int) -> dict:
    dm = {name: "cpu" for name in ("model.visual", "model.language_model.embed_tokens", "model.language_model.norm",
                                    "model.language_model.rotary_emb", "lm_head")}
    dm.update({f"model.language_model.layers.{i}": "disk" if i in ON_DISK else "cpu" for i in range(num_layers)})
    return dm


@pytest.fixture(scope="module")
def offloaded(tiny_model_dir, qm, tmp_path_factory):
    om = loader.load(str(tiny_model_dir), dtype="fp32", device_map=device_map(qm.num_layers),
                   offload_folder=str(tmp_path_factory.mktemp("offload")))
    yield om
    loader.free(om)


def run(model, clip, preset):
    cfg = get_preset(preset)
    pf = engine.prefill(engine.encode(model, clip, cfg), Q, cfg)
    if cfg.enable_cache_compression:
        pf = stage3.compress(pf)
    return pf, engine.generate(pf, engine.SamplingParams(max_new_tokens=6), return_logits=True)


def test_offloaded_layers_hold_no_weights_between_calls(offloaded):
    for i, layer in enumerate(offloaded.layers):
        assert all(p.is_meta for p in layer.parameters()) == (i in ON_DISK), i
    assert set(offloaded.weight_bytes) == {"cpu", "disk"}
    assert sum(offloaded.weight_bytes.values()) == quantize.weight_bytes(offloaded.model)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_offloaded_model_equals_the_plain_model(qm, offloaded, clip, preset):
    pf, out = run(offloaded, clip, preset)
    ref_pf, ref_out = run(qm, clip, preset)
    assert (pf.logits - ref_pf.logits).abs().max() <= 1e-4
    assert torch.equal(pf.kept_visual, ref_pf.kept_visual), "Stage 2 on an offloaded layer M selects the same"
    assert pf.cache.nbytes() == ref_pf.cache.nbytes()
    assert out["ids"] == ref_out["ids"], "cached decoding still matches"
    assert (out["logits"] - ref_out["logits"]).abs().max() <= 1e-4


@pytest.mark.parametrize("preset", ["paper", "baseline"])
def test_an_offloaded_model_batches_as_the_plain_model(qm, offloaded, clip, preset):
    """prefill_batch / stage3.compress / generate_batch on layers whose weights come from disk for each call (Stage 2
    scores every row with layer M's own projections): every row equals the plain model's batch."""
    from prunevid.video import load_video, sample_video_path
    cfg = get_preset(preset)
    bikes = load_video(sample_video_path("bikes.mp4"), max_frames=6, max_pixels=168 * 168,
                       factor=qm.token_factor())
    questions = [Q, "Which way do the bikes go?"]

    def run_batch(model):
        bp = batch.prefill_batch([engine.encode(model, v, cfg) for v in (clip, bikes)], questions, cfg)
        if cfg.enable_cache_compression:
            bp = stage3.compress(bp)
        return bp, batch.generate_batch(bp, [engine.SamplingParams(max_new_tokens=5)] * 2, return_logits=True)
    (bp, outs), (ref_bp, ref_outs) = run_batch(offloaded), run_batch(qm)
    assert (bp.logits - ref_bp.logits).abs().max() <= 1e-4
    for b in range(2):
        assert torch.equal(bp.kept_visual[b], ref_bp.kept_visual[b])
        assert outs[b]["ids"] == ref_outs[b]["ids"]
        assert (outs[b]["logits"] - ref_outs[b]["logits"]).abs().max() <= 1e-4


def test_auto_device_map_with_max_memory_spills_to_disk(tiny_model_dir, qm, clip, tmp_path):
    limit = min(3 * 10**6, qm.weight_bytes["cpu"] // 2)     # the tiny Qwen3.5 weighs 2.4 MB in all
    om = loader.load(str(tiny_model_dir), dtype="fp32", device_map="auto", max_memory={"cpu": limit},
                     offload_folder=str(tmp_path))
    assert om.weight_bytes.get("disk", 0) > 0 and om.weight_bytes.get("cpu", 0) <= limit
    pf, out = run(om, clip, "paper")
    ref_pf, ref_out = run(qm, clip, "paper")
    assert (pf.logits - ref_pf.logits).abs().max() <= 1e-4 and out["ids"] == ref_out["ids"]
    loader.free(om)


def loads(family: str, quantization: str) -> bool:
    """Whether the family loads with `quantization` (Qwen3-VL-MoE refuses 8/4-bit: tests/test_quantize.py)."""
    try:
        families.family(family).check_quantization(quantization, "the tiny model")
    except ModelError:
        return False
    return True


def test_free_releases_offloaded_and_quantised_models(family, tiny_model_dir, qm, clip, tmp_path):
    pytest.importorskip("bitsandbytes")
    quantised = [dict(quantization=q) for q in ("8bit", "4bit") if loads(family, q)]
    for kwargs in (dict(device_map=device_map(qm.num_layers), offload_folder=str(tmp_path)), *quantised):
        before = live_tensor_bytes()
        m = loader.load(str(tiny_model_dir), dtype="fp32", **kwargs)
        run(m, clip, "paper")                       # bitsandbytes keeps state from the first forward
        loaded = live_tensor_bytes()
        loader.free(m)                                # `m` stays referenced, as ComfyUI's output cache holds it
        after = live_tensor_bytes()
        assert loaded - before >= 0.8 * m.weight_bytes["cpu"], f"{kwargs}: the count sees the weights"
        assert all(p.is_meta for p in m.model.parameters())
        assert not any(hasattr(mod, "_hf_hook") for mod in m.model.modules()), "accelerate's hooks are gone"
        # what may stay: the small example inputs bitsandbytes' torch.compile'd CPU kernels keep (~50 KB here)
        assert after - before <= 0.1 * (loaded - before), f"{kwargs}: weights still alive"


def test_bad_placements_are_one_line_errors_before_loading(tiny_model_dir, tmp_path):
    cases = [
        (dict(device="cpu", device_map="auto"), "not both"),
        (dict(device_map="everywhere"), "device_map must be one of auto"),
        (dict(device_map={"model": "gpu7"}), "maps module names to devices"),
        (dict(device_map={"": "disk"}), "offload_folder"),
        (dict(device_map={"": "cpu"}, max_memory={"cpu": "1GB"}), "not to an explicit device_map"),
        (dict(device_map="auto", max_memory={"cpu": 1.5}), "max_memory must map devices to sizes"),
        (dict(max_memory={"cpu": "1GB"}), "only with a device_map"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            loader.load(str(tiny_model_dir), dtype="fp32", **kwargs)
        assert "\n" not in str(e.value)
    assert placement.parse_max_memory("0=20GiB, cpu=64GiB") == {0: "20GiB", "cpu": "64GiB"}
    with pytest.raises(ConfigError, match="DEVICE=SIZE"):
        placement.parse_max_memory("20GiB")
