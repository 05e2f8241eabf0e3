"""ComfyUI entry point of the PruneVid for Qwen2.5-VL node pack (the library itself is in prunevid/)."""
# ComfyUI imports this folder as a package. pytest, collecting tests/ below a folder that holds this file, imports
# it as well, and under a folder name that is not a Python identifier (a clone in "prunevid-qwen25vl/") it does so
# outside any package, where the relative import cannot work: there is nothing to register then.
if __package__:
    try:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    except ImportError as e:
        # opencv-python (requirements.txt) links the system's OpenGL; a server without it fails here with a bare
        # "libGL.so.1: cannot open shared object file" in ComfyUI's import log
        if "libGL" not in str(e) and "libgthread" not in str(e):
            raise
        raise ImportError(f"PruneVid: OpenCV cannot load ({e}); install the system's OpenGL library (Debian/Ubuntu: "
                          "apt install libgl1 libglib2.0-0) or replace opencv-python with opencv-python-headless"
                          ) from e

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
