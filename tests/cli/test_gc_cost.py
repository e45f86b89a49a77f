"""The cyclic garbage collector's share of a download as typed: a ``sitecustomize`` hook on
the process's PYTHONPATH counts the collections made while a job's event loop runs (start-up
and imports are not counted) and writes them at exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner

pytestmark = pytest.mark.timeout(300)

_HOOK = '''
import atexit, gc, json, os, sys
_counts = [0, 0, 0]
def _count(phase, info):
    running = getattr(sys.modules.get("asyncio"), "_get_running_loop", None)
    if phase == "start" and running is not None and running() is not None:
        _counts[info["generation"]] += 1
gc.callbacks.append(_count)
@atexit.register
def _write():
    with open(os.environ["FSPD_TEST_GC_FILE"], "w") as out:
        json.dump(_counts, out)
'''


def test_a_download_collects_garbage_rarely_and_never_walks_the_start_up_objects(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    blocks = 512
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=blocks / 2048,
                              seed=31)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    counts_file = tmp_path / "gc.json"

    result = fspd(f"fspd download {snap} out.img -q", extra_env={
        "PYTHONPATH": str(hook), "FSPD_TEST_GC_FILE": str(counts_file)})

    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out.img", "rb") as f:
        assert f.read(64 << 20) == emulator.image(snap, length=64 << 20)
    young, middle, full = json.loads(counts_file.read_text())
    fetched = emulator.stats()["requests"]["GetSnapshotBlock"]
    assert fetched > blocks * 0.9
    # CPython's defaults collect about once per 8 blocks here, and walk every object of the
    # process (modules, botocore's models) on a full collection.
    assert young + middle + full <= fetched / 40, (young, middle, full)
    assert full == 0, (young, middle, full)
