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

from .errors import ComfyError, ConnectionLost, Interrupted, RunTimeout, ServerUnreachable
from .websocket import WebSocket, WebSocketClosed, reason as _reason
from .workflow import node_label

BINARY_TEXT = 3                       # ComfyUI's BinaryEventTypes.TEXT
HTTP_TIMEOUT = 30.0
SILENCE_POLL = 10.0                   # seconds without a websocket event before /history is checked


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
            lines.append(f"  {node_label(prompt, nid, (ne or {}).get('class_type'))}: {msg}"
                         + (f": {details}" if details and details != msg else ""))
    return "\n".join(lines)


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
            print(f"[{node_label(self.prompt, node)}] ", end="", file=self.stream)
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
                display.status(f"executing {node_label(prompt, data['node'])}")
            elif kind == "progress":
                display.status(f"  {node_label(prompt, data.get('node'))}: {data.get('value')}/{data.get('max')}",
                               transient=True)
            elif kind == "execution_error":
                raise ComfyError(_failure(prompt, data))
            elif kind == "execution_interrupted":
                raise ComfyError(f"prompt {prompt_id} was interrupted on the server at "
                                 f"{node_label(prompt, data.get('node_id'), data.get('node_type'))}")
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
    return (f"ComfyUI failed at {node_label(prompt, data.get('node_id'), data.get('node_type'))}: "
            f"{kind}: {data.get('exception_message', '')}".rstrip())


def _history_error(prompt: dict, status: dict) -> str:
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return _failure(prompt, data)
        if kind == "execution_interrupted":
            return (f"the prompt was interrupted on the server at "
                    f"{node_label(prompt, data.get('node_id'), data.get('node_type'))}")
    return f"ComfyUI reports the prompt failed: {status}"
