"""API-format workflows: find a shipped one, read it, patch its widgets (video, question, model,
--set NODE.INPUT=VALUE), and read the answers and stats out of a finished run's outputs. Standard library only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ComfyError

GENERATE = "PruneVidGenerate"
MODEL_LOADER = "PruneVidModelLoader"
LOAD_VIDEO = "PruneVidLoadVideo"
STAGE2 = "PruneVidStage2Select"
PREVIEW_ANY = "PreviewAny"
_PACKAGE = Path(__file__).resolve().parent.parent   # prunevid/
# the shipped API workflows: workflows/api in a checkout (and an editable install), prunevid/workflows in a wheel
API_DIR = next((d for d in (_PACKAGE / "workflows",
                            _PACKAGE.parent / "workflows" / "api") if d.is_dir()),
               _PACKAGE / "workflows")


def node_label(prompt: dict, node_id, class_type: str | None = None) -> str:
    node = prompt.get(str(node_id), {}) if isinstance(prompt, dict) else {}
    ct = class_type or node.get("class_type") or "?"
    title = (node.get("_meta") or {}).get("title")
    return f"node {node_id} ({ct}{f' {title!r}' if title and title != ct else ''})"


def resolve_workflow(arg: str) -> Path:
    """A workflow file; a bare preset name ("paper") means the shipped workflows/api/<name>.json."""
    p = Path(arg).expanduser()
    if p.is_file():
        return p
    shipped = API_DIR / (arg if arg.endswith(".json") else f"{arg}.json")
    if "/" not in arg and os.sep not in arg and shipped.is_file():
        return shipped
    names = sorted(f.stem for f in API_DIR.glob("*.json")) if API_DIR.is_dir() else []
    raise ComfyError(f"no workflow file {arg!r}" + (f" (shipped API workflows: {', '.join(names)})" if names else ""))


def load_workflow(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ComfyError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise ComfyError(f"{str(path)!r} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        api = path.parent / "api" / path.name
        where = (f"use {api}" if api.is_file() else
                 f"the shipped ones are in {API_DIR}/" if API_DIR.is_dir() else "")
        raise ComfyError(f"{path} is a UI-format workflow (what the ComfyUI canvas saves); submit needs the API "
                         f"format: {where + '; or ' if where else ''}in ComfyUI use Workflow > Export (API)")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]                              # a saved POST /prompt body
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in data.values()):
        raise ComfyError(f"{path} is not an API-format workflow ({{\"<id>\": {{\"class_type\", \"inputs\"}}}})")
    return data


def nodes_of(prompt: dict, class_type: str) -> list:
    return sorted((nid for nid, n in prompt.items() if n.get("class_type") == class_type),
                  key=lambda s: (len(s), s))


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _coerce(text: str, current):
    """A --set value typed like the value it replaces (a question "42" stays a string)."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ComfyError(f"expected true or false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ComfyError(f"expected a whole number, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ComfyError(f"expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_set(prompt: dict, assignment: str) -> list:
    """NODE.INPUT=VALUE, NODE being a node id, a class_type or a title; returns the node ids changed."""
    key, eq, value = assignment.partition("=")
    node, dot, name = key.strip().rpartition(".")
    if not eq or not dot or not node or not name:
        raise ComfyError(f"--set {assignment!r}: write NODE.INPUT=VALUE (NODE = node id, class_type or title)")
    titled = [nid for nid, n in prompt.items() if (n.get("_meta") or {}).get("title") == node]
    ids = [node] if node in prompt else (nodes_of(prompt, node) or titled)
    if not ids:
        raise ComfyError(f"--set {assignment!r}: no node with id, class_type or title {node!r} in the workflow")
    for nid in ids:
        inputs = prompt[nid]["inputs"]
        if name not in inputs:                 # a typo would otherwise run the workflow unchanged
            widgets = sorted(k for k, v in inputs.items() if not _is_link(v))
            raise ComfyError(f"--set {assignment!r}: {node_label(prompt, nid)} has no input {name!r}; its "
                             f"widgets are: {', '.join(widgets) or '(none)'}")
        if _is_link(inputs[name]):
            raise ComfyError(f"--set {assignment!r}: {node_label(prompt, nid)} input {name!r} is connected to "
                             "another node, not a widget")
        try:
            inputs[name] = _coerce(value, inputs.get(name))
        except ComfyError as e:
            raise ComfyError(f"--set {assignment!r}: {e}") from None
    return ids


def patch_video(prompt: dict, name: str) -> str:
    """Point the workflow's video source at an uploaded file; returns the node id that reads it."""
    loaders = nodes_of(prompt, LOAD_VIDEO)
    if not loaders:
        raise ComfyError(f"--video: the workflow has no {LOAD_VIDEO} node to read it")
    for nid in loaders:
        _point_loader(prompt, nid, name)
    return loaders[0]


def patch_videos(prompt: dict, names: list) -> list:
    """One uploaded file for every video loader, or one per loader in node-id order (a workflow that compares
    clips); returns the loader node ids."""
    loaders = nodes_of(prompt, LOAD_VIDEO)
    if len(names) == 1:
        return [patch_video(prompt, names[0])]
    if len(names) != len(loaders):
        raise ComfyError(f"--video given {len(names)} times, but the workflow reads {len(loaders)} video(s) "
                         f"({', '.join(node_label(prompt, n) for n in loaders) or f'no {LOAD_VIDEO} node'}); give "
                         "--video once (for every loader) or once per loader, in node-id order")
    for nid, name in zip(loaders, names):
        _point_loader(prompt, nid, name)
    return loaders


def _point_loader(prompt: dict, nid: str, name: str) -> None:
    inputs = prompt[nid]["inputs"]
    source = next((inputs[k] for k in ("video", "images") if _is_link(inputs.get(k))), None)
    if source is None:                              # the loader reads the file itself (path wins: clear it)
        inputs["file"] = name
        inputs["path"] = ""
        return
    src = prompt.get(source[0])
    widget = next((k for k in ("file", "video") if src and isinstance(src["inputs"].get(k), str)), None)
    if widget is None:
        raise ComfyError(f"--video: {node_label(prompt, nid)} takes its frames from "
                         f"{node_label(prompt, source[0])}, which has no file widget to point at the upload")
    src["inputs"][widget] = name


def patch_every(prompt: dict, node_type: str, name: str, value, flag: str) -> None:
    """Set input `name` of every `node_type` node (--model, --question); a workflow without one is an error."""
    ids = nodes_of(prompt, node_type)
    if not ids:
        raise ComfyError(f"{flag}: the workflow has no {node_type} node")
    for nid in ids:
        prompt[nid]["inputs"][name] = value


def patch_model(prompt: dict, model: str) -> None:
    patch_every(prompt, MODEL_LOADER, "model", model, "--model")


def patch_question(prompt: dict, question: str) -> None:
    patch_every(prompt, STAGE2, "question", question, "--question")


# --------------------------------------------------------------------------------------------------- results

def _text(output: dict | None):
    t = (output or {}).get("text")
    if isinstance(t, (list, tuple)) and t:
        return "".join(str(x) for x in t)
    return t if isinstance(t, str) else None


def _preview_of(prompt: dict, outputs: dict, node_id: str, slot: int):
    for nid in nodes_of(prompt, PREVIEW_ANY):
        src = prompt[nid]["inputs"].get("source")
        if _is_link(src) and src[0] == node_id and src[1] == slot and _text(outputs.get(nid)) is not None:
            return _text(outputs.get(nid))
    return None


def extract_results(prompt: dict, outputs: dict) -> list:
    """[{node, answer, stats}] for every PruneVidGenerate node (answer from its UI output, stats from the
    PreviewAny wired to its stats output, or a `stats` UI output)."""
    results = []
    for gid in nodes_of(prompt, GENERATE):
        out = outputs.get(gid) or {}
        answer = _text(out)
        if answer is None:
            answer = _preview_of(prompt, outputs, gid, 0)
        raw = out.get("stats")
        raw = "".join(raw) if isinstance(raw, list) and all(isinstance(x, str) for x in raw) else raw
        if raw is None:
            raw = _preview_of(prompt, outputs, gid, 1)
        stats = raw
        if isinstance(raw, str):
            try:
                stats = json.loads(raw)
            except ValueError:
                pass
        results.append({"node": gid, "answer": answer, "stats": stats})
    return results
