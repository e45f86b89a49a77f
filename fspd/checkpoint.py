"""A job's resume journal, kept in its state directory.

``checkpoint.json`` names the job (and a digest of its spec, so a changed job file never
resumes from another job's progress) and, per destination, what it needs to carry on: the
pending snapshot id and ClientToken, S3 upload state, and a bitmap of the blocks that are
durable there (zlib-compressed: 4 MiB for 16 TiB before compression, a few KiB after).

Every write is atomic (write a temporary file, fsync, rename, fsync the directory), so a crash
at any moment leaves either the previous checkpoint or the new one. Sinks make their data
durable *before* the bitmap that claims it is saved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspd.blocks import Bitmap
from fspd.log import get_logger

log = get_logger("fspd.checkpoint")

VERSION = 1
FILENAME = "checkpoint.json"


def spec_digest(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()


def encode_bitmap(bitmap: Bitmap) -> str:
    return base64.b64encode(zlib.compress(bitmap.to_bytes(), 6)).decode("ascii")


def decode_bitmap(text: str, size: int) -> Bitmap:
    raw = zlib.decompress(base64.b64decode(text))
    if len(raw) != -(-size // 8):
        raise ValueError("bitmap size does not match the volume")
    return Bitmap(size, raw)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class Checkpoint:
    """The journal of one job. ``sinks`` maps a destination name to that sink's own state."""

    state_dir: Path
    job_id: str
    spec: str  # digest of the job spec
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False  # loaded from an earlier run
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.state_dir / FILENAME

    @classmethod
    def open(cls, state_dir: Path, job_id: str, spec: str) -> Checkpoint:
        """Load the checkpoint of this job if one exists for the same spec; else a new one."""
        fresh = cls(state_dir, job_id, spec)
        try:
            data = json.loads(fresh.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError) as exc:
            fresh.notes.append(f"checkpoint unreadable ({exc}); starting over")
            return fresh
        if data.get("version") != VERSION or data.get("spec") != spec:
            fresh.notes.append("checkpoint belongs to a different job spec; starting over")
            return fresh
        loaded = cls(state_dir, job_id, spec, dict(data.get("sinks", {})), resumed=True)
        return loaded

    def sink_state(self, name: str) -> dict[str, Any] | None:
        return self.sinks.get(name) if self.resumed else None

    def save(self, sinks: dict[str, dict[str, Any]]) -> None:
        self.sinks = sinks
        body = json.dumps({"version": VERSION, "job_id": self.job_id, "spec": self.spec,
                           "sinks": sinks}, sort_keys=True).encode()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, body)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
