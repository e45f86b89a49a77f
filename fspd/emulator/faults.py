"""Rate limits (token buckets) and seeded fault injection."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

FAULT_DEFAULTS: dict[str, Any] = {
    "latency_ms": 0.0,
    "latency_jitter_ms": 0.0,
    "error_rate": 0.0,
    "reset_rate": 0.0,
    "corrupt_rate": 0.0,
    "throttle_rate": 0.0,
    "operations": None,
    "region": None,
    "seed": 0,
    # Requests (of ``operations``) after the first ``hold_after`` since these settings were
    # set wait, unanswered, until the faults are changed or cleared: a job stopped mid-way
    # at a known point, for tests that must act on it there (null: no hold).
    "hold_after": None,
}
MIN_BURST = 5.0


class Buckets:
    """Token buckets keyed by anything; rate and depth given at each take."""

    def __init__(self) -> None:
        self._state: dict[Any, tuple[float, float]] = {}

    def take(self, key: Any, rate: float, burst_seconds: float) -> bool:
        if rate <= 0:
            return False
        depth = max(rate * burst_seconds, MIN_BURST)
        now = time.monotonic()
        tokens, last = self._state.get(key, (depth, now))
        tokens = min(depth, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            return False
        self._state[key] = (tokens - 1.0, now)
        return True

    def clear(self) -> None:
        self._state.clear()


class Faults:
    """The fault settings in force and a seeded generator to decide each request's fate."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = dict(FAULT_DEFAULTS)
        self.rng = random.Random(0)
        self.counts: Counter[str] = Counter()
        self._matched = 0
        self._released: asyncio.Event | None = None

    def set(self, changes: dict[str, Any]) -> dict[str, Any]:
        new = dict(FAULT_DEFAULTS)
        for key, value in changes.items():
            if key not in FAULT_DEFAULTS:
                raise ValueError(f"unknown fault key: {key}")
            if key in ("operations",):
                if value is not None and not (isinstance(value, list) and all(
                        isinstance(v, str) for v in value)):
                    raise ValueError("operations must be a list of operation names or null")
            elif key == "region":
                if value is not None and not isinstance(value, str):
                    raise ValueError("region must be a string or null")
            elif key == "hold_after":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                          or value < 0):
                    raise ValueError("hold_after must be an integer >= 0 or null")
            elif key == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("seed must be an integer")
            else:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                if key.endswith("_rate") and value > 1:
                    raise ValueError(f"{key} is a share of requests: 0..1")
                value = float(value)
            new[key] = value
        self.settings = new
        self.rng = random.Random(new["seed"])
        self._matched = 0
        if self._released is not None:  # whatever the old settings held goes on now
            self._released.set()
            self._released = None
        return dict(new)

    def clear(self) -> None:
        self.set({})

    def applies(self, op: str, region: str) -> bool:
        s = self.settings
        if s["operations"] is not None and op not in s["operations"]:
            return False
        return s["region"] is None or s["region"] == region

    def roll(self, kind: str) -> bool:
        """Whether a fault of ``kind`` (error/reset/corrupt/throttle) hits this request."""
        rate = self.settings[f"{kind}_rate"]
        if rate <= 0 or self.rng.random() >= rate:
            return False
        self.counts[kind] += 1
        return True

    async def hold(self) -> None:
        """Wait until the settings change if this request is past ``hold_after``."""
        limit = self.settings["hold_after"]
        if limit is None:
            return
        self._matched += 1
        if self._matched <= limit:
            return
        self.counts["held"] += 1
        if self._released is None:
            self._released = asyncio.Event()
        await self._released.wait()

    def latency(self) -> float:
        s = self.settings
        if s["latency_ms"] <= 0 and s["latency_jitter_ms"] <= 0:
            return 0.0
        self.counts["latency"] += 1
        jitter = self.rng.uniform(0, s["latency_jitter_ms"]) if s["latency_jitter_ms"] else 0.0
        return (s["latency_ms"] + jitter) / 1000.0
