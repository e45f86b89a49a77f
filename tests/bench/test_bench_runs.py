"""The benchmark runs end to end and prints every section (timings are not asserted).

One test per section (``--only``), so the suite's processes share the smoke run; together they
cover what ``python -m tests.bench --quick`` runs."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT, run_grouped

# What each section must print (its headings and rows; the ratios are in these rows).
EXPECTED = {
    "cpu": ("CPU per 512 KiB block", "download", "upload", "copy", "movetos3",
            "Hashing fetched blocks on threads", "in-process run_job",
            "whole process fspd download", "Whole-process CPU of commands as typed",
            "fspd --help", "fspd status (fspd serve running)"),
    "tls": ("Over TLS", "download/TLS", "upload/TLS"),
    "whole": ("Whole process, as typed", "download", "upload", "copy", "download/TLS"),
    "scaling": ("fspd serve scaling", "client CPU ms/block", "event-loop busy",
                "workers 2 vs 1: aggregate MiB/s"),
    "rest": ("Latency-bound throughput", "Throttling", "Random throttling", "Memory"),
}


def _quick(section: str) -> str:
    out = run_grouped([sys.executable, "-m", "tests.bench", "--quick", "--only", section],
                      cwd=ROOT, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.startswith("machine:"), out.stdout
    return out.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("section", sorted(EXPECTED))
def test_each_benchmark_section_runs_and_prints_its_rows(section: str) -> None:
    stdout = _quick(section)
    for heading in EXPECTED[section]:
        assert heading in stdout, f"missing {heading!r}:\n{stdout}"
    if section == "scaling":  # a daemon with one worker, then with two, each worker listed
        rows = {line.split()[0]: line for line in stdout.splitlines()
                if re.match(r"\s+[12]\s+\d", line) and " ms/" in line}
        assert set(rows) == {"1", "2"}, stdout
        assert rows["1"].count(",") == 0 and rows["2"].count(",") == 1, stdout


def test_every_default_section_has_a_smoke_test() -> None:
    from tests.bench.__main__ import SECTIONS

    assert sorted(SECTIONS) == sorted(EXPECTED)
