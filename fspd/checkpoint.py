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

from fspd.blocks import DIGEST_SIZE, Bitmap
from fspd.log import get_logger

log = get_logger("fspd.checkpoint")

VERSION = 1
FILENAME = "checkpoint.json"


def spec_digest(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()


def encode_bitmap(bitmap: Bitmap) -> str:
    return base64.b64encode(zlib.compress(bitmap.to_bytes(), 6)).decode("ascii")


def _bitmap_bytes(text: Any) -> bytes:
    """The raw bitmap of a journal entry; ValueError for anything that is not one."""
    if not isinstance(text, str):
        raise ValueError(f"a bitmap must be a string, not {type(text).__name__}")
    try:
        return zlib.decompress(base64.b64decode(text, validate=True))
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"the bitmap does not decode ({exc})") from None


def decode_bitmap(text: str, size: int) -> Bitmap:
    raw = _bitmap_bytes(text)
    if len(raw) != -(-size // 8):
        raise ValueError("bitmap size does not match the volume")
    return Bitmap(size, raw)


@dataclass(frozen=True)
class JournalShape:
    """What a destination type's journal entry must hold to be handed to its sink: the keys
    whose values are bitmaps, and the keys that must be strings."""

    bitmaps: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()


# Per destination type (``type`` in the entry); another sink adds its own when it registers
# (``registry.sink(..., journal=JournalShape(...))``).
JOURNALS: dict[str, JournalShape] = {
    "file": JournalShape(bitmaps=("bitmap",)),
    "ebs": JournalShape(bitmaps=("written", "handled"), strings=("snapshot_id", "client_token")),
    "s3": JournalShape(strings=("url",)),
}


def sink_problem(state: Any) -> str | None:
    """Why one destination's journal entry is unusable, or None when its shape is sound (its
    sink checks the rest against the target it opens)."""
    if not isinstance(state, dict):
        return f"its entry is a {type(state).__name__}, not an object"
    kind = state.get("type")
    shape = JOURNALS.get(kind) if isinstance(kind, str) else None
    if shape is None:
        return f"unknown destination type {kind!r}"
    for key in shape.strings:
        if not isinstance(state.get(key), str):
            return f"{key!r} is not a string"
    for key in shape.bitmaps:
        try:
            _bitmap_bytes(state.get(key))
        except ValueError as exc:
            return f"{key!r}: {exc}"
    if kind == "s3":
        if not isinstance(state.get("header"), dict):
            return "'header' is not an object"
        for key, types in _S3_OPTIONAL.items():
            if key in state and not isinstance(state[key], types):
                return f"{key!r} has the wrong type"
    return None


# An archive's journal entry: keys absent once its manifest is written, typed when present.
_S3_OPTIONAL: dict[str, Any] = {"manifest_bytes": int, "next_window": int, "windows": dict,
                                "uploads": (dict, type(None)),
                                "pending_zeros": (list, type(None))}


def digests_problem(path: Path, written: Bitmap) -> str | None:
    """Why the digest log of an upload cannot back the blocks its journal claims (missing,
    truncated, or a hole where a digest should be), or None. Reads the file once, in order."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None if written.count == 0 else f"{path.name} is missing"
    blank = bytes(DIGEST_SIZE)
    chunk_blocks = 32768  # 1 MiB of digests per read
    with f:
        chunk_start, chunk = -1, b""
        for index in written.iter_set():
            start = index - index % chunk_blocks
            if start != chunk_start:
                f.seek(start * DIGEST_SIZE)
                chunk_start, chunk = start, f.read(chunk_blocks * DIGEST_SIZE)
            offset = (index - start) * DIGEST_SIZE
            entry = chunk[offset:offset + DIGEST_SIZE]
            if len(entry) < DIGEST_SIZE:
                return f"{path.name} is truncated (no digest for block {index})"
            if entry == blank:
                return f"{path.name} has no digest for block {index}"
    return None


def probe_writable(state_dir: Path) -> None:
    """Raise OSError unless a journal can be written in ``state_dir`` (created if needed):
    write, fsync and remove a small file, as a checkpoint save would."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    probe = state_dir / ".write-probe"
    try:
        atomic_write(probe, bytes(4096))
    finally:
        probe.unlink(missing_ok=True)


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
    # Journal entries of an earlier version of this job (its file changed): not resumed, but
    # what they left behind (a pending snapshot) is named in the result.
    superseded: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        if not isinstance(data, dict) or not isinstance(data.get("sinks"), dict):
            fresh.notes.append("checkpoint is damaged (not a journal of destinations); "
                               "starting over")
            return fresh
        if data.get("version") != VERSION or data.get("spec") != spec:
            fresh.notes.append("checkpoint belongs to a different job spec; starting over")
            fresh.superseded = {str(name): state for name, state in data["sinks"].items()
                                if isinstance(state, dict)}
            return fresh
        sinks: dict[str, dict[str, Any]] = {}
        for name, state in data["sinks"].items():
            problem = sink_problem(state)
            if problem is None:
                sinks[str(name)] = state
            elif isinstance(state, dict) and isinstance(state.get("client_token"), str):
                # The pending snapshot is still this job's: keep it, and send every block.
                sinks[str(name)] = {"type": "ebs", "client_token": state["client_token"]}
                fresh.notes.append(f"{name}: checkpoint damaged ({problem}); sending every "
                                   "block again into the same pending snapshot")
            else:
                fresh.notes.append(f"{name}: checkpoint damaged ({problem}); starting it over")
        return cls(state_dir, job_id, spec, sinks, resumed=True, notes=fresh.notes)

    def sink_state(self, name: str) -> dict[str, Any] | None:
        return self.sinks.get(name) if self.resumed else None

    def body(self) -> bytes:
        """The journal as saved (also what a fleet keeps in S3: fspd/fleet/checkpoints.py)."""
        return json.dumps({"version": VERSION, "job_id": self.job_id, "spec": self.spec,
                           "sinks": self.sinks}, sort_keys=True).encode()

    def save(self, sinks: dict[str, dict[str, Any]]) -> None:
        self.sinks = sinks
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.body())

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
