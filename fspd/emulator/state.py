"""The emulator's whole mutable state, shared by the handlers of one server."""

from __future__ import annotations

import copy
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fspd.emulator import errors
from fspd.emulator.faults import Buckets, Faults
from fspd.emulator.store import Snapshot, Store
from fspd.emulator.tokens import TokenSigner

SNAPSHOT_ID_MAX = 64


@dataclass(frozen=True)
class Ctx:
    """Who is asking, where, for what."""

    op: str
    region: str
    account: str
    access_key: str


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.by_snapshot: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_region: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.throttled = 0
        self.bytes_in = 0
        self.bytes_out = 0
        # Connections accepted (for HTTPS: TLS handshakes completed) since the last reset; a
        # client that keeps its connections alive opens about as many as it has in flight.
        self.connections = 0

    def count(self, op: str, region: str, snapshot_id: str | None) -> None:
        self.requests[op] += 1
        self.by_region[region][op] += 1
        if snapshot_id:
            self.by_snapshot[snapshot_id][op] += 1

    def as_dict(self, faults: Counter[str]) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "by_snapshot": {k: dict(v) for k, v in self.by_snapshot.items()},
            "by_region": {k: dict(v) for k, v in self.by_region.items()},
            "throttled": self.throttled,
            "faults": dict(faults),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connections": self.connections,
        }


def valid_snapshot_id(value: str) -> bool:
    return (value.startswith("snap-") and 5 < len(value) <= SNAPSHOT_ID_MAX
            and all(c in "0123456789abcdef" for c in value[5:]))


class State:
    def __init__(self, config: dict[str, Any], data_dir: Path) -> None:
        self.initial = copy.deepcopy(config)
        self.config = copy.deepcopy(config)
        self.store = Store(data_dir)
        self.tokens = TokenSigner()
        self.faults = Faults()
        self.buckets = Buckets()
        self.stats = Stats()
        self.inflight: set[tuple[str, int]] = set()

    def reset(self) -> None:
        self.config = copy.deepcopy(self.initial)
        self.store.wipe()
        self.tokens = TokenSigner()
        self.faults.clear()
        self.faults.counts.clear()
        self.buckets.clear()
        self.stats.reset()
        self.inflight.clear()

    def snapshot(self, ctx: Ctx, snapshot_id: str, *, readable: bool = False) -> Snapshot:
        """Look a snapshot up as the EBS Direct APIs do; raise the API error AWS gives."""
        if not valid_snapshot_id(snapshot_id):
            raise errors.validation(f"The snapshot ID '{snapshot_id[:80]}' is not valid.",
                                    "INVALID_SNAPSHOT_ID")
        snap = self.store.get(ctx.region, snapshot_id)
        if snap is None or snap.owner_id != ctx.account:
            raise errors.not_found(snapshot_id)
        window = self.config["not_found_window"]
        now = time.time()
        if window > 0:
            if now - snap.start_time < window:
                raise errors.not_found(snapshot_id)
            if snap.status(now) == "completed" and snap.synthetic is None \
                    and now - snap.completed_at() < window:
                raise errors.not_found(snapshot_id)
        if readable:
            status = snap.status(now)
            if status != "completed":
                raise errors.validation(
                    f"The snapshot '{snapshot_id}' is in state '{status}'; only completed "
                    "snapshots can be read.", "INVALID_SNAPSHOT_ID")
        return snap
