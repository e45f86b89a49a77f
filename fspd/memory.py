"""Keeping a long-running fspd's memory near what its budgets say.

Three things the block budget (``transfer.max_buffered_blocks``) does not cover, found by
measuring ``fspd serve`` under a wave of jobs (tests/bench/daemon_memory.py):

* botocore's service models: every new session parses EC2's model again (~20 MiB of Python
  objects per job). :func:`share_models` gives every session of the process one loader, so
  each model is parsed once and shared, as one session's clients already share it.
* glibc keeps freed memory in its heaps (and moves its mmap threshold up after the first
  block buffer is freed, so later 512 KiB buffers land in the heap too): after a wave, most
  of the peak stays resident though Python holds almost none of it. :func:`tune_allocator`
  pins the threshold so block-sized buffers are mapped and unmapped on their own, and
  :func:`trim` gives free heap pages back after each job.
* Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own mapping, returned to the system when freed.
# Below a block (512 KiB) and above the small, short-lived objects of the hot path.
MMAP_THRESHOLD = 256 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024

_libc: Any = None
_loaders: dict[str, Any] = {}


def _glibc() -> Any:
    """The C library when it is glibc (it has ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        _libc = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _libc = libc
        except OSError:
            pass
    return _libc or None


def tune_allocator() -> bool:
    """Pin glibc's mmap and trim thresholds (unless the user set them in the environment).
    Returns whether anything was changed."""
    libc = _glibc()
    if libc is None:
        return False
    changed = False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        changed |= bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        changed |= bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return changed


def trim() -> bool:
    """Give the heaps' free pages back to the system (glibc only). Returns whether any were."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB, from /proc (0.0 where there is none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def share_models(session: Any) -> None:
    """Make a botocore session use the process's loader for its data path, so service
    models (and the endpoint data) are parsed once per process rather than once per job."""
    data_path = str(session.get_config_variable("data_path") or "")
    loader = _loaders.get(data_path)
    if loader is None:
        _loaders[data_path] = session.get_component("data_loader")
    else:
        session.register_component("data_loader", loader)
