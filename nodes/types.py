"""Custom socket types. Prefixed so they can never collide with a core or another pack's type."""

MODEL = "PRUNEVID_MODEL"      # prunevid.VideoLLM
VIDEO = "PRUNEVID_VIDEO"      # prunevid.video.Clip
TOKENS = "PRUNEVID_TOKENS"    # prunevid.engine.Encoded (vision tower + Stage 1, question independent)
PREFILL = "PRUNEVID_PREFILL"  # prunevid.engine.Prefill (prompt through the LLM, Stage 2 [+ Stage 3])

CATEGORY = "PruneVid"
