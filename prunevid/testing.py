"""A tiny random Qwen2.5-VL checkpoint on disk, for tests and for trying the pipeline without a download.

The checkpoint is laid out like the real Qwen/Qwen2.5-VL-*-Instruct repos (flat config.json with the legacy
`rope_scaling` mrope form, weights under the legacy `visual.*` / `model.*` / `lm_head.*` names, tokenizer.json,
tokenizer_config.json, chat_template.json, preprocessor_config.json, generation_config.json), so it goes through
exactly the loading code a real checkpoint goes through, on transformers 4.57.x and 5.x alike.

Everything is written by this module, not by `save_pretrained`: the files then do not depend on which
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

from .errors import ModelError

MARKER = ".prunevid-tiny-model"   # written into every tiny model; overwrite=True deletes only folders that hold it
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
BPE_VOCAB = 1000            # trained byte-level BPE tokens; the special tokens follow them, as in Qwen's vocab
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Qwen2's pre-tokenizer split; 5.x's Qwen2Tokenizer rebuilds its pipeline with this regex whatever tokenizer.json
# says, so tokenizer.json must use it too for both versions to tokenize alike.
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Renders Qwen2.5-VL's prompt format. Newlines are emitted as expressions so the output is the same whether or
# not the renderer trims whitespace after block tags (transformers does).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

_SUBJECTS = ["the cat", "a dog", "the red ball", "two birds", "a small boy", "the old man", "a green car",
             "three horses", "the white rabbit", "a blue train", "the girl", "a fish", "the camera", "a yellow bus",
             "the brown bear", "four ducks", "a black horse", "the tall woman", "a purple kite", "the orange fox"]
_VERBS = ["runs across", "jumps over", "walks along", "moves toward", "flies above", "rolls down", "sits near",
          "looks at", "stops beside", "turns around", "swims under", "climbs up", "waits behind", "falls off",
          "drives past", "follows", "chases", "pushes", "carries", "watches"]
_PLACES = ["the field", "the river", "the road", "a tree", "the bridge", "the house", "a wooden fence",
           "the hill", "the beach", "the forest", "a large rock", "the garden", "the street", "the lake",
           "the window", "a busy market", "the snowy mountain", "the park", "the kitchen table", "the door"]
_TIMES = ["at the start of the video", "in the first second", "after five seconds", "near the end",
          "in the middle of the clip", "at frame twelve", "later", "slowly", "quickly", "again"]
_FACTS = """\
What is happening in this video? Describe the main events in order.
How many animals appear in the scene, and what colours are they?
The video shows a sunny day with a clear blue sky and green grass.
At the beginning, the camera is still; then it pans slowly to the left.
A question about a video can ask what, who, where, when, why or how.
The answer is yes. The answer is no. The answer is three. The answer is seven.
Numbers: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty, hundred.
Colours: red, orange, yellow, green, blue, purple, pink, brown, black, white, grey, gold, silver.
Animals: cat, dog, bird, horse, rabbit, bear, fox, duck, fish, cow, sheep, lion, tiger, mouse, squirrel.
Motion: running, walking, jumping, flying, swimming, rolling, falling, turning, climbing, driving, dancing.
The person in the video picks up a cup, drinks from it and puts it back on the table.
Which object moves fastest? The ball moves faster than the bird, and the car is the slowest.
Summarise the video in one sentence. Then list the objects you can see.
Is it day or night? It is night, the street lights are on and the road is wet from the rain.
The scene changes after ten seconds: we see a kitchen, then a garden, then a beach at sunset.
A large bunny wakes up, stretches, smells a flower and smiles at a butterfly.
Three small animals throw nuts and stones at the bunny, who becomes angry and makes a plan.
Time stamps: 00:01, 00:05, 00:12, 01:30, 2.5 seconds, 10 frames per second, 30 fps, 4K, 1080p.
Answer with a single word or phrase. Options: (A) left (B) right (C) up (D) down.
Weather: sunny, cloudy, raining, snowing, windy, foggy, stormy, bright, dark, warm, cold, freezing.
Places: kitchen, bedroom, office, classroom, stadium, airport, station, museum, library, hospital, farm, zoo.
Things: table, chair, bottle, phone, laptop, guitar, piano, bicycle, umbrella, basket, mirror, candle, clock.
People: child, teacher, doctor, player, driver, singer, farmer, cook, pilot, student, family, crowd, friend.
Actions: opens, closes, throws, catches, kicks, holds, drops, cuts, paints, writes, reads, sings, laughs, cries.
Shapes and sizes: round, square, long, short, wide, narrow, thin, thick, heavy, light, huge, tiny, empty, full.
Where is the ball at the end? It is under the chair, between the sofa and the lamp, behind the curtain.
Why does the woman open the umbrella? Because it starts raining while she is crossing the square.
How does the video end? The screen fades to black and the credits roll with quiet piano music.
First the chef washes the vegetables, then he chops onions, finally he fries everything in a pan.
The soccer player kicks the ball, the goalkeeper jumps, misses it, and the crowd cheers loudly.
Describe the clothes: a striped shirt, blue jeans, a woollen hat, leather boots and a yellow scarf.
The drone flies over the city at dawn, showing bridges, towers, rivers, parks and crowded streets.
A robot arm grabs a cube, rotates it ninety degrees, and places it gently inside a cardboard box.
Count the people: there are exactly six, two are sitting, three are standing and one is dancing.
"""


def _corpus() -> str:
    """A few hundred lines of plain English about videos, colours, animals, motion and numbers."""
    lines = _FACTS.splitlines()
    for i, s in enumerate(_SUBJECTS):
        for j in range(0, len(_VERBS), 2):
            v, p, t = _VERBS[(i + j) % len(_VERBS)], _PLACES[(i * 3 + j) % len(_PLACES)], _TIMES[(i + j) % len(_TIMES)]
            lines.append(f"{s.capitalize()} {v} {p} {t}.")
            lines.append(f"In the video, {s} {v} {p}; what does it do next? It {_VERBS[(i + j + 1) % 20]} {p}.")
    return "\n".join(lines) + "\n"


def _train_tokenizer():
    """Byte-level BPE trained on _corpus(), with Qwen2's normalizer / pre-tokenizer / decoder and special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus().splitlines(keepends=True), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _config(p: dict, ids: dict, vocab_size: int) -> dict:
    """The flat config.json layout of the Qwen2.5-VL hub repos, which 4.57 and 5.x both parse to the same model.

    Text settings sit at the top level and mrope is given as legacy `rope_scaling` {"type": "mrope"}: 4.57 reads
    only that form, 5.x converts it to `rope_parameters` (rope_type "default", mrope_section kept). The nested
    text_config with rope_parameters that 5.x's save_pretrained writes leaves 4.57 with rope_scaling None, and
    4.57's attention then fails on rope_scaling["mrope_section"]. Both versions read "dtype" (the newer name).
    """
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    half = head_dim // 2
    hw = (half - half // 4) // 2
    mrope = [half - 2 * hw, hw, hw]              # Qwen's [16, 24, 24] of 64 scaled down: [2, 3, 3] of 8
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
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
        "vision_config": {
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
        },
    }


