"""Deterministic, cheap contents for synthetic snapshots of any size.

Nothing is stored per block. A seed owns a small pool of random 512 KiB blocks with their
checksums computed once; block *i* is ``pool[h(seed, i) % POOL]`` or all zeros. Which indexes
are allocated (sparse snapshots) is decided per group of ``GROUP`` indexes from one SHAKE-128
stream, cached, so listing a page never hashes block data.
"""

from __future__ import annotations

import base64
import hashlib
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

BLOCK_SIZE = 524288
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_DIGEST = hashlib.sha256(ZERO_BLOCK).digest()
POOL = 16
GROUP = 65536
_SCALE = 1 << 32


@dataclass(frozen=True)
class Pool:
    blocks: tuple[bytes, ...]
    digests: tuple[bytes, ...]
    checksums: tuple[str, ...]


@lru_cache(maxsize=8)
def pool(seed: int) -> Pool:
    rng = random.Random(f"fspd-synthetic-{seed}")
    blocks = tuple(rng.randbytes(BLOCK_SIZE) for _ in range(POOL))
    digests = tuple(hashlib.sha256(b).digest() for b in blocks)
    return Pool(blocks, digests, tuple(base64.b64encode(d).decode() for d in digests))


ZERO_CHECKSUM = base64.b64encode(ZERO_DIGEST).decode()


@lru_cache(maxsize=32)
def _group(seed: int, threshold: int, group: int) -> array:
    """Allocated offsets (ascending) within one group of a sparse snapshot."""
    stream = hashlib.shake_128(f"alloc|{seed}|{group}".encode()).digest(4 * GROUP)
    words = memoryview(stream).cast("I")
    return array("I", [j for j, v in enumerate(words) if v < threshold])


@dataclass(frozen=True)
class Synthetic:
    seed: int
    nblocks: int
    density: float = 1.0
    zero_fraction: float = 0.0

    @property
    def _threshold(self) -> int:
        return min(_SCALE, int(self.density * _SCALE))

    def _full(self) -> bool:
        return self.density >= 1.0

    def allocated(self, index: int) -> bool:
        if not 0 <= index < self.nblocks:
            return False
        if self._full():
            return True
        if self.density <= 0:
            return False
        offsets = _group(self.seed, self._threshold, index // GROUP)
        off = index % GROUP
        pos = bisect_left(offsets, off)
        return pos < len(offsets) and offsets[pos] == off

    def indexes(self, start: int, stop: int) -> Iterator[int]:
        """Allocated indexes in [start, stop), ascending."""
        stop = min(stop, self.nblocks)
        if start >= stop or self.density <= 0:
            return
        if self._full():
            yield from range(start, stop)
            return
        threshold = self._threshold
        group = start // GROUP
        while group * GROUP < stop:
            base = group * GROUP
            offsets = _group(self.seed, threshold, group)
            pos = bisect_left(offsets, max(start - base, 0))
            limit = stop - base
            for k in range(pos, len(offsets)):
                off = offsets[k]
                if off >= limit:
                    return
                yield base + off
            group += 1

    def _pick(self, index: int) -> int:
        """-1 for a zero block, else a pool slot."""
        h = int.from_bytes(hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8,
                                           key=self.seed.to_bytes(16, "little", signed=True)
                                           ).digest(), "little")
        if (h & 0xFFFFFFFF) < self.zero_fraction * _SCALE:
            return -1
        return (h >> 32) % POOL

    def block(self, index: int) -> tuple[bytes, bytes, str]:
        """(data, raw digest, base64 checksum) of an allocated block."""
        slot = self._pick(index)
        if slot < 0:
            return ZERO_BLOCK, ZERO_DIGEST, ZERO_CHECKSUM
        p = pool(self.seed)
        return p.blocks[slot], p.digests[slot], p.checksums[slot]


def noise(key: str, index: int) -> bytes:
    """Deterministic random bytes an encrypted volume reads for a never-written block."""
    return random.Random(f"noise|{key}|{index}").randbytes(BLOCK_SIZE)
