"""Snapshots, their lineage and their blocks.

Written blocks of a real snapshot live in one sparse file (block *i* at ``i * BLOCK_SIZE``);
memory holds only ``index -> raw SHA-256 digest``. A synthetic snapshot stores nothing per
block (see synthetic.py). Statuses are derived from timestamps when read, so timeouts and
completion delays need no timers.
"""

from __future__ import annotations

import base64
import heapq
import os
import secrets
import shutil
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspd.emulator.synthetic import BLOCK_SIZE, Synthetic, noise

BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE


def new_snapshot_id() -> str:
    return "snap-" + secrets.token_hex(9)[:17]


EBS_DIRECT_VOLUME = "vol-ffffffff"  # what DescribeSnapshots shows for EBS direct snapshots

@dataclass
class Snapshot:
    id: str
    region: str
    owner_id: str
    volume_size: int
    parent: Snapshot | None = None
    encrypted: bool = False
    kms_key_arn: str | None = None
    sse_type: str = "none"
    tags: list[dict[str, str]] = field(default_factory=list)
    description: str | None = None
    # Snapshots made through the EBS direct APIs name no volume (AWS shows vol-ffffffff);
    # synthetic ones may stand for snapshots of a real volume.
    volume_id: str = EBS_DIRECT_VOLUME
    timeout_s: float = 3600.0
    start_time: float = field(default_factory=time.time)
    # Timeout counts from the last block written (or the start, before any): a snapshot that
    # is being written steadily is never cancelled, as the service model describes.
    last_write: float = 0.0
    synthetic: Synthetic | None = None
    # Real snapshots only:
    path: Path | None = None
    written: dict[int, bytes] = field(default_factory=dict)
    progress: int = 0
    complete_requested: float | None = None   # when CompleteSnapshot succeeded
    completion_delay: float = 0.0
    deleted: bool = False
    _fd: int | None = None
    _sorted: list[int] | None = None

    @property
    def nblocks(self) -> int:
        return self.volume_size * BLOCKS_PER_GIB

    def status(self, now: float | None = None) -> str:
        if self.synthetic is not None:
            return "completed"
        now = time.time() if now is None else now
        if self.complete_requested is not None:
            if now >= self.complete_requested + self.completion_delay:
                return "completed"
            return "pending"
        if now > max(self.start_time, self.last_write) + self.timeout_s:
            return "error"
        return "pending"

    def completed_at(self) -> float:
        if self.synthetic is not None or self.complete_requested is None:
            return self.start_time
        return self.complete_requested + self.completion_delay

    def progress_pct(self, now: float | None = None) -> int:
        status = self.status(now)
        if status == "completed":
            return 100
        if self.complete_requested is not None and self.completion_delay > 0:
            now = time.time() if now is None else now
            done = (now - self.complete_requested) / self.completion_delay
            return max(self.progress, min(99, int(done * 100)))
        return min(self.progress, 99)

    def lineage(self) -> list[Snapshot]:
        chain: list[Snapshot] = []
        snap: Snapshot | None = self
        while snap is not None:
            chain.append(snap)
            snap = snap.parent
        return chain

    # ---- blocks -------------------------------------------------------------------------

    def _file(self) -> int:
        if self._fd is None:
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def write(self, index: int, data: bytes, digest: bytes) -> None:
        os.pwrite(self._file(), data, index * BLOCK_SIZE)
        if index not in self.written:
            self._sorted = None
        self.written[index] = digest
        self.last_write = time.time()

    def own_block(self, index: int) -> tuple[bytes, bytes, str] | None:
        """(data, digest, checksum) when this snapshot itself holds ``index``."""
        if self.synthetic is not None:
            if self.synthetic.allocated(index):
                return self.synthetic.block(index)
            return None
        digest = self.written.get(index)
        if digest is None:
            return None
        data = os.pread(self._file(), BLOCK_SIZE, index * BLOCK_SIZE)
        if len(data) < BLOCK_SIZE:
            data = data.ljust(BLOCK_SIZE, b"\0")
        return data, digest, base64.b64encode(digest).decode()

    def has_own(self, index: int) -> bool:
        if self.synthetic is not None:
            return self.synthetic.allocated(index)
        return index in self.written

    def has_block(self, index: int) -> bool:
        """Whether ``index`` was written here or in an ancestor (within each one's size)."""
        if not 0 <= index < self.nblocks:
            return False
        return any(s.has_own(index) for s in self.lineage())

    def block(self, index: int) -> tuple[bytes, bytes, str] | None:
        if not 0 <= index < self.nblocks:
            return None
        for snap in self.lineage():
            found = snap.own_block(index)
            if found is not None:
                return found
        return None

    def own_indexes(self, start: int, stop: int) -> Iterator[int]:
        """Indexes this snapshot itself wrote in [start, stop), ascending."""
        if self.synthetic is not None:
            yield from self.synthetic.indexes(start, stop)
            return
        if self._sorted is None:
            self._sorted = sorted(self.written)
        keys = self._sorted
        for k in range(bisect_left(keys, start), len(keys)):
            if keys[k] >= stop:
                return
            yield keys[k]

    def digests_ascending(self) -> Iterator[bytes]:
        for index in sorted(self.written):
            yield self.written[index]

    def image(self, offset: int, length: int) -> bytes:
        """What a volume restored from this snapshot reads at [offset, offset+length)."""
        out = bytearray()
        end = offset + length
        pos = offset
        while pos < end:
            index, within = divmod(pos, BLOCK_SIZE)
            take = min(BLOCK_SIZE - within, end - pos)
            found = self.block(index)
            if found is not None:
                data = found[0]
            elif self.encrypted:
                data = noise(self.id, index)
            else:
                data = None
            if data is None:
                out += bytes(take)
            else:
                out += data[within:within + take]
            pos += take
        return bytes(out)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "region": self.region, "status": self.status(),
            "volume_size": self.volume_size,
            "parent": self.parent.id if self.parent else None,
            "encrypted": self.encrypted, "kms_key_arn": self.kms_key_arn,
            "sse_type": self.sse_type, "tags": {t["Key"]: t["Value"] for t in self.tags},
            "description": self.description, "owner_id": self.owner_id,
            "start_time": self.start_time, "progress": self.progress_pct(),
            "written_count": len(self.written) if self.synthetic is None else None,
            "synthetic": None if self.synthetic is None else {
                "seed": self.synthetic.seed, "density": self.synthetic.density,
                "zero_fraction": self.synthetic.zero_fraction},
        }


