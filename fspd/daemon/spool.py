"""The spool directory, Maildir style: a job file is never half-read, lost or deleted.

``tmp/``  writers create and fsync files here, then rename them into ``new/``
``new/``  complete job files waiting; the daemon claims one by renaming it into ``active/``
``active/`` claimed jobs; a running job's file is held with ``flock`` so a second daemon (or a
          restart that finds it) can tell a live job from one left behind by a crash
``done/`` and ``failed/``  finished jobs with ``NAME.result.json`` / ``NAME.error.json``

Every move is a ``rename(2)`` that never replaces an existing file; only stale ``tmp/`` files
(and results' temporary files older versions left in ``done/``/``failed/``) are ever deleted.
Results are written in ``tmp/`` and renamed in, so ``done/`` never holds a partial file.
Names starting with ``.`` are ignored (writers' scratch files).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles

from fspd.errors import BadInput
from fspd.jobs import safe_name

BOXES = ("tmp", "new", "active", "done", "failed")
SUBMIT_BOXES = ("tmp", "new")  # the only boxes submitters write into
SIDE_SUFFIXES = (".result.json", ".error.json")

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Atomic rename that raises FileExistsError instead of replacing ``dst``."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # else: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # Fallback: link + unlink never replaces either (link fails with EEXIST).
    os.link(src, dst, follow_symlinks=False)
    os.unlink(src)


@dataclass(frozen=True)
class Entry:
    name: str
    mtime_ns: int
    kind: str  # "file", "symlink" or "other"


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def box(self, name: str) -> Path:
        return self.root / name

    def ensure(self) -> None:
        """Make the spool. Submitters (the group) may write into tmp/ and new/ only: in a
        group-writable root or box they could swap a box for a symlink and have the daemon
        write its records elsewhere."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        for box in BOXES:
            self.box(box).mkdir(exist_ok=True, mode=0o770 if box in SUBMIT_BOXES else 0o750)

    def entries(self, box: str) -> list[Entry]:
        """Job files in ``box`` (not sidecars, not dotfiles), oldest first."""
        out = []
        try:
            names = os.listdir(self.box(box))
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(".") or name.endswith(SIDE_SUFFIXES):
                continue
            try:
                st = os.lstat(self.box(box) / name)
            except FileNotFoundError:
                continue
            kind = ("file" if stat.S_ISREG(st.st_mode)
                    else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
            out.append(Entry(name, st.st_mtime_ns, kind))
        out.sort(key=lambda e: (e.mtime_ns, e.name))
        return out

    # --- writers -------------------------------------------------------------------------

    def submit(self, data: bytes, filename: str) -> str:
        """Write a job into tmp/, fsync it, rename it into new/; returns the spool name."""
        base = Path(filename).name
        ext = ".json" if base.endswith(".json") else ".toml"
        stem = safe_name(base.removesuffix(ext).removesuffix(".toml"))[:64] or "job"
        for _ in range(20):
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            name = f"{stem}-{stamp}-{secrets.token_hex(3)}{ext}"
            tmp = self.box("tmp") / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                rename_noreplace(tmp, self.box("new") / name)
            except FileExistsError:
                os.unlink(tmp)
                continue
            _fsync_dir(self.box("new"))
            return name
        raise BadInput("could not find a free name in the spool", field="spool")

    # --- the daemon's side ---------------------------------------------------------------

    def lock(self, box: str, name: str) -> int | None:
        """Open and ``flock`` a job file (never following a symlink); None if another process
        holds it or it is gone. The lock lives with the file across renames."""
        try:
            fd = os.open(self.box(box) / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def claim(self, name: str) -> int | None:
        """Lock new/NAME and rename it to active/NAME. Returns the lock fd, or None if another
        daemon got there first."""
        fd = self.lock("new", name)
        if fd is None:
            return None
        try:
            rename_noreplace(self.box("new") / name, self.box("active") / name)
        except OSError:
            os.close(fd)
            return None
        return fd

    async def read(self, box: str, name: str, limit: int) -> bytes:
        """Read a whole job file, refusing symlinks, non-regular files and files over
        ``limit`` bytes (BadInput with field ``(file)``)."""

        def opener(path: str, flags: int) -> int:
            return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)

        try:
            async with aiofiles.open(self.box(box) / name, "rb", opener=opener) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BadInput("not a regular file", field="(file)")
                if st.st_size > limit:
                    raise BadInput(f"job file is {st.st_size} bytes; the limit is {limit}",
                                   field="(file)")
                data = await f.read(limit + 1)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BadInput("is a symlink; job files in the spool must be regular files "
                               "(not followed)", field="(file)") from None
            raise BadInput(f"cannot read job file: {exc.strerror}", field="(file)") from None
        if len(data) > limit:
            raise BadInput(f"job file is over the limit of {limit} bytes", field="(file)")
        return data

    def finish(self, src_box: str, name: str, dst_box: str, record: dict[str, Any]) -> str:
        """Write the sidecar into ``dst_box``, then move the job file beside it; returns the
        final name (NAME, or NAME with a ``~N`` suffix if NAME was taken there)."""
        suffix = ".result.json" if dst_box == "done" else ".error.json"
        dst = self.box(dst_box)
        for n in range(1000):
            final = name if n == 0 else f"{name}~{n}"
            if os.path.lexists(dst / final) or os.path.lexists(dst / (final + suffix)):
                continue
            try:  # written in tmp/ and renamed in: a crash leaves nothing half-written here
                write_json(dst / (final + suffix), record, scratch=self.box("tmp"))
            except FileExistsError:
                continue
            try:
                rename_noreplace(self.box(src_box) / name, dst / final)
            except FileExistsError:
                continue
            _fsync_dir(dst)
            return final
        raise OSError(errno.EEXIST, f"no free name for {name} in {dst_box}/")

    def requeue(self, name: str) -> str | None:
        """active/NAME back to new/ (for the next start); returns the name used."""
        for n in range(1000):
            final = name if n == 0 else f"{name}~{n}"
            try:
                rename_noreplace(self.box("active") / name, self.box("new") / final)
            except FileExistsError:
                continue
            except FileNotFoundError:
                return None
            _fsync_dir(self.box("new"))
            return final
        return None

    def clean_tmp(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Delete tmp/ files untouched for ``older_than_s``: writers that died half way. Also
        the results' temporary files that older versions wrote in done/ and failed/
        (``.NAME.result.json.XXXX.tmp``) and a crash left there."""
        now = time.time() if now is None else now
        removed = []
        for entry in self.entries("tmp"):
            if entry.kind != "other" and now - entry.mtime_ns / 1e9 > older_than_s:
                try:
                    os.unlink(self.box("tmp") / entry.name)
                    removed.append(entry.name)
                except FileNotFoundError:
                    pass
        for box in ("done", "failed"):
            try:
                names = os.listdir(self.box(box))
            except FileNotFoundError:
                continue
            for name in names:
                if not (name.startswith(".") and name.endswith(".tmp")
                        and SIDE_SUFFIXES[0 if box == "done" else 1] in name):
                    continue
                path = self.box(box) / name
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
                        os.unlink(path)
                        removed.append(f"{box}/{name}")
                except FileNotFoundError:
                    pass
        return removed

    def names(self, box: str) -> list[str]:
        """Job file names in ``box`` (no sidecars, no dotfiles), unsorted; one listdir."""
        try:
            names = os.listdir(self.box(box))
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and not n.endswith(SIDE_SUFFIXES)]

    def sidecar(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """The result or error record of a finished job, found by its spool name."""
        for box, suffix in (("done", ".result.json"), ("failed", ".error.json")):
            path = self.box(box) / (name + suffix)
            try:
                with open(path, "rb", opener=_nofollow) as f:
                    return box, json.loads(f.read(1 << 22))
            except (OSError, ValueError):
                continue
        return None


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def write_json(path: Path, record: dict[str, Any], *, scratch: Path | None = None) -> None:
    """Write ``record`` to ``path`` whole or not at all. With ``scratch`` (a directory on the
    same filesystem, the spool's tmp/) the temporary file lives there, so a crash never leaves
    one beside the results, and ``path`` is never replaced (FileExistsError)."""
    # In tmp/ without a leading dot, so that clean_tmp() sees (and removes) a stale one.
    name = f"{path.name}.{secrets.token_hex(4)}.tmp"
    tmp = scratch / name if scratch is not None else path.parent / f".{name}"
    data = json.dumps(record, indent=2, sort_keys=True, default=str).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o640)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if scratch is None:
            os.replace(tmp, path)
        else:
            rename_noreplace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
