"""Files and block devices as sources and sinks.

Block writes use positioned I/O (pread/pwrite) on one descriptor, run on the job's thread pool,
so many coroutines never share a seek position and the event loop never waits on the disk;
reads too, except a regular file's where few CPUs are usable (:func:`reads_on_loop`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from collections.abc import AsyncIterator
from typing import Any

from fspd.batched import BatchedThreads
from fspd.blocks import (
    BLOCK_SIZE,
    Bitmap,
    Block,
    BlockRef,
    Kind,
    blocks_for_bytes,
    digest,
    gib_for_bytes,
    is_zero,
    pad_block,
)
from fspd.checkpoint import decode_bitmap, encode_bitmap
from fspd.context import JobContext
from fspd.endpoint import Gap, VolumeInfo
from fspd.endpoints import registry, safeopen
from fspd.endpoints.paths import check_read, check_write
from fspd.errors import BadInput, TransferFailed
from fspd.hashing import LOOP_ONLY_MAX_CPUS, usable_cpus
from fspd.jobs import HOST_PLACEHOLDER, FileDestinationSpec, FileSourceSpec, JobSpec
from fspd.log import get_logger

log = get_logger("fspd.files")

GIB = 1 << 30
_BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = 8 * BLOCK_SIZE
_SAMPLE_BLOCKS = 8  # written blocks whose digests identify a target on resume
READ_BATCH = 4  # blocks a file source's reading thread takes at once
WRITE_BATCH = 8  # blocks a file's writer thread takes at once (and writers feeding it)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range of a regular file (it then reads zeros). False if unsupported."""
    rc = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(_FALLOC_FL_PUNCH_HOLE |
                         _FALLOC_FL_KEEP_SIZE), ctypes.c_long(offset), ctypes.c_long(length))
    return rc == 0


