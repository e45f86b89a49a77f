"""Segments: runs of consecutive stored blocks, concatenated and compressed as one zstd frame.

Packing and unpacking are CPU work meant for the job's thread pool (zstandard and hashlib
release the GIL). Unpacking checks the compressed bytes first, then every block, and fails
naming the object; it never returns a block it has not verified.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import zstandard

from fspd.archive.manifest import Segment, segment_key
from fspd.blocks import BLOCK_SIZE, Block, digest, is_zero
from fspd.errors import TransferFailed
from fspd.memory import trim


class SegmentCorrupt(TransferFailed):
    """A segment object whose bytes do not match what the archive says it holds."""


class SegmentMissing(TransferFailed):
    """A segment object the archive names is not in the bucket."""


@dataclass(frozen=True, slots=True)
class PackedSegment:
    record: Segment
    body: io.BytesIO
    sha256: bytes  # raw digest of ``body``, for S3's x-amz-checksum-sha256


_local = threading.local()
_TRIM_EVERY = 32  # blocks (16 MiB)


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level (a ZstdCompressor is not thread-safe)."""
    cache: dict[int, zstandard.ZstdCompressor] = getattr(_local, "cache", None) or {}
    _local.cache = cache
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return cache[level]


def runs(blocks: list[Block]) -> list[list[Block]]:
    """Split blocks (sorted by index) into runs of consecutive indexes."""
    out: list[list[Block]] = []
    for block in blocks:
        if out and out[-1][-1].index + 1 == block.index:
            out[-1].append(block)
        else:
            out.append([block])
    return out


def pack(blocks: list[Block], level: int) -> PackedSegment:
    """Compress a run of consecutive blocks into one frame (its content size in the header),
    emptying ``blocks``. The blocks' digests are reused: a block from EBS is not hashed a
    second time."""
    first, count = blocks[0].index, len(blocks)
    digests = tuple(b.digest.hex() for b in blocks)
    cobj = _compressor(level).compressobj(size=count * BLOCK_SIZE)
    # The blocks leave the list as they are compressed and the frame grows in place, so a
    # run never needs room for its raw blocks, their compressed chunks and a joined copy at
    # once (the caller's buffer budget counts one of them; see fspd/endpoints/s3.py).
    body = io.BytesIO()  # sent as it is: a file-like body is not copied on the way out
    blocks.reverse()
    while blocks:
        body.write(cobj.compress(blocks.pop().data))
        if count >= 2 * _TRIM_EVERY and len(blocks) % _TRIM_EVERY == 0:
            trim()  # the raw blocks let go sit in glibc's heap while the frame grows apart
    body.write(cobj.flush())
    with body.getbuffer() as view:
        sha = hashlib.sha256(view)
        size = view.nbytes
    body.seek(0)
    record = Segment(segment_key(first, count), first, count, size, sha.hexdigest(), digests)
    return PackedSegment(record, body, sha.digest())


def iter_blocks(body: bytes, count: int, where: str) -> Iterator[bytes]:
    """The ``count`` blocks of a compressed segment; fails unless it holds exactly that."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        for i in range(count):
            data = reader.read(BLOCK_SIZE)
            while 0 < len(data) < BLOCK_SIZE:
                more = reader.read(BLOCK_SIZE - len(data))
                if not more:
                    break
                data += more
            if len(data) != BLOCK_SIZE:
                raise SegmentCorrupt(f"{where}: decompresses to {i} whole blocks and "
                                     f"{len(data)} bytes, expected {count} blocks")
            yield data
        if reader.read(1):
            raise SegmentCorrupt(f"{where}: decompresses to more than {count} blocks")
    except zstandard.ZstdError as exc:
        raise SegmentCorrupt(f"{where}: not a valid zstd stream: {exc}") from None


def unpack(seg: Segment, body: bytes, where: str, want: Collection[int] | None = None,
           on_block: Callable[[], None] | None = None) -> dict[int, Block]:
    """Verify a segment of an fspd archive (size, SHA-256 of the compressed bytes, then each
    block's SHA-256) and return the blocks whose index is in ``want`` (all if None)."""
    if len(body) != seg.size:
        raise SegmentCorrupt(f"{where}: {len(body)} bytes, the manifest says {seg.size}")
    actual = hashlib.sha256(body).hexdigest()
    if actual != seg.sha256:
        raise SegmentCorrupt(f"{where}: SHA-256 of the object is {actual}, the manifest "
                             f"says {seg.sha256}")
    out: dict[int, Block] = {}
    for i, data in enumerate(iter_blocks(body, seg.count, where)):
        index = seg.first + i
        raw = digest(data)
        if raw.hex() != seg.blocks[i]:
            raise SegmentCorrupt(f"{where}: block {index} has SHA-256 {raw.hex()}, the "
                                 f"manifest says {seg.blocks[i]}")
        if on_block is not None:
            on_block()
        if want is None or index in want:
            out[index] = Block(index, data, raw, is_zero(data))
    return out
