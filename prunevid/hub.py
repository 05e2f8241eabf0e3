"""The Hugging Face hub: downloading a checkpoint with byte progress, and a short probe for whether the hub is
reachable at all (so an offline machine fails at once, or loads from the cache, instead of retrying for half a
minute). loader.load calls it for every hub id; nothing here imports torch or transformers.
"""
from __future__ import annotations

import time
from pathlib import Path

from .errors import ModelError, library_name


@library_name
class HubUnreachable(ModelError):
    """A hub id that is not in the Hugging Face cache while the hub cannot be reached.

    The message says what a library user can do; a front end (the ComfyUI loader) can say its own thing from
    `repo_id` and `endpoint`.
    """

    def __init__(self, repo_id: str, endpoint: str):
        super().__init__(f"cannot download {repo_id!r}: {endpoint} is not reachable (or HF_HUB_OFFLINE is set) and "
                         "the model is not in the Hugging Face cache. Download it where the hub is reachable (hf "
                         f"download {repo_id}) or pass a local folder as model_path")
        self.repo_id, self.endpoint = repo_id, endpoint


def hub_offline(repo_id: str) -> bool:
    """True when the hub cannot be reached (or HF_HUB_OFFLINE is set) and `repo_id` is in the local HF cache.

    Without the hub, transformers retries every request for about half a minute before it falls back to the
    cache, or fails. A short connection probe avoids that: a cached model loads at once from the cache, an
    uncached one fails at once (HubUnreachable) with a message that says what to do.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError as e:                  # HFValidationError: not a well-formed repo id
        raise ModelError(f"{repo_id!r} is neither a local folder nor a valid hub id: {e}") from None
    reachable = not constants.HF_HUB_OFFLINE and _reachable(constants.ENDPOINT)
    if not reachable and not cached:
        raise HubUnreachable(repo_id, constants.ENDPOINT)
    return not reachable


# what from_pretrained reads from a Qwen2-VL / Qwen2.5-VL repo (top level only): configs, tokenizer, weights
_MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken")


def download(repo_id: str, progress=None, poll_s: float = 0.5) -> str:
    """Download a hub checkpoint's model files into the Hugging Face cache; return its local snapshot folder.

    Files already in the cache are not fetched again (after an interrupt, the finished ones). progress(done, total)
    is called about every poll_s seconds, from the calling thread, with the bytes in the cache so far (finished
    files plus partial ones) out of all the model's bytes; an exception it raises (ComfyUI's interrupt) stops
    the download. Counting the cache's files works the same on every huggingface_hub version (their own
    progress hooks differ).
    """
    import fnmatch
    import shutil
    import threading

    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.utils import tqdm as hf_tqdm

    endpoint, cache_dir = constants.ENDPOINT, constants.HF_HUB_CACHE   # read now: tests and HF_* settings
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True)
    except Exception as e:   # the hub client raises its HTTP library's errors, which differ between versions
        raise ModelError(f"cannot list the files of {repo_id!r} on {endpoint}: {_first_line(e)} (is the id "
                         "right? a gated model needs `hf auth login`)") from e
    files = [f for f in info.siblings or [] if "/" not in f.rfilename
             and any(fnmatch.fnmatch(f.rfilename, p) for p in _MODEL_FILES)]
    if not any(f.rfilename.endswith(".safetensors") for f in files):
        files += [f for f in info.siblings or [] if "/" not in f.rfilename and f.rfilename.endswith(".bin")]
    if not any(f.rfilename == "config.json" for f in files):
        raise ModelError(f"{repo_id!r} on {endpoint} has no config.json: it is not a transformers checkpoint")
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / info.sha

    def present() -> int:
        """Bytes of the model in the cache now: finished files, plus the partial blob of each unfinished one."""
        done = 0
        for f in files:
            if (snapshot / f.rfilename).is_file():
                done += f.size or 0
                continue
            blob = f.lfs.sha256 if f.lfs is not None else f.blob_id
            # <blob>.incomplete (huggingface_hub < 1.x) or <blob>.<random>.incomplete; the newest is being written
            partial = [st for st in map(_stat, (storage / "blobs").glob(f"{blob}*.incomplete")) if st] if blob else []
            if partial:
                done += min(max(partial, key=lambda st: st.st_mtime).st_size, f.size or 0)
        return done

    total = sum(f.size or 0 for f in files)
    needed = total - present()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise ModelError(f"downloading {repo_id!r} needs {_size(needed)} more in {cache_dir}, which has "
                         f"{_size(free)} free; free some space or set HF_HUB_CACHE to a larger disk")
    if needed <= 0:
        if progress is not None:
            progress(total, total)
        return str(snapshot)

    cancelled, outcome = threading.Event(), {}

    class Cancellable(hf_tqdm):
        """The hub client's progress bar, which stops the download threads once the caller gave up."""

        def update(self, n=1):
            if cancelled.is_set():
                raise _Cancelled(repo_id)
            return super().update(n)

    def run():
        try:
            outcome["path"] = snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, endpoint=endpoint,
                                                allow_patterns=[f.rfilename for f in files], tqdm_class=Cancellable)
        except Exception as e:
            outcome["error"] = e

    worker = threading.Thread(target=run, name=f"prunevid download {repo_id}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(poll_s)
            if progress is not None:
                progress(min(present(), total), total)
    finally:
        if worker.is_alive():   # the caller stopped (an interrupt): the download threads stop at their next chunk
            cancelled.set()
    if "error" in outcome:
        e = outcome["error"]
        raise ModelError(f"downloading {repo_id!r} from {endpoint} failed: {_first_line(e)}; check the network "
                         "and run again (the files already downloaded are kept)") from e
    return outcome["path"]


class _Cancelled(Exception):
    """Raised in the hub client's download threads once the caller stopped waiting (not an OSError: never retried)."""


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:              # finished (renamed) between listing and stat
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Can a TCP connection to the endpoint (or to the proxy the hub client would use) open within `timeout` s?"""
    import socket
    import urllib.parse
    import urllib.request

    try:
        url = urllib.parse.urlsplit(endpoint)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        proxies = urllib.request.getproxies()              # HTTPS_PROXY / ALL_PROXY, as requests and httpx read them
        proxy = proxies.get(url.scheme) or proxies.get("all")
        if proxy and host and not urllib.request.proxy_bypass(host):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
            host, port = p.hostname, p.port or (443 if p.scheme == "https" else 80)
    except ValueError as e:
        raise ModelError(f"HF_ENDPOINT or a proxy variable is not a valid URL ({endpoint!r}): {e}") from None
    if not host:
        raise ModelError(f"HF_ENDPOINT {endpoint!r} is not a URL like https://huggingface.co")
    deadline = time.monotonic() + timeout
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, address in addresses:      # one deadline for all of them
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(address)
                return True
            except OSError:
                continue
    return False
