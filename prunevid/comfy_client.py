"""Drive a running ComfyUI server: upload a video, queue a shipped API-format workflow, stream it, read the answer.

    prunevid submit workflows/api/paper.json --server 127.0.0.1:8188 --video clip.mp4 --question "What happens?"

Standard library only (urllib for HTTP, a small RFC 6455 client for the websocket), so it runs in any Python
without ComfyUI, torch or extra packages. The server API it uses:

    POST /upload/image        multipart (image=<file>, type=input) -> {"name", "subfolder", "type"}
    POST /prompt              {"prompt", "client_id", "prompt_id"} -> 200 {"prompt_id", "node_errors"} | 400
    GET  /ws?clientId=ID      JSON events (execution_start, executing, progress, executed, execution_cached,
                              execution_success, execution_error, execution_interrupted) and binary frames
                              (4-byte big-endian type; type 3 = streamed text: 4-byte node-id length, node id, text)
    GET  /history/ID          the outputs of every output node
    GET  /queue, POST /queue {"delete": [...]}, POST /interrupt {"prompt_id"}   (cancelling on Ctrl-C)
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import os
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from . import samples            # stdlib only, like this module
from .errors import VideoError
from .stats import format_stats   # stdlib only, like this module
from .websocket import WebSocket, WebSocketClosed, reason as _reason

GENERATE = "PruneVidGenerate"
MODEL_LOADER = "PruneVidModelLoader"
LOAD_VIDEO = "PruneVidLoadVideo"
STAGE2 = "PruneVidStage2Select"
PREVIEW_ANY = "PreviewAny"
BINARY_TEXT = 3                       # ComfyUI's BinaryEventTypes.TEXT
# the shipped API workflows: workflows/api in a checkout (and an editable install), prunevid/workflows in a wheel
API_DIR = next((d for d in (Path(__file__).resolve().parent / "workflows",
                            Path(__file__).resolve().parent.parent / "workflows" / "api") if d.is_dir()),
               Path(__file__).resolve().parent / "workflows")
HTTP_TIMEOUT = 30.0
SILENCE_POLL = 10.0                   # seconds without a websocket event before /history is checked


class ComfyError(Exception):
    """A failure with a message the user can act on (no stack trace is shown for it)."""


class ServerUnreachable(ComfyError):
    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class ConnectionLost(ComfyError):
    pass


class RunTimeout(ComfyError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what happened to the prompt on the server."""


# --------------------------------------------------------------------------------------------------- addresses

class Server:
    """Where ComfyUI listens: "HOST:PORT", "http://HOST:PORT[/prefix]" or "https://..."."""

    def __init__(self, address: str):
        address = address.strip()
        if "://" not in address:
            address = "http://" + address
        u = urllib.parse.urlsplit(address)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ComfyError(f"--server {address!r}: give HOST:PORT, e.g. 127.0.0.1:8188")
        self.scheme = u.scheme
        self.host = u.hostname
        try:
            self.port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise ComfyError(f"--server {address!r}: the port is not a number") from None
        self.prefix = u.path.rstrip("/")
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.display = f"{netloc}:{self.port}"
        self.base = f"{u.scheme}://{netloc}:{self.port}{self.prefix}"

    def __str__(self):
        return self.display


# --------------------------------------------------------------------------------------------------- HTTP client

