"""A tiny random checkpoint of each supported family on disk, for tests and for trying the pipeline without a
download (Qwen2.5-VL by default; family="qwen2_vl" for Qwen2-VL).

The checkpoint is laid out like the real Qwen/Qwen2-VL-* and Qwen/Qwen2.5-VL-*-Instruct repos (flat config.json with
the legacy `rope_scaling` mrope form, weights under the legacy `visual.*` / `model.*` / `lm_head.*` names,
tokenizer.json, tokenizer_config.json, chat_template.json, preprocessor_config.json, generation_config.json), so it
goes through exactly the loading code a real checkpoint goes through, on transformers 4.57.x and 5.x alike.

Everything is written by this package, not by `save_pretrained`: the files then do not depend on which
transformers version built them, and the same seed gives byte-identical files on both versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import ModelError
from .tokenizer import QWEN3_ADDED_TOKENS, SPECIAL_TOKENS, chat_template, tokenizer_config, train_tokenizer

MARKER = ".prunevid-tiny-model"   # written into every tiny model; overwrite=True deletes only folders that hold it
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


QWEN3 = ("qwen3_vl", "qwen3_vl_moe")   # the families with Qwen3-VL's files (nested config, 16-px processor, added tokens)


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _vision_config(family: str, p: dict) -> dict:
    """The vision_config of each family's hub repos, scaled down."""
    if family in QWEN3:                          # 16-px patches, learned 2-D position grid, DeepStack mergers
        depth = max(1 + max(p["deepstack_visual_indexes"]), p["vision_depth"])
        return {"model_type": family, "depth": depth, "hidden_size": p["vision_hidden_size"],
                "hidden_act": "gelu_pytorch_tanh", "intermediate_size": p["vision_intermediate_size"],
                "num_heads": p["vision_num_heads"], "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "out_hidden_size": p["hidden_size"], "num_position_embeddings": 64,
                "deepstack_visual_indexes": p["deepstack_visual_indexes"], "initializer_range": 0.02}
    if family == "qwen2_vl":                     # full attention in every block; hidden_size is the merger's output
        return {"depth": p["vision_depth"], "embed_dim": p["vision_hidden_size"], "hidden_size": p["hidden_size"],
                "hidden_act": "quick_gelu", "mlp_ratio": p["vision_intermediate_size"] // p["vision_hidden_size"],
                "num_heads": p["vision_num_heads"], "in_chans": 3, "in_channels": 3, "patch_size": 14,
                "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
                "initializer_range": 0.02}
    return {                                     # qwen2_5_vl: windowed attention but in the last block
        "depth": p["vision_depth"],
        "hidden_act": "silu",
        "hidden_size": p["vision_hidden_size"],
        "intermediate_size": p["vision_intermediate_size"],
        "num_heads": p["vision_num_heads"],
        "in_chans": 3,
        "in_channels": 3,
        "out_hidden_size": p["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "fullatt_block_indexes": [p["vision_depth"] - 1],
        "initializer_range": 0.02,
    }


def _qwen3_vl_config(p: dict, ids: dict, vocab_size: int, family: str = "qwen3_vl") -> dict:
    """The nested config.json of the Qwen/Qwen3-VL-*-Instruct repos (text_config with the legacy rope_scaling form
    and mrope_interleaved, which 4.57 reads and 5.x converts), scaled down; three DeepStack levels, as released.
    Qwen3-VL-MoE's repos add the experts to text_config: every layer sparse (decoder_sparse_step 1, no
    mlp_only_layers), p's num_experts of moe_intermediate_size, num_experts_per_tok of them per token."""
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    half = head_dim // 2
    hw = half // 4
    mrope = [half - 2 * hw, hw, hw]              # Qwen's [24, 20, 20] of 64 scaled down: [4, 2, 2] of 8
    return {
        "architectures": ["Qwen3VLMoeForConditionalGeneration" if family == "qwen3_vl_moe"
                          else "Qwen3VLForConditionalGeneration"],
        "model_type": family,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": f"{family}_text", "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "dtype": "float32",
            "head_dim": head_dim, "hidden_act": "silu", "hidden_size": p["hidden_size"], "initializer_range": 0.02,
            "intermediate_size": p["intermediate_size"], "max_position_embeddings": 262144,
            "num_attention_heads": p["num_attention_heads"], "num_hidden_layers": p["num_hidden_layers"],
            "num_key_value_heads": p["num_key_value_heads"], "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": mrope, "rope_type": "default"},
            "rope_theta": 5000000, "tie_word_embeddings": False, "use_cache": True, "vocab_size": vocab_size,
            **({"decoder_sparse_step": 1, "mlp_only_layers": [], "num_experts": p["num_experts"],
                "num_experts_per_tok": p["num_experts_per_tok"], "moe_intermediate_size": p["moe_intermediate_size"],
                "router_aux_loss_coef": 0.001} if family == "qwen3_vl_moe" else {})},
        "dtype": "float32",
        "vision_config": _vision_config(family, p),
    }