def merged_indexes(snaps: list[Snapshot], start: int, stop: int) -> Iterator[int]:
    """Unique ascending indexes written by any of ``snaps`` in [start, stop)."""
    its = [s.own_indexes(start, min(stop, s.nblocks)) for s in snaps]
    last = -1
    for index in heapq.merge(*its):
        if index != last:
            yield index
            last = index


class Store:
    """All regions' snapshots; each region is its own namespace."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blocks_dir = data_dir / "blocks"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.regions: dict[str, dict[str, Snapshot]] = {}
        self.client_tokens: dict[tuple[str, str, str], tuple[Any, str]] = {}

    def get(self, region: str, snapshot_id: str) -> Snapshot | None:
        snap = self.regions.get(region, {}).get(snapshot_id)
        return None if snap is None or snap.deleted else snap

    def add(self, snap: Snapshot) -> Snapshot:
        if snap.synthetic is None:
            snap.path = self.blocks_dir / f"{snap.region}-{snap.id}.img"
        self.regions.setdefault(snap.region, {})[snap.id] = snap
        return snap

    def all(self, region: str | None = None) -> list[Snapshot]:
        regions = [region] if region else sorted(self.regions)
        return [s for r in regions for s in self.regions.get(r, {}).values() if not s.deleted]

    def delete(self, snap: Snapshot) -> None:
        snap.deleted = True
        # Children keep reading the parent's blocks, so its file stays until reset.

    def wipe(self) -> None:
        for snaps in self.regions.values():
            for snap in snaps.values():
                snap.close()
        self.regions.clear()
        self.client_tokens.clear()
        shutil.rmtree(self.blocks_dir, ignore_errors=True)
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
