"""The few ComfyUI services the nodes use, imported lazily with harmless fallbacks.

The pack must import (and its nodes run) without ComfyUI: CI has none. Inside ComfyUI these call the real
`comfy.utils.ProgressBar` (which is also where an interrupt is raised), `comfy.model_management`,
`folder_paths` and `server.PromptServer`.
"""
from __future__ import annotations

import os

LLM_FOLDER = "LLM"   # models/LLM, the folder other LLM/VLM node packs use too
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg", ".gif")


def folder_paths():
    """ComfyUI's folder_paths module, or None outside ComfyUI."""
    try:
        import folder_paths as fp
    except ImportError:
        return None
    return fp


def llm_roots() -> list:
    """Every folder registered as `LLM` (models/LLM plus extra_model_paths.yaml entries), registering the default."""
    fp = folder_paths()
    if fp is None:
        return []
    default = os.path.join(fp.models_dir, LLM_FOLDER)
    try:
        roots = list(fp.get_folder_paths(LLM_FOLDER))
    except KeyError:
        roots = []
    if default not in roots:
        fp.add_model_folder_path(LLM_FOLDER, default)
        roots.append(default)
    return roots


def input_directory() -> str | None:
    fp = folder_paths()
    return fp.get_input_directory() if fp is not None else None


def input_videos() -> list:
    """Video files in ComfyUI's input folder (sub-folders included, as relative paths), sorted."""
    root = input_directory()
    if not root or not os.path.isdir(root):
        return []
    out = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.lower().endswith(VIDEO_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def annotated_path(name: str) -> str:
    """A file name from the input combo ("clip.mp4", "clip.mp4 [output]") as an absolute path."""
    fp = folder_paths()
    if fp is None:
        return name
    return fp.get_annotated_filepath(name)


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel (no-op outside ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def progress(total: int):
    """A `progress(done, total)` callback for the library: ComfyUI's progress bar plus the interrupt check."""
    try:
        import comfy.utils
        bar = comfy.utils.ProgressBar(total)
    except ImportError:
        bar = None

    def report(done: int, of: int) -> None:
        check_interrupt()
        if bar is not None:
            bar.update_absolute(done, of)

    return report


def _send_text():
    """PromptServer.instance.send_progress_text (text shown on a node while the prompt runs), or None."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    instance = getattr(PromptServer, "instance", None)
    return getattr(instance, "send_progress_text", None)


def show_text(node_id, text: str) -> None:
    """Show `text` on the node now (no-op outside ComfyUI or without a node id)."""
    send = _send_text() if node_id is not None else None
    if send is not None:
        send(text, node_id)


def text_streamer(node_id):
    """A callback that shows the answer so far on the node while it is generated (None outside ComfyUI)."""
    send = _send_text() if node_id is not None else None
    if send is None:
        return None
    shown = []

    def on_text(delta: str) -> None:
        shown.append(delta)
        send("".join(shown), node_id)

    return on_text


def free_memory(nbytes: int | None, devices: list) -> bool:
    """Before a load: ask ComfyUI to unload its own models until `nbytes` are free on each device (all it can when
    the size is unknown), then to empty its caches. Returns whether ComfyUI was asked (False outside ComfyUI)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    for device in devices:
        mm.free_memory(1e30 if nbytes is None else nbytes, device)   # 1e30: ComfyUI's own "free all"
    mm.soft_empty_cache()
    return True


def hook_unload_all(callback) -> bool:
    """Make ComfyUI's `POST /free {"unload_models": true}` (and its other unload-all paths) also run `callback`.

    ComfyUI's memory management does not know raw transformers models; its `unload_all_models` is wrapped once so
    that freeing memory from the UI or the API frees ours too. Returns whether a hook is in place.
    """
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    current = getattr(mm, "unload_all_models", None)
    if current is None:
        return False
    if getattr(current, "_prunevid_hooked", False):
        return True

    def unload_all_models(*args, **kwargs):
        try:
            return current(*args, **kwargs)
        finally:
            callback()

    unload_all_models._prunevid_hooked = True
    mm.unload_all_models = unload_all_models
    return True
