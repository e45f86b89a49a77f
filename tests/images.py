"""Test data shared by every suite: images of awkward shapes, and snapshots built with a plain
aiobotocore client (independent of fspd's own code)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path
from typing import Any

from fspd.blocks import BLOCK_SIZE

B = BLOCK_SIZE


def make_image(path: Path, layout: str, seed: int = 0) -> bytes:
    """An image described block by block: 'D' random data, 'C' compressible data, 'Z' written
    zeros, 'H' a hole (sparse), 'T' a final partial block of random data (1000 bytes)."""
    rnd = random.Random(seed)
    data = bytearray()
    with open(path, "wb") as f:
        for ch in layout:
            if ch == "D":
                chunk = rnd.randbytes(B)
            elif ch == "C":
                chunk = (b"fspd %d " % rnd.randrange(1 << 30)) * (B // 16)
                chunk = chunk[:B].ljust(B, b".")
            elif ch in "ZH":
                chunk = bytes(B)
            elif ch == "T":
                chunk = rnd.randbytes(1000)
            else:
                raise ValueError(ch)
            if ch == "H":
                f.seek(B, 1)
            else:
                f.write(chunk)
            data += chunk
        f.truncate(len(data))
    return bytes(data)


async def put_snapshot(ebs: Any, blocks: dict[int, bytes], *, parent: str | None = None,
                       volume_size: int = 1, **start: Any) -> str:
    """Build a snapshot with a plain aiobotocore client (independent of fspd's own code):
    ``blocks`` maps index → bytes (zero-padded to a block; b"" writes a zero block)."""
    params: dict[str, Any] = {"VolumeSize": volume_size, **start}
    if parent:
        params["ParentSnapshotId"] = parent
    snap = (await ebs.start_snapshot(**params))["SnapshotId"]
    digests = []
    for index in sorted(blocks):
        data = blocks[index].ljust(BLOCK_SIZE, b"\0")
        raw = hashlib.sha256(data).digest()
        digests.append(raw)
        await ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockData=data,
                                     DataLength=BLOCK_SIZE, ChecksumAlgorithm="SHA256",
                                     Checksum=base64.b64encode(raw).decode())
    aggregate = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    await ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=len(blocks),
                                Checksum=aggregate, ChecksumAlgorithm="SHA256",
                                ChecksumAggregationMethod="LINEAR")
    return str(snap)


def volume_size_for(image: bytes) -> int:
    """The size of the EBS volume that holds ``image``: whole GiB, at least one."""
    gib = 1 << 30
    return max(gib, -(-len(image) // gib) * gib)


def assert_volume_file(path: Path, image: bytes, volume_size: int | None = None) -> None:
    """``path`` holds exactly a volume whose content is ``image`` then zeros to its end
    (``volume_size``, by default the GiB-rounded size). The zero tail is checked without
    reading holes: only allocated ranges are read."""
    expected_size = volume_size or volume_size_for(image)
    assert path.stat().st_size == expected_size
    with open(path, "rb") as f:
        assert f.read(len(image)) == image
        fd = f.fileno()
        offset = len(image)
        while offset < expected_size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), expected_size)
            while start < end:
                n = min(end - start, 64 * BLOCK_SIZE)
                assert os.pread(fd, n, start) == bytes(n), f"stale bytes at offset {start}"
                start += n
            offset = end