def zero_range(fd: int, offset: int, length: int, *, device: bool) -> None:
    """Make ``[offset, offset+length)`` read zeros: BLKZEROOUT on devices, a punched hole in
    files, and plain zero writes where neither is supported."""
    if length <= 0:
        return
    if device:
        try:
            fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
            return
        except OSError:
            pass
    elif punch_hole(fd, offset, length):
        return
    end = offset + length
    while offset < end:
        n = min(_ZERO_CHUNK, end - offset)
        os.pwrite(fd, memoryview(bytes(n)), offset)
        offset += n


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Allocated byte ranges of a sparse file (SEEK_DATA/SEEK_HOLE), or None if unknown."""
    ranges = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            offset = end
            if len(ranges) > 100_000:  # heavily fragmented: just read everything
                return None
    except OSError:
        return None
    return ranges


def _data_block_count(ranges: list[tuple[int, int]], size: int) -> int:
    """Blocks of a file that hold allocated extents (each counted once)."""
    count = next_index = 0
    for start, end in ranges:
        first, last = max(next_index, start // BLOCK_SIZE), blocks_for_bytes(min(end, size))
        if last > first:
            count += last - first
            next_index = last
    return count


class FileSource:
    """Every block of a file or block device. Holes are known zeros and are not read; the
    final partial block is zero-padded, and the exact byte length is kept."""

    def __init__(self, ctx: JobContext, path: str, field: str = "source.path") -> None:
        self.ctx = ctx
        self.raw_path = path
        self.field = field
        self.path = check_read(path, ctx.settings.paths, field)
        self._rdev = safeopen.device_number(self.path)
        self._fd = -1
        self.size = 0
        self.reads = 0
        # Reads (pread, zero test, SHA-256: all release the GIL) on worker_threads threads,
        # handed over in batches: one thread hop per batch, not per block; or on the loop
        # (``_on_loop``, see :func:`reads_on_loop`).
        self._reader: BatchedThreads | None = None
        self._on_loop = False
        self._regular = False  # a regular file (else a block device), known once opened

    async def open(self) -> VolumeInfo:
        try:
            self._fd = safeopen.open_beneath(
                self.path, safeopen.roots_for(self.path, self.ctx.settings.paths.allow_read,
                                              self._rdev), os.O_RDONLY, rdev=self._rdev)
        except OSError as exc:
            raise BadInput(f"cannot open {self.raw_path}: {exc.strerror}",
                           field=self.field) from None
        self.size = _device_size(self._fd)
        if self.size == 0:
            raise BadInput(f"{self.raw_path} is empty", field=self.field)
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._on_loop = reads_on_loop(self.ctx.settings.transfer.read_in_threads,
                                      self._regular)
        if self._on_loop:  # read in order: let the kernel read well ahead of the loop
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return VolumeInfo(volume_size=gib_for_bytes(self.size) * GIB, byte_length=self.size,
                          origin=str(self.path), covered_blocks=blocks_for_bytes(self.size))

    async def entries(self) -> AsyncIterator[BlockRef | Gap]:
        count = blocks_for_bytes(self.size)
        # Only a regular file's holes are known zeros; a block device answers SEEK_DATA in
        # ways that say nothing about its content, so every block of it is read.
        ranges = (await self.ctx.offload(_data_ranges, self._fd, self.size) if self._regular
                  else None)
        self.ctx.progress.expect(count, data_blocks=count if ranges is None
                                 else _data_block_count(ranges, self.size))
        if ranges is None:
            for index in range(count):
                yield BlockRef(index)
            return
        next_index = 0
        for start, end in ranges:
            first, last = start // BLOCK_SIZE, blocks_for_bytes(min(end, self.size))
            for index in range(max(next_index, first), last):
                if index > next_index:
                    for hole in range(next_index, index):
                        yield BlockRef(hole, Kind.ZERO)
                yield BlockRef(index)
                next_index = index + 1
        for hole in range(next_index, count):
            yield BlockRef(hole, Kind.ZERO)

    def _read(self, index: int) -> Block:
        data = os.pread(self._fd, BLOCK_SIZE, index * BLOCK_SIZE)
        expected = min(BLOCK_SIZE, self.size - index * BLOCK_SIZE)
        if len(data) != expected:
            raise TransferFailed(f"short read at block {index} of {self.raw_path}: "
                                 f"{len(data)} of {expected} bytes (did the file change?)")
        data = pad_block(data)
        if is_zero(data):
            return Block.zeros(index)
        return Block(index, data, digest(data), False)

    async def probe_zero(self, ref: BlockRef) -> bool:
        """Whether a listed block reads as zeros, as ``fetch`` would find (for a dry run's
        plan: a local read, no digest)."""
        if ref.kind is Kind.ZERO:
            return True
        try:
            return await self.ctx.offload(lambda: is_zero(pad_block(
                os.pread(self._fd, BLOCK_SIZE, ref.index * BLOCK_SIZE))))
        except OSError as exc:
            raise self._read_failed(ref.index, exc) from None

    async def fetch(self, ref: BlockRef) -> Block:
        self.reads += 1
        try:
            if self._on_loop:
                return self._read(ref.index)
            if self._reader is None:
                self._reader = BatchedThreads(self.ctx.settings.transfer.worker_threads,
                                              batch=READ_BATCH, name="fspd-read")
            return await self._reader.submit(self._read, ref.index)
        except OSError as exc:
            raise self._read_failed(ref.index, exc) from None

    def _read_failed(self, index: int, exc: OSError) -> TransferFailed:
        return TransferFailed(f"reading {self.raw_path} at block {index}: {exc.strerror}")

    async def close(self) -> None:
        if self._reader is not None:  # its queued reads end before the descriptor closes
            self._reader.close()
            self._reader = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1




def reads_on_loop(setting: bool | str, regular_file: bool, cpus: int | None = None) -> bool:
    """Whether a file source reads (pread, zero test, SHA-256) on the event loop itself.

    On threads, each of a block's two GIL-releasing calls (pread, SHA-256) ends in taking
    the GIL back from the loop, and uvloop lets go of it around every I/O callback: threads
    and loop hand it over thousands of times a second. On this project's 2-CPU machine a
    4 GiB ``fspd upload`` as typed made ~22,000 voluntary context switches that way (the
    floor, which reads on its loop: ~2,000) and cost 7-20 % more CPU, with no steady gain
    in speed: the second CPU is busy with the network stack and the other end. A regular file
    read in order comes from the page cache (readahead), so a read on the loop rarely waits;
    a block device's read waits on the device, so it stays on threads. "auto" reads on the
    loop for a regular file with at most LOOP_ONLY_MAX_CPUS usable CPUs; true or false
    force threads or the loop."""
    if setting == "auto":
        return regular_file and (usable_cpus() if cpus is None else cpus) <= LOOP_ONLY_MAX_CPUS
    return not setting


# What a block device answers once it is pulled: I/O errors, "no such device", and (when its
# capacity drops to 0, as the kernel does on removal) "no space" for every offset.
_DEVICE_GONE = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOSPC, errno.ESHUTDOWN})


# Targets locked by jobs of this process (the daemon runs several): (st_dev, st_ino) → job id.
_LOCKED: dict[tuple[int, int], str] = {}


def target_lock_holder(fd: int) -> str:
    """Who holds the ``flock`` on an open file: a job of this process by its id, else the
    holding process's pid as /proc/locks tells it."""
    st = os.fstat(fd)
    job = _LOCKED.get((st.st_dev, st.st_ino))
    if job is not None:
        return f"job {job} of this process"
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == key:
                    return f"pid {parts[4]} holds its lock"
    except OSError:
        pass
    return "it is locked"


