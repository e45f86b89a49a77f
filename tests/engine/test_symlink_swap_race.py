"""A submitter swapping a directory under an allowed prefix for a symlink, in a tight loop,
never gets fspd's open to reach outside the prefix (issue 12, item 1)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fspd.endpoints.safeopen import UnsafePath, open_beneath, open_dir_beneath

ATTEMPTS = 400  # at least this many opens race the swapper
MAX_ATTEMPTS = 200_000  # the bound while waiting for both outcomes to show up
VICTIM = b"daemon-owned, must never change\n"
# The attacker: its own process (no GIL shared with the opener), flipping two names with
# renameat2(RENAME_EXCHANGE) as fast as it can until its stdin closes; prints its flip count.
SWAP_LOOP = """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
flips = 0
while not done.is_set():
    for _ in range(100):
        if libc.renameat2(-100, a, -100, b, 2) != 0:
            sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
        flips += 1
print(flips, flush=True)
"""


class Swapper:
    """``allowed/user/sub`` flips between a real directory and a symlink to ``victim/``,
    swapped by another process for as long as the ``with`` block lasts."""

    def __init__(self, root: Path) -> None:
        self.allowed = root / "allowed"
        self.victim_dir = root / "victim"
        self.victim_dir.mkdir()
        self.victim = self.victim_dir / "out.img"
        self.victim.write_bytes(VICTIM)
        user = self.allowed / "user"
        user.mkdir(parents=True)
        self.sub = user / "sub"
        self.sub.mkdir()
        self.other = user / "sub.swap"
        self.other.symlink_to(self.victim_dir)
        self.target = self.sub / "out.img"
        self.flips = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Swapper:
        self._proc = subprocess.Popen([sys.executable, "-c", SWAP_LOOP, str(self.sub),
                                       str(self.other)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)
        assert self._proc.returncode == 0, out
        self.flips = int(out.split()[-1])

    def escaped(self) -> bool:
        """True (and the victim restored) if the victim's bytes changed."""
        if self.victim.read_bytes() == VICTIM:
            return False
        self.victim.write_bytes(VICTIM)
        return True


def _attempts(swap: Swapper, opener: Callable[[Path], int]) -> Iterator[str]:
    """Open the target as a sink does and write to it; yield what happened each time."""
    for _ in range(MAX_ATTEMPTS):
        try:
            fd = opener(swap.target)
        except UnsafePath:
            yield "refused"
            continue
        except OSError as exc:  # caught mid-swap: the name is missing for a moment
            assert exc.errno in (errno.ENOENT, errno.ENOTDIR), exc
            yield "refused"
            continue
        try:
            os.pwrite(fd, b"written by a job", 0)
        finally:
            os.close(fd)
        yield "escaped" if swap.escaped() else "written"


def _safe(allowed: Path) -> Callable[[Path], int]:
    return lambda target: open_beneath(target, (str(allowed),), os.O_RDWR | os.O_CREAT)


def test_a_swapping_process_never_makes_the_safe_open_escape(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()
    with Swapper(tmp_path) as swap:
        for outcome in _attempts(swap, _safe(swap.allowed)):
            seen[outcome] += 1
            # Go on until the race is shown live: opens met the directory and the symlink.
            if seen.total() >= ATTEMPTS and seen["written"] >= 20 and seen["refused"] >= 20:
                break
    assert swap.victim.read_bytes() == VICTIM
    assert seen["escaped"] == 0, seen
    assert seen["written"] >= 20 and seen["refused"] >= 20, seen


def test_the_same_swapping_process_makes_a_plain_open_escape(tmp_path: Path) -> None:
    """The harness itself: a plain ``os.open`` (what the sink did before) is caught out."""
    seen: Counter[str] = Counter()
    with Swapper(tmp_path) as swap:
        for outcome in _attempts(swap, lambda t: os.open(t, os.O_RDWR | os.O_CREAT, 0o644)):
            seen[outcome] += 1
            if seen["escaped"] >= 3:
                break
    assert seen["escaped"] >= 3, seen


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_RDWR | os.O_CREAT])
def test_a_symlink_anywhere_below_the_prefix_is_refused(tmp_path: Path, flags: int) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    victim = tmp_path / "victim.img"
    victim.write_bytes(VICTIM)
    (allowed / "a" / "last.img").symlink_to(victim)
    (allowed / "mid").symlink_to(tmp_path)
    for target in (allowed / "a" / "last.img", allowed / "mid" / "victim.img"):
        with pytest.raises(UnsafePath, match="symlink"):
            open_beneath(target, (str(allowed),), flags)
    with pytest.raises(UnsafePath, match="outside"):
        open_beneath(victim, (str(allowed),), flags)
    assert victim.read_bytes() == VICTIM


def test_a_fifo_or_hard_link_swapped_in_is_refused_without_hanging(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.mkfifo(allowed / "pipe.img")
    with pytest.raises(UnsafePath, match="regular file"):
        open_beneath(allowed / "pipe.img", (str(allowed),), os.O_RDONLY)
    victim = tmp_path / "victim.img"
    victim.write_bytes(VICTIM)
    os.link(victim, allowed / "linked.img")
    with pytest.raises(UnsafePath, match="hard links"):
        open_beneath(allowed / "linked.img", (str(allowed),), os.O_RDWR)
    assert victim.read_bytes() == VICTIM


def test_the_directory_to_flush_is_walked_the_same_way(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "a" / "b").mkdir(parents=True)
    fd = open_dir_beneath(allowed / "a" / "b", (str(allowed),))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    (allowed / "a" / "b").rename(allowed / "a" / "b.real")
    (allowed / "a" / "b").symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="symlink"):
        open_dir_beneath(allowed / "a" / "b", (str(allowed),))


def test_a_prefix_naming_the_file_itself_opens_and_flushes(tmp_path: Path) -> None:
    target = tmp_path / "only.img"
    fd = open_beneath(target, (str(target),), os.O_RDWR | os.O_CREAT)
    os.close(fd)
    os.close(open_dir_beneath(tmp_path, (str(target),)))
    with pytest.raises(UnsafePath, match="outside"):
        open_dir_beneath(tmp_path.parent, (str(target),))
