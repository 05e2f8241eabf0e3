"""The tiny model's tokenizer: a byte-level BPE trained on a few hundred lines of English, with Qwen2's
pre-tokenizer, special tokens and chat template, so prompts are laid out and tokenized as for a real checkpoint.
"""
from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen3's tokenizer adds these as plain (not special) added tokens after Qwen2's special ones: the Thinking models
# write <think> ... </think>, and the chat template's tool calls use the others
QWEN3_ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
BPE_VOCAB = 1000            # trained byte-level BPE tokens; the special tokens follow them, as in Qwen's vocab
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


def train_tokenizer(added: tuple = ()):
    """Byte-level BPE trained on _corpus(), with Qwen2's normalizer / pre-tokenizer / decoder and special tokens,
    then `added` as plain added tokens (Qwen3's QWEN3_ADDED_TOKENS)."""
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
    if added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def chat_template(family: str) -> str:
    """Qwen2-VL's and Qwen2.5-VL's template; Qwen3-VL's (and Qwen3-VL-MoE's) adds no default system message."""
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        return CHAT_TEMPLATE.replace("{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}", "")
    return CHAT_TEMPLATE


def tokenizer_config(ids: dict, added: tuple = (), template: str = CHAT_TEMPLATE) -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": t in SPECIAL_TOKENS}
                                 for t in [*SPECIAL_TOKENS, *added]},
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
    }
