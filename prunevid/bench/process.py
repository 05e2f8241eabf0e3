"""Process memory on Linux, for the benchmarks: glibc's allocator policy, pre-faulting, peak resident memory.

Why the allocator matters: with glibc's default policy every tensor above the mmap threshold is page-faulted in and
unmapped again, and on a small VM that kernel work can be more than half of an LLM prefill. The benchmark times
with a caching policy (as a GPU allocator caches) and measures peak memory with the default one.
"""
from __future__ import annotations

import ctypes
import gc
import os
import threading
from pathlib import Path

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _trim() -> None:
    gc.collect()
    libc = _libc()
    if libc and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4      # glibc mallopt parameters
# The caching policy, given to the worker at start-up: mallopt's trim threshold is an int (at most 2 GiB), and a
# free top chunk above it is unmapped again, which the 64-frame baseline exceeds; the tunable is a size_t.
CACHING_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def set_allocator(policy: str) -> bool:
    """'caching': glibc never unmaps or trims (freed memory is reused); 'default': glibc's usual policy with a fixed
    128 KiB mmap threshold, then trim. Returns False where mallopt is not available (not glibc).

    'caching' here is the fallback for a worker started without CACHING_TUNABLES (trim threshold capped at 2 GiB).
    """
    libc = _libc()
    if not libc or not hasattr(libc, "mallopt"):
        return False
    if policy == "caching":
        if CACHING_TUNABLES in os.environ.get("GLIBC_TUNABLES", ""):
            return True
        ok = libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    else:
        ok = (libc.mallopt(M_MMAP_MAX, 65536) and libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
              and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024))
        _trim()
    return bool(ok)


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def prefault(nbytes: int) -> None:
    """Allocate, touch and free nbytes: under the caching policy the pages stay resident for later tensors."""
    import torch
    buf = torch.empty(int(nbytes), dtype=torch.uint8)
    buf.fill_(0)
    del buf


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss() -> int:
    v = _status_bytes("VmRSS")
    if v is not None:
        return v
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # no /proc: best effort


class PeakMemory:
    """Peak resident memory of the process during a `with` block."""

    def __init__(self):
        self.method = None

    def __enter__(self):
        _trim()
        self.idle = _rss()
        self.peak = self.idle
        try:
            Path("/proc/self/clear_refs").write_text("5")     # reset VmHWM to the current RSS
            self.method = "VmHWM (reset via /proc/self/clear_refs)"
            self._thread = None
        except OSError:
            self.method = "RSS sampled every 2 ms"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
        else:
            self.peak = max(self.peak, _status_bytes("VmHWM") or 0)
        return False
