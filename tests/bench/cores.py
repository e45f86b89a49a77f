"""Benchmark rows for using more than one core, and for the CLI's whole-process cost.

* Hashing fetched blocks on threads (``[transfer] hash_in_threads``) against hashing them on
  the event loop: one download, in-process (``run_job``) and as a user types it (``fspd
  download`` as a subprocess, its CPU from ``RUSAGE_CHILDREN``), CPU per block and MiB/s.
* Whole-process CPU seconds of commands as typed: ``fspd --help``, ``fspd status`` (no daemon,
  and a running ``fspd serve``), ``fspd download`` of a small snapshot.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fspd.blocks import BLOCK_SIZE, digest
from fspd.hashing import BATCH, BlockHasher, thread_count, usable_cpus
from tests.bench.measure import measure
from tests.conftest import TEST_AWS_CONFIG

FSPD = Path(sys.executable).with_name("fspd")


@dataclass
class Child:
    cpu_s: float
    wall_s: float
    returncode: int


def run_child(argv: list[str], env: dict[str, str], timeout: float = 600) -> Child:
    """Run ``argv`` to its end; its user+sys CPU (this process's other children are not
    reaped meanwhile, so the RUSAGE_CHILDREN difference is this one's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "Traceback" in proc.stderr.decode(errors="replace"):
        raise RuntimeError(proc.stderr.decode(errors="replace")[-2000:])
    return Child(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall,
                 proc.returncode)


def fspd_argv(*args: str) -> list[str]:
    return [str(FSPD), *args] if FSPD.exists() else [sys.executable, "-m", "fspd", *args]


class Cores:
    def __init__(self, bench: Any) -> None:
        self.bench = bench
        self.dir = Path(tempfile.mkdtemp(prefix="cores-", dir=bench.shm))

    def env(self, transfer: str = "") -> dict[str, str]:
        """A user whose AWS is the emulator, with ``transfer`` settings in $FSPD_CONFIG."""
        config = self.dir / f"fspd-{abs(hash(transfer))}.toml"
        config.write_text(TEST_AWS_CONFIG + f'[daemon]\nsocket_path = "{self.dir}/none.sock"\n'
                          + ("[transfer]\n" + transfer if transfer else ""))
        env = dict(os.environ, FSPD_CONFIG=str(config), AWS_ENDPOINT_URL_EBS=self.bench.url,
                   AWS_ENDPOINT_URL_EC2=self.bench.url)
        env.pop("AWS_ENDPOINT_URL", None)
        return env

    async def hashing(self) -> list[dict[str, Any]]:
        """Download one synthetic snapshot with hashing on the loop and on threads, best of
        ``reps`` each (interleaved), in-process and whole-process."""
        from tests.bench.__main__ import job, per_block, settings

        bench = self.bench
        snap = bench.synthetic()
        out = self.dir / "hash.img"
        spec = job(bench.ebs(snap), {"type": "file", "path": str(out)})
        modes = {"loop": False, "threads": True}
        rows: list[dict[str, Any]] = []
        best: dict[str, Any] = {}
        for _ in range(bench.reps):
            for name, on in modes.items():
                out.unlink(missing_ok=True)
                cost = await measure(lambda on=on: _run(spec, settings(hash_in_threads=on)))
                if name not in best or cost.cpu_s < best[name].cpu_s:
                    best[name] = cost
        for name in modes:
            cost = best[name]
            rows.append({"case": "in-process run_job", "mode": name,
                         "cpu_ms": per_block(cost),
                         "mib_s": cost.result["bytes_done"] / cost.wall_s / (1 << 20)})
        children: dict[str, Child] = {}
        for _ in range(bench.reps):
            for name, on in modes.items():
                out.unlink(missing_ok=True)
                child = run_child(fspd_argv("download", snap, str(out), "-q"),
                                  self.env(f"hash_in_threads = {str(on).lower()}\n"))
                if child.returncode != 0:
                    raise RuntimeError(f"fspd download exited {child.returncode}")
                if name not in children or child.cpu_s < children[name].cpu_s:
                    children[name] = child
        out.unlink(missing_ok=True)
        blocks = int(best["threads"].result["blocks_done"])  # the same snapshot in-process
        for name in modes:
            child = children[name]
            rows.append({"case": "whole process fspd download", "mode": name,
                         "cpu_ms": 1000 * child.cpu_s / blocks,
                         "mib_s": blocks * BLOCK_SIZE / child.wall_s / (1 << 20)})
        return rows

    def startup(self) -> list[tuple[str, Child]]:
        """CPU seconds of whole commands as typed (best of ``startup_reps``)."""
        bench = self.bench
        small = bench.ctl.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                                    density=0.01, seed=7)
        env = self.env()
        sock = Path(tempfile.mkdtemp(prefix="fspd-", dir="/tmp")) / "s"
        serve = subprocess.Popen(
            fspd_argv("serve", "--spool", str(self.dir / "spool"), "--state-dir",
                      str(self.dir / "state"), "--socket", str(sock)),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                if sock.exists():
                    break
                time.sleep(0.05)
            cases = {
                "fspd --help": (fspd_argv("--help"), 0),
                "fspd status (no daemon: exit 6)": (fspd_argv("status"), 6),
                "fspd status (fspd serve running)": (fspd_argv("status", "--socket",
                                                               str(sock)), 0),
                "fspd download (1 GiB, 1% allocated)": (
                    fspd_argv("download", small, str(self.dir / "small.img"), "-q"), 0),
            }
            best: dict[str, Child] = {}
            for _ in range(bench.startup_reps):
                for name, (argv, code) in cases.items():
                    (self.dir / "small.img").unlink(missing_ok=True)
                    child = run_child(argv, env)
                    if child.returncode != code:
                        raise RuntimeError(f"{name}: exit {child.returncode}, not {code}")
                    if name not in best or child.cpu_s < best[name].cpu_s:
                        best[name] = child
        finally:
            serve.terminate()
            serve.wait(30)
            (self.dir / "small.img").unlink(missing_ok=True)
        return list(best.items())


async def hop_cost(blocks: int = 2048, in_flight: int = 32) -> dict[str, float]:
    """CPU us per block that handing blocks to a hashing thread adds to hashing them on the
    loop: one block per hop (batch 1), and batched as fspd does (BlockHasher's default)."""
    import asyncio

    buffers = [os.urandom(BLOCK_SIZE) for _ in range(in_flight)]

    async def on_loop() -> None:
        for i in range(blocks):
            digest(buffers[i % in_flight])

    def through(batch: int) -> Any:
        async def run() -> None:
            hasher = BlockHasher(1, batch=batch)
            try:
                for start in range(0, blocks, in_flight):
                    await asyncio.gather(*(hasher.digest(buffers[i % in_flight])
                                           for i in range(start, start + in_flight)))
            finally:
                hasher.close()
        return run

    best: dict[str, float] = {}
    for _ in range(3):
        for name, fn in (("loop", on_loop), ("batch 1", through(1)),
                         ("batched", through(BATCH))):
            cost = await measure(fn)
            best[name] = min(best.get(name, float("inf")), cost.cpu_s)
    return {"hash_us": 1e6 * best["loop"] / blocks,
            "hop_us_unbatched": 1e6 * (best["batch 1"] - best["loop"]) / blocks,
            "hop_us_batched": 1e6 * (best["batched"] - best["loop"]) / blocks}


async def _run(spec: Any, cfg: Any) -> Any:
    from fspd.run import run_job

    return await run_job(spec, cfg)


async def report(bench: Any) -> list[str]:
    cores = Cores(bench)
    from fspd.config import TransferSettings

    auto = thread_count(TransferSettings())
    hop = await hop_cost(blocks=max(32, min(2048, bench.blocks)))
    lines = ["", f"Hashing fetched blocks on threads ({usable_cpus()} usable CPUs here; the "
             f"default \"auto\" uses {auto} hashing thread{'s' if auto != 1 else ''})",
             f"SHA-256 of a block {hop['hash_us']:.0f} us CPU; a thread hop adds "
             f"{hop['hop_us_unbatched']:.0f} us/block one block at a time, "
             f"{hop['hop_us_batched']:.0f} us/block batched (32 in flight)",
             "download of the CPU cases' snapshot: CPU ms/block and MiB/s, fastest of each",
             f"{'case':<30}{'loop CPU':>10}{'MiB/s':>8}{'threads CPU':>13}{'MiB/s':>8}"
             f"{'CPU':>8}{'MiB/s':>8}"]
    rows = await cores.hashing()
    for case in dict.fromkeys(r["case"] for r in rows):
        loop_row, thr = (next(r for r in rows if r["case"] == case and r["mode"] == m)
                         for m in ("loop", "threads"))
        lines.append(f"{case:<30}{loop_row['cpu_ms']:>10.3f}{loop_row['mib_s']:>8.0f}"
                     f"{thr['cpu_ms']:>13.3f}{thr['mib_s']:>8.0f}"
                     f"{thr['cpu_ms'] / loop_row['cpu_ms']:>7.2f}x"
                     f"{thr['mib_s'] / loop_row['mib_s']:>7.2f}x")
    lines += ["", "Whole-process CPU of commands as typed (user+sys of the fspd process, "
              "best run; target <= 0.25 s for --help and status)"]
    for name, child in cores.startup():
        target = "" if "download" in name else ("  met" if child.cpu_s <= 0.25 else "  MISSED")
        lines.append(f"{name:<40}{child.cpu_s:>7.3f} CPU-s{child.wall_s:>8.3f} s wall{target}")
    return lines
