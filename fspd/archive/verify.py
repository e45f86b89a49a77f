"""``fspd verify``: check an archive end to end without restoring it.

Every manifest of the chain (present, complete, consistent, parents pinned by SHA-256), every
segment (present, SHA-256 of its bytes, decompresses to the right number of blocks, SHA-256 of
every block). Problems are collected rather than stopping at the first, so one run lists all.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fspd.archive.fsp_import import incomplete_message, index_segments, parse_dir
from fspd.archive.manifest import ManifestError, Segment
from fspd.archive.reader import Level, Piece, load_piece, open_chain
from fspd.archive.store import ObjectStore, S3Location
from fspd.aws import AwsTarget
from fspd.config import Settings
from fspd.context import JobContext, job_context
from fspd.errors import FspdError, TransferFailed

MAX_LISTED_PROBLEMS = 50


class _Checker:
    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.problems: list[str] = []
        self.problem_count = 0
        self._slots = asyncio.Semaphore(max(2, ctx.settings.transfer.worker_threads * 2))

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(text)

    async def segments(self, store: ObjectStore, pieces: Any) -> dict[str, int]:
        """Download and verify segments, at most a few at a time."""
        totals = {"segments": 0, "blocks": 0, "bytes": 0}

        async def one(piece: Piece) -> None:
            try:
                blocks = await load_piece(self.ctx, store, piece, set())
                del blocks
                totals["segments"] += 1
                totals["blocks"] += piece.segment.count
                if isinstance(piece.segment, Segment):
                    totals["bytes"] += piece.segment.size
            except FspdError as exc:  # missing, damaged, or not readable with these credentials
                self.problem(str(exc))
            finally:
                self._slots.release()

        async with asyncio.TaskGroup() as tg:
            for piece in pieces:
                await self._slots.acquire()
                tg.create_task(one(piece))
        return totals


def _planned(pieces: Any) -> dict[str, int]:
    """What :meth:`_Checker.segments` would read, from the manifest alone (a dry run)."""
    totals = {"segments": 0, "blocks": 0, "bytes": 0}
    for piece in pieces:
        totals["segments"] += 1
        totals["blocks"] += piece.segment.count
        if isinstance(piece.segment, Segment):
            totals["bytes"] += piece.segment.size
    return totals


async def verify_archive(ctx: JobContext, target: AwsTarget, loc: S3Location,
                         fmt: str = "fspd", *, dry_run: bool = False) -> dict[str, Any]:
    """Verify the archive at ``loc``. A dry run reads and checks the manifests (or, for FSP,
    the listing) and reports what would be verified, without reading any segment."""
    checker = _Checker(ctx)

    async def plan(_store: ObjectStore, pieces: Any) -> dict[str, int]:
        return _planned(pieces)

    check = plan if dry_run else checker.segments
    store = ObjectStore(ctx, target, loc)
    report: dict[str, Any] = {"url": loc.url(), "format": fmt, "archives": []}
    if fmt == "fsp":
        await _verify_fsp(checker, store, report, check)
    else:
        levels: list[Level] = []
        try:
            await open_chain(ctx, store, ctx.state_dir, "verify", into=levels)
        except ManifestError as exc:
            checker.problem(str(exc))  # the archives opened before it are still checked
        for level in levels:
            header = level.manifest.header
            pieces = (Piece(0, rec) for rec in level.manifest.records()
                      if isinstance(rec, Segment))
            totals = await check(level.store, pieces)
            trailer = level.manifest.trailer
            report["archives"].append({
                "url": level.url, "source": header.source, "created": header.created,
                "volume_size": header.volume_size,
                "parent": (f"s3://{header.parent.bucket}/{header.parent.prefix}"
                           if header.parent else None),
                "segments": trailer.segments if trailer else None,
                "segments_verified": totals["segments"], "blocks_verified": totals["blocks"],
                "zero_blocks": trailer.zero_blocks if trailer else None,
                "stored_bytes": totals["bytes"]})
            level.manifest.path.unlink(missing_ok=True)
    if dry_run:
        report["dry_run"] = True
        report["plan"] = {
            "segments": sum(a["segments_verified"] for a in report["archives"]),
            "blocks": sum(a["blocks_verified"] for a in report["archives"]),
            "bytes_to_read": sum(a.get("stored_bytes") or 0 for a in report["archives"])}
        for a in report["archives"]:  # nothing was verified yet: say what would be
            a["segments_to_verify"] = a.pop("segments_verified")
            a["blocks_to_verify"] = a.pop("blocks_verified")
    report["ok"] = checker.problem_count == 0
    report["problem_count"] = checker.problem_count
    report["problems"] = checker.problems
    return report


async def _verify_fsp(checker: _Checker, store: ObjectStore, report: dict[str, Any],
                      check: Any) -> None:
    loc = store.loc
    _snapshot_id, gib = parse_dir(loc.prefix)
    names = [n async for n in store.list_names()]
    if not names:
        checker.problem(f"no FSP archive at {loc.url()}: the prefix holds no objects")
        return
    try:
        segments, cov = index_segments(names, gib, loc.url() + "/")
    except TransferFailed as exc:
        checker.problem(str(exc))
        return
    report["coverage"] = cov.to_dict()
    if cov.tail is not None:
        checker.problem(incomplete_message(loc.url(), cov))
    totals = await check(store, (Piece(0, seg) for seg in segments))
    report["archives"].append({"url": loc.url(), "segments": len(segments),
                               "segments_verified": totals["segments"],
                               "blocks_verified": totals["blocks"]})


async def run_verify(settings: Settings, target: AwsTarget, loc: S3Location,
                     fmt: str = "fspd", *, dry_run: bool = False) -> dict[str, Any]:
    """Verify outside a job, in a context of its own (clients, thread pool, scratch
    directory)."""
    async with job_context(f"verify-{uuid.uuid4().hex[:8]}", settings, name="verify") as ctx:
        return await verify_archive(ctx, target, loc, fmt, dry_run=dry_run)
