"""The tiny random Qwen2.5-VL loads through the ordinary transformers entry points (4.57.x and 5.x) and is
deterministic. Run on both versions by tests/run.sh."""
import json

import numpy as np
import pytest
import torch

from prunevid.errors import ModelError
from prunevid.testing import SPECIAL_TOKENS, build_tiny_model

transformers = pytest.importorskip("transformers")
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration  # noqa: E402

SMALL = dict(num_hidden_layers=3)       # for the tests that only need a second build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def model(tiny):
    m, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return m.eval()


def test_config_and_weights(tiny, model):
    cfg = model.config
    text = cfg.text_config
    assert cfg.model_type == "qwen2_5_vl"
    assert len(model.model.language_model.layers) == text.num_hidden_layers == 28
    assert len(model.model.visual.blocks) == cfg.vision_config.depth == 2
    assert model.dtype == torch.float32
    assert not cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    rope = getattr(text, "rope_parameters", None) or text.rope_scaling         # 5.x / 4.57
    assert list(rope["mrope_section"]) == [2, 3, 3]
    assert sum(rope["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert text.vocab_size % 64 == 0
    w = model.model.language_model.layers[0].mlp.up_proj.weight
    assert 0.015 < w.std().item() < 0.025
    assert torch.all(model.model.language_model.norm.weight == 1)


def test_tokenizer_special_tokens(tiny, model):
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = model.config
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    assert all(i is not None and i < cfg.text_config.vocab_size for i in ids.values())
    assert len(tok) <= cfg.text_config.vocab_size
    assert ids["<|image_pad|>"] == cfg.image_token_id
    assert ids["<|video_pad|>"] == cfg.video_token_id
    assert ids["<|vision_start|>"] == cfg.vision_start_token_id
    assert ids["<|vision_end|>"] == cfg.vision_end_token_id
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == ids["<|im_end|>"]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == ids["<|endoftext|>"]
    assert model.generation_config.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert model.generation_config.pad_token_id == ids["<|endoftext|>"]
    # special tokens are never split; plain text is byte-level BPE and round-trips
    enc = tok("<|vision_start|><|video_pad|><|vision_end|>The red fox jumps over 3 dogs!", add_special_tokens=False)
    assert enc.input_ids[:3] == [ids["<|vision_start|>"], ids["<|video_pad|>"], ids["<|vision_end|>"]]
    assert len(enc.input_ids) < 20
    assert tok.decode(enc.input_ids[3:]) == "The red fox jumps over 3 dogs!"
    assert tok.decode(tok("Ünïcode ✓ 日本").input_ids) == "Ünïcode ✓ 日本"


def test_chat_template(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    proc = AutoProcessor.from_pretrained(tiny)
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "question"}]}]
    want = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|video_pad|><|vision_end|>question<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(video, tokenize=False, add_generation_prompt=True) == want
    assert proc.apply_chat_template(video, tokenize=False, add_generation_prompt=True) == want
    convo = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
             {"role": "assistant", "content": "Red."},
             {"role": "user", "content": "And now?"}]
    assert tok.apply_chat_template(convo, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "What colour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n")


def test_processor_and_forward(tiny, model):
    proc = AutoProcessor.from_pretrained(tiny)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    assert proc.image_processor.patch_size == 14 and proc.image_processor.merge_size == 2
    assert proc.image_processor.temporal_patch_size == 2
    assert np.allclose(proc.image_processor.image_mean, [0.48145466, 0.4578275, 0.40821073])
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 56, 84, 3), dtype=np.uint8)  # 4 frames, 2x3 tokens
    inputs = proc(text=[text], videos=[frames], return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6]]
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video == 2 * 4 * 6 // 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert logits[0, -1].std() > 1e-3                      # not degenerate: the random weights do something


def test_same_seed_same_bytes(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3, **SMALL)
    b = build_tiny_model(tmp_path / "b", seed=3, **SMALL)
    c = build_tiny_model(tmp_path / "c", seed=4, **SMALL)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert json.loads((a / "config.json").read_text())["num_hidden_layers"] == 3


def test_overwrite(tmp_path):
    path = build_tiny_model(tmp_path / "m", **SMALL)
    with pytest.raises(ModelError, match="--overwrite"):
        build_tiny_model(path, **SMALL)
    before = (path / "model.safetensors").read_bytes()
    build_tiny_model(path, seed=1, overwrite=True, **SMALL)
    assert (path / "model.safetensors").read_bytes() != before


def test_overwrite_never_deletes_a_foreign_folder(tmp_path):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not a tiny model built by prunevid"):
        build_tiny_model(precious, overwrite=True, **SMALL)
    assert (precious / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        build_tiny_model(tmp_path / "file", **SMALL)


def test_tiny_model_path_is_cached(tmp_path, monkeypatch):
    from prunevid.testing import tiny_model_path
    monkeypatch.setenv("PRUNEVID_CACHE", str(tmp_path))
    first = tiny_model_path()
    assert (first / "model.safetensors").is_file() and first.parent == tmp_path
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    (first / ".complete").unlink()                         # an interrupted build is rebuilt
    assert tiny_model_path() == first and (first / ".complete").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]   # no temporary folders left behind