def _weight_shapes(config: dict) -> dict:
    """Parameter names and shapes, from the model class built on the meta device (no memory, no init)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**json.loads(json.dumps(config))))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _hub_name(name: str) -> str:
    """transformers' module path -> the name in the hub checkpoints (model.visual.* -> visual.*, etc.)."""
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


def _tokenizer_config(ids: dict) -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True} for t in SPECIAL_TOKENS},
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(path, *, num_hidden_layers=28, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=2, vision_depth=2, vision_hidden_size=32, vision_intermediate_size=64,
                     vision_num_heads=2, vocab_extra=0, seed=0, overwrite=False) -> Path:
    """Write a random Qwen2.5-VL checkpoint (weights, config, tokenizer, processor files) into `path`.

    28 decoder layers by default, like Qwen2.5-VL-3B/7B, so layer indices of real pruning settings stay valid.
    The config's vocab_size is the tokenizer length rounded up to 64, plus `vocab_extra` (real checkpoints also
    have more embedding rows than tokens). Returns the folder.
    """
    from safetensors.torch import save_file

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
             vision_intermediate_size=vision_intermediate_size, vision_num_heads=vision_num_heads)

    tok = _train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab_size = _round_up(tok.get_vocab_size(with_added_tokens=True), 64) + vocab_extra
    config = _config(p, ids, vocab_size)

    weights = _random_weights({_hub_name(k): v for k, v in _weight_shapes(config).items()}, seed)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(path / "config.json", config)
    _write_json(path / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False})
    tok.save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", _tokenizer_config(ids))
    _write_json(path / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    # "...Fast": 4.57 loads the fast class anyway and warns when the file names the slow one; 5.x maps both
    # names to its one Qwen2VLImageProcessor. No video_preprocessor_config.json: like the hub repos, both versions
    # build the video processor from this file.
    _write_json(path / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "rescale_factor": 1 / 255, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2})
    (path / MARKER).write_text("a random Qwen2.5-VL written by prunevid.testing.build_tiny_model\n")
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

    The folder is $PRUNEVID_CACHE (or ~/.cache/prunevid) / tiny-qwen2.5-vl-<hash>. The hash covers this module's
    source, which holds the default parameters and the builder, so changing either gives a fresh model, and the
    params; it does not cover the transformers version, since the files are the same whichever version builds them.
    """
    root = Path(os.environ.get("PRUNEVID_CACHE") or Path.home() / ".cache" / "prunevid")
    source = Path(__file__).read_bytes() + (json.dumps(params, sort_keys=True).encode() if params else b"")
    digest = hashlib.sha256(source).hexdigest()[:12]
    return build_once(root / f"tiny-qwen2.5-vl-{digest}",
                      lambda folder: build_tiny_model(folder, overwrite=True, **params))
