"""``fspd upload`` of a regular file with at most two usable CPUs reads it on the event loop
(``[transfer] read_in_threads = "auto"``, fspd/endpoints/files.py): no reading threads taking
the GIL back from the loop twice per block. The upload runs as typed; its effect is the
snapshot's bytes, and the hand-overs it no longer makes show in the process's voluntary
context switches (``wait4``), compared with the same upload forced onto threads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from fspd.endpoints.files import reads_on_loop
from fspd.hashing import LOOP_ONLY_MAX_CPUS
from tests.cli.conftest import fspd_argv
from tests.conftest import TEST_AWS_CONFIG

BLOCKS = 512  # 256 MiB: enough blocks that per-block hand-overs outnumber start-up's
# The CPUs the uploads may use (their affinity, as taskset or CPUAffinity= would set it).
CPUS = set(sorted(os.sched_getaffinity(0))[:LOOP_ONLY_MAX_CPUS])


def _upload(cli_env: dict[str, str], cwd: Path, source: Path, transfer: str
            ) -> tuple[str, int]:
    """Run ``fspd upload SOURCE --json`` with ``[transfer]`` set to ``transfer``; return the
    new snapshot's id and the process's voluntary context switches."""
    config = cwd / f"fspd-{abs(hash(transfer))}.toml"
    config.write_text(TEST_AWS_CONFIG + "[transfer]\n" + transfer)
    with open(cwd / "stdout", "w+b") as out, open(cwd / "stderr", "w+b") as err:
        proc = subprocess.Popen(fspd_argv(["fspd", "upload", str(source), "--json"]), cwd=cwd,
                                env={**cli_env, "FSPD_CONFIG": str(config)},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=lambda: os.sched_setaffinity(0, CPUS))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    result = json.loads(stdout)
    return str(result["destinations"][0]["snapshot_id"]), usage.ru_nvcsw


@pytest.mark.timeout(300)
def test_upload_of_a_regular_file_reads_on_the_loop_without_gil_handovers(
        cli_env: dict[str, str], emulator: EmulatorControl, tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    with open(source, "wb") as f:
        for _ in range(BLOCKS):
            f.write(os.urandom(BLOCK_SIZE))
    on_loop, loop_switches = _upload(cli_env, tmp_path, source, "")
    threads, thread_switches = _upload(cli_env, tmp_path, source, "read_in_threads = true\n")
    expected = source.read_bytes()
    for snapshot in (on_loop, threads):
        assert emulator.image(snapshot, length=len(expected)) == expected
    # On threads each block costs a few switches (GIL hand-overs: ~1,600 here for 512
    # blocks); on the loop, hardly any beyond start-up's (~350, most of them waits for
    # the emulator's answers).
    assert loop_switches * 2 < thread_switches, (loop_switches, thread_switches)


@pytest.mark.parametrize(("setting", "regular", "cpus", "on_loop"), [
    ("auto", True, 1, True), ("auto", True, 2, True),
    ("auto", True, 3, False),  # a reading thread has a core of its own
    ("auto", False, 2, False),  # a device's reads wait on the device
    (True, True, 2, False), (True, False, 1, False), (False, False, 8, True)])
def test_read_in_threads_setting_and_usable_cpus_decide_where_a_file_source_reads(
        setting: bool | str, regular: bool, cpus: int, on_loop: bool) -> None:
    assert reads_on_loop(setting, regular, cpus) is on_loop
