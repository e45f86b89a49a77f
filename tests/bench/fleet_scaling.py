"""Scaling of a fleet of ``fspd serve`` hosts, and the fleet's own AWS requests.

usage: python -m tests.bench.fleet_scaling [--hosts 1,2,4,8] [--jobs-per-host 3]
       [--blocks 32] [--latency-ms 1000] [--fetch-concurrency 4] [--heartbeat-s 2]

Starts the emulator (EBS, with ``latency_ms`` added to every request, so a job waits on the
network, not on this machine's CPU), moto's server (SQS, DynamoDB, S3; tests/bench/fleet_moto.py
counts the requests it answers) and, for each host count W, W real ``fspd serve`` processes
(workers = 1, max_jobs = 1, a state and spool directory each) on one fleet. Then:

1. the emulator holds every EBS request; ``fspd submit --fleet`` enqueues N = W x
   jobs-per-host download jobs (a snapshot of ``--blocks`` blocks each);
2. once every host is running its first job, the hold is lifted (the latency stays): the
   clock starts, so the hosts' start-up and the CLI's submissions are outside the window;
3. the wall time ends at the last job's end (the hosts' own ``finished_at``).

Reports jobs per hour per host count, the scaling efficiency (jobs/h at W ÷ (W × jobs/h at
1); target >= 0.9 at 8), and per job: DynamoDB writes and reads, SQS requests, S3 PUTs and
GETs (whole run, submissions included; the heartbeats of the first jobs while held left
out), EBS requests and heartbeats, also per GiB moved.
Prints a table and one JSON line per run.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl, EmulatorProcess
from tests.bench.daemon_scaling import cpu_s
from tests.cli.conftest import fspd_argv
from tests.conftest import moto_server
from tests.daemon.conftest import Daemon, download_job, wait_for, write_config
from tests.fleet.conftest import make_bucket

BLOCK = 512 * 1024
GIB = 1 << 30
BUCKET = "fspd-bench-fleet"
TARGET = 0.9
DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem",
                   "TransactWriteItems")
SUBMIT_AT_ONCE = 4  # `fspd submit --fleet` processes at a time
FINISHED = ("completed", "failed", "cancelled")
POLL_S = 1.0  # how often the bench asks the hosts whether all jobs are done


class CountingMoto:
    """tests/bench/fleet_moto.py as a child process."""

    def __enter__(self) -> CountingMoto:
        if importlib.util.find_spec("moto") is None:
            raise ImportError("moto is not installed (pip install -e '.[test]')")
        self._server = moto_server(["-m", "tests.bench.fleet_moto", "{port}"])
        self.url = self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(None, None, None)

    def _post(self, path: str) -> None:
        req = urllib.request.Request(f"{self.url}{path}", method="POST")
        urllib.request.urlopen(req, timeout=30).close()

    def reset(self) -> None:
        """moto's state and the counts."""
        self._post("/moto-api/reset")
        self._post("/fspd-bench/reset")

    def counts(self) -> Counter[str]:
        with urllib.request.urlopen(f"{self.url}/fspd-bench/counts", timeout=30) as resp:
            return Counter(json.loads(resp.read()))


def fleet_section(args: argparse.Namespace) -> str:
    return f"""
[fleet]
queue = "fspd-bench"
table = "fspd-bench"
bucket = "s3://{BUCKET}/fleet"
lease_s = {max(10.0, 5 * args.heartbeat_s)}
heartbeat_s = {args.heartbeat_s}
receive_wait_s = {args.receive_wait_s}
"""


