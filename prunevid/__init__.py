"""PruneVid for video LLMs (Qwen2.5-VL, Qwen2-VL): three-stage visual token pruning (ACL 2025 Findings) on a lean
engine; each model family is a module of prunevid.families."""
from .config import (PRESETS, PruneVidConfig, get_aggressive_config, get_attention_coverage_config,
                     get_baseline_config, get_conservative_config, get_no_cache_compression_config, get_paper_config,
                     get_preset, get_stage1_only_config, get_stage2_only_config)
from .errors import BudgetError, ConfigError, InputError, ModelError, PruneVidError, VideoError

__version__ = "0.1.0"


def __getattr__(name):
    # the model-facing API imports torch and transformers: load it only when asked for
    if name in ("PruneVid", "PruneVidQwen25VL"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(name)
