"""The benchmark runs end to end and prints every section (timings are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(300)
def test_the_benchmark_runs_and_prints_its_table() -> None:
    out = subprocess.run([sys.executable, "-m", "tests.bench", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=280, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    for section in ("machine:", "CPU per 512 KiB block", "download", "upload", "copy",
                    "movetos3", "Over TLS", "download/TLS", "upload/TLS", "Whole process",
                    "Hashing fetched blocks on threads", "in-process run_job",
                    "whole process fspd download", "Whole-process CPU of commands as typed",
                    "fspd --help", "fspd status (fspd serve running)",
                    "fspd serve scaling", "client CPU ms/block", "event-loop busy",
                    "workers 2 vs 1: aggregate MiB/s",
                    "Latency-bound throughput", "Throttling", "Random throttling", "Memory"):
        assert section in out.stdout, f"missing {section!r}:\n{out.stdout}"
    # the scaling rows: a daemon with one worker, then with two, each worker's figures listed
    rows = {line.split()[0]: line for line in out.stdout.splitlines()
            if re.match(r"\s+[12]\s+\d", line) and " ms/" in line}
    assert set(rows) == {"1", "2"}, out.stdout
    assert rows["1"].count(",") == 0 and rows["2"].count(",") == 1, out.stdout
