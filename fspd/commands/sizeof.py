"""``download --size-of FILE``: a snapshot is a whole number of GiB, so a download gives back
the volume, not the file that was uploaded. This cuts the verified download back to FILE's
length, so an upload → download round trip compares equal with ``cmp``."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.errors import BadInput

FIELD = "--size-of"


def _length(path: str) -> int:
    """FILE's length: a regular file's size, or a block device's."""
    try:
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", field=FIELD) from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path} is not a file or block device", field=FIELD)
    return st.st_size


def truncate_hook(args: argparse.Namespace) -> Callable[[dict[str, Any]], None] | None:
    """Check ``--size-of`` before the job runs; returns what to do with its result (None
    without the flag). The download is only cut once it has been verified and flushed."""
    if not getattr(args, "size_of", None):
        return None
    size = _length(args.size_of)
    target = Path(args.path).absolute()
    if target.exists() and not target.is_file():
        raise BadInput(f"{target} is not a regular file; only a file can be truncated",
                       field=FIELD)

    def after(result: dict[str, Any]) -> None:
        if result.get("dry_run"):
            return
        volume, recorded = result["volume_size"], result.get("byte_length")
        if size > volume:
            raise BadInput(f"{args.size_of} is {size} bytes, more than the snapshot's volume "
                           f"({volume} bytes), so it cannot be its original; {target} was "
                           "left at the volume's size", field=FIELD)
        if recorded is not None and recorded != size:
            raise BadInput(f"{args.size_of} is {size} bytes, but the snapshot records its "
                           f"original as {recorded} bytes; {target} was left at the volume's "
                           "size", field=FIELD)
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        result["truncated_to"] = size

    return after
