"""The one way fspd runs an event loop: uvloop, with the cyclic garbage collector tuned for
a block pipeline (:func:`tune_gc`)."""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

# Allocations (net of frees) of container objects between two young collections; CPython's
# default is 700. A block in flight leaves a few dozen such objects alive for a while
# (futures, tasks, header dicts), so at 700 the collector ran every ~8 blocks of a download,
# and every tenth run went on to walk the older objects: measured on a 1 GiB download as
# typed, 0.22 CPU-s of collection (~0.1 ms per block), 0.05 s at 10,000. Garbage cycles
# are rare on the block path, so waiting longer for them costs little memory.
GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Freeze what exists now (modules, botocore's models: objects that live as long as the
    process) out of the collector's reach, so no full collection walks them again, and
    collect young objects less often (GEN0_THRESHOLD)."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GEN0_THRESHOLD, gen0), gen1, gen2)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh uvloop event loop (the collector tuned first)."""
    tune_gc()
    return uvloop.run(main)
