"""Whole-process rows: ``fspd download``, ``upload`` and ``copy`` run as a user types them (the
installed console script, a new process, endpoints from ``AWS_ENDPOINT_URL_*``), against the
floor run the same way (tests/bench/floor_proc.py) and, where installed, the peers: FSP
unmodified (``FSP_DIR``, run with ``FSP_PYTHON``) and dsnap (``DSNAP``, or the ``[bench]``
extra's ``dsnap`` beside this Python). A peer that is absent is reported as such, never an error.

CPU-s is the child's user+sys from ``os.wait4`` (so it includes the children it reaped, such as
FSP's worker processes); wall is from start to exit, imports included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import floors
from tests.cli.conftest import fspd_argv

# The targets for the whole process: CPU at most 1.25x the floor's, and at least 0.8x
# the floor's MiB/s.
CPU_TARGET, SPEED_TARGET = 1.25, 0.8


@dataclass
class Run:
    cpu_s: float
    wall_s: float

    def mib_s(self, nbytes: int) -> float:
        return nbytes / self.wall_s / (1 << 20)


@dataclass
class Row:
    name: str
    nbytes: int
    floor: Run
    fspd: Run
    peers: dict[str, Run | str] = field(default_factory=dict)  # str: why it did not run


def run_measured(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 1800
                 ) -> Run:
    """Run ``argv`` to its end; its (and its reaped children's) CPU-s from ``os.wait4``."""
    log = cwd / "whole-stderr.log"
    start = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}… exited {proc.returncode}:\n"
                           f"{log.read_text(errors='replace')[-2000:]}")
    return Run(usage.ru_utime + usage.ru_stime, wall)


def fsp_command() -> list[str] | str:
    """FSP's own command line (unmodified, from ``FSP_DIR``), or why it is not there."""
    fsp_dir = os.environ.get("FSP_DIR")
    if not fsp_dir:
        return "not run: set FSP_DIR (and FSP_PYTHON, a Python with FSP's requirements)"
    main = Path(fsp_dir) / "src" / "main.py"
    if not main.is_file():
        return f"not run: {main} not found"
    return [os.environ.get("FSP_PYTHON", sys.executable), str(main), "--nodeps",
            "--suppress_writes", "-q"]


def dsnap_command() -> list[str] | str:
    path = os.environ.get("DSNAP") or shutil.which("dsnap", path=str(Path(sys.executable).parent))
    if not path or not os.access(path, os.X_OK):
        return "not run: pip install '.[bench]' (dsnap) or set DSNAP"
    return [path]


