"""ComfyUI entry point of the PruneVid for Qwen2.5-VL node pack (the library itself is in prunevid/)."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
