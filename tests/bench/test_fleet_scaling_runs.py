"""The fleet scaling benchmark runs end to end in a tiny configuration (1 and 2 hosts) and
prints its table; timings are not asserted, the requests it counted are."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.conftest import ROOT, run_grouped

pytestmark = [pytest.mark.moto, pytest.mark.bench]


@pytest.mark.timeout(240)
def test_the_fleet_benchmark_prints_a_row_per_host_count_and_counts_requests() -> None:
    out = run_grouped(
        [sys.executable, "-m", "tests.bench.fleet_scaling", "--hosts", "1,2",
         "--jobs-per-host", "1", "--blocks", "4", "--latency-ms", "50"],
        cwd=ROOT, timeout=230)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Fleet scaling: W fspd serve hosts"), out.stdout
    header = lines.index(next(line for line in lines if line.lstrip().startswith("hosts  jobs")))
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [r[:2] for r in rows] == [["1", "1"], ["2", "2"]], out.stdout
    number = re.compile(r"\d+(\.\d+)?")
    for r in rows:  # wall s, jobs/h, per host, efficiency, job s, (gap s,) CPU s/job, load
        assert len(r) == 11 and all(number.fullmatch(v) for v in r[2:7] + r[8:10]), r
        assert r[7] == "-" or number.fullmatch(r[7]), r  # one job per host: no gap
    assert rows[0][5] == "1.00"
    assert sum(map(int, rows[1][-1].split("/"))) == 2, rows[1]  # jobs taken per host

    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["hosts"], r["jobs"]) for r in results] == [(1, 1), (2, 2)]
    for r in results:
        per_job = r["per_job"]
        # at least: the submit's PutItem, the claim, the finish; send, receive, delete
        assert per_job["dynamodb_writes"] >= 3 and per_job["dynamodb_reads"] > 0, r
        assert per_job["sqs"] >= 3 and per_job["ebs"] > 4, r
        assert r["requests"]["dynamodb PutItem"] == r["jobs"], r["requests"]
        assert r["requests"]["sqs SendMessage"] == r["jobs"], r["requests"]
        assert r["requests"]["sqs DeleteMessage"] == r["jobs"], r["requests"]
        assert r["ebs_requests"]["GetSnapshotBlock"] == r["blocks"], r["ebs_requests"]