def _qwen3_5_config(p: dict, ids: dict, vocab_size: int) -> dict:
    """Qwen3.5's nested config.json, built by transformers' own Qwen3_5Config (the family exists on 5.x only) and
    scaled down: head_dim 32 with partial rotary 0.25 (8 rotary dims: interleaved M-RoPE sections [2, 1, 1], Qwen's
    [11, 11, 10] of 32 scaled down), full attention every fourth layer, small Gated DeltaNet heads, no DeepStack."""
    from transformers import Qwen3_5Config
    text = {"model_type": "qwen3_5_text", "hidden_size": p["hidden_size"], "intermediate_size": p["intermediate_size"],
            "num_hidden_layers": p["num_hidden_layers"], "num_attention_heads": p["num_attention_heads"],
            "num_key_value_heads": p["num_key_value_heads"], "head_dim": 32, "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4, "full_attention_interval": 4, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-06, "vocab_size": vocab_size, "tie_word_embeddings": False, "dtype": "float32",
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                                "mrope_section": [2, 1, 1], "mrope_interleaved": True}}
    vision = {k: v for k, v in _vision_config("qwen3_vl", p).items() if k != "deepstack_visual_indexes"}
    config = Qwen3_5Config(text_config=text, vision_config={**vision, "model_type": "qwen3_5"},
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                           tie_word_embeddings=False, architectures=["Qwen3_5ForConditionalGeneration"])
    out = config.to_dict()
    out.pop("transformers_version", None)
    return out


