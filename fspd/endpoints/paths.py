"""Which local paths a job may read or write, and the checks that keep a job from writing
somewhere it must not (a missing /dev node, a mounted device, a path outside the allow-list)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from fspd.config import PathSettings
from fspd.errors import BadInput


def _under(path: Path, prefixes: tuple[str, ...]) -> bool:
    text = str(path)
    for prefix in prefixes:
        p = prefix.rstrip("/") or "/"
        if p == "/" or text == p or text.startswith(p + "/"):
            return True
    return False


def _is_device_path(path: Path) -> bool:
    """Under /dev, where a mistyped device name must never become a new file; /dev/shm is
    an ordinary tmpfs and is treated like any other directory."""
    text = str(path)
    if text == "/dev/shm" or text.startswith("/dev/shm/"):
        return False
    return text == "/dev" or text.startswith("/dev/")


def mounted_devices() -> set[int]:
    """Device numbers of mounted filesystems and active swap, and of the disks holding them."""
    found: set[int] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                major, minor = line.split()[2].split(":")
                found.add(os.makedev(int(major), int(minor)))
    except OSError:
        pass
    try:
        with open("/proc/swaps", encoding="utf-8") as f:
            for line in list(f)[1:]:
                with contextlib.suppress(OSError):
                    found.add(os.stat(line.split()[0]).st_rdev)
    except OSError:
        pass
    # A mounted partition makes its whole disk busy too.
    for dev in list(found):
        parent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/../dev")
        try:
            major, minor = parent.read_text().strip().split(":")
            found.add(os.makedev(int(major), int(minor)))
        except (OSError, ValueError):
            pass
    return found


def _resolve(raw: str, path: Path, field: str) -> Path:
    """``realpath``, or BadInput if a component changes while it is resolved (a symlink
    swapped for a directory between its lstat and its readlink: EINVAL)."""
    try:
        return Path(os.path.realpath(path))
    except OSError as exc:
        raise BadInput(f"{raw} changed while it was resolved ({exc.strerror or exc}); "
                       "run the job again once it stays put", field=field) from None


def check_read(raw: str, settings: PathSettings, field: str) -> Path:
    path = Path(os.path.abspath(raw))
    real = _resolve(raw, path, field)
    if _is_device_path(real):
        if not _under(real, settings.allow_devices):
            raise BadInput(f"{raw}: reading devices needs the device in paths.allow_devices",
                           field=field)
    elif not _under(real, settings.allow_read):
        raise BadInput(f"{raw} is outside the readable paths (paths.allow_read)", field=field)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise BadInput(f"{raw} does not exist", field=field) from None
    except OSError as exc:
        raise BadInput(f"{raw}: {exc.strerror}", field=field) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise BadInput(f"{raw} is neither a regular file nor a block device", field=field)
    return real


def check_write(raw: str, settings: PathSettings, field: str, *, must_exist: bool = False
                ) -> tuple[Path, bool]:
    """Return (resolved path, is_block_device) or raise BadInput naming ``field``."""
    path = Path(os.path.abspath(raw))
    real = _resolve(raw, path, field)
    if _is_device_path(path) or _is_device_path(real):
        if not real.exists():
            raise BadInput(f"{raw} does not exist; fspd does not create files under /dev",
                           field=field)
        st = os.stat(real)
        if not stat.S_ISBLK(st.st_mode):
            raise BadInput(f"{raw} is not a block device", field=field)
        if not _under(real, settings.allow_devices):
            raise BadInput(f"{raw}: writing to devices needs the device in "
                           "paths.allow_devices", field=field)
        if st.st_rdev in mounted_devices():
            raise BadInput(f"{raw} is mounted (or holds a mounted filesystem or swap); "
                           "unmount it first", field=field)
        return real, True
    if not _under(real, settings.allow_write):
        raise BadInput(f"{raw} is outside the writable paths (paths.allow_write)", field=field)
    try:  # one stat, not exists() then stat(): the path may change between the two
        found: os.stat_result | None = os.stat(real)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise BadInput(f"{raw}: {exc.strerror or exc}", field=field) from None
    if found is not None:
        if stat.S_ISBLK(found.st_mode):
            if found.st_rdev in mounted_devices():
                raise BadInput(f"{raw} is mounted; unmount it first", field=field)
            return real, True
        if not stat.S_ISREG(found.st_mode):
            raise BadInput(f"{raw} is neither a regular file nor a block device", field=field)
    elif must_exist:
        raise BadInput(f"{raw} does not exist", field=field)
    elif not real.parent.is_dir():
        raise BadInput(f"directory {real.parent} does not exist", field=field)
    return real, False
