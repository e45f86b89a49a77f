"""Waiting for another process's state (a file, a checkpoint, the emulator's counters): the
one polling loop of the tests that watch a child process, so none waits for a fixed time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

POLL_S = 0.01  # between two looks at another process's state; never a wait for the state


def wait_until(ready: Callable[[], T], proc: subprocess.Popen[Any] | None, what: str,
               timeout: float = 60, poll_s: float = POLL_S) -> T:
    """Poll ``ready`` every ``poll_s`` until it returns a true value, and return that value.
    Fails, killing ``proc``, if ``proc`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
            pytest.fail(f"gave up waiting for {what}: "
                        f"{proc.communicate() if proc is not None else 'timed out'}")
        time.sleep(poll_s)
    return value