def _config(family: str, p: dict, ids: dict, vocab_size: int) -> dict:
    """The flat config.json layout of the Qwen2-VL / Qwen2.5-VL hub repos, which 4.57 and 5.x both parse to the same
    model.

    Text settings sit at the top level and mrope is given as legacy `rope_scaling` {"type": "mrope"}: 4.57 reads
    only that form, 5.x converts it to `rope_parameters` (rope_type "default", mrope_section kept). The nested
    text_config with rope_parameters that 5.x's save_pretrained writes leaves 4.57 with rope_scaling None, and
    4.57's attention then fails on rope_scaling["mrope_section"]. Both versions read "dtype" (the newer name).
    Qwen3-VL's repos are nested (_qwen3_vl_config).
    """
    if family in QWEN3:
        return _qwen3_vl_config(p, ids, vocab_size, family)
    if family == "qwen3_5":
        return _qwen3_5_config(p, ids, vocab_size)
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    half = head_dim // 2
    hw = (half - half // 4) // 2
    mrope = [half - 2 * hw, hw, hw]              # Qwen's [16, 24, 24] of 64 scaled down: [2, 3, 3] of 8
    from ..families import family as family_class
    return {
        "architectures": [family_class(family).transformers_class],
        "model_type": family,
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": p["intermediate_size"],
        "max_position_embeddings": 128000,
        "max_window_layers": p["num_hidden_layers"],
        "num_attention_heads": p["num_attention_heads"],
        "num_hidden_layers": p["num_hidden_layers"],
        "num_key_value_heads": p["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
        "vision_config": _vision_config(family, p),
    }


def _weight_shapes(config: dict) -> dict:
    """Parameter names and shapes, from the model class built on the meta device (no memory, no init)."""
    from ..families import family
    model = family(config["model_type"]).meta_model(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _hub_shapes(config: dict, shapes: dict) -> dict:
    """The shapes as the hub checkpoints store them: Qwen3-VL-MoE's fused experts are [experts, d, 2 x moe width]
    (gate_up_proj) and [experts, moe width, d] (down_proj), 4.57's layout; 5.x's modules hold them transposed and
    transpose on load (its conversion mapping). The two are told apart by shape, so the tiny widths are not square."""
    if config["model_type"] != "qwen3_vl_moe":
        return shapes
    tc = config["text_config"]
    e, d, w = tc["num_experts"], tc["hidden_size"], tc["moe_intermediate_size"]
    assert w != d and 2 * w != d, "square expert matrices: 5.x could not tell the hub layout from its own"
    hub = {"mlp.experts.gate_up_proj": (e, d, 2 * w), "mlp.experts.down_proj": (e, w, d)}
    return {k: next((v for s, v in hub.items() if k.endswith(s)), shape) for k, shape in shapes.items()}


def _hub_name(name: str, family: str = "qwen2_5_vl") -> str:
    """transformers' module path -> the name in the hub checkpoints (model.visual.* -> visual.*, etc.; Qwen3-VL's
    repos use transformers' names)."""
    if family in (*QWEN3, "qwen3_5"):
        return name
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def _random_weights(shapes: dict, seed: int) -> dict:
    """N(0, 0.02) matrices, ones for norm scales (the only 1-D weights), zeros for biases.

    Drawn from one generator in sorted-name order, so the tensors depend only on names, shapes and seed.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith(".bias"):
            out[name] = torch.zeros(shape)
        elif len(shape) == 1:
            out[name] = torch.ones(shape)
        else:
            out[name] = torch.randn(shape, generator=g) * 0.02
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(path, *, family="qwen2_5_vl", num_hidden_layers=None, hidden_size=64, intermediate_size=128,
                     num_attention_heads=4, num_key_value_heads=2, vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64,
                     vision_num_heads=2, deepstack_visual_indexes=(0, 1, 2), num_experts=4, num_experts_per_tok=2,
                     moe_intermediate_size=48, vocab_extra=0, seed=0, overwrite=False) -> Path:
    """Write a random checkpoint of `family` (a model_type of prunevid.families.FAMILIES) into `path`: weights,
    config, tokenizer, processor files. The expert settings are Qwen3-VL-MoE's (4 experts, 2 per token, 48 wide).

    28 decoder layers by default, like Qwen2-VL-7B and Qwen2.5-VL-7B, so layer indices of real pruning settings stay
    valid; Qwen3.5 has 8 (full attention in layers 3 and 7, the presets' M = 10 maps to 7).
    The config's vocab_size is the tokenizer length rounded up to 64, plus `vocab_extra` (real checkpoints also
    have more embedding rows than tokens). deepstack_visual_indexes: the vision blocks whose features Qwen3-VL
    injects after the first LLM layers (the released towers: 8, 16, 24 of 27). Returns the folder.
    """
    from safetensors.torch import save_file

    from ..families import family as family_class
    cls = family_class(family, f"family {family!r}")
    if num_hidden_layers is None:
        num_hidden_layers = 8 if family == "qwen3_5" else 28
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{path} is a file, not a folder: give a folder for the tiny model")
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).is_file():        # never delete a folder this function did not write
            raise ModelError(f"{path} is not empty and is not a tiny model built by prunevid (an older one has no "
                             f"{MARKER} file: delete it yourself): give an empty or new folder")
        if not overwrite:
            raise ModelError(f"{path} already holds a tiny model: pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    p = dict(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size, intermediate_size=intermediate_size,
             num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
             vision_depth=vision_depth, vision_hidden_size=vision_hidden_size,
             vision_intermediate_size=vision_intermediate_size, vision_num_heads=vision_num_heads,
             deepstack_visual_indexes=list(deepstack_visual_indexes), num_experts=num_experts,
             num_experts_per_tok=num_experts_per_tok, moe_intermediate_size=moe_intermediate_size)

    qwen3 = family in (*QWEN3, "qwen3_5")     # Qwen3's added tokens, template and processor files
    added = tuple(QWEN3_ADDED_TOKENS) if qwen3 else ()
    tok = train_tokenizer(added)
    ids = {t: tok.token_to_id(t) for t in [*SPECIAL_TOKENS, *added]}
    vocab_size = _round_up(tok.get_vocab_size(with_added_tokens=True), 64) + vocab_extra
    config = _config(family, p, ids, vocab_size)

    shapes = _hub_shapes(config, _weight_shapes(config))
    weights = _random_weights({_hub_name(k, family): v for k, v in shapes.items()}, seed)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(path / "config.json", config)
    _write_json(path / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False})
    tok.save(str(path / "tokenizer.json"))
    template = chat_template("qwen3_vl" if qwen3 else family)
    _write_json(path / "tokenizer_config.json", tokenizer_config(ids, added, template))
    _write_json(path / "chat_template.json", {"chat_template": template})
    # "...Fast": 4.57 loads the fast class anyway and warns when the file names the slow one; 5.x maps both
    # names to its one Qwen2VLImageProcessor. No video_preprocessor_config.json: like the hub repos, both versions
    # build the video processor from this file.
    if qwen3:                                    # as the Qwen3-VL repos: mean/std 0.5, 16-px patches, a video file
        processor = {"processor_class": "Qwen3VLProcessor", "do_convert_rgb": True, "do_normalize": True,
                     "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255, "image_mean": [0.5] * 3,
                     "image_std": [0.5] * 3, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
        _write_json(path / "preprocessor_config.json", {
            **processor, "image_processor_type": "Qwen2VLImageProcessorFast",
            "size": {"longest_edge": 16777216, "shortest_edge": 65536}})
        _write_json(path / "video_preprocessor_config.json", {
            **processor, "video_processor_type": "Qwen3VLVideoProcessor",
            "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "fps": 2, "min_frames": 4,
            "max_frames": 768, "do_sample_frames": True})
    else:
        _write_json(path / "preprocessor_config.json", {
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "processor_class": "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor",
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "rescale_factor": 1 / 255, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2})
    (path / MARKER).write_text(f"a random {cls.display_name} written by prunevid.testing.build_tiny_model\n")
    for f in path.iterdir():
        f.chmod(0o644)                                   # safetensors writes 0600; keep the folder shareable
    path.chmod(0o755)
    return path


def build_once(target: Path, build) -> Path:
    """`build(folder)` into a temporary sibling of `target`, renamed into place when complete; reused after that.

    An interrupted build never leaves a half model that later runs would trust (`.complete` marks a whole one),
    and two processes building at once both end with a complete folder.
    """
    target = Path(target)
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists() and not (target / ".complete").is_file():    # a leftover without the marker
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:                          # another process won the race; its copy is complete
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_model_path(**params) -> Path:
    """The default tiny model (or one built with other build_tiny_model `params`), built once into a cache folder
    and reused.

    The folder is $PRUNEVID_CACHE (or ~/.cache/prunevid) / tiny-<model_type>-<hash>. The hash covers the source of
    this package (the default parameters, the builder and the tokenizer's corpus), so changing any of them gives a
    fresh model, and the params; it does not cover the transformers version, since the files are the same whichever
    version builds them.
    """
    root = Path(os.environ.get("PRUNEVID_CACHE") or Path.home() / ".cache" / "prunevid")
    sources = b"".join(f.read_bytes() for f in sorted(Path(__file__).parent.glob("*.py")))
    source = sources + (json.dumps(params, sort_keys=True).encode() if params else b"")
    digest = hashlib.sha256(source).hexdigest()[:12]
    return build_once(root / f"tiny-{params.get('family', 'qwen2_5_vl')}-{digest}",
                      lambda folder: build_tiny_model(folder, overwrite=True, **params))
