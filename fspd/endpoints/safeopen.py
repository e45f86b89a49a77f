"""Open a checked path without following anything a job submitter may have swapped in since.

A job's paths are resolved (``realpath``) and checked against the allow-lists when the job is
built, but opened later. A submitter who owns a directory under an allowed prefix could turn one
of its components into a symlink in between, and a plain ``open`` would follow it anywhere the
daemon may write. Here the path is opened by walking from a descriptor held on the allowed
prefix, one component at a time, with ``O_NOFOLLOW`` on each (the stdlib has no ``openat2``
with ``RESOLVE_NO_SYMLINKS``), and the opened descriptor, not the path, is then checked: its
type, its link count, and for block devices the device number seen when the job was checked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterable
from pathlib import PurePosixPath

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """The path no longer names what was checked: a symlink or another kind of file appeared,
    or it left the allowed prefixes. ``strerror`` says which, in words."""


def allowed_root(path: str, roots: Iterable[str]) -> str | None:
    """The longest allowed prefix ``path`` lies under (the same rule as the path checks)."""
    best: str | None = None
    for prefix in roots:
        p = prefix.rstrip("/") or "/"
        under = p == "/" or path == p or path.startswith(p + "/")
        if under and (best is None or len(p) > len(best)):
            best = p
    return best


def open_beneath(path: str | os.PathLike[str], roots: Iterable[str], flags: int,
                 mode: int = 0o644, *, rdev: int | None = None) -> int:
    """Open the absolute, already resolved ``path`` with ``flags`` (O_RDONLY, O_RDWR, maybe
    O_CREAT), following no symlink below the allowed prefix it lies under.

    The opened file must be a regular file with one link (a second name would be changed too)
    or, with ``rdev``, the block device with that device number. Raises :class:`UnsafePath`
    otherwise, and OSError for the usual reasons (missing, no permission)."""
    text = os.path.normpath(os.fspath(path))
    if not os.path.isabs(text):
        raise UnsafePath(errno.EINVAL, f"{text} is not an absolute path")
    root = allowed_root(text, roots)
    if root is None:
        raise UnsafePath(errno.EACCES, f"{text} is outside the allowed paths")
    if text == root:  # the prefix names the file itself (e.g. allow_devices = ["/dev/sdb"])
        root = os.path.dirname(text)
    parts = PurePosixPath(text).relative_to(root).parts
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafePath(errno.EINVAL, f"{text} does not name a file below {root}")
    dir_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _swapped(text, name) from None
                raise
            os.close(dir_fd)
            dir_fd = next_fd
        # O_NONBLOCK: a FIFO swapped in must not hang the open; cleared again below.
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _swapped(text, parts[-1]) from None
            raise
    finally:
        os.close(dir_fd)
    try:
        check_opened(fd, text, rdev=rdev)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir_beneath(path: str | os.PathLike[str], roots: Iterable[str]) -> int:
    """A read-only descriptor on the directory ``path`` (for fsync), walked like
    :func:`open_beneath`: a component swapped for a symlink raises :class:`UnsafePath`."""
    text = os.path.normpath(os.fspath(path))
    roots = tuple(roots)
    root = allowed_root(text, roots)
    if root is None:  # the prefix names a file itself: its directory is the operator's
        if not any(os.path.dirname(p.rstrip("/")) == text for p in roots):
            raise UnsafePath(errno.EACCES, f"{text} is outside the allowed paths")
        root = text
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in PurePosixPath(text).relative_to(root).parts:
        try:
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _swapped(text, name) from None
            raise
        os.close(fd)
        fd = next_fd
    return fd


def check_opened(fd: int, text: str, *, rdev: int | None = None) -> os.stat_result:
    """The descriptor is the kind of file that was checked (see :func:`open_beneath`)."""
    st = os.fstat(fd)
    if rdev is not None:
        if not stat.S_ISBLK(st.st_mode) or st.st_rdev != rdev:
            raise UnsafePath(errno.ENXIO, f"{text} is no longer the block device "
                             f"{os.major(rdev)}:{os.minor(rdev)} that was checked")
        return st
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(errno.EINVAL, f"{text} is no longer a regular file")
    if st.st_nlink > 1 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        raise UnsafePath(errno.EMLINK, f"{text} has {st.st_nlink} hard links; writing it "
                         "would change the other names too (use a file with one link)")
    return st


def _swapped(text: str, name: str) -> UnsafePath:
    return UnsafePath(errno.ELOOP, f"{name!r} in {text} is now a symlink or not a directory; "
                      "not followed (it changed after the job was checked)")


def device_number(path: str | os.PathLike[str]) -> int | None:
    """The device number of a block device at ``path`` (as checked now), else None: what
    :func:`open_beneath` later requires the opened descriptor to be."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def roots_for(path: str | os.PathLike[str], allowed: Iterable[str], rdev: int | None
              ) -> tuple[str, ...]:
    """Where to walk from: the allowed prefixes, or for a block device (whose identity is its
    device number, checked on the descriptor) the whole tree without following symlinks."""
    return ("/",) if rdev is not None else tuple(allowed)
