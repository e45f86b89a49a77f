"""Submitters may write into the spool's tmp/ and new/ only (issue 12, item 1, spool paths):
a writable spool root or done/failed box would let them swap a box for a symlink and have the
daemon write its records wherever it points."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fspd.daemon.spool import BOXES, Spool
from tests.conftest import ROOT


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def test_the_tmpfiles_spool_lets_the_group_write_into_tmp_and_new_only() -> None:
    modes = {}
    for line in (ROOT / "systemd" / "fspd-tmpfiles.conf").read_text().splitlines():
        if line.startswith("d "):
            _, path, mode, *_ = line.split()
            modes[path] = int(mode, 8)
    root = "/var/spool/fspd"
    assert not _writable_by_others(modes[root])
    for box in BOXES:
        assert _writable_by_others(modes[f"{root}/{box}"]) == (box in ("tmp", "new")), box


def test_a_spool_the_daemon_makes_lets_the_group_write_into_tmp_and_new_only(
        tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Spool(tmp_path / "spool").ensure()
    finally:
        os.umask(old)
    assert not _writable_by_others((tmp_path / "spool").stat().st_mode)
    for box in BOXES:
        mode = (tmp_path / "spool" / box).stat().st_mode
        assert _writable_by_others(mode) == (box in ("tmp", "new")), box
