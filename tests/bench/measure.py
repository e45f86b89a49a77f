"""Measuring helpers: process CPU from rusage (threads included), wall time, peak RSS."""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Cost:
    cpu_s: float
    wall_s: float
    result: Any = None

    def per_block_ms(self, blocks: int) -> float:
        return 1000 * self.cpu_s / blocks


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(fn: Callable[[], Awaitable[Any]]) -> Cost:
    cpu0, wall0 = _cpu(), time.perf_counter()
    result = await fn()
    return Cost(_cpu() - cpu0, time.perf_counter() - wall0, result)
