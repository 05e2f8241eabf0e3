"""A tiny random Qwen2.5-VL checkpoint on disk (config, weights, trained BPE tokenizer, processor files), for the
tests, the benchmarks' bench model, and trying the pipeline without a download (`prunevid ask ... --model tiny`).

    tiny_model.py   build_tiny_model (the checkpoint), build_once (built once, atomically), tiny_model_path (cached)
    tokenizer.py    the byte-level BPE tokenizer trained on a small English corpus, Qwen2's special tokens and template
"""
from .tiny_model import MARKER, _hub_name, build_once, build_tiny_model, tiny_model_path  # noqa: F401
from .tokenizer import SPECIAL_TOKENS  # noqa: F401
