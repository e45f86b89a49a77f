"""Reading archives written by FSP (awslabs/flexible-snapshot-proxy).

FSP put one object per segment under ``{snapshot_id}.{volume_size_gib}/``, named
``{first_block}.{checksum}.{block_count}.zstd``: the checksum is URL-safe base64 (padded) of the
SHA-256 of the *uncompressed* segment, and it is the only integrity record (no manifest).
FSP never wrote an archive's final segment, so an import must say which blocks are not covered.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from fspd.archive.segments import SegmentCorrupt, iter_blocks
from fspd.blocks import BLOCK_SIZE, BLOCKS_PER_GIB, Block, digest, is_zero
from fspd.errors import BadInput, TransferFailed

DIR_RE = re.compile(r"^(snap-[0-9a-f]{8}(?:[0-9a-f]{9})?)\.([1-9][0-9]{0,4})$")
KEY_RE = re.compile(r"^([0-9]{1,10})\.([A-Za-z0-9_-]{43}=)\.([1-9][0-9]{0,4})\.zstd$")
FSP_WINDOW = 64  # FSP cut segments at every 64-block boundary
REPORT_RANGES = 10


@dataclass(frozen=True, slots=True)
class FspSegment:
    name: str  # the key's last component
    first: int
    count: int
    checksum: str  # URL-safe base64 SHA-256 of the uncompressed blocks

    @property
    def stop(self) -> int:
        return self.first + self.count


def parse_dir(prefix: str) -> tuple[str, int]:
    """The snapshot id and volume size (GiB) from an FSP archive's prefix."""
    last = prefix.rstrip("/").rsplit("/", 1)[-1]
    m = DIR_RE.match(last)
    if not m:
        raise BadInput(f"{prefix!r} is not an FSP archive prefix: FSP wrote its segments "
                       "under {snapshot_id}.{volume_size_gib}/, e.g. snap-0123456789abcdef0.8",
                       field="source.prefix")
    return m.group(1), int(m.group(2))


def parse_key(name: str) -> FspSegment | None:
    m = KEY_RE.match(name)
    if not m:
        return None
    return FspSegment(name, int(m.group(1)), int(m.group(3)), m.group(2))


@dataclass
class Coverage:
    """Which blocks of the volume the archive's segments cover."""

    volume_blocks: int
    covered_blocks: int = 0
    uncovered_blocks: int = 0
    uncovered_ranges: int = 0
    first_uncovered: list[tuple[int, int]] = field(default_factory=list)
    tail: tuple[int, int] | None = None  # blocks after the last segment: FSP's dropped segment

    def to_dict(self) -> dict[str, object]:
        return {"volume_blocks": self.volume_blocks, "covered_blocks": self.covered_blocks,
                "uncovered_blocks": self.uncovered_blocks,
                "uncovered_ranges": self.uncovered_ranges,
                "first_uncovered_ranges": [list(r) for r in self.first_uncovered],
                "uncovered_tail": list(self.tail) if self.tail else None}


def index_segments(names: list[str], volume_gib: int, where: str
                   ) -> tuple[list[FspSegment], Coverage]:
    """Parse, sort and check an FSP archive's object names; report its coverage."""
    volume_blocks = volume_gib * BLOCKS_PER_GIB
    segments = []
    for name in names:
        seg = parse_key(name)
        if seg is None:
            raise TransferFailed(f"{where}{name}: not an FSP segment key "
                                 "({first}.{checksum}.{count}.zstd)")
        segments.append(seg)
    segments.sort(key=lambda s: s.first)
    cov = Coverage(volume_blocks)
    next_free = 0
    for seg in segments:
        if seg.first < next_free:
            raise TransferFailed(f"{where}{seg.name}: overlaps the previous segment "
                                 f"(block {seg.first} < {next_free})")
        if seg.stop > volume_blocks:
            raise TransferFailed(f"{where}{seg.name}: ends at block {seg.stop}, beyond the "
                                 f"{volume_gib} GiB volume ({volume_blocks} blocks)")
        if seg.first // FSP_WINDOW != (seg.stop - 1) // FSP_WINDOW:
            raise TransferFailed(f"{where}{seg.name}: crosses a 64-block boundary, which "
                                 "FSP never did")
        if seg.first > next_free:
            _uncovered(cov, next_free, seg.first)
        cov.covered_blocks += seg.count
        next_free = seg.stop
    if next_free < volume_blocks:
        _uncovered(cov, next_free, volume_blocks)
        cov.tail = (next_free, volume_blocks)
    return segments, cov


def _uncovered(cov: Coverage, start: int, stop: int) -> None:
    cov.uncovered_blocks += stop - start
    cov.uncovered_ranges += 1
    if len(cov.first_uncovered) < REPORT_RANGES:
        cov.first_uncovered.append((start, stop))


def incomplete_message(where: str, cov: Coverage) -> str:
    assert cov.tail is not None
    start, stop = cov.tail
    return (f"FSP archive {where} does not cover blocks [{start}, {stop}) of the "
            f"{cov.volume_blocks}-block volume (bytes {start * BLOCK_SIZE}.."
            f"{stop * BLOCK_SIZE - 1}); FSP never wrote an archive's final segment, so data "
            f"there may be lost. {cov.uncovered_blocks} blocks in {cov.uncovered_ranges} "
            "ranges are not covered in all (unwritten blocks, or lost). Set allow_incomplete "
            "= true (--allow-incomplete) to restore what exists; the gap is recorded in the "
            "result")


def unpack_fsp(seg: FspSegment, body: bytes, where: str,
               want: Collection[int] | None = None) -> dict[int, Block]:
    """Decompress an FSP segment, check it against the checksum in its key, return its
    blocks (those in ``want``, or all). Nothing is returned unless the whole segment checks."""
    total = hashlib.sha256()
    out: dict[int, Block] = {}
    for i, data in enumerate(iter_blocks(body, seg.count, where)):
        total.update(data)
        index = seg.first + i
        if want is None or index in want:
            out[index] = Block(index, data, digest(data), is_zero(data))
    actual = base64.urlsafe_b64encode(total.digest()).decode()
    if actual != seg.checksum:
        raise SegmentCorrupt(f"{where}: SHA-256 of the decompressed segment is {actual}, "
                             f"its key says {seg.checksum}")
    return out
