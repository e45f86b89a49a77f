"""Block arithmetic: checksums, the LINEAR aggregate, the on-disk digest log and bitmaps."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

from fspd.blocks import (
    BLOCK_SIZE,
    ZERO_CHECKSUM,
    Bitmap,
    DigestFile,
    blocks_for_bytes,
    from_b64,
    gib_for_bytes,
    linear_aggregate,
)


def test_the_zero_block_checksum_is_the_documented_one() -> None:
    assert ZERO_CHECKSUM == "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE="


def test_linear_aggregate_hashes_raw_digests_in_order() -> None:
    digests = [hashlib.sha256(bytes([i]) * 16).digest() for i in range(5)]
    want = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert linear_aggregate(digests) == want
    assert linear_aggregate(reversed(digests)) != want


def test_malformed_checksums_never_match() -> None:
    assert from_b64("not base64!") == b""
    assert from_b64(base64.b64encode(b"short").decode()) == b""


def test_sizes_round_up_to_blocks_and_gib() -> None:
    assert blocks_for_bytes(1) == 1 and blocks_for_bytes(BLOCK_SIZE + 1) == 2
    assert gib_for_bytes(0) == 1 and gib_for_bytes((1 << 30) + 1) == 2


def test_bitmap_counts_and_iterates_set_bits() -> None:
    bits = Bitmap(1000)
    chosen = sorted(random.Random(1).sample(range(1000), 100))
    for index in chosen + chosen[:10]:  # setting twice counts once
        bits.set(index)
    assert bits.count == 100
    assert list(bits.iter_set()) == chosen
    again = Bitmap(1000, bits.to_bytes())
    assert again.count == 100 and list(again.iter_set()) == chosen


def test_digest_log_survives_a_reopen_and_aggregates_in_index_order(tmp_path: Path) -> None:
    rnd = random.Random(2)
    entries = {i: rnd.randbytes(32) for i in rnd.sample(range(1 << 20), 50)}
    log = DigestFile(tmp_path / "d", 1 << 20)
    for index, raw in entries.items():  # written out of order, as puts complete
        log.record(index, raw)
    log.sync()
    bitmap = log.written.to_bytes()
    log.close()
    reopened = DigestFile(tmp_path / "d", 1 << 20)
    reopened.written = Bitmap(1 << 20, bitmap)
    assert reopened.aggregate() == linear_aggregate(entries[i] for i in sorted(entries))
    reopened.close()
    assert (tmp_path / "d").stat().st_blocks * 512 < 1 << 20  # sparse, not 32 MiB