class FileSink:
    """Writes an image to a regular file or block device.

    ``mode = "image"``: the target becomes exactly the volume. A regular file is rebuilt sparse
    at the volume size (zero blocks and gaps become holes); a device gets zeros written (or
    BLKZEROOUT) wherever the volume has no data, so no stale byte survives.
    ``mode = "in-place"``: only the blocks given change (deltadownload onto an image of A).
    """

    def __init__(self, ctx: JobContext, path: str, *, name: str, mode: str = "image") -> None:
        self.ctx = ctx
        self.name = name
        self.raw_path = path
        self.mode = mode
        # The fleet host running the job (``[fleet] host``): it names itself in the journal,
        # and ``{host}`` in the path becomes it (refused when the job is not a fleet job).
        self.host = ctx.settings.fleet.host if ctx.settings.fleet is not None else None
        if HOST_PLACEHOLDER in path:
            if self.host is None:
                raise BadInput(f"{HOST_PLACEHOLDER} is expanded only in a fleet job (the "
                               "configuration has no [fleet] section)", field=f"{name}.path")
            path = path.replace(HOST_PLACEHOLDER, self.host)
            self.raw_path = path
        # One thread writes (several only contend for the file's inode lock: 4 pwrite
        # threads cost ~20 % more CPU per block than 1-2), taking the blocks of up to
        # WRITE_BATCH writers at once: one thread hop per batch, not per block.
        self.concurrency = WRITE_BATCH
        self._writer: BatchedThreads | None = None
        self.path, self.device = check_write(path, ctx.settings.paths, f"{name}.path",
                                             must_exist=(mode == "in-place"))
        self._rdev = safeopen.device_number(self.path) if self.device else None
        self._fd = -1
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) while locked
        self._sample: dict[int, str] = {}  # a few written blocks' digests, for resuming
        self._sample_regions: set[int] = set()  # the eighths of the volume sampled so far
        self._fresh = False
        self._created = False  # this run created the target file
        # A failed fsync is reported once and then forgotten by the kernel (the next one
        # succeeds with the data lost), so the first failure sticks: nothing after it counts.
        self._broken: TransferFailed | None = None
        self.written = Bitmap(0)
        self.blocks_written = 0
        self.volume_size = 0

    async def open(self, info: VolumeInfo) -> None:
        self.volume_size = info.volume_size
        self.written = Bitmap(info.block_count)
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            roots = safeopen.roots_for(self.path, self.ctx.settings.paths.allow_write,
                                       self._rdev)
            if not self.device:
                try:  # O_EXCL tells whether this run made the file (removed if it fails)
                    self._fd = safeopen.open_beneath(self.path, roots,
                                                     flags | os.O_CREAT | os.O_EXCL, 0o644)
                    self._created = True
                except FileExistsError:
                    pass
            if self._fd < 0:
                self._fd = safeopen.open_beneath(self.path, roots, flags, 0o644,
                                                 rdev=self._rdev)
        except OSError as exc:
            raise BadInput(f"cannot open {self.raw_path} for writing: {exc.strerror}",
                           field=f"{self.name}.path") from None
        self._lock()
        try:
            await self._prepare(info)
        except BaseException:
            self._close()  # and so unlock
            raise

    async def _prepare(self, info: VolumeInfo) -> None:
        if self.device:
            size = _device_size(self._fd)
            if size < info.volume_size:
                raise BadInput(f"{self.raw_path} holds {size} bytes, the volume needs "
                               f"{info.volume_size}", field=f"{self.name}.path")
            self._resume(info)
        elif self.mode == "image":
            if not self._resume(info, exact_size=True):
                await self.ctx.offload(self._recreate_sparse)
                self._fresh = True
        else:
            if os.fstat(self._fd).st_size < info.volume_size:
                os.ftruncate(self._fd, info.volume_size)
            self._resume(info)

    def _lock(self) -> None:
        """Hold an exclusive ``flock`` on the target for the whole job (released on close or
        exit, even by kill -9), so two jobs never interleave their blocks in one file."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BadInput(f"cannot lock {self.raw_path}: {exc.strerror}",
                               field=f"{self.name}.path") from None
            holder = target_lock_holder(self._fd)
            self._close()
            raise BadInput(f"{self.raw_path} is being written by another fspd job ({holder}); "
                           "wait for it to finish or choose another path",
                           field=f"{self.name}.path") from None
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)
        _LOCKED[self._identity] = self.ctx.job_id

    def _resume(self, info: VolumeInfo, *, exact_size: bool = False) -> bool:
        """Carry on from an interrupted run if the target still looks as it left it."""
        state = self.ctx.resume_state(self.name)
        if not state or state.get("type") != "file":
            return False
        try:
            self._check_host(state.get("target"))
            if self._created:  # O_EXCL succeeded: nothing was at the path
                target = state.get("target")
                raise ValueError(f"{self._whose(target)} wrote {self.path}, which does not "
                                 f"exist {self._where(target)}")
            if exact_size and os.fstat(self._fd).st_size != info.volume_size:
                raise ValueError("the target's size changed")
            self.written = decode_bitmap(state["bitmap"], info.block_count)
            self._check_identity(state.get("target"), self.written)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.ctx.note(f"{self.name}: cannot resume ({exc}); restarting: writing every "
                          "block again")
            log.warning("resume_refused", destination=self.name, path=str(self.path),
                        reason=str(exc))
            self.written = Bitmap(info.block_count)
            return False
        self._fresh = bool(state.get("fresh"))
        return True

    def _target_identity(self, written: Bitmap) -> dict[str, Any]:
        """What identifies the target an interrupted run wrote: its inode (a device's
        number, which survives a reboot where its node's inode may not), its size, and the
        digests of a few written blocks spread over the volume."""
        st = os.fstat(self._fd)
        ident: dict[str, Any] = {"size": _device_size(self._fd) if self.device
                                 else st.st_size}
        if self.device:
            ident["rdev"] = st.st_rdev
        else:
            ident.update(dev=st.st_dev, ino=st.st_ino)
        ident["sample"] = {str(i): d for i, d in self._sample.items() if i in written}
        ident["path"] = str(self.path)
        if self.host is not None:
            ident["host"] = self.host
        return ident

    def _check_host(self, saved: Any) -> None:
        """Raise ValueError, saying why, when the journal comes from another fleet host that
        wrote another path (a per-host path): what it wrote is not reachable from here."""
        if not isinstance(saved, dict) or saved.get("host") in (None, self.host):
            return
        if saved.get("path") != str(self.path):
            raise ValueError(f"the checkpoint comes from fleet host {saved['host']}, which "
                             f"wrote {saved.get('path')}; this host ({self.host}) writes "
                             f"{self.path}: the blocks written there are not reachable here")

    def _from_other_host(self, saved: Any) -> bool:
        return isinstance(saved, dict) and saved.get("host") not in (None, self.host)

    def _whose(self, saved: Any) -> str:
        """Who wrote the target the journal describes, in words."""
        return f"the interrupted run on fleet host {saved['host']}" \
            if self._from_other_host(saved) else "the interrupted run"

    def _where(self, saved: Any) -> str:
        return f"on this host ({self.host})" if self._from_other_host(saved) else "any more"

    def _check_identity(self, saved: Any, written: Bitmap) -> None:
        """Raise ValueError unless the target is the one the checkpoint describes."""
        if not isinstance(saved, dict) or not isinstance(saved.get("sample"), dict):
            raise ValueError("the checkpoint does not identify the target")
        now = self._target_identity(Bitmap(0))
        keys = ("size", "rdev") if self.device else ("size", "dev", "ino")
        other = self._from_other_host(saved)
        if other:  # device numbers are per host (a shared NFS file has another st_dev there)
            keys = ("size",) if self.device else ("size", "ino")
        whose = self._whose(saved)
        for key in keys:
            if saved.get(key) != now[key]:
                raise ValueError(f"{self.path} is not the file {whose} wrote (its {key} "
                                 "changed)")
        for text, want in saved["sample"].items():
            index = int(text)
            if index not in written:
                continue
            got = digest(pad_block(os.pread(self._fd, BLOCK_SIZE, index * BLOCK_SIZE))).hex()
            if got != want:
                raise ValueError(f"block {index} of {self.path} is not what {whose} wrote")
            self._note_sample(index, want)

    def _note_sample(self, index: int, hexdigest: str) -> None:
        """Keep one written block's digest per eighth of the volume (its identity sample)."""
        region = index * _SAMPLE_BLOCKS // max(1, self.written.size)
        if region not in self._sample_regions:
            self._sample_regions.add(region)
            self._sample[index] = hexdigest

    def has(self, index: int) -> bool:
        return index in self.written

    async def checkpoint_state(self) -> dict[str, Any]:
        bitmap = Bitmap(self.written.size, self.written.to_bytes())  # before the fsync
        if self._broken is not None:
            raise self._broken
        if self._fd >= 0:
            try:
                await self.ctx.offload(os.fsync, self._fd)
            except OSError as exc:
                self._broken = self._failure(exc, "flushing")
                raise self._broken from None
        return {"type": "file", "fresh": self._fresh, "bitmap": encode_bitmap(bitmap),
                "target": self._target_identity(bitmap)}

    def _recreate_sparse(self) -> None:
        os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, self.volume_size)

    def _pwrite(self, block: Block) -> None:
        offset = block.index * BLOCK_SIZE
        if block.zero:
            zero_range(self._fd, offset, BLOCK_SIZE, device=self.device)
            return
        view = memoryview(block.data)
        written = 0
        while written < BLOCK_SIZE:
            written += os.pwrite(self._fd, view[written:], offset + written)

    async def write(self, block: Block) -> bool:
        if self._broken is not None:
            raise self._broken
        if block.zero and self._fresh:
            self.written.set(block.index)
            return False  # already a hole in the freshly truncated file
        try:
            if self._writer is None:
                self._writer = BatchedThreads(1, batch=WRITE_BATCH, name=f"fspd-{self.name}")
            await self._writer.submit(self._pwrite, block)
        except OSError as exc:
            raise self._failure(exc, f"writing block {block.index}") from None
        self.written.set(block.index)
        self.blocks_written += 1
        if not block.zero and len(self._sample) < _SAMPLE_BLOCKS:
            self._note_sample(block.index, block.digest.hex())
        return not block.zero

    async def gap(self, gap: Gap) -> None:
        if self._fresh:
            return
        offset = gap.start * BLOCK_SIZE
        length = min(gap.stop * BLOCK_SIZE, self.volume_size) - offset
        try:
            await self.ctx.offload(lambda: zero_range(self._fd, offset, length,
                                                      device=self.device))
        except OSError as exc:
            raise self._failure(exc, "zeroing unallocated blocks") from None

    def _sync(self) -> None:
        os.fsync(self._fd)
        if not self.device:
            try:
                dir_fd = safeopen.open_dir_beneath(self.path.parent,
                                                   self.ctx.settings.paths.allow_write)
            except safeopen.UnsafePath as exc:
                raise TransferFailed(f"flushing {self.raw_path}: {exc.strerror}") from None
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def commit(self) -> dict[str, Any]:
        if self._broken is not None:
            self._close()
            raise self._broken
        try:
            await self.ctx.offload(self._sync)
            self._check_still_named()
        except OSError as exc:
            raise self._failure(exc, "flushing") from None
        finally:
            self._close()
        return {"destination": self.name, "type": "file", "path": str(self.path),
                "device": self.device, "bytes": self.volume_size,
                "blocks_written": self.blocks_written, "state": "completed"}

    def _check_still_named(self) -> None:
        """Success means the bytes are at the path: it must still name the file (or device)
        that was written, not nothing (deleted, renamed away) or another file."""
        mine = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if self.device:
            same = now is not None and now.st_rdev == mine.st_rdev
        else:
            same = now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        if not same:
            what = "was deleted or renamed" if now is None else "now names another file"
            raise TransferFailed(f"{self.raw_path} {what} while the job wrote it: the image "
                                 "written is not at that path; run the job again")

    def _failure(self, exc: OSError, doing: str) -> TransferFailed:
        """Name the cause in words a user can act on: a full filesystem, a device that went
        away, a read-only or failing disk. The checkpoint keeps what was written before."""
        code = exc.errno or 0
        cause = os.strerror(code) if code else str(exc)
        act = f"{doing} {self.raw_path}" if doing == "flushing" else \
            f"{doing} of {self.raw_path}"
        retry = "; then rerun the job: it resumes from its checkpoint"
        if self.device and code in _DEVICE_GONE:
            now = self._current_size()
            if code != errno.ENOSPC or now is None or now < self.volume_size:
                seen = ("its device node is gone" if now is None else
                        f"it now reports {now} bytes, the volume needs {self.volume_size}")
                return TransferFailed(f"device {self.raw_path} disappeared or stopped "
                                      f"answering while {act} ({cause}; {seen}); reattach "
                                      f"it{retry}")
        if code in (errno.ENOSPC, errno.EDQUOT):
            where = self.path if self.device else self.path.parent
            what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
            return TransferFailed(f"{what} on {where} while {act} (the image needs up to "
                                  f"{self.volume_size} bytes); free some space{retry}")
        if code in (errno.EROFS, errno.EACCES, errno.EPERM):
            return TransferFailed(f"cannot write while {act}: {cause} (a read-only "
                                  f"filesystem?){retry}")
        if code == errno.EIO:
            return TransferFailed(f"I/O error while {act}: the disk failed or went away "
                                  f"(see dmesg){retry}")
        return TransferFailed(f"{act}: {cause}")

    def _current_size(self) -> int | None:
        """The device's size now, or None when its node or our descriptor is gone."""
        try:
            st = os.stat(self.path)
            if not stat.S_ISBLK(st.st_mode):
                return None
            return _device_size(self._fd) if self._fd >= 0 else None
        except OSError:
            return None

    def _close(self) -> None:
        if self._writer is not None:  # its queued writes end before the descriptor closes
            self._writer.close()
            self._writer = None
        if self._identity is not None:
            _LOCKED.pop(self._identity, None)
            self._identity = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _unlink_if(self, written: os.stat_result) -> bool:
        """Remove the target only if its name still holds the file this run wrote, walking
        to it as it was opened (no symlink followed), so a swapped path removes nothing else.
        """
        parent = safeopen.open_dir_beneath(
            self.path.parent, safeopen.roots_for(self.path, self.ctx.settings.paths.allow_write,
                                                 None))
        try:
            try:
                st = os.stat(self.path.name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if (st.st_dev, st.st_ino) != (written.st_dev, written.st_ino):
                return False
            os.unlink(self.path.name, dir_fd=parent)
            return True
        finally:
            os.close(parent)

    async def abort(self, error: BaseException) -> dict[str, Any]:
        """Say what is left at the target. A file this run created is removed when nothing
        can resume it (no state dir); one kept for resume, or one that existed before (never
        removed), is named in the job's error."""
        written = os.fstat(self._fd) if self._fd >= 0 else None
        self._close()
        done = f"{self.written.count} of {self.written.size} blocks written"
        if self._created and self.ctx.checkpoint is None:
            try:
                removed = written is not None and self._unlink_if(written)
                note = (f"removed the unfinished {self.path}, which this run created"
                        if removed else None)
            except OSError as exc:
                note = f"left the unfinished {self.path} ({done}; removing it failed: " \
                       f"{exc.strerror})"
        elif self.ctx.checkpoint is not None:
            note = (f"kept the unfinished {self.path} ({done}) for resume: run the same job "
                    f"again; its checkpoint is in {self.ctx.state_dir}")
        else:
            note = (f"{self.path} was partially overwritten ({done}); it is not a complete "
                    "image")
        return {"destination": self.name, "type": "file", "path": str(self.path),
                "state": "failed", "error": str(error), "note": note}




@registry.source(FileSourceSpec)
def open_source(ctx: JobContext, job: JobSpec) -> FileSource:
    assert isinstance(job.source, FileSourceSpec)
    return FileSource(ctx, job.source.path)


@registry.sink(FileDestinationSpec)
def open_sink(ctx: JobContext, job: JobSpec, dest: FileDestinationSpec, name: str) -> FileSink:
    return FileSink(ctx, dest.path, name=name, mode=dest.mode)
