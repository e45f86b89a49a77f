"""Keeping a long-running fspd's memory near what its budgets say.

Two things the block budget (``transfer.max_buffered_blocks``) does not cover, found by
measuring ``fspd serve`` under a wave of jobs (tests/bench/daemon_memory.py):

* botocore's service models: every new session parses EC2's model again (~20 MiB of Python
  objects per job). :func:`share_models` gives every session of the process one loader, so
  each model is parsed once and shared, as one session's clients already share it.
* glibc keeps freed memory in its heaps (one per thread that allocated, and it moves its
  mmap threshold up once the first 512 KiB block buffer is freed, so later block buffers
  land in the heaps too): after a wave, ~400 MiB stayed resident though Python held under
  1 MiB of it. :func:`trim` (``malloc_trim``) gives the free pages back after each job; it
  is a no-op where the C library is not glibc. (Pinning the mmap threshold instead, with
  ``MALLOC_MMAP_THRESHOLD_``, lowered the peak by under 3 % in the same measurement.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_libc: Any = None
_loaders: dict[str, Any] = {}


def _glibc() -> Any:
    """The C library when it is glibc (it has ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        _libc = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "malloc_trim"):
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
        except OSError:
            pass
    return _libc or None


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
