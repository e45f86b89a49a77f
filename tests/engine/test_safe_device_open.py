"""A device target is opened as the block device that was checked (issue 12, item 1): its
device number is compared on the opened descriptor, not trusted from the path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.endpoints.safeopen import UnsafePath, device_number, open_beneath
from tests.engine.test_block_devices import _loop


@pytest.fixture
def two_loops(tmp_path: Path) -> Iterator[tuple[str, str]]:
    first = _loop(tmp_path / "a", 4 * BLOCK_SIZE)
    second = _loop(tmp_path / "b", 8 * BLOCK_SIZE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = next(first), next(second)
    yield a, b
    for gen in (first, second):
        next(gen, None)


def test_the_checked_device_opens_and_another_device_or_a_file_is_refused(
        two_loops: tuple[str, str], tmp_path: Path) -> None:
    a, b = two_loops
    # As a /dev/disk/by-id name would: a symlink resolved when the job is checked.
    link = tmp_path / "by-id-disk"
    link.symlink_to(a)
    real = os.path.realpath(link)
    checked = device_number(real)
    assert checked == os.stat(a).st_rdev
    fd = open_beneath(real, ("/",), os.O_RDWR, rdev=checked)
    try:
        assert os.fstat(fd).st_rdev == checked
    finally:
        os.close(fd)
    # The node now names another device, or a file: the descriptor gives it away.
    with pytest.raises(UnsafePath, match="no longer the block device"):
        open_beneath(b, ("/",), os.O_RDWR, rdev=checked)
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * BLOCK_SIZE)
    with pytest.raises(UnsafePath, match="no longer the block device"):
        open_beneath(plain, ("/",), os.O_RDWR, rdev=checked)
    # A regular file that was checked must still be one (not a device swapped in).
    with pytest.raises(UnsafePath, match="regular file"):
        open_beneath(b, ("/",), os.O_RDONLY)
