"""Reading a job's checkpoint from disk, so tests can wait for a condition (durable blocks)
rather than for time before they kill a job."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path


def _bits(encoded: str) -> int:
    """Set bits of a checkpoint bitmap (base64 of zlib, as fspd.checkpoint writes it)."""
    return sum(byte.bit_count() for byte in zlib.decompress(base64.b64decode(encoded)))


def durable_blocks(checkpoint: Path) -> int:
    """How much the checkpoint on disk claims is durable at its least advanced destination
    (blocks written to files and put into snapshots, windows for S3 archives); 0 before the
    first checkpoint."""
    try:
        sinks = json.loads(checkpoint.read_text())["sinks"]
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0
    counts = []
    for state in sinks.values():
        if state.get("type") == "file":
            counts.append(_bits(state["bitmap"]))
        elif state.get("type") == "ebs":
            counts.append(_bits(state["written"]))  # put, not merely skipped as zeros
        elif state.get("type") == "s3":
            counts.append(int(state.get("next_window") or 0) + len(state.get("windows") or {}))
    return min(counts, default=0)