def _cli(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(fspd_argv(["fspd", *command]), env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def _check(proc: subprocess.Popen[str], what: str) -> None:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {err[-2000:]}{out[-500:]}")


def submit_all(files: list[Path], env: dict[str, str], cwd: Path) -> None:
    """``fspd submit --fleet FILE`` for each, a few processes at a time."""
    for i in range(0, len(files), SUBMIT_AT_ONCE):
        procs = [(_cli(["submit", "--fleet", str(f)], env, cwd), f.name)
                 for f in files[i:i + SUBMIT_AT_ONCE]]
        for proc, name in procs:
            _check(proc, f"fspd submit --fleet {name}")


def _poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_for, at a slow pace: each look asks every host's control socket, CPU that the
    hosts would otherwise spend on their jobs (the end time comes from the jobs' own
    finished_at, not from when this notices)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return value


def _jobs(hosts: list[Daemon]) -> list[dict[str, Any]]:
    return [j | {"host": n} for n, h in enumerate(hosts) for j in h.api("/v1/jobs")["jobs"]]


def _all_finished(hosts: list[Daemon], n: int) -> list[dict[str, Any]] | None:
    """Every host's jobs once ``n`` of them have ended, else None."""
    jobs = _jobs(hosts)
    return jobs if sum(j["state"] in FINISHED for j in jobs) >= n else None


def run(w: int, args: argparse.Namespace, emulator: EmulatorControl, moto: CountingMoto,
        work: Path, scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    """One host count: W hosts, W x jobs-per-host jobs; the measurement as a dict."""
    load = os.getloadavg()[0]  # this machine is shared: say how busy it was
    moto.reset()
    emulator.reset()
    make_bucket(moto.url, BUCKET)
    _check(_cli(["fleet", "init"], env, work), "fspd fleet init")
    snap = emulator.synthetic(volume_size=1, allocation="sparse", seed=1,
                              density=args.blocks / 2048)
    config = write_config(work / f"serve-{w}.toml", fleet_section(args) + f"""
[transfer]
fetch_concurrency = {args.fetch_concurrency}
""")
    hosts = [Daemon(work / f"w{w}" / f"host-{i}",
                    ["--config", str(config), "--max-jobs", "1", "--workers", "1"], env)
             for i in range(w)]
    n = w * args.jobs_per_host
    targets = scratch / f"w{w}"
    targets.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = work / f"w{w}" / f"job-{i:03d}.toml"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f'name = "bench-w{w}-{i:03d}"\n'
                     + download_job(emulator, snap, targets / f"{i:03d}.img"))
        files.append(f)
    try:
        emulator.faults(hold_after=0)  # every EBS request waits until "go"
        for h in hosts:
            h.start()
        before = moto.counts()
        emulator.reset_stats()
        submit_all(files, env, work)
        wait_for(lambda: sum(j["state"] == "running" for j in _jobs(hosts)) >= w,
                 300, f"{w} hosts to start their first job")
        held = moto.counts() - before
        pids = [pid for h in hosts for pid in _pids(h)]
        cpu0 = sum(map(cpu_s, pids))
        emulator.faults(latency_ms=args.latency_ms)
        go = time.time()
        done = _poll(lambda: _all_finished(hosts, n), 3600, f"{n} fleet jobs to finish")
        after = moto.counts()
        ebs = emulator.stats()["requests"]
        cpu = sum(map(cpu_s, pids)) - cpu0
    finally:
        emulator.clear_faults()
        for h in hosts:
            h.stop()
            shutil.rmtree(h.sock_dir, ignore_errors=True)
        shutil.rmtree(targets, ignore_errors=True)
    finished = [j for j in done if j["state"] in FINISHED]
    failed = [j["job"] for j in finished if j["state"] != "completed"]
    if failed:
        raise RuntimeError(f"fleet jobs did not complete: {failed}\n{hosts[0].log()[-3000:]}")
    wall = max(float(j["finished_at"]) for j in finished) - go
    blocks = sum(int(j["blocks_done"]) for j in finished)
    result = summarize(w, n, wall, blocks, without_held_heartbeats(after - before, held), ebs,
                       Counter(j["host"] for j in finished))
    return result | timing(finished, go) | {"fspd_cpu_s_per_job": round(cpu / n, 3),
                                            "load_before": round(load, 2)}


def _pids(host: Daemon) -> list[int]:
    assert host.proc is not None
    return [host.proc.pid, *(w["pid"] for w in host.api("/v1/status")["workers"])]


def without_held_heartbeats(counts: Counter[str], held: Counter[str]) -> Counter[str]:
    """The counts without the heartbeats of the first jobs while the emulator held them (the
    longer the submissions take, the more): until "go" a job has no journal, so each of those
    heartbeats is one UpdateItem (the lease) and one ChangeMessageVisibility."""
    beats = held.get("sqs ChangeMessageVisibility", 0)
    return counts - Counter({"sqs ChangeMessageVisibility": beats, "dynamodb UpdateItem": beats})


def timing(finished: list[dict[str, Any]], go: float) -> dict[str, Any]:
    """Mean seconds a job ran (started_at to finished_at, claim and restore excluded) and
    mean seconds a host spent between one job's end and its next job's start."""
    runs = [float(j["finished_at"]) - max(go, float(j["started_at"])) for j in finished]
    gaps = []
    for host in {j["host"] for j in finished}:
        mine = sorted((float(j["started_at"]), float(j["finished_at"])) for j in finished
                      if j["host"] == host)
        gaps += [start - end for (_, end), (start, _) in itertools.pairwise(mine)]
    return {"job_s": round(sum(runs) / len(runs), 2),
            "between_jobs_s": round(sum(gaps) / len(gaps), 2) if gaps else None}


def summarize(w: int, n: int, wall: float, blocks: int, fleet: Counter[str],
              ebs: dict[str, int], per_host: Counter[int]) -> dict[str, Any]:
    def total(service: str, ops: tuple[str, ...] | None = None, exclude: bool = False) -> int:
        return sum(v for k, v in fleet.items() if k.split(" ")[0] == service and (
            ops is None or ((k.split(" ")[1] in ops) != exclude)))

    gib = blocks * BLOCK / GIB
    per_job = {
        "dynamodb_writes": total("dynamodb", DYNAMODB_WRITES) / n,
        "dynamodb_reads": total("dynamodb", DYNAMODB_WRITES, exclude=True) / n,
        "sqs": total("sqs") / n,
        "s3_put": total("s3", ("PUT", "POST")) / n,
        "s3_get": total("s3", ("PUT", "POST"), exclude=True) / n,
        "ebs": sum(ebs.values()) / n,
        "heartbeats": fleet.get("sqs ChangeMessageVisibility", 0) / n,
    }
    return {"hosts": w, "jobs": n, "wall_s": round(wall, 2),
            "jobs_per_h": round(3600 * n / wall, 1), "blocks": blocks,
            "gib": round(gib, 4), "jobs_per_host": [per_host[i] for i in range(w)],
            "per_job": {k: round(v, 2) for k, v in per_job.items()},
            "per_gib": {k: round(v * n / gib, 1) for k, v in per_job.items()
                        if k != "heartbeats"},
            "requests": dict(sorted(fleet.items())), "ebs_requests": ebs}


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    base = next((r["jobs_per_h"] for r in results if r["hosts"] == 1), None)
    lines = [f"Fleet scaling: W fspd serve hosts (workers 1, max_jobs 1 each), "
             f"{args.jobs_per_host} download jobs per host of {args.blocks} blocks; EBS "
             f"latency {args.latency_ms:g} ms, {args.fetch_concurrency} in flight; "
             f"heartbeat_s {args.heartbeat_s:g}",
             f"{'hosts':>5}{'jobs':>6}{'wall s':>8}{'jobs/h':>9}{'per host':>10}"
             f"{'efficiency':>12}{'job s':>7}{'gap s':>7}{'CPU s/job':>10}{'load':>6}   "
             "jobs taken per host"]
    legend = ("job s: mean run time of a job; gap s: mean idle time of a host between two "
              "jobs (receive, claim); CPU s/job: fspd's (daemons and workers); load: 1-minute "
              "load average before the run")
    for r in results:
        eff = None if base is None else r["jobs_per_h"] / (r["hosts"] * base)
        r["efficiency"] = None if eff is None else round(eff, 3)
        verdict = "" if eff is None or r["hosts"] < 8 else (
            f"  (target >= {TARGET}: {'met' if eff >= TARGET else 'MISSED'})")
        lines.append(f"{r['hosts']:>5}{r['jobs']:>6}{r['wall_s']:>8.1f}{r['jobs_per_h']:>9.0f}"
                     f"{r['jobs_per_h'] / r['hosts']:>10.0f}"
                     f"{'-' if eff is None else f'{eff:.2f}':>12}{r['job_s']:>7.2f}"
                     f"{'-' if r['between_jobs_s'] is None else r['between_jobs_s']:>7}"
                     f"{r['fspd_cpu_s_per_job']:>10.2f}{r['load_before']:>6.1f}   "
                     f"{'/'.join(map(str, r['jobs_per_host']))}{verdict}")
    lines += [legend, "", "The fleet's own requests (counted at moto's server, whole run incl. "
              "submit) and EBS requests, per job / per GiB moved",
              f"{'hosts':>5}{'DDB write':>11}{'DDB read':>10}{'SQS':>8}{'S3 PUT':>8}"
              f"{'S3 GET':>8}{'EBS':>8}{'heartbeats':>12}"]
    for r in results:
        j, g = r["per_job"], r["per_gib"]
        lines.append(f"{r['hosts']:>5}{j['dynamodb_writes']:>11.2f}{j['dynamodb_reads']:>10.2f}"
                     f"{j['sqs']:>8.2f}{j['s3_put']:>8.2f}{j['s3_get']:>8.2f}{j['ebs']:>8.1f}"
                     f"{j['heartbeats']:>12.2f}   per job")
        lines.append(f"{'':>5}{g['dynamodb_writes']:>11.0f}{g['dynamodb_reads']:>10.0f}"
                     f"{g['sqs']:>8.0f}{g['s3_put']:>8.0f}{g['s3_get']:>8.0f}{g['ebs']:>8.0f}"
                     f"{'':>12}   per GiB ({r['gib'] / r['jobs'] * 1024:.0f} MiB a job)")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench.fleet_scaling",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}hosts", default="1,2,4,8", help="host counts (comma-separated)")
    p.add_argument(f"--{prefix}jobs-per-host", type=int, default=3)
    p.add_argument(f"--{prefix}blocks", type=int, default=32, help="blocks per job")
    # 1 s: on a 2-core machine shared with other work, the run-queue wait of each of a job's
    # ~20 round trips (tens of ms at a load of 10) stays small beside the latency.
    p.add_argument(f"--{prefix}latency-ms", type=float, default=1000.0,
                   help="latency the emulator adds to every EBS request")
    p.add_argument(f"--{prefix}fetch-concurrency", type=int, default=4)
    p.add_argument(f"--{prefix}heartbeat-s", type=float, default=2.0)
    p.add_argument(f"--{prefix}receive-wait-s", type=int, default=20,
                   help="the hosts' SQS long poll")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    counts = sorted({max(1, int(x)) for x in str(args.hosts).split(",")})
    env = dict(os.environ)
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAFSPDBENCH0000001",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        env.setdefault(key, value)
    env.pop("AWS_ENDPOINT_URL", None)
    work = Path(tempfile.mkdtemp(prefix="fspd-fleet-bench-"))
    scratch = Path(tempfile.mkdtemp(prefix="fspd-fleet-bench-", dir="/dev/shm")) \
        if os.path.isdir("/dev/shm") else work / "targets"
    results = []
    try:
        with EmulatorProcess(data_dir=work / "emulator", args=["--no-throttling"]) as emu, \
                CountingMoto() as moto:
            assert emu.url is not None
            operator = write_config(work / "operator.toml", fleet_section(args))
            env |= {"FSPD_CONFIG": str(operator), **{f"AWS_ENDPOINT_URL_{s}": moto.url
                                                     for s in ("SQS", "DYNAMODB", "S3")}}
            emulator = EmulatorControl(emu.url)
            for w in counts:
                results.append(run(w, args, emulator, moto, work, scratch, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def report(args: argparse.Namespace) -> list[str]:
    results = measure(args)
    return [*table(results, args), *(json.dumps(r) for r in results)]


def main() -> int:
    args = parser().parse_args()
    print("\n".join(report(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