class ComfyClient:
    def __init__(self, server: str | Server, timeout: float = HTTP_TIMEOUT):
        self.server = server if isinstance(server, Server) else Server(server)
        self.timeout = timeout
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never via a proxy

    def _unreachable(self, err) -> ServerUnreachable:
        reason = _reason(err)
        hint = " — is the server running?" if reason in ("connection refused", "connection reset") else ""
        return ServerUnreachable(f"cannot reach ComfyUI at {self.server}: {reason}{hint}", reason)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None, accept=(200,)):
        """(status, parsed JSON or None). HTTP errors outside `accept` raise ComfyError naming the endpoint."""
        req = urllib.request.Request(self.server.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=timeout or self.timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e) from None
        except http.client.HTTPException as e:
            raise ComfyError(f"{self.server} does not answer like an HTTP server ({type(e).__name__}): "
                             "is this a ComfyUI server?") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status not in accept:
            what = raw[:200].decode("utf-8", "replace").strip()
            raise ComfyError(f"ComfyUI at {self.server} answered {method} {path.split('?')[0]} with HTTP {status}"
                             + (f": {what}" if what else "") + ("" if data is not None else
                                                               " (is this a ComfyUI server?)"))
        return status, data

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)[1]

    def post_json(self, path: str, payload, accept=(200,), **kw):
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"},
                            accept=accept, **kw)

    def upload(self, path: str | os.PathLike) -> str:
        """Upload a file into ComfyUI's input folder; the name to put in a loader's file widget."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ComfyError(f"cannot read the video {str(path)!r}: {e.strerror or e}") from None
        boundary = "----prunevid" + uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        filename = path.name.replace('"', "_")
        body = b"".join([
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode(), data, b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
            f"--{boundary}--\r\n".encode()])
        out = self.request("POST", "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                           timeout=max(self.timeout, 300))[1]
        if not isinstance(out, dict) or not out.get("name"):
            raise ComfyError(f"ComfyUI at {self.server} did not say where it stored the upload: {out!r}")
        return f"{out['subfolder']}/{out['name']}" if out.get("subfolder") else out["name"]

    def queue_prompt(self, prompt: dict, client_id: str, prompt_id: str | None = None) -> str:
        payload = {"prompt": prompt, "client_id": client_id}
        if prompt_id:
            payload["prompt_id"] = prompt_id
        status, out = self.post_json("/prompt", payload, accept=(200, 400))
        out = out if isinstance(out, dict) else {}
        if status == 200 and out.get("prompt_id") and out.get("node_errors"):
            # ComfyUI dropped the invalid branches and queued the rest: cancel it, the answer cannot come
            try:
                self.cancel(out["prompt_id"])
            except ComfyError:
                pass
            raise ComfyError(format_rejection(out, prompt, partial=True))
        if status != 200 or out.get("node_errors") or out.get("error"):
            raise ComfyError(format_rejection(out, prompt))
        if not out.get("prompt_id"):
            raise ComfyError(f"ComfyUI at {self.server} queued nothing: {out!r}")
        return out["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        h = self.get(f"/history/{urllib.parse.quote(prompt_id)}")
        return h.get(prompt_id) if isinstance(h, dict) else None

    def queued(self, prompt_id: str) -> str | None:
        """"running", "pending" or None: where the prompt is in the server's queue."""
        q = self.get("/queue") or {}
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            if any(len(item) > 1 and item[1] == prompt_id for item in q.get(key, [])):
                return state
        return None

    def cancel(self, prompt_id: str) -> str | None:
        """Drop the prompt from the queue, or interrupt it if it is the one running (never someone else's).

        Returns what it found: "pending" (removed), "running" (interrupted) or None (neither queued nor running).
        """
        state = self.queued(prompt_id)
        if state == "pending":
            self.post_json("/queue", {"delete": [prompt_id]})
        elif state == "running":
            self.post_json("/interrupt", {"prompt_id": prompt_id})
        return state

    def websocket(self, client_id: str) -> WebSocket:
        try:
            return WebSocket(self.server, f"/ws?clientId={urllib.parse.quote(client_id)}", timeout=self.timeout)
        except WebSocketClosed as e:
            raise ComfyError(f"ComfyUI at {self.server}: {e}") from None
        except OSError as e:
            raise self._unreachable(e) from None


# --------------------------------------------------------------------------------------------------- workflows

def _node_label(prompt: dict, node_id, class_type: str | None = None) -> str:
    node = prompt.get(str(node_id), {}) if isinstance(prompt, dict) else {}
    ct = class_type or node.get("class_type") or "?"
    title = (node.get("_meta") or {}).get("title")
    return f"node {node_id} ({ct}{f' {title!r}' if title and title != ct else ''})"