class WholeProcess:
    """The whole-process cases against one emulator (HTTP or HTTPS)."""

    def __init__(self, url: str, ctl: Any, work: Path, gib: float, reps: int,
                 ca_bundle: Path | None = None, s3_url: str | None = None) -> None:
        """``gib`` of data per case (a fraction for quick runs: then the snapshots are sparse
        volumes of 1 GiB holding that many blocks)."""
        self.url, self.ctl, self.work, self.reps = url, ctl, work, reps
        self.blocks = max(1, int(gib * 2048))
        self.gib = max(1, -(-self.blocks // 2048))  # the volume size
        self.nbytes = self.blocks * 524288
        self.ca_bundle = ca_bundle
        self.s3_url = s3_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")
                    and k != "AWS_CA_BUNDLE"}
        self.env |= {"AWS_ENDPOINT_URL_EBS": url, "AWS_ENDPOINT_URL_EC2": url,
                     "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
        if ca_bundle is not None:
            self.env["AWS_CA_BUNDLE"] = str(ca_bundle)
        self.rows: list[Row] = []

    def _synthetic(self, seed: int) -> str:
        full = self.blocks == self.gib * 2048
        return str(self.ctl.synthetic(region="us-east-1", volume_size=self.gib, seed=seed,
                                      allocation="full" if full else "sparse",
                                      density=self.blocks / (self.gib * 2048)))

    def _floor(self, spec: dict[str, Any]) -> list[str]:
        spec = {"base": self.url, "cafile": str(self.ca_bundle) if self.ca_bundle else None,
                **spec}
        return [sys.executable, str(Path(__file__).with_name("floor_proc.py")), json.dumps(spec)]

    def _headers(self, region: str) -> dict[str, str]:
        return floors.static_auth(f"{self.url}/snapshots/x/blocks/0", region)

    def _best(self, runs: dict[str, Callable[[], list[str]]], clean: Callable[[], None],
              env: dict[str, dict[str, str]] | None = None) -> dict[str, Run]:
        """Each contender ``reps`` times, interleaved; the cheapest run of each kept."""
        best: dict[str, Run] = {}
        for _ in range(self.reps):
            for name, argv in runs.items():
                clean()
                os.sync()
                run = run_measured(argv(), (env or {}).get(name, self.env), self.work)
                if name not in best or run.cpu_s < best[name].cpu_s:
                    best[name] = run
        return best

    def download(self, label: str = "download", peers_too: bool = True) -> None:
        snap = self._synthetic(11)
        out = self.work / "whole.img"
        peers_dir = self.work / "peers"

        def clean() -> None:
            out.unlink(missing_ok=True)
            shutil.rmtree(peers_dir, ignore_errors=True)
            peers_dir.mkdir()

        runs: dict[str, Callable[[], list[str]]] = {
            "floor": lambda: self._floor({"op": "download", "snapshot": snap, "out": str(out),
                                          "size": self.gib << 30,
                                          "get_headers": self._headers("us-east-1")}),
            "fspd": lambda: fspd_argv(["fspd", "download", snap, str(out), "-q"]),
        }
        peers: dict[str, Run | str] = {}
        env: dict[str, dict[str, str]] = {}
        fsp = fsp_command()
        if not peers_too:
            pass
        elif isinstance(fsp, str):
            peers["FSP"] = fsp
        elif self.s3_url is None or self.ca_bundle is not None:
            peers["FSP"] = "not run: needs moto for STS and S3, over HTTP"
        else:
            runs["FSP"] = lambda: [*fsp, "download", snap, str(out)]  # type: ignore[misc]
            # FSP asks STS and S3 who the caller is before anything else: moto answers.
            env["FSP"] = self.env | {"AWS_ENDPOINT_URL_STS": self.s3_url,
                                     "AWS_ENDPOINT_URL_S3": self.s3_url}
        dsnap = dsnap_command()
        if not peers_too:
            pass
        elif isinstance(dsnap, str):
            peers["dsnap"] = dsnap
        else:
            runs["dsnap"] = lambda: [*dsnap, "--region", "us-east-1", "get",  # type: ignore[misc]
                                     "--output", str(peers_dir), "--force", snap]
        best = self._best(runs, clean, env)
        clean()
        peers |= {k: v for k, v in best.items() if k not in ("floor", "fspd")}
        self.rows.append(Row(label, self.nbytes, best["floor"], best["fspd"], peers))

    def upload(self) -> None:
        src = self.work / "whole-src.img"
        with open(src, "wb") as f:
            for _ in range(self.blocks):
                f.write(os.urandom(524288))
        targets = iter(range(1000))

        def floor() -> list[str]:
            target = self._start("us-east-1", next(targets))
            return self._floor({"op": "upload", "source": str(src), "blocks": self.blocks,
                                "target": target, "put_headers": self._headers("us-east-1")})

        best = self._best({"floor": floor,
                           "fspd": lambda: fspd_argv(["fspd", "upload", str(src), "-q"])},
                          clean=lambda: None)
        src.unlink()
        self.rows.append(Row("upload", self.nbytes, best["floor"], best["fspd"]))

    def copy(self) -> None:
        snap = self._synthetic(12)
        targets = iter(range(1000))

        def floor() -> list[str]:
            target = self._start("us-west-2", next(targets))
            return self._floor({"op": "copy", "snapshot": snap, "target": target,
                                "get_headers": self._headers("us-east-1"),
                                "put_headers": self._headers("us-west-2")})

        best = self._best({"floor": floor, "fspd": lambda: fspd_argv(
            ["fspd", "copy", snap, "-d", "us-west-2", "-q"])}, clean=lambda: None)
        self.rows.append(Row("copy", self.nbytes, best["floor"], best["fspd"]))

    def _start(self, region: str, n: int) -> str:
        """A pending snapshot for the floor to put into (StartSnapshot is not timed)."""
        import boto3
        from botocore.config import Config

        ebs = boto3.client("ebs", region_name=region, endpoint_url=self.url,
                           verify=str(self.ca_bundle) if self.ca_bundle else None,
                           config=Config(retries={"max_attempts": 1}))
        return str(ebs.start_snapshot(VolumeSize=self.gib, Timeout=60,
                                      ClientToken=f"floor-{region}-{n}-{time.time_ns()}")
                   ["SnapshotId"])


def table(rows: list[Row], title: str) -> list[str]:
    lines = ["", title,
             f"{'case':<14}{'floor CPU-s':>12}{'fspd CPU-s':>11}{'CPU ratio':>10}{'target':>8}"
             f"{'floor MiB/s':>12}{'fspd MiB/s':>11}{'speed':>7}{'target':>8}   peers "
             "(CPU-s, MiB/s, CPU ratio to the floor)"]
    for r in rows:
        cpu = r.fspd.cpu_s / r.floor.cpu_s
        speed = r.fspd.mib_s(r.nbytes) / r.floor.mib_s(r.nbytes)
        peers = "; ".join(
            f"{k} {v}" if isinstance(v, str) else
            f"{k} {v.cpu_s:.1f} s, {v.mib_s(r.nbytes):.0f} MiB/s, {v.cpu_s / r.floor.cpu_s:.2f}x"
            for k, v in r.peers.items())
        lines.append(
            f"{r.name:<14}{r.floor.cpu_s:>12.2f}{r.fspd.cpu_s:>11.2f}{cpu:>9.2f}x"
            f"{'<=' + str(CPU_TARGET) + 'x':>8}{'' if cpu <= CPU_TARGET else '!':1}"
            f"{r.floor.mib_s(r.nbytes):>11.0f}{r.fspd.mib_s(r.nbytes):>11.0f}{speed:>6.2f}x"
            f"{'>=' + str(SPEED_TARGET) + 'x':>8}{'' if speed >= SPEED_TARGET else '!':1}  "
            f"{peers}")
    lines.append("(! = target missed)")
    return lines
