"""A tiny stand-in for the Hugging Face hub on 127.0.0.1: serves one folder as a model repo.

It answers what huggingface_hub's model_info, list_repo_tree and hf_hub_download ask (0.3x and 1.x/2.x clients):
the repo's metadata with file sizes and blob ids, the file tree, and HEAD/GET (with Range) of resolve/ URLs.
No LFS and no Xet headers, so the client downloads over plain HTTP into the cache like any small hub file.
`hold` pauses one file halfway until `release` is set (or a guard timeout passes), so a test can look at a
download in progress without sleeping.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, folder: Path, repo_id: str = "fake-org/tiny-qwen", hold: str | None = None):
        self.repo_id, self.hold = repo_id, hold
        self.files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
                      if p.is_file() and not p.name.startswith(".")}
        self.blob = {n: hashlib.sha1(b).hexdigest() for n, b in self.files.items()}
        self.release = threading.Event()
        self.served: list = []            # (method, path) of every request
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def use(self, monkeypatch, cache_dir) -> None:
        """Point huggingface_hub at this hub and cache_dir, as HF_ENDPOINT and HF_HUB_CACHE set before import would
        (0.3x also keeps its own copy of the URL template in file_download)."""
        import huggingface_hub.constants as constants
        import huggingface_hub.file_download as file_download

        template = self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    def _json(self, h, obj, body):
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _answer(self, h, body):
        path = unquote(urlsplit(h.path).path)
        self.served.append((h.command, path))
        api = f"/api/models/{self.repo_id}"
        if path == api or path.startswith(api + "/revision/"):
            return self._json(h, {
                "_id": "0" * 24, "id": self.repo_id, "modelId": self.repo_id, "sha": SHA, "private": False,
                "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "library_name":
                "transformers", "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": n, "size": len(b), "blobId": self.blob[n]} for n, b in self.files.items()],
            }, body)
        if path.startswith(api + "/tree/"):
            return self._json(h, [{"type": "file", "path": n, "size": len(b), "oid": self.blob[n]}
                                  for n, b in self.files.items()], body)
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[-1]
            if name in self.files:
                return self._file(h, name, body)
        h.send_response(404)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", "EntryNotFound")
        data = json.dumps({"error": f"not found: {path}"}).encode()
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h, name, body):
        data = self.files[name]
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = min(int(rng[6:].split("-")[0]), len(data))
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("ETag", f'"{self.blob[name]}"')
        h.send_header("X-Repo-Commit", SHA)
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if not body:
            return
        rest = data[start:]
        if name == self.hold and start == 0:
            half = len(rest) // 2
            h.wfile.write(rest[:half])
            h.wfile.flush()
            self.release.wait(60)          # a guard only: a test sets release once it saw the partial file
            rest = rest[half:]
        try:
            h.wfile.write(rest)
        except OSError:                    # the client gave up (a cancelled download)
            pass
