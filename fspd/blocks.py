"""Block geometry and checksums shared by every source and sink.

EBS Direct moves 512 KiB blocks. Each carries base64(SHA-256(block)); CompleteSnapshot takes a
LINEAR aggregate: SHA-256 over the raw 32-byte digests of the written blocks in index order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

BLOCK_SIZE = 524_288
BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE
GIB = 1 << 30
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_DIGEST = hashlib.sha256(ZERO_BLOCK).digest()
DIGEST_SIZE = 32


def digest(data: bytes | memoryview) -> bytes:
    """Raw SHA-256 of a block (hashlib releases the GIL for buffers this large)."""
    return hashlib.sha256(data).digest()


def to_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def from_b64(text: str) -> bytes:
    """Decode a base64 checksum; a malformed one decodes to b"" (which never matches)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""
    return raw if len(raw) == DIGEST_SIZE else b""


ZERO_CHECKSUM = to_b64(ZERO_DIGEST)


def is_zero(data: bytes | memoryview) -> bool:
    """Compare with a prebuilt zero block: a memcmp, far cheaper than counting bytes."""
    return data == ZERO_BLOCK


def blocks_for_bytes(length: int) -> int:
    return -(-length // BLOCK_SIZE)


def gib_for_bytes(length: int) -> int:
    """EBS volume size (GiB, at least 1) that holds ``length`` bytes."""
    return max(1, -(-length // GIB))


def pad_block(data: bytes) -> bytes:
    """Zero-pad a final partial block to the full block size."""
    if len(data) == BLOCK_SIZE:
        return data
    return data + bytes(BLOCK_SIZE - len(data))


class Kind(Enum):
    DATA = "data"  # bytes must be fetched from the source
    ZERO = "zero"  # known to be all zeros without reading (a hole, or absent from a delta)


@dataclass(slots=True)
class BlockRef:
    """One entry of a source's listing, ascending by index."""

    index: int
    kind: Kind = Kind.DATA
    token: str | None = None  # source-specific handle (an EBS block token)
    checksum: str | None = None  # known checksum, when the listing gives one


@dataclass(slots=True)
class Block:
    """A block read and verified: ``data`` is exactly BLOCK_SIZE bytes."""

    index: int
    data: bytes
    digest: bytes
    zero: bool

    @property
    def checksum(self) -> str:
        return to_b64(self.digest)

    @classmethod
    def zeros(cls, index: int) -> Block:
        return cls(index, ZERO_BLOCK, ZERO_DIGEST, True)


def linear_aggregate(digests: Iterable[bytes]) -> str:
    """The LINEAR aggregate checksum of raw digests given in ascending block order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return to_b64(h.digest())


class DigestFile:
    """Per-block digests kept on disk (32 bytes at ``index * 32`` in a sparse file) with a
    bitmap of which blocks were written, so a 16 TiB upload needs 4 MiB of memory, not 1 GiB,
    and the record survives a crash (it doubles as the upload's resume journal)."""

    def __init__(self, path: Path, total_blocks: int) -> None:
        self.path = path
        self.total_blocks = total_blocks
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.written = Bitmap(total_blocks)

    def record(self, index: int, raw_digest: bytes) -> None:
        os.pwrite(self._fd, raw_digest, index * DIGEST_SIZE)
        self.written.set(index)

    def aggregate(self) -> str:
        return linear_aggregate(os.pread(self._fd, DIGEST_SIZE, index * DIGEST_SIZE)
                                for index in self.written.iter_set())

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Bitmap:
    """A fixed-size bit set: 33.5 M blocks (16 TiB) cost 4 MiB."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        self.size = size
        self._bits = bytearray(data) if data is not None else bytearray(-(-size // 8))
        self.count = sum(bin(b).count("1") for b in self._bits) if data is not None else 0

    def set(self, index: int) -> None:
        byte, bit = divmod(index, 8)
        mask = 1 << bit
        if not self._bits[byte] & mask:
            self._bits[byte] |= mask
            self.count += 1

    def __contains__(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        return bool(self._bits[byte] & (1 << bit))

    def iter_set(self) -> Iterable[int]:
        for byte_index, value in enumerate(self._bits):
            if value:
                base = byte_index * 8
                for bit in range(8):
                    if value & (1 << bit):
                        yield base + bit

    def to_bytes(self) -> bytes:
        return bytes(self._bits)
