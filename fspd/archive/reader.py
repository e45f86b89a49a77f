"""Reading archives: open a chain of manifests, plan the restore window by window, load and
verify segments.

A chain is the archive asked for plus its parents (each pinned by its manifest's SHA-256).
For every block the newest archive that mentions it wins: a stored block, or a recorded zero.
Blocks no archive mentions are not part of the volume's data (they read as zeros).
Segments never cross an aligned window of the largest ``segment_blocks`` in the chain, so the
restore works window by window and holds only a few windows in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fspd.archive import MANIFEST_NAME
from fspd.archive.fsp_import import FspSegment, unpack_fsp
from fspd.archive.manifest import ManifestError, ManifestFile, Record, Segment, Zeros
from fspd.archive.segments import SegmentMissing, unpack
from fspd.archive.store import ObjectStore, S3Location
from fspd.blocks import Block, Kind
from fspd.context import JobContext

MAX_CHAIN = 1000


@dataclass
class Level:
    """One archive of a chain; level 0 is the archive asked for, 1 its parent, …"""

    store: ObjectStore
    manifest: ManifestFile
    sha256: str  # of the manifest object, as a child archive pins it

    @property
    def url(self) -> str:
        return self.store.loc.url()


@dataclass(frozen=True, slots=True)
class Piece:
    level: int
    segment: Segment | FspSegment


@dataclass
class WindowPlan:
    """What one window of the restored volume is made of: each mentioned block is DATA (from
    ``pieces[piece]``) or ZERO, ascending by index."""

    start: int
    stop: int
    entries: list[tuple[int, Kind, int]] = field(default_factory=list)  # (index, kind, piece)
    pieces: list[Piece] = field(default_factory=list)

    def wanted(self) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in self.pieces]
        for index, kind, piece in self.entries:
            if kind is Kind.DATA:
                out[piece].add(index)
        return out


async def open_chain(ctx: JobContext, store: ObjectStore, state_dir: Path, tag: str,
                     into: list[Level] | None = None) -> list[Level]:
    """Download (into ``state_dir``) and validate the manifest of an archive and of each of
    its parents. ``into`` receives the levels opened so far even when a later one fails."""
    levels: list[Level] = [] if into is None else into
    expected: str | None = None
    seen: set[S3Location] = set()
    child = ""
    while True:
        where = store.loc.url(MANIFEST_NAME)
        path = state_dir / f"{tag}.manifest-{len(levels)}.jsonl"
        try:
            sha = await store.download(MANIFEST_NAME, path)
        except SegmentMissing:
            what = f"parent archive of {child}" if child else "archive"
            raise ManifestError(f"no complete {what} at {store.loc.url()}: {where} does not "
                                "exist (an archive is complete only once its manifest is "
                                "written)") from None
        if expected is not None and sha != expected:
            raise ManifestError(f"parent archive {store.loc.url()} changed after {child} was "
                                f"written: its manifest's SHA-256 is {sha}, {child} expects "
                                f"{expected}")
        manifest = await ctx.offload(ManifestFile, path, where)
        await ctx.offload(manifest.validate)
        levels.append(Level(store, manifest, sha))
        parent = manifest.header.parent
        if parent is None:
            return levels
        seen.add(store.loc)
        loc = S3Location(parent.bucket, parent.prefix.strip("/"))
        if loc in seen or len(levels) >= MAX_CHAIN:
            raise ManifestError(f"{where}: the chain of parents loops or is longer than "
                                f"{MAX_CHAIN}")
        child, expected = store.loc.url(), parent.manifest_sha256
        store = ObjectStore(store.ctx, store.target, loc)


class _Cursor:
    """Records of one level in order, with a one-record lookahead."""

    def __init__(self, records: Iterator[Record]) -> None:
        self._it = records
        self.head: Record | None = next(self._it, None)

    def advance(self) -> None:
        self.head = next(self._it, None)


def chain_windows(levels: list[Level]) -> Iterator[WindowPlan]:
    """Resolve a chain block by block, one aligned window at a time (windows with no
    mentioned block are skipped)."""
    total = levels[0].manifest.header.block_count
    width = max(level.manifest.header.segment_blocks for level in levels)
    cursors = [_Cursor(level.manifest.records()) for level in levels]
    pos = 0
    while pos < total:
        starts = []
        for cur in cursors:
            while cur.head is not None and cur.head.stop <= pos:
                cur.advance()
            if cur.head is not None:
                starts.append(max(cur.head.first, pos))
        if not starts or min(starts) >= total:
            return
        ws = min(starts) // width * width
        we = min(ws + width, total)
        plan = WindowPlan(ws, we)
        decided: dict[int, tuple[Kind, int]] = {}
        for level, cur in enumerate(cursors):
            while cur.head is not None and cur.head.first < we:
                rec = cur.head
                lo, hi = max(rec.first, ws), min(rec.stop, we)
                if isinstance(rec, Zeros):
                    for i in range(lo, hi):
                        decided.setdefault(i, (Kind.ZERO, -1))
                else:
                    new = [i for i in range(lo, hi) if i not in decided]
                    if new:
                        plan.pieces.append(Piece(level, rec))
                        for i in new:
                            decided[i] = (Kind.DATA, len(plan.pieces) - 1)
                if rec.stop > we:
                    break
                cur.advance()
        plan.entries = [(i, *decided[i]) for i in sorted(decided)]
        yield plan
        pos = we


def fsp_windows(segments: list[FspSegment]) -> Iterator[WindowPlan]:
    """One window per FSP segment (FSP cut segments at gaps and 64-block boundaries)."""
    for seg in segments:
        yield WindowPlan(seg.first, seg.stop,
                         [(i, Kind.DATA, 0) for i in range(seg.first, seg.stop)],
                         [Piece(0, seg)])


async def load_piece(ctx: JobContext, store: ObjectStore, piece: Piece,
                     want: set[int] | None) -> dict[int, Block]:
    """Download one segment once, verify it whole, return the wanted blocks."""
    seg = piece.segment
    rel = seg.key if isinstance(seg, Segment) else seg.name
    body = await store.get(rel)
    where = store.loc.url(rel)
    if isinstance(seg, Segment):
        return await ctx.offload(unpack, seg, body, where, want)
    return await ctx.offload(unpack_fsp, seg, body, where, want)
