"""S3 archives as a sink (movetos3) and as a source (getfroms3); format in docs/archive-format.md.

The sink groups blocks by aligned window (``segment_blocks``): the pipeline's ``listed`` hook
says which blocks a window will get, so a window is packed as soon as its last block arrives.
Packing (zstd) runs on the job's thread pool. The manifest is kept in a local file as windows
finish, in block order, and uploaded last.

Memory: a window keeps its blocks after the pipeline hands them over, until they are packed
and uploaded, so the sink counts them against the process's block budget
(``transfer.max_buffered_blocks``) by whole windows. Before the first data block of a window
is fetched, the pipeline reserves ``segment_blocks`` units for it (all at once, in listing
order; see ``Pipeline._reserve``), and the window's blocks then take no permit of their own.
The reservation is returned when the window's segments are all uploaded and its buffers
dropped, and once the pipeline no longer holds any of its blocks (another destination of the
job may still be writing one). Compressed segment bytes awaiting upload are counted in the
same units: a run's raw blocks are let go as soon as it is compressed, and a zstd frame is at
most a few bytes per KiB larger than its input. At most ``[s3] windows_in_flight`` windows of
one sink are reserved at a time. An admitted window needs nothing more from the budget to
finish (its blocks are already listed), so windows never wait on each other: no deadlock,
however many jobs share the budget and however slow or failing S3 is (a failing upload fails
the job, and every reservation is returned when the job ends, cancelled or not). A window
larger than the whole budget could never be admitted, so ``segment_blocks`` above
``max_buffered_blocks`` is refused before anything moves (bad input, exit 2); it is not
clamped, which would let the window exceed the budget.

Resuming (``checkpoint_state`` / ``has``): a window is done when every segment of it is in S3
(PutObject or CompleteMultipartUpload answered, S3 having checked its SHA-256). The checkpoint
holds how many bytes of the local manifest file are durable (every window before
``next_window`` is in it), the records of done windows not yet in it (few: windows finish
nearly in order), and the multipart uploads in progress with their parts. A resumed run checks
that the segments it relies on are still in S3 (one listing, merged with the manifest file in
key order), carries the manifest file on, skips the done windows, and continues the uploads.

The source plans the restore from the manifests (and parents) and keeps at most a few windows
of verified blocks in memory: a loader walks the plan ahead of the fetchers, and a window is
dropped once its last block has been handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspd.archive import MANIFEST_NAME, SEGMENT_DIR
from fspd.archive.fsp_import import Coverage, incomplete_message, index_segments, parse_dir
from fspd.archive.manifest import (
    Header,
    ManifestError,
    ManifestFile,
    ManifestWriter,
    ParentRef,
    Record,
    Segment,
    Trailer,
    Zeros,
    header_json,
    parse_header,
    parse_record,
    read_records,
    record_json,
)
from fspd.archive.reader import (
    Level,
    WindowPlan,
    chain_windows,
    fsp_windows,
    load_piece,
    open_chain,
)
from fspd.archive.segments import pack, runs
from fspd.archive.store import ObjectStore, S3Location, clean_prefix, parse_s3_url, tagging
from fspd.aws import AwsTarget, call
from fspd.blocks import GIB, Bitmap, Block, BlockRef, Kind
from fspd.budget import Reservation
from fspd.checkpoint import spec_digest
from fspd.context import JobContext
from fspd.endpoint import Gap, VolumeInfo
from fspd.endpoints import registry
from fspd.errors import BadInput, PermissionProblem, TransferFailed
from fspd.jobs import EbsSourceSpec, JobSpec, S3DestinationSpec, S3SourceSpec
from fspd.log import get_logger
from fspd.retry import ApiError

log = get_logger("fspd.s3")


async def check_bucket(store: ObjectStore, field: str) -> None:
    """Fail before any data moves when the bucket is missing or out of reach (HeadBucket),
    naming the bucket; S3 answers a HEAD with a bare status, so it is mapped here."""
    bucket = store.loc.bucket
    s3 = await store.client()

    async def attempt() -> None:
        try:
            await call(s3, "HeadBucket", Bucket=bucket)
        except ApiError as exc:
            if exc.status >= 500 or exc.code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise
            if exc.status == 404 or exc.code in ("NoSuchBucket", "404", "NotFound"):
                raise BadInput(f"bucket {bucket} does not exist ({store.target.describe()}); "
                               "create it or name another", field=field) from None
            if exc.status in (401, 403) or exc.code in ("AccessDenied", "Forbidden", "403"):
                raise PermissionProblem(
                    f"AWS refused HeadBucket on bucket {bucket}: the credentials need "
                    f"s3:ListBucket on arn:aws:s3:::{bucket} (or the bucket belongs to "
                    "another account)") from None
            raise TransferFailed(f"HeadBucket {bucket} failed: {exc.code}: {exc.message}"
                                 ) from None
    await store.retrier().run(attempt)


@dataclass
class _Window:
    """Blocks of one aligned window on their way into segments."""

    number: int
    expected: int = 0
    received: int = 0
    blocks: list[Block] = field(default_factory=list)
    zeros: list[int] = field(default_factory=list)
    state: str = "open"  # open → ready → packing → done
    records: list[Record] = field(default_factory=list)
    reservation: Reservation | None = None  # its share of the block budget
    slot: bool = False  # counts against windows_in_flight


class S3ArchiveSink:
    """Writes an archive: segments as windows complete, the manifest last."""

    def __init__(self, ctx: JobContext, target: AwsTarget, loc: S3Location, *, name: str,
                 source: dict[str, Any], segment_blocks: int, zstd_level: int,
                 storage_class: str | None = None, sse: str | None = None,
                 kms_key_id: str | None = None, tags: dict[str, str] | None = None,
                 parent: S3Location | None = None, base_snapshot_id: str | None = None,
                 job: dict[str, str] | None = None) -> None:
        self.ctx = ctx
        self.job = job  # this job's identity, written into the manifest header
        self.name = name
        self.concurrency = max(2, ctx.settings.transfer.worker_threads * 2)
        self.store = ObjectStore(ctx, target, loc)
        self.source = source
        self.width = segment_blocks
        self.level = zstd_level
        self.parent_loc = parent
        self.base_snapshot_id = base_snapshot_id
        self._extra: dict[str, Any] = {}
        if sse:
            self._extra["ServerSideEncryption"] = sse
        if kms_key_id:
            self._extra["SSEKMSKeyId"] = kms_key_id
        if tags:
            self._extra["Tagging"] = tagging(tags)
        self._segment_extra = dict(self._extra)
        if storage_class:
            self._segment_extra["StorageClass"] = storage_class
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        self._ready: deque[_Window] = deque()
        self._gaps: deque[tuple[int, int]] = deque()
        self._frontier = 0
        self._listing_done = False
        self._incremental = False
        self._writer: ManifestWriter | None = None
        self._parent_url: str | None = None
        # Resuming: windows below ``_next_window`` are in the manifest file; ``_resumed`` are
        # the done windows of an interrupted run that are not; gaps before ``_resume_next``
        # are in the manifest file already.
        self._next_window = 0
        self._resumed: dict[int, list[Record]] = {}
        self._resume_next = 0
        self.windows_resumed = 0
        self.already_complete = False  # an interrupted run had written the manifest
        self._complete: tuple[dict[str, Any], Trailer] | None = None
        self._in_flight = ctx.settings.s3.windows_in_flight
        self._slots: asyncio.Semaphore | None = None
        self._released = False  # release_budget() was called: reserve nothing more

    async def open(self, info: VolumeInfo) -> None:
        loc = self.store.loc
        budget = self.ctx.limits.max_buffered_blocks
        if self.width > budget:
            raise BadInput(f"segment_blocks {self.width} exceeds the block budget "
                           f"([transfer] max_buffered_blocks = {budget}): a window is held in "
                           "memory whole; use a smaller segment_blocks or raise "
                           "max_buffered_blocks", field=f"{self.name}.segment_blocks")
        self._slots = asyncio.Semaphore(self._in_flight)
        await check_bucket(self.store, f"{self.name}.bucket")
        state = self.ctx.resume_state(self.name)
        if state is not None and (state.get("type") != "s3" or state.get("url") != loc.url()):
            state = None
        if await self.store.head(MANIFEST_NAME) is not None:
            if await self._written_by(state):
                self.already_complete = True
                return
            raise BadInput(f"an archive already exists at {loc.url()} (archives are never "
                           "overwritten; choose another prefix)", field=f"{self.name}.prefix")
        parent = await self._parent()
        self._incremental = parent is not None
        header = Header(
            source=self.source, volume_size=info.volume_size, byte_length=info.byte_length,
            segment_blocks=self.width, zstd_level=self.level,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            parent=parent, origin=info.origin, description=info.description,
            tags=dict(info.tags), encrypted=info.encrypted, job=self.job)
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.ctx.state_dir / f"{self.name}.manifest.jsonl"
        if state is not None:
            try:
                await self._resume(state, path, header)
            except (ValueError, KeyError, TypeError, OSError, ManifestError) as exc:
                self.ctx.note(f"{self.name}: cannot resume the archive ({exc}); archiving "
                              "it from the start")
                self._next_window, self._resumed, self._resume_next = 0, {}, 0
                self.store.resume_uploads({})
        if self._writer is None:
            self._writer = ManifestWriter(path, header)
        log.info("archive_started", destination=self.name, url=loc.url(),
                 parent=self._parent_url, segment_blocks=self.width, zstd_level=self.level,
                 resumed_windows=len(self._resumed), next_window=self._next_window)

    async def _written_by(self, state: dict[str, Any] | None) -> bool:
        """Whether the archive's manifest is one this job wrote: the header its interrupted
        run journaled (down to its ``created`` time), or a header naming this job (same id,
        same job spec), as a run killed after its manifest but before it could report leaves
        it. Then the archive is complete."""
        if state is None and self.job is None:
            return False
        path = self.ctx.state_dir / f"{self.name}.remote-manifest.jsonl"
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.store.download(MANIFEST_NAME, path)
            manifest = ManifestFile(path, self.store.loc.url(MANIFEST_NAME))
            with path.open("rb") as f:
                header = json.loads(f.readline())
            journaled = state is not None and header == state.get("header")
            if not journaled and (self.job is None or header.get("job") != self.job):
                return False
            self._complete = (header, await self.ctx.offload(manifest.validate))
            return True
        except (ValueError, ManifestError):
            return False
        finally:
            path.unlink(missing_ok=True)

    async def _resume(self, state: dict[str, Any], path: Path, header: Header) -> None:
        """Carry on from an interrupted run's checkpoint (see the module docstring)."""
        saved = state["header"]
        if (saved.get("volume_size"), saved.get("segment_blocks"), saved.get("zstd_level"),
                saved.get("parent")) != (header.volume_size, self.width, self.level,
                                         header_json(header)["parent"]):
            raise ValueError("the volume or the archive settings changed")
        length = int(state["manifest_bytes"])
        pending = state.get("pending_zeros")
        next_window = int(state["next_window"])
        with path.open("rb") as f:
            first = f.readline()
        if json.loads(first) != saved:
            raise ValueError("the local manifest file is not the checkpoint's")
        old = parse_header(saved, str(path))
        windows = {int(n): [parse_record(r, old, f"checkpoint window {n}") for r in recs]
                   for n, recs in state["windows"].items()}
        if any(n < next_window for n in windows):
            raise ValueError("the checkpoint's windows overlap the manifest file")
        vanished, lost = await self._vanished(path, old, len(first), length, windows)
        if vanished is not None:
            cut = vanished.first // self.width
            self.ctx.note(f"{self.name}: {self.store.loc.url(vanished.key)} is gone since the "
                          f"interrupted run; archiving again from block {cut * self.width}")
            self._writer = await self.ctx.offload(lambda: ManifestWriter.resume(
                path, length, cut=cut * self.width))
            next_window, windows = cut, {}
        else:
            for number in sorted(lost):
                del windows[number]
                self.ctx.note(f"{self.name}: a segment of window {number} is gone since the "
                              "interrupted run; archiving that window again")
            zeros = Zeros(int(pending[0]), int(pending[1])) if pending else None
            self._writer = await self.ctx.offload(lambda: ManifestWriter.resume(
                path, length, zeros))
        self._next_window, self._resumed = next_window, windows
        self._resume_next = self._writer.next_block
        self.store.resume_uploads(dict(state.get("uploads") or {}))
        log.info("archive_resumed", destination=self.name, url=self.store.loc.url(),
                 next_window=next_window, done_windows=len(windows),
                 uploads=len(state.get("uploads") or {}))

    async def _vanished(self, path: Path, header: Header, start: int, length: int,
                        windows: dict[int, list[Record]]) -> tuple[Segment | None, set[int]]:
        """Check the segments a resume relies on against one listing of ``segments/`` (keys
        sort in block order, like the manifest): the first segment of the manifest file that
        is missing or has another size, else the checkpoint windows that lost a segment."""
        async with contextlib.aclosing(self.store.list_sizes(f"{SEGMENT_DIR}/")) as listing:
            current = await anext(listing, None)

            async def present(seg: Segment) -> bool:
                nonlocal current
                while current is not None and current[0] < seg.key:
                    current = await anext(listing, None)
                return current == (seg.key, seg.size)

            with path.open("rb") as f:
                records = read_records(f, header, start, length, str(path))
                while batch := await self.ctx.offload(
                        lambda: list(itertools.islice(records, 4096))):
                    for _offset, _line, rec in batch:
                        if isinstance(rec, Segment) and not await present(rec):
                            return rec, set()
            lost = set()
            for number in sorted(windows):
                for rec in windows[number]:
                    if isinstance(rec, Segment) and not await present(rec):
                        lost.add(number)
                        break
            return None, lost

    def has(self, index: int) -> bool:
        """Whether the block's window is done: all its segments are in S3."""
        if self.already_complete:
            return True
        number = index // self.width
        if number < self._next_window or number in self._resumed:
            return True
        window = self._windows.get(number)
        return window is not None and window.state == "done"

    async def checkpoint_state(self) -> dict[str, Any]:
        loc = self.store.loc
        if self.already_complete:
            assert self._complete is not None
            return {"type": "s3", "url": loc.url(), "header": self._complete[0]}
        assert self._writer is not None
        # Everything below is taken at one instant (no await), so it is consistent.
        length, pending = self._writer.durable_point()
        windows = {str(w.number): [record_json(r) for r in w.records]
                   for w in self._windows.values() if w.state == "done"}
        windows.update({str(n): [record_json(r) for r in recs]
                        for n, recs in self._resumed.items()})
        state = {"type": "s3", "url": loc.url(), "header": header_json(self._writer.header),
                 "manifest_bytes": length,
                 "pending_zeros": [pending.start, pending.stop] if pending else None,
                 "next_window": self._next_window, "windows": windows,
                 "uploads": self.store.uploads_state()}
        await self.ctx.offload(self._writer.sync)  # the bytes claimed are on disk first
        return state

    async def _parent(self) -> ParentRef | None:
        field = f"{self.name}.parent_prefix"
        if self.parent_loc is None:
            if self.base_snapshot_id:
                raise BadInput("an archive of the blocks changed since base_snapshot_id "
                               f"{self.base_snapshot_id} needs parent_prefix: the archive of "
                               f"{self.base_snapshot_id}", field=field)
            return None
        if not self.base_snapshot_id:
            raise BadInput("parent_prefix needs a source of changed blocks (an ebs source "
                           "with base_snapshot_id)", field=field)
        pstore = ObjectStore(self.ctx, self.store.target, self.parent_loc)
        self._parent_url = self.parent_loc.url()
        try:
            chain = await open_chain(self.ctx, pstore, self.ctx.state_dir, f"{self.name}.parent")
        except ManifestError as exc:
            raise BadInput(str(exc), field=field) from None
        level = chain[0]
        for other in chain:
            other.manifest.path.unlink(missing_ok=True)
        src = level.manifest.header.source
        if src.get("snapshot_id") != self.base_snapshot_id:
            raise BadInput(f"parent archive {self._parent_url} holds "
                           f"{src.get('snapshot_id') or src.get('path') or src}, but the "
                           f"changed blocks are relative to {self.base_snapshot_id}",
                           field=field)
        return ParentRef(self.parent_loc.bucket, self.parent_loc.prefix, level.sha256, src)

    # The pipeline's listing hooks: called in listing order, before blocks are fetched.
    def listed(self, entry: BlockRef | Gap) -> None:
        if self.already_complete:
            return
        if isinstance(entry, Gap):
            # In a delta, unlisted blocks read zeros (volume growth); a resumed run skips the
            # part of a gap its manifest file has already.
            if self._incremental and entry.stop > self._resume_next:
                self._gaps.append((max(entry.start, self._resume_next), entry.stop))
            self._frontier = entry.stop
        else:
            number = entry.index // self.width
            self._frontier = entry.index + 1
            window = self._windows.get(number)
            if window is None and number >= self._next_window:
                records = self._resumed.pop(number, None)
                window = self._windows[number] = _Window(number)
                if records is not None:  # done by the interrupted run
                    window.state, window.records = "done", records
                    self.windows_resumed += 1
                    self._emit()
            if window is not None and window.state == "open":
                window.expected += 1
        self._mark_ready()

    def listing_done(self) -> None:
        self._listing_done = True
        if self._resumed:  # done windows the listing did not name again (not expected)
            for number, records in self._resumed.items():
                self._windows[number] = _Window(number, state="done", records=records)
            self._resumed.clear()
            self._windows = OrderedDict(sorted(self._windows.items()))
            self._emit()
        self._mark_ready()

    def _mark_ready(self) -> None:
        for window in self._windows.values():
            if (window.state == "open" and window.received == window.expected
                    and (self._listing_done
                         or self._frontier >= (window.number + 1) * self.width)):
                window.state = "ready"
                self._ready.append(window)

    # The pipeline's budget hooks (see the module docstring and Pipeline._reserve).
    async def window_needs(self, index: int) -> int:
        """Units the block's window must reserve before the block is fetched: the whole
        window the first time, 0 after (or for a window that is done or not archived)."""
        window = self._windows.get(index // self.width)
        if (window is None or window.state != "open" or window.reservation is not None
                or window.slot or self._released or self._slots is None):
            return 0
        if self._slots.locked():  # the windows in flight may be waiting only to be packed
            await self.flush_ready()
        await self._slots.acquire()
        window.slot = True
        return self.width

    def window_reserved(self, index: int, reservation: Reservation) -> None:
        window = self._windows.get(index // self.width)
        if window is None or self._released:
            reservation.close()
            return
        window.reservation = reservation

    def reservation(self, index: int) -> Reservation | None:
        window = self._windows.get(index // self.width)
        return window.reservation if window is not None else None

    async def flush_ready(self) -> None:
        await self._drain()

    def release_budget(self) -> None:
        """Return every reservation and drop the buffered blocks (the job has ended, or this
        destination was dropped); idempotent."""
        self._released = True
        for window in self._windows.values():
            self._let_go(window)
            window.blocks = []

    def _let_go(self, window: _Window) -> None:
        if window.reservation is not None:
            window.reservation.drop()  # the pipeline's holds on its blocks may outlast it
            if self._released:
                window.reservation.close()
            window.reservation = None
        if window.slot:
            window.slot = False
            if self._slots is not None:
                self._slots.release()

    async def write(self, block: Block) -> bool:
        if self.has(block.index):  # another destination needed it; this one has it
            return False
        window = self._windows[block.index // self.width]
        window.received += 1
        if block.zero:
            window.zeros.append(block.index)
        else:
            window.blocks.append(block)
        self._mark_ready()
        await self._drain()
        return not block.zero

    async def gap(self, gap: Gap) -> None:
        return None  # recorded from listed(), in order

    async def _drain(self) -> None:
        while self._ready:
            await self._pack(self._ready.popleft())

    async def _pack(self, window: _Window) -> None:
        window.state = "packing"
        blocks = sorted(window.blocks, key=lambda b: b.index)
        window.blocks = []
        pending = runs(blocks)
        del blocks
        segments = await asyncio.gather(*(self._put_run(pending, i)
                                          for i in range(len(pending))))
        records: list[Record] = list(segments)
        for run in _index_runs(sorted(window.zeros)):
            records.append(Zeros(*run))
        window.records = sorted(records, key=lambda r: r.first)
        window.zeros = []
        window.state = "done"
        self._let_go(window)
        self._emit()

    async def _put_run(self, pending: list[list[Block]], i: int) -> Segment:
        packed = await self.ctx.offload(pack, pending[i], self.level)  # empties the run
        await self.store.put(packed.record.key, packed.body, packed.sha256,
                             self._segment_extra)
        return packed.record

    def _emit(self) -> None:
        """Append finished windows to the manifest, in block order."""
        assert self._writer is not None
        while self._windows:
            number, window = next(iter(self._windows.items()))
            if window.state != "done":
                return
            del self._windows[number]
            self._next_window = number + 1
            for rec in window.records:
                self._emit_gaps(rec.first)
                if isinstance(rec, Zeros):
                    self._writer.zeros(rec.start, rec.stop)
                else:
                    self._writer.segment(rec)

    def _emit_gaps(self, before: int | None) -> None:
        assert self._writer is not None
        while self._gaps and (before is None or self._gaps[0][0] < before):
            self._writer.zeros(*self._gaps.popleft())

    async def commit(self) -> dict[str, Any]:
        loc = self.store.loc
        if self.already_complete:
            assert self._complete is not None
            t = self._complete[1]
            stale = await self.store.abort_stale_uploads()
            return {"destination": self.name, "type": "s3", "url": loc.url(),
                    "manifest": loc.url(MANIFEST_NAME), "parent": self._parent_url,
                    "segments": t.segments, "stored_blocks": t.stored_blocks,
                    "zero_blocks": t.zero_blocks, "stored_bytes": t.stored_bytes,
                    "stale_uploads_aborted": stale, "state": "completed",
                    "note": "completed by an earlier run of this job"}
        assert self._writer is not None
        await self._drain()
        self._emit()
        if self._windows:
            number = next(iter(self._windows))
            raise TransferFailed(f"{self.name}: window {number} never received all its "
                                 "blocks (internal error); no manifest was written")
        self._emit_gaps(None)
        # Uploads an interrupted run left (not continued, or begun after its last checkpoint)
        # would otherwise linger, unseen and billed.
        stale = await self.store.abort_stale_uploads()
        trailer = self._writer.finish()
        await self.store.put_file(MANIFEST_NAME, self._writer.path, self._extra,
                                  if_none_match=True)
        self._writer.path.unlink(missing_ok=True)
        log.info("archive_completed", destination=self.name, url=loc.url(),
                 segments=trailer.segments, stored_blocks=trailer.stored_blocks,
                 windows_resumed=self.windows_resumed,
                 parts_resumed=self.store.parts_resumed, stale_uploads_aborted=stale)
        return {"destination": self.name, "type": "s3", "url": loc.url(),
                "manifest": loc.url(MANIFEST_NAME), "parent": self._parent_url,
                "segments": trailer.segments, "stored_blocks": trailer.stored_blocks,
                "zero_blocks": trailer.zero_blocks, "stored_bytes": trailer.stored_bytes,
                "parts_resumed": self.store.parts_resumed,
                "stale_uploads_aborted": stale, "state": "completed"}

    async def abort(self, error: BaseException) -> dict[str, Any]:
        if self._writer is not None:
            self._writer.close()
        await self.store.abort_all()
        loc = self.store.loc
        return {"destination": self.name, "type": "s3", "url": loc.url(), "state": "failed",
                "error": str(error),
                "note": f"no manifest was written, so {loc.url()} is not an archive yet; run "
                        "the job again with its state directory to resume it, or remove the "
                        f"segments already uploaded under {loc.url('segments/')}"}


def _index_runs(indexes: list[int]) -> Iterator[tuple[int, int]]:
    start = prev = -2
    for i in indexes:
        if i != prev + 1:
            if start >= 0:
                yield start, prev + 1
            start = i
        prev = i
    if start >= 0:
        yield start, prev + 1


@dataclass
class _Resident:
    plan: WindowPlan
    task: asyncio.Task[list[dict[int, Block]]]
    remaining: int
    owner: dict[int, int]  # block index → piece number


class S3ArchiveSource:
    """Restores an archive (fspd format, with its parents) or imports an FSP archive."""

    def __init__(self, ctx: JobContext, target: AwsTarget, loc: S3Location, *,
                 fmt: str = "fspd", allow_incomplete: bool = False) -> None:
        self.ctx = ctx
        self.store = ObjectStore(ctx, target, loc)
        self.fmt = fmt
        self.allow_incomplete = allow_incomplete
        self.levels: list[Level] = []
        self._fsp: list[Any] = []
        self.coverage: Coverage | None = None
        self.total = 0
        self._max_resident = max(2, ctx.settings.transfer.worker_threads)
        self._slots = asyncio.Semaphore(self._max_resident)
        self._resident: list[_Resident] = []
        self._changed = asyncio.Condition()
        self._loader: asyncio.Task[None] | None = None
        self._loader_error: BaseException | None = None
        self._loader_done = False
        self._skipped = Bitmap(0)  # blocks the pipeline will not fetch (resumed)
        self.reads = 0

    async def open(self) -> VolumeInfo:
        loc = self.store.loc
        await check_bucket(self.store, "source.bucket")
        if self.fmt == "fsp":
            return await self._open_fsp()
        try:
            self.levels = await open_chain(self.ctx, self.store, self.ctx.state_dir, "source")
        except ManifestError:
            if await self._looks_like_fsp():
                raise BadInput(f"{loc.url()} holds an FSP archive, not an fspd one; set "
                               "format = \"fsp\" (--format fsp)", field="source.format") from None
            raise
        header = self.levels[0].manifest.header
        self.total = header.block_count
        self._skipped = Bitmap(self.total)
        chain = " ← ".join(level.url for level in self.levels)
        return VolumeInfo(volume_size=header.volume_size, byte_length=header.byte_length,
                          encrypted=False, description=header.description,
                          tags=dict(header.tags), origin=f"archive {chain}")

    async def _looks_like_fsp(self) -> bool:
        try:
            parse_dir(self.store.loc.prefix)
        except BadInput:
            return False
        return True

    async def _open_fsp(self) -> VolumeInfo:
        loc = self.store.loc
        snapshot_id, gib = parse_dir(loc.prefix)
        names = [n async for n in self.store.list_names()]
        if not names:
            raise TransferFailed(f"no FSP archive at {loc.url()}: the prefix holds no objects")
        segments, cov = await self.ctx.offload(index_segments, names, gib, loc.url() + "/")
        self._fsp, self.coverage, self.total = segments, cov, cov.volume_blocks
        self._skipped = Bitmap(self.total)
        if cov.tail is not None:
            if not self.allow_incomplete:
                raise TransferFailed(incomplete_message(loc.url(), cov))
            log.warning("fsp_archive_incomplete", url=loc.url(), tail=list(cov.tail),
                        uncovered_blocks=cov.uncovered_blocks)
        return VolumeInfo(volume_size=gib * GIB,
                          origin=f"FSP archive {loc.url()} of {snapshot_id}")

    def report(self) -> dict[str, Any]:
        """What the result should say about the archive read (chain, FSP coverage)."""
        out: dict[str, Any] = {"url": self.store.loc.url(), "format": self.fmt}
        if self.levels:
            out["chain"] = [level.url for level in self.levels]
        if self.coverage is not None:
            out["coverage"] = self.coverage.to_dict()
            out["complete"] = self.coverage.tail is None
        return out

    def _plans(self) -> Iterator[WindowPlan]:
        if self.fmt == "fsp":
            return fsp_windows(self._fsp)
        return chain_windows(self.levels)

    async def entries(self) -> AsyncIterator[BlockRef | Gap]:
        next_index = 0
        for plan in self._plans():
            for index, kind, _piece in plan.entries:
                if index > next_index:
                    yield Gap(next_index, index)
                yield BlockRef(index, kind)
                next_index = index + 1
        if next_index < self.total:
            yield Gap(next_index, self.total)

    async def fetch(self, ref: BlockRef) -> Block:
        if self._loader is None:
            self._loader = asyncio.create_task(self._load_ahead())
        window = await self._window_for(ref.index)
        pieces = await asyncio.shield(window.task)
        block = pieces[window.owner[ref.index]].pop(ref.index)
        self.reads += 1
        self._taken(window)
        return block

    def skipped(self, ref: BlockRef) -> None:
        """The pipeline will not fetch this block (every destination has it from an earlier
        run): its window must not wait for it, or the window would hold its slot for good."""
        if ref.kind is not Kind.DATA:
            return
        for window in self._resident:
            if window.plan.start <= ref.index < window.plan.stop:
                if ref.index in window.owner:
                    pieces = window.task.result() if window.task.done() else None
                    if pieces is not None:
                        pieces[window.owner[ref.index]].pop(ref.index, None)
                    del window.owner[ref.index]
                    self._taken(window)
                return
        self._skipped.set(ref.index)  # its window is not loaded yet: it will not wait for it

    def _taken(self, window: _Resident) -> None:
        window.remaining -= 1
        if window.remaining == 0:
            self._resident.remove(window)
            self._slots.release()

    async def _window_for(self, index: int) -> _Resident:
        async with self._changed:
            while True:
                for window in self._resident:
                    if window.plan.start <= index < window.plan.stop:
                        return window
                if self._loader_error is not None:
                    raise self._loader_error
                if self._loader_done:
                    raise TransferFailed(f"block {index} is not in the restore plan "
                                         "(internal error)")
                await self._changed.wait()

    async def _load_ahead(self) -> None:
        """Start loading windows in plan order, at most ``_max_resident`` at a time."""
        try:
            for plan in self._plans():
                await self._slots.acquire()
                async with self._changed:  # no await from here until it is resident
                    owner = {i: p for i, kind, p in plan.entries
                             if kind is Kind.DATA and i not in self._skipped}
                    if not owner:
                        self._slots.release()
                        continue
                    task = asyncio.create_task(self._load(plan))
                    self._resident.append(_Resident(plan, task, len(owner), owner))
                    self._changed.notify_all()
        except Exception as exc:
            self._loader_error = exc
        async with self._changed:
            self._loader_done = True
            self._changed.notify_all()

    async def _load(self, plan: WindowPlan) -> list[dict[int, Block]]:
        wanted = plan.wanted()
        stores = [self.levels[p.level].store if self.levels else self.store
                  for p in plan.pieces]
        return list(await asyncio.gather(*(
            load_piece(self.ctx, store, piece, want)
            for store, piece, want in zip(stores, plan.pieces, wanted, strict=True))))

    async def close(self) -> None:
        tasks = [w.task for w in self._resident]
        if self._loader is not None:
            tasks.append(self._loader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resident.clear()
        for level in self.levels:
            level.manifest.path.unlink(missing_ok=True)



@registry.source(S3SourceSpec)
def open_source(ctx: JobContext, job: JobSpec) -> S3ArchiveSource:
    spec = job.source
    assert isinstance(spec, S3SourceSpec)
    loc = S3Location(spec.bucket, clean_prefix(spec.prefix, "source.prefix"))
    return S3ArchiveSource(ctx, registry.target_for(spec), loc, fmt=spec.format,
                           allow_incomplete=spec.allow_incomplete)


@registry.sink(S3DestinationSpec)
def open_sink(ctx: JobContext, job: JobSpec, spec: S3DestinationSpec, name: str
              ) -> S3ArchiveSink:
    source = job.source
    source_region = (registry.target_for(source).region
                     if isinstance(source, EbsSourceSpec) else None)
    return archive_sink(ctx, spec, name, source, registry.target_for(spec), source_region,
                        {"id": ctx.job_id, "spec": spec_digest(job.model_dump_json())})


def archive_sink(ctx: JobContext, spec: S3DestinationSpec, name: str, source: Any,
                 target: AwsTarget, source_region: str | None = None,
                 job: dict[str, str] | None = None) -> S3ArchiveSink:
    loc = S3Location(spec.bucket, clean_prefix(spec.prefix, f"{name}.prefix"))
    parent = None
    if spec.parent_prefix:
        field = f"{name}.parent_prefix"
        parent = (parse_s3_url(spec.parent_prefix, field)
                  if spec.parent_prefix.startswith("s3://")
                  else S3Location(spec.bucket, clean_prefix(spec.parent_prefix, field)))
    described: dict[str, Any] = {"type": source.type}
    base = None
    if source.type == "ebs":
        described.update(snapshot_id=source.snapshot_id, region=source_region)
        base = source.base_snapshot_id
        if base:
            described["base_snapshot_id"] = base
    elif source.type == "file":
        described["path"] = source.path
    elif source.type == "s3":
        described["url"] = f"s3://{source.bucket}/{source.prefix}"
    return S3ArchiveSink(ctx, target, loc, name=name, source=described,
                         segment_blocks=spec.segment_blocks, zstd_level=spec.zstd_level,
                         storage_class=spec.storage_class, sse=spec.sse,
                         kms_key_id=spec.kms_key_id, tags=spec.tags, parent=parent,
                         base_snapshot_id=base, job=job)