def format_rejection(out: dict, prompt: dict, partial: bool = False) -> str:
    """The text of a /prompt refusal: the top-level error and every node error."""
    err = out.get("error") or {}
    if isinstance(err, str):
        err = {"message": err}
    what = "part of the workflow (the valid rest was cancelled)" if partial else "the workflow"
    lines = [f"ComfyUI rejected {what}" + (f": {err.get('message')}" if err.get("message") else "")
             + (f" ({err['details']})" if err.get("details") and err.get("details") != err.get("message") else "")]
    for nid, ne in (out.get("node_errors") or {}).items():
        for e in (ne or {}).get("errors", []) or [{}]:
            msg = e.get("message", "invalid")
            details = e.get("details")
            lines.append(f"  {_node_label(prompt, nid, (ne or {}).get('class_type'))}: {msg}"
                         + (f": {details}" if details and details != msg else ""))
    return "\n".join(lines)


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
            raise ComfyError(f"--set {assignment!r}: {_node_label(prompt, nid)} has no input {name!r}; its "
                             f"widgets are: {', '.join(widgets) or '(none)'}")
        if _is_link(inputs[name]):
            raise ComfyError(f"--set {assignment!r}: {_node_label(prompt, nid)} input {name!r} is connected to "
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
                         f"({', '.join(_node_label(prompt, n) for n in loaders) or f'no {LOAD_VIDEO} node'}); give "
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
        raise ComfyError(f"--video: {_node_label(prompt, nid)} takes its frames from "
                         f"{_node_label(prompt, source[0])}, which has no file widget to point at the upload")
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


# --------------------------------------------------------------------------------------------------- running

class Display:
    """Progress on stderr; streamed text live (on stdout when it is a terminal, else on stderr)."""

    def __init__(self, prompt: dict, quiet: bool = False, out=None, err=None):
        self.prompt, self.quiet = prompt, quiet
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.tty = self.err.isatty()
        self.stream = self.out if self.out.isatty() else self.err
        self.shown: dict = {}          # node id -> text printed so far
        self.streaming = None          # node whose text is being printed
        self.status_len = 0

    def _clear(self):
        if self.tty and self.status_len:
            print("\r\033[K", end="", file=self.err, flush=True)
            self.status_len = 0

    def _end_stream(self):
        if self.streaming is not None:
            print(file=self.stream, flush=True)
            self.streaming = None

    def status(self, msg: str, transient: bool = False):
        if self.quiet or (transient and self.streaming is not None):
            return
        if transient and not self.tty:
            return
        self._end_stream()
        if self.tty:
            print(f"\r\033[K{msg}", end="" if transient else "\n", file=self.err, flush=True)
            self.status_len = len(msg) if transient else 0
        else:
            print(msg, file=self.err, flush=True)

    def text(self, node: str, text: str):
        """ComfyUI sends the whole text so far; print what is new."""
        if self.quiet:
            return
        old = self.shown.get(node, "")
        if self.streaming != node:
            self._end_stream()
            self._clear()
            print(f"[{_node_label(self.prompt, node)}] ", end="", file=self.stream)
            self.streaming = node
            old = ""
        if text.startswith(old):
            print(text[len(old):], end="", file=self.stream, flush=True)
        else:
            print("\n" + text, end="", file=self.stream, flush=True)
        self.shown[node] = text

    def finish(self):
        self._end_stream()
        self._clear()


def run(server: str, prompt: dict, *, timeout: float = 3600.0, display: Display | None = None,
        client: ComfyClient | None = None) -> dict:
    """Queue an API-format prompt and follow it to the end.

    Returns {"prompt_id", "outputs", "status", "events": {type: count}, "streamed": {node: text},
    "cached_nodes" (reused from ComfyUI's cache, not re-run), "elapsed_s"}; raises ComfyError with a message
    naming the node on any failure.
    """
    client = client or ComfyClient(server)
    display = display or Display(prompt, quiet=True)
    client_id = uuid.uuid4().hex
    t0 = time.monotonic()
    events: dict = {}
    streamed: dict = {}
    cached: list = []
    ws = client.websocket(client_id)                     # before queueing, or early events are lost
    prompt_id = str(uuid.uuid4())                        # ours from the start: Ctrl-C during the POST can cancel it
    queued = False
    try:
        prompt_id = client.queue_prompt(prompt, client_id, prompt_id=prompt_id)   # old servers pick their own
        queued = True
        display.status(f"queued prompt {prompt_id} on ComfyUI at {client.server}")
        reconnects = 0
        heard = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise RunTimeout(f"timed out after {timeout:g} s waiting for prompt {prompt_id} on ComfyUI at "
                                 f"{client.server}; it was cancelled")
            try:
                msg = ws.recv(min(left, 1.0))
            except WebSocketClosed as e:
                ws.close()
                ws, done = _after_disconnect(client, prompt_id, client_id, str(e), reconnects)
                reconnects += 1
                if done:
                    break
                continue
            if msg is None:
                if time.monotonic() - heard > SILENCE_POLL:     # a lost final event must not hang us
                    heard = time.monotonic()
                    if _finished(client, prompt_id):
                        break
                continue
            heard = time.monotonic()
            reconnects = 0                                 # only drops in a row count as "keeps dropping"
            is_text, payload = msg
            if not is_text:
                if len(payload) >= 8 and struct.unpack(">I", payload[:4])[0] == BINARY_TEXT:
                    n = struct.unpack(">I", payload[4:8])[0]
                    node = payload[8:8 + n].decode("utf-8", "replace")
                    text = payload[8 + n:].decode("utf-8", "replace")
                    streamed[node] = text
                    events["text"] = events.get("text", 0) + 1
                    display.text(node, text)
                continue
            try:
                m = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(m, dict):
                continue                                   # not an event of ComfyUI's: {"type", "data"}
            kind, data = m.get("type"), m.get("data")
            data = data if isinstance(data, dict) else {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue                                   # another prompt of this client
            events[kind] = events.get(kind, 0) + 1
            if kind == "execution_start":
                display.status("running")
            elif kind == "execution_cached" and data.get("nodes"):
                cached = [str(n) for n in data["nodes"]]
                display.status(f"cached (not re-run): nodes {', '.join(map(str, data['nodes']))}")
            elif kind == "executing" and data.get("node") is not None:
                display.status(f"executing {_node_label(prompt, data['node'])}")
            elif kind == "progress":
                display.status(f"  {_node_label(prompt, data.get('node'))}: {data.get('value')}/{data.get('max')}",
                               transient=True)
            elif kind == "execution_error":
                raise ComfyError(_failure(prompt, data))
            elif kind == "execution_interrupted":
                raise ComfyError(f"prompt {prompt_id} was interrupted on the server at "
                                 f"{_node_label(prompt, data.get('node_id'), data.get('node_type'))}")
            elif kind == "execution_success":
                break
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break                                      # servers older than execution_success
        display.finish()
        entry = _wait_history(client, prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            raise ComfyError(_history_error(prompt, status))
        return {"prompt_id": prompt_id, "outputs": entry.get("outputs") or {}, "status": status,
                "events": events, "streamed": streamed, "cached_nodes": cached,
                "elapsed_s": round(time.monotonic() - t0, 3)}
    except (ComfyError, KeyboardInterrupt) as e:
        display.finish()
        if isinstance(e, (KeyboardInterrupt, RunTimeout)):
            outcome = _cancel(client, prompt_id)           # also when the POST was cut short: it may have landed
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted(("interrupted: " if queued else "interrupted while queueing: ") + outcome) from None
        raise
    finally:
        if ws is not None:
            ws.close()


def _after_disconnect(client: ComfyClient, prompt_id: str, client_id: str, why: str, reconnects: int):
    """The websocket dropped: (new websocket, finished?) if the server is still there, else a clear error.

    The new websocket opens before /history is read: a prompt that finishes after the check then still sends
    its execution_success to us, and one that finished before it shows in /history. (The other order loses a
    prompt finishing in between; run() also polls /history when the websocket stays silent.)
    """
    time.sleep(0.5)
    ws = None
    try:
        ws = client.websocket(client_id)
        if _finished(client, prompt_id):
            ws.close()
            return None, True
        if reconnects >= 3:
            raise ConnectionLost(f"the websocket to ComfyUI at {client.server} keeps dropping ({why})")
        if client.queued(prompt_id) is None and client.history(prompt_id) is None:
            raise ConnectionLost(f"ComfyUI at {client.server} restarted while prompt {prompt_id} was running; "
                                 "the prompt is lost: submit it again")
        return ws, False
    except BaseException as e:
        if ws is not None:
            ws.close()
        if isinstance(e, ServerUnreachable):
            raise ConnectionLost(f"lost the connection to ComfyUI at {client.server} while prompt {prompt_id} was "
                                 f"running ({why}), and the server no longer answers ({e.reason}): did it stop or "
                                 "crash? Its console says why") from None
        raise


def _cancel(client: ComfyClient, prompt_id: str) -> str:
    """Cancel the prompt on the server; say what happened (for the Ctrl-C message)."""
    try:
        state = client.cancel(prompt_id)
    except (ComfyError, KeyboardInterrupt) as e:          # a dead server, or a second Ctrl-C
        why = "a second Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        return (f"could not cancel prompt {prompt_id} on ComfyUI at {client.server} ({why}); remove it in "
                "ComfyUI's queue if it is there")
    return {"pending": f"prompt {prompt_id} was removed from ComfyUI's queue",
            "running": f"prompt {prompt_id} was interrupted on ComfyUI",
            None: f"prompt {prompt_id} is neither queued nor running on ComfyUI (it finished, or never arrived)"}[state]


def _finished(client: ComfyClient, prompt_id: str) -> bool:
    entry = client.history(prompt_id)
    return entry is not None and (entry.get("status") or {}).get("completed") is not None


def _wait_history(client: ComfyClient, prompt_id: str, wait: float = 30.0) -> dict:
    """The history entry (it is written just after execution_success is sent, so poll briefly)."""
    t0 = time.monotonic()
    while True:
        entry = client.history(prompt_id)
        if entry is not None:
            return entry
        if time.monotonic() - t0 > wait:
            raise ComfyError(f"ComfyUI at {client.server} finished prompt {prompt_id} but /history has no entry for it")
        time.sleep(0.1)


def _failure(prompt: dict, data: dict) -> str:
    """The text of an execution_error event: the node, the exception's class name and message."""
    kind = str(data.get("exception_type") or "error").rsplit(".", 1)[-1]
    return (f"ComfyUI failed at {_node_label(prompt, data.get('node_id'), data.get('node_type'))}: "
            f"{kind}: {data.get('exception_message', '')}".rstrip())


def _history_error(prompt: dict, status: dict) -> str:
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return _failure(prompt, data)
        if kind == "execution_interrupted":
            return (f"the prompt was interrupted on the server at "
                    f"{_node_label(prompt, data.get('node_id'), data.get('node_type'))}")
    return f"ComfyUI reports the prompt failed: {status}"


# --------------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="queue a shipped workflow on a running ComfyUI server and print the answer",
        description="Upload a video to a running ComfyUI, queue an API-format PruneVid workflow "
                    "(workflows/api/*.json, or a preset name such as 'paper'), stream its progress and text, "
                    "and print the answer (stdout) and the pruning stats (stderr).")
    p.add_argument("workflow", metavar="WORKFLOW", help="API-format workflow JSON, or a shipped preset name")
    p.add_argument("--server", default="127.0.0.1:8188", help="ComfyUI address HOST:PORT (default 127.0.0.1:8188)")
    p.add_argument("--video", action="append",
                   help="video file to upload (default: the workflow's own choice); give it once per video loader "
                        "for a workflow that reads several, e.g. compare_two_clips")
    p.add_argument("--question", help="the question (default: the workflow's own)")
    p.add_argument("--model", help="the model the server loads: a folder under its models/LLM or a hub id "
                                   "(default: the workflow's own)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change a widget; NODE is a node id, class_type or title (repeatable), e.g. "
                        "--set PruneVidLoadVideo.max_frames=8")
    p.add_argument("--json", metavar="OUT", help="write the answer, stats, outputs and events as JSON ('-' = stdout)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)")
    p.add_argument("--quiet", action="store_true",
                   help="print only the answer (and errors): no progress, streamed text or stats")
    p.set_defaults(func=cmd_submit)


def cmd_submit(a) -> int:
    err = sys.stderr
    try:
        prompt = load_workflow(resolve_workflow(a.workflow))
        if a.question is not None:
            if not a.question.strip():
                raise ComfyError("--question is empty: ask something about the video")
            patch_question(prompt, a.question)
        if a.model is not None:
            if not a.model.strip():
                raise ComfyError("--model is empty: give a folder under models/LLM or a hub id")
            patch_model(prompt, a.model)
        for s in a.sets:
            apply_set(prompt, s)
        try:
            a.video = [samples.resolve(v) for v in a.video or []]   # sample:NAME, as prunevid ask takes
        except VideoError as e:
            raise ComfyError(f"--video: {e}") from None
        for v in a.video:
            if not Path(v).expanduser().is_file():
                raise ComfyError(f"--video {v!r}: no such file")
        if a.video:
            patch_videos(json.loads(json.dumps(prompt)), a.video)   # a count that does not fit fails before uploading
        client = ComfyClient(a.server)
        display = Display(prompt, quiet=a.quiet)
        if a.video:
            names = [client.upload(Path(v).expanduser()) for v in a.video]
            nodes = patch_videos(prompt, names)
            for v, name, node in zip(a.video, names, nodes):
                display.status(f"uploaded {v} as {name!r} (read by {_node_label(prompt, node)})")
        result = run(client.server, prompt, timeout=a.timeout, display=display, client=client)
    except Interrupted as e:
        print(f"prunevid submit: {e}", file=err)
        return 130
    except ComfyError as e:
        print(f"prunevid submit: error: {e}", file=err)
        return 1
    except KeyboardInterrupt:                               # before run(): at most an upload happened
        print("prunevid submit: interrupted before the prompt was queued; nothing runs on the server", file=err)
        return 130
    answers = extract_results(prompt, result["outputs"])
    first = answers[0] if answers else {"answer": None, "stats": None}
    report = {"server": str(client.server), "prompt_id": result["prompt_id"], "answer": first["answer"],
              "stats": first["stats"], "answers": answers, "events": result["events"],
              "streamed": result["streamed"], "cached_nodes": result["cached_nodes"], "outputs": result["outputs"],
              "elapsed_s": result["elapsed_s"]}
    if a.json == "-":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        if not answers:
            texts = {nid: _text(o) for nid, o in result["outputs"].items() if _text(o) is not None}
            for nid, t in texts.items():
                print(f"[{_node_label(prompt, nid)}] {t}")
            if not texts:
                print(f"prunevid submit: the workflow ran but has no {GENERATE} node and no text output", file=err)
        for r in answers:
            if len(answers) > 1:
                print(f"[{_node_label(prompt, r['node'])}]")
            if r["answer"] is None:
                print(f"(no answer in the outputs of {_node_label(prompt, r['node'])})")
            elif not (display.stream is display.out and (display.shown.get(r["node"]) or "").strip() == r["answer"].strip()):
                print(r["answer"])                          # (already on the terminal if it was streamed there)
            if r["stats"] is not None and not a.quiet:
                print(format_stats(r["stats"]) if isinstance(r["stats"], dict) else r["stats"], file=err)
        if a.json:
            try:
                with open(a.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=2, ensure_ascii=False)
            except OSError as e:
                print(f"prunevid submit: error: cannot write {a.json!r}: {e.strerror or e}", file=err)
                return 1
    return 0
