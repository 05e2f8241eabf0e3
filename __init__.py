"""ComfyUI entry point of the PruneVid for Qwen2.5-VL node pack (the library itself is in prunevid/)."""
# ComfyUI imports this folder as a package. pytest, collecting tests/ below a folder that holds this file, imports
# it as well, and under a folder name that is not a Python identifier (a clone in "prunevid-qwen25vl/") it does so
# outside any package, where the relative import cannot work: there is nothing to register then.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
