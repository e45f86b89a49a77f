"""fspd's benchmark: ``python -m tests.bench [--blocks N] [--quick] [--big] [--only ...]``.

Everything runs against the emulator in a separate process on 127.0.0.1, and every figure is a
ratio measured side by side in this one run: fspd against the physical floor on the same
blocks, and against the previous approaches (fspd's aiobotocore path; FSP's design of boto3
clients in a thread pool). Nothing here asserts a timing; tests/bench/test_bench_runs.py only
checks that the benchmark runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
from botocore.config import Config

from fspd import jobs, loop
from fspd.blocks import BLOCK_SIZE
from fspd.config import AwsSettings, RetrySettings, Settings, TransferSettings
from fspd.emulator.control import EmulatorControl, EmulatorProcess
from fspd.run import run_job
from tests.bench import cores, daemon_scaling, fleet_scaling, floors, plots
from tests.bench.fsp_style import fsp_style_download
from tests.bench.measure import Cost, measure
from tests.bench.whole import WholeProcess
from tests.bench.whole import table as whole_table
from tests.conftest import TEST_ALLOW_ENDPOINTS

REGION, OTHER = "us-east-1", "us-west-2"
SECTIONS = ["cpu", "tls", "whole", "scaling", "rest"]
EXTRA_SECTIONS = ["fleet"]  # long: only when named in --only
TARGETS = {"download": 1.5, "upload": 1.5, "copy": 1.5}
# Over TLS the issue asks for the rows, floor and fspd both over TLS; no target of their own.
# movetos3 has no ratio target; the issue asks for MiB/s and CPU per block against the floor.


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = ", ".join(f"{name} {version(name)}" for name in
                     ("aiohttp", "aiobotocore", "botocore", "uvloop", "zstandard"))
    return (f"{os.cpu_count()} cores, {model}; Python {platform.python_version()}; {libs}")


def settings(**transfer: Any) -> Settings:
    return Settings(transfer=TransferSettings(**({"fetch_concurrency": 32,
                                                  "put_concurrency": 32} | transfer)),
                    retry=RetrySettings(backoff_base_s=0.01, backoff_cap_s=0.5),
                    aws=AwsSettings(allow_endpoints=(*TEST_ALLOW_ENDPOINTS,
                                                     "https://127.0.0.1:*")))


async def best_of(reps: int, runs: dict[str, Any], clean: Any = None) -> dict[str, Cost]:
    """Run each contender ``reps`` times, interleaved (so drift in a neighbour's load hits
    all alike), and keep each one's cheapest run. Before each run, outside the measured
    window, ``clean()`` removes the previous run's output and ``os.sync()`` flushes dirty
    pages, so no contender pays for another's page-cache writeback."""
    best: dict[str, Cost] = {}
    for _ in range(reps):
        for name, fn in runs.items():
            if clean is not None:
                clean()
            os.sync()
            cost = await measure(fn)
            if name not in best or cost.cpu_s < best[name].cpu_s:
                best[name] = cost
    return best


def per_block(cost: Cost) -> float:
    """CPU ms per block a fspd job actually moved (its result says how many)."""
    return cost.per_block_ms(int(cost.result["blocks_done"]))


def job(source: dict[str, Any], *destinations: dict[str, Any]) -> jobs.JobSpec:
    return jobs.validate({"source": source, "destinations": list(destinations)})


def _random_file(path: Path, blocks: int) -> None:
    with open(path, "wb") as f:
        for _ in range(blocks):
            f.write(os.urandom(BLOCK_SIZE))


async def _until(predicate: Any, task: asyncio.Task[Any]) -> None:
    """Poll another component's progress (bounded by the task's own end)."""
    while not predicate() and not task.done():
        await asyncio.sleep(0.01)


class Bench:
    def __init__(self, emu: EmulatorProcess, work: Path, blocks: int) -> None:
        self.url = emu.url
        self.ctl = EmulatorControl(emu.url, ca_bundle=emu.ca_bundle)
        # Over HTTPS (``EmulatorProcess(tls=True)``): the floors trust the emulator's CA, and
        # fspd does through AWS_CA_BUNDLE, set by main_async for those rows.
        self.ssl = ssl.create_default_context(cafile=str(emu.ca_bundle)) \
            if emu.ca_bundle else None
        self.work = work
        self.blocks = blocks
        self.gib = max(1, -(-blocks // 2048))
        self.ctl_ca = emu.ca_bundle
        self.rows: list[tuple[str, float, float, dict[str, float]]] = []
        self.reps = 3
        self.startup_reps = 3  # runs of each command in the start-up rows (best kept)

    def ebs(self, snapshot_id: str, region: str = REGION) -> dict[str, Any]:
        return {"type": "ebs", "snapshot_id": snapshot_id, "region": region,
                "endpoint_url": self.url}

    def new_snapshot(self, region: str = OTHER) -> dict[str, Any]:
        return {"type": "ebs", "region": region, "endpoint_url": self.url}

    def synthetic(self) -> str:
        """A snapshot of ``blocks`` blocks: full volumes when they fill whole GiB, else a
        sparse volume holding about that many (so a quick run moves few blocks). The rows
        divide by the blocks each contender moved, not by ``blocks``."""
        density = self.blocks / (self.gib * 2048)
        return self.ctl.synthetic(region=REGION, volume_size=self.gib, seed=1,
                                  allocation="full" if density >= 1 else "sparse",
                                  density=min(1.0, density))

    async def tokens(self, snapshot_id: str) -> list[tuple[int, str]]:
        connector = aiohttp.TCPConnector(ssl=self.ssl or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await floors.list_tokens(session, self.url, snapshot_id, REGION,
                                            self.blocks)

    async def start_snapshot(self, region: str) -> str:
        from aiobotocore.session import get_session

        async with get_session().create_client(
                "ebs", region_name=region, endpoint_url=self.url,
                verify=str(self.ctl_ca) if self.ctl_ca else None,
                config=Config(retries={"max_attempts": 1})) as ebs:
            resp = await ebs.start_snapshot(VolumeSize=self.gib, Timeout=60)
        return str(resp["SnapshotId"])

    # -- CPU per block -------------------------------------------------------------------

    async def download(self, label: str = "download", previous: bool = True) -> None:
        snap = self.synthetic()
        tokens = await self.tokens(snap)
        async def floor() -> None:
            fd = os.open(self.work / "out.img", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, self.gib << 30)
                await floors.download_floor(self.url, REGION, snap, tokens, fd,
                                            ssl_context=self.ssl)
            finally:
                os.close(fd)

        out = self.work / "out.img"  # every contender writes a new file of the same name
        spec = job(self.ebs(snap), {"type": "file", "path": str(out)})
        runs = {"floor": floor, "fspd": lambda: run_job(spec, settings())}
        if previous:
            runs |= {"slow": lambda: run_job(spec, settings(fast_path=False)),
                     "fsp": lambda: asyncio.to_thread(
                         fsp_style_download, self.url, REGION, snap, str(out),
                         self.gib << 30, self.blocks)}
        best = await best_of(self.reps, clean=lambda: out.unlink(missing_ok=True), runs=runs)
        self.rows.append((label, best["floor"].per_block_ms(len(tokens)),
                          per_block(best["fspd"]),
                          {"aiobotocore path": per_block(best["slow"]),
                           "FSP-style boto3 threads": best["fsp"].per_block_ms(len(tokens))}
                          if previous else {}))

    async def upload(self, label: str = "upload", previous: bool = True) -> None:
        src = self.work / "upload.img"
        await asyncio.to_thread(_random_file, src, self.blocks)
        fd = os.open(src, os.O_RDONLY)
        target = await self.start_snapshot(REGION)

        async def pread(_session: Any, index: int) -> bytes:
            return os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)

        spec = job({"type": "file", "path": str(src)}, self.new_snapshot(REGION))
        runs = {"floor": lambda: floors.put_floor(self.url, REGION, target,
                                                  list(range(self.blocks)), pread,
                                                  ssl_context=self.ssl),
                "fspd": lambda: run_job(spec, settings())}
        if previous:
            runs["slow"] = lambda: run_job(spec, settings(fast_path=False))
        best = await best_of(self.reps, runs)
        os.close(fd)
        self.rows.append((label, best["floor"].per_block_ms(self.blocks),
                          per_block(best["fspd"]),
                          {"aiobotocore path": per_block(best["slow"])} if previous else {}))
        src.unlink()

    async def copy(self) -> None:
        snap = self.synthetic()
        tokens = dict(await self.tokens(snap))
        target = await self.start_snapshot(OTHER)
        headers = floors.static_auth(f"{self.url}/snapshots/{snap}/blocks/0", REGION)

        async def get(session: aiohttp.ClientSession, index: int) -> bytes:
            return await floors.get_verified(session, self.url, snap, headers, index,
                                             tokens[index])

        spec = job(self.ebs(snap), self.new_snapshot(OTHER))
        best = await best_of(self.reps, {
            "floor": lambda: floors.put_floor(self.url, OTHER, target,
                                              list(tokens), get),
            "fspd": lambda: run_job(spec, settings()),
            "slow": lambda: run_job(spec, settings(fast_path=False)),
        })
        self.rows.append(("copy", best["floor"].per_block_ms(len(tokens)),
                          per_block(best["fspd"]), {"aiobotocore path": per_block(best["slow"])}))

    async def movetos3(self, s3_url: str) -> None:
        import boto3

        boto3.client("s3", region_name=REGION, endpoint_url=s3_url,
                     aws_access_key_id=floors.CREDS.access_key,
                     aws_secret_access_key=floors.CREDS.secret_key).create_bucket(Bucket="bench")
        snap = self.synthetic()
        tokens = await self.tokens(snap)
        level = 3
        count = iter(range(1000))
        best = await best_of(self.reps, {
            "floor": lambda: floors.movetos3_floor(self.url, REGION, snap, tokens, s3_url,
                                                   "bench", level),
            "fspd": lambda: run_job(job(self.ebs(snap), {
                "type": "s3", "bucket": "bench", "prefix": f"fspd/{next(count)}",
                "endpoint_url": s3_url, "region": REGION, "zstd_level": level}), settings()),
        })
        fspd = best["fspd"]
        self.rows.append(("movetos3", best["floor"].per_block_ms(len(tokens)), per_block(fspd),
                          {"fspd MiB/s": fspd.result["bytes_done"] / fspd.wall_s / (1 << 20)}))

    # -- latency, throttling -------------------------------------------------------------

    async def latency(self, latency_ms: float, in_flight: int, blocks: int) -> dict[str, Any]:
        snap = self.ctl.synthetic(region=REGION, volume_size=blocks // 2048 + 2,
                                  allocation="full", seed=2)
        self.ctl.faults(latency_ms=latency_ms, operations=["GetSnapshotBlock"])
        try:
            spec = job(self.ebs(snap), {"type": "file", "path": str(self.shm / "lat.img")})
            cost = await self._download_n(spec, settings(fetch_concurrency=in_flight), blocks)
        finally:
            self.ctl.clear_faults()
        bound = min(in_flight * 1000 / latency_ms, 1000) if latency_ms else 1000
        achieved = blocks / cost.wall_s
        return {"latency_ms": latency_ms, "in_flight": in_flight, "bound": bound,
                "achieved": achieved, "ratio": achieved / bound}

    async def _download_n(self, spec: jobs.JobSpec, cfg: Settings, blocks: int) -> Cost:
        """Time ``blocks`` blocks of a download in steady state: from the first block done
        (job set-up excluded) until ``blocks`` more are done; then cancel the job."""
        from fspd.progress import Progress

        progress = Progress()
        task = asyncio.create_task(run_job(spec, cfg, progress=progress))
        await _until(lambda: progress.blocks_done >= 1, task)
        start = progress.blocks_done
        cost = await measure(lambda: _until(lambda: progress.blocks_done >= start + blocks,
                                            task))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if progress.blocks_done < start + blocks:
            raise RuntimeError(f"download ended early: {progress.last_error}")
        cost.result = progress
        return cost

    async def throttling(self, cap: int, blocks: int) -> dict[str, Any]:
        self.ctl.config(throttling=True, get_rate=cap, account_get_rate=max(cap, 1000))
        snap = self.ctl.synthetic(region=REGION, volume_size=blocks // 2048 + 2,
                                  allocation="full", seed=3)
        self.ctl.reset_stats()
        try:
            spec = job(self.ebs(snap), {"type": "file", "path": str(self.shm / "thr.img")})
            cfg = settings(fetch_concurrency=64, per_snapshot_rps=cap * 0.97)
            cost = await self._download_n(spec, cfg, blocks)
        finally:
            self.ctl.config(throttling=False)
        stats = self.ctl.stats()
        sent = stats["requests"].get("GetSnapshotBlock", 0)
        return {"cap": cap, "achieved": blocks / cost.wall_s,
                "ratio": blocks / cost.wall_s / cap,
                "throttled_share": stats["throttled"] / max(1, sent + stats["throttled"])}

    async def throttled_share(self, share: float, blocks: int) -> dict[str, Any]:
        """A whole download at the default settings, once clean and once with ``share`` of
        GetSnapshotBlock answered by an injected throttle (the emulator's caps are off, so
        fspd's own pacing sets the offered rate in both). Best of ``reps`` each."""
        gib = max(1, -(-blocks // 2048))
        snap = self.ctl.synthetic(region=REGION, volume_size=gib, seed=5,
                                  allocation="full" if blocks == gib * 2048 else "sparse",
                                  density=blocks / (gib * 2048))
        out = self.shm / "throttled.img"
        spec = job(self.ebs(snap), {"type": "file", "path": str(out)})
        cfg = Settings(aws=AwsSettings(allow_endpoints=TEST_ALLOW_ENDPOINTS))

        walls: dict[str, float] = {}
        gets: dict[str, int] = {}
        for _ in range(self.reps):  # interleaved; the fastest run of each kept
            for name, rate in (("clean", 0.0), ("throttled", share)):
                out.unlink(missing_ok=True)
                os.sync()
                self.ctl.faults(throttle_rate=rate, operations=["GetSnapshotBlock"], seed=5)
                self.ctl.reset_stats()
                try:
                    cost = await measure(lambda: run_job(spec, cfg))
                finally:
                    self.ctl.clear_faults()
                if cost.wall_s < walls.get(name, float("inf")):
                    walls[name] = cost.wall_s
                    gets[name] = self.ctl.stats()["requests"].get("GetSnapshotBlock", 0)
                    done = int(cost.result["blocks_done"])
        out.unlink(missing_ok=True)
        return {"share": share, "blocks": done, "clean_s": walls["clean"],
                "throttled_s": walls["throttled"], "ratio": walls["throttled"] / walls["clean"],
                "gets_per_block": gets["throttled"] / max(1, done)}

    # -- memory ----------------------------------------------------------------------------

    def memory(self, size_gib: int, blocks: int, list_only: bool) -> dict[str, Any]:
        snap = self.ctl.synthetic(region=REGION, volume_size=size_gib, allocation="full",
                                  seed=4)
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.memory_probe", self.url, snap,
             str(self.shm / "mem.img"), str(blocks), "list" if list_only else "download"],
            capture_output=True, text=True, timeout=1800, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def daemon_memory(self, jobs: int, density: float) -> dict[str, Any]:
        """RSS of a real ``fspd serve`` (max_jobs=4) running a wave of download jobs."""
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.daemon_memory", "--jobs", str(jobs),
             "--max-jobs", "4", "--density", str(density), "--emulator-url", self.url],
            capture_output=True, text=True, timeout=1800, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:] + out.stdout[-2000:])
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class MotoServer:
    """moto's S3 server as a separate process on 127.0.0.1, for movetos3."""

    def __enter__(self) -> str:
        import socket
        import time
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                return url
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _table(bench: Bench) -> list[str]:
    lines = ["", "CPU per 512 KiB block (client process user+sys ms; lower is better)",
             f"{'case':<14}{'floor':>8}{'fspd':>8}{'fspd/floor':>12}{'target':>8}   "
             "previous approaches (ms, and their ratio to the floor)"]
    for name, floor, fspd, others in bench.rows:
        target = TARGETS.get(name)
        prev = "; ".join(f"{k} {v:.0f}" if "MiB/s" in k else f"{k} {v:.2f} ({v / floor:.2f}x)"
                         for k, v in others.items())
        met = "" if target is None else ("  met" if fspd / floor <= target else "  MISSED")
        lines.append(f"{name:<14}{floor:>8.2f}{fspd:>8.2f}{fspd / floor:>11.2f}x"
                     f"{'<=' + str(target) + 'x' if target else '':>8}{met}   {prev}")
    return lines


async def tls_rows(args: argparse.Namespace, http: Bench, work: Path) -> None:
    """Floor and fspd both over HTTPS (the emulator with ``--tls``), in process."""
    with EmulatorProcess(data_dir=work / "emulator-tls", args=["--no-throttling"],
                         tls=True) as emu:
        bench = Bench(emu, work, args.blocks)
        bench.reps = args.reps
        os.environ["AWS_CA_BUNDLE"] = str(emu.ca_bundle)  # as a user trusts a private CA
        try:
            await bench.download("download/TLS", previous=False)
            await bench.upload("upload/TLS", previous=False)
        finally:
            os.environ.pop("AWS_CA_BUNDLE", None)
    plain = {name: (floor, fspd) for name, floor, fspd, _ in http.rows}
    print("\nOver TLS (floor = aiohttp over TLS + SHA-256 + pwrite/pread; CPU ms per block)")
    print(f"{'case':<14}{'floor':>8}{'fspd':>8}{'fspd/floor':>12}   TLS's own cost per block "
          "(vs the plain-HTTP rows above)")
    for name, floor, fspd, _ in bench.rows:
        base = plain.get(name.split("/")[0])
        extra = "" if base is None else (f"floor +{floor - base[0]:.2f} ms, "
                                         f"fspd +{fspd - base[1]:.2f} ms")
        print(f"{name:<14}{floor:>8.2f}{fspd:>8.2f}{fspd / floor:>11.2f}x   {extra}")


def whole_rows(args: argparse.Namespace, emu: EmulatorProcess, ctl: EmulatorControl,
               work: Path, s3_url: str | None) -> None:
    """``fspd download|upload|copy`` as typed, against the floor run as a process, and peers."""
    assert emu.url is not None
    whole = WholeProcess(emu.url, ctl, work, args.whole_gib, args.whole_reps, s3_url=s3_url)
    whole.download()
    whole.upload()
    whole.copy()
    with EmulatorProcess(data_dir=work / "emulator-tls-whole", args=["--no-throttling"],
                         tls=True) as tls_emu:
        assert tls_emu.url is not None
        tls = WholeProcess(tls_emu.url, EmulatorControl(tls_emu.url, ca_bundle=tls_emu.ca_bundle),
                           work, args.whole_gib, args.whole_reps, ca_bundle=tls_emu.ca_bundle)
        tls.download("download/TLS", peers_too=False)
    gib = whole.nbytes / (1 << 30)
    print("\n".join(whole_table(
        whole.rows + tls.rows,
        f"Whole process, as typed ({gib:g} GiB per case; CPU-s = user+sys of the process and "
        f"the children it reaped, from wait4; best of {args.whole_reps})")))


def fleet_rows(args: argparse.Namespace) -> None:
    """tests/bench/fleet_scaling.py with the ``--fleet-*`` options (its own emulator: the
    latency it adds must not slow the other sections)."""
    own = argparse.Namespace(**{k.removeprefix("fleet_"): v for k, v in vars(args).items()
                                if k.startswith("fleet_")})
    try:
        lines = fleet_scaling.report(own)
    except ImportError as exc:  # moto is a test dependency: absent, the section is not run
        print(f"\nFleet scaling: not run ({exc})")
        return
    print("\n" + "\n".join(lines))


def scaling_rows(args: argparse.Namespace, emu: EmulatorProcess, work: Path) -> None:
    """N concurrent downloads through ``fspd serve`` at each worker count, then the table."""
    assert emu.url is not None
    ctl = EmulatorControl(emu.url)
    results = [daemon_scaling.run(w, args.scaling_jobs, args.scaling_gib,
                                  args.scaling_density, work, ctl, seed0=300 + 100 * n)
               for n, w in enumerate(daemon_scaling.worker_counts(args.scaling_workers))]
    print("\n".join(daemon_scaling.table(results, args.scaling_jobs, args.scaling_gib,
                                         args.scaling_density)))


async def main_async(args: argparse.Namespace, emu: EmulatorProcess, work: Path) -> None:
    bench = Bench(emu, work, args.blocks)
    bench.reps = args.reps
    bench.startup_reps = 1 if args.quick else max(3, args.reps)
    if args.plot:
        plots.remember_memory(bench)  # the charts reuse the memory cases measured here
    # tmpfs for the latency/throttle/memory targets: they measure fspd, not this disk.
    bench.shm = Path(tempfile.mkdtemp(prefix="fspd-bench-", dir="/dev/shm")) \
        if os.path.isdir("/dev/shm") else work
    print(f"machine: {machine()}")
    print(f"blocks per case: {args.blocks} ({args.blocks * BLOCK_SIZE >> 20} MiB); "
          "emulator: separate process on 127.0.0.1, throttling off unless stated")
    try:
        if "cpu" in args.only:
            for case in (bench.download, bench.upload, bench.copy):
                await case()
            with MotoServer() as s3_url:
                await bench.movetos3(s3_url)
            print("\n".join(_table(bench)))
            print("\n".join(await cores.report(bench)))
        if "tls" in args.only:
            await tls_rows(args, bench, work)
        if "whole" in args.only and not os.environ.get("FSP_DIR"):
            whole_rows(args, emu, bench.ctl, work, None)
        elif "whole" in args.only:
            with MotoServer() as s3_url:  # FSP asks STS and S3 who the caller is: moto does
                whole_rows(args, emu, bench.ctl, work, s3_url)
        if "fleet" in args.only:
            fleet_rows(args)
        if "scaling" in args.only:
            scaling_rows(args, emu, work)
        if "rest" not in args.only:
            return
        print("\nLatency-bound throughput (download; bound = min(in-flight / latency, 1000/s))")
        print(f"{'latency':>8}{'in-flight':>10}{'bound/s':>9}{'achieved/s':>12}{'ratio':>7}"
              f"{'target':>8}")
        for latency_ms, in_flight in ((20, 5), (100, 25)):
            r = await bench.latency(latency_ms, in_flight, args.latency_blocks)
            met = "met" if r["ratio"] >= 0.9 else "MISSED"
            print(f"{r['latency_ms']:>6.0f}ms{r['in_flight']:>10}{r['bound']:>9.0f}"
                  f"{r['achieved']:>12.1f}{r['ratio']:>7.2f}{'>=0.90':>8} {met}")
        print("\nThrottling (emulator enforces the cap per snapshot; fspd paces at 0.97 x cap)")
        print(f"{'cap/s':>6}{'achieved/s':>12}{'ratio':>7}{'throttled':>11}   target >=0.95, <1%")
        for cap in args.caps:
            r = await bench.throttling(cap, min(args.latency_blocks * 2, cap * 4))
            met = "met" if r["ratio"] >= 0.95 and r["throttled_share"] < 0.01 else "MISSED"
            print(f"{r['cap']:>6}{r['achieved']:>12.1f}{r['ratio']:>7.2f}"
                  f"{100 * r['throttled_share']:>10.2f}%   {met}")
        print("\nRandom throttling (a share of GetSnapshotBlock throttled by the emulator, caps "
              "off; whole download at the default settings, fastest of each)")
        print(f"{'share':>6}{'blocks':>8}{'clean s':>9}{'throttled s':>13}{'ratio':>7}"
              f"{'GETs/block':>12}   target <= 2x")
        r = await bench.throttled_share(0.05, args.throttle_blocks)
        met = "met" if r["ratio"] <= 2.0 else "MISSED"
        print(f"{100 * r['share']:>5.0f}%{r['blocks']:>8}{r['clean_s']:>9.2f}"
              f"{r['throttled_s']:>13.2f}{r['ratio']:>6.2f}x{r['gets_per_block']:>12.3f}   {met}")
        print("\nMemory (peak RSS of a separate fspd process; target <= 256 MiB at any size)")
        sizes = [(args.memory_gib, f"{args.memory_gib} GiB" if args.memory_gib < 1024
                  else f"{args.memory_gib // 1024} TiB")]
        sizes += [(16384, "16 TiB")] if args.big else []
        for size, label in sizes:
            for list_only in (True, False):
                r = bench.memory(size, args.memory_blocks, list_only)
                what = (f"list all {r['blocks']} blocks" if list_only
                        else f"download, stopped after {r['blocks']} blocks")
                print(f"{label:>7} {what:<42} idle {r['idle_rss_mib']:6.1f} MiB   "
                      f"peak {r['peak_rss_mib']:6.1f} MiB")
        r = bench.daemon_memory(args.daemon_jobs, args.daemon_density)
        met = ("met" if r["peak_rss_mib"] <= r["target_peak_mib"]
               and r["after_rss_mib"] <= r["target_after_mib"] else "MISSED")
        workers = r["processes"] - 1
        print(f"fspd serve ({workers} worker process{'es' if workers != 1 else ''}, RSS of "
              f"the daemon and its workers together), {r['jobs']} downloads of "
              f"{r['density']:.0%} of 1 GiB, max_jobs {r['max_jobs']}: idle "
              f"{r['idle_rss_mib']:.0f} MiB, peak {r['peak_rss_mib']:.0f} MiB (target <= "
              f"256 + 64 x max_jobs + 96 x workers = {r['target_peak_mib']}), after "
              f"{r['after_rss_mib']:.0f} MiB (target <= idle + 64 x workers = "
              f"{r['target_after_mib']:.0f})   {met}")
        if args.plot:
            await plots.run(bench, args, machine())
    finally:
        if bench.shm != work:
            shutil.rmtree(bench.shm, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--blocks", type=int, default=2048, help="blocks per CPU case")
    parser.add_argument("--latency-blocks", type=int, default=1000)
    parser.add_argument("--memory-blocks", type=int, default=4000)
    parser.add_argument("--daemon-jobs", type=int, default=20,
                        help="jobs in the fspd serve memory wave (max_jobs 4)")
    parser.add_argument("--daemon-density", type=float, default=0.25,
                        help="allocated share of each 1 GiB snapshot of that wave")
    parser.add_argument("--caps", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--throttle-blocks", type=int, default=4096,
                        help="blocks of the random-throttling download (4096 = 2 GiB)")
    parser.add_argument("--reps", type=int, default=3, help="runs per contender (best kept)")
    parser.add_argument("--memory-gib", type=int, default=1024,
                        help="size of the synthetic snapshot of the memory case")
    parser.add_argument("--big", action="store_true", help="also 16 TiB (minutes)")
    parser.add_argument("--whole-gib", type=float,
                        default=float(os.environ.get("FSPD_BENCH_WHOLE_GIB", "4")),
                        help="GiB moved by each whole-process case (default 4, or "
                        "$FSPD_BENCH_WHOLE_GIB)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS + EXTRA_SECTIONS,
                        default=SECTIONS, help="run only these sections (scaling: fspd serve's "
                        "worker processes; rest: latency, throttling, memory; fleet, not run by "
                        "default: 1 to 8 fspd serve hosts on one fleet, a few minutes)")
    parser.add_argument("--whole-reps", type=int, default=1,
                        help="runs per whole-process contender (cheapest kept)")
    parser.add_argument("--scaling-jobs", type=int, default=4,
                        help="concurrent download jobs of the scaling section")
    parser.add_argument("--scaling-workers", default=f"1,{len(os.sched_getaffinity(0))}",
                        help="comma-separated worker counts the scaling section compares "
                        "(default 1 and the usable CPUs)")
    parser.add_argument("--scaling-gib", type=int, default=1,
                        help="volume size of each scaling job's snapshot")
    parser.add_argument("--scaling-density", type=float, default=0.1,
                        help="allocated share of each scaling job's snapshot")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--plot", metavar="DIR", help="also measure a latency sweep and RSS by "
                        "volume size, and write charts (PNG, SVG) to DIR (needs '.[bench]')")
    fleet_scaling.add_arguments(parser, prefix="fleet-")
    args = parser.parse_args()
    if args.plot:
        try:
            plots.need_matplotlib()
        except plots.PlotError as exc:
            parser.error(str(exc))
    if args.quick:  # every section and row, at the least work that still prints them
        args.blocks, args.latency_blocks, args.memory_blocks = 64, 60, 200
        args.throttle_blocks = 256
        args.caps, args.reps, args.memory_gib = [100], 1, 1
        args.daemon_jobs, args.daemon_density = 2, 0.02
        args.whole_gib, args.whole_reps = 1 / 128, 1
        args.scaling_jobs, args.scaling_workers, args.scaling_density = 2, "1,2", 0.02
        args.fleet_hosts, args.fleet_jobs_per_host, args.fleet_blocks = "1,2", 2, 8
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIAFSPDBENCH0000001")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    from fspd import log

    log.configure("error", json=True)
    work = Path(tempfile.mkdtemp(prefix="fspd-bench-"))
    try:
        with EmulatorProcess(data_dir=work / "emulator", args=["--no-throttling"]) as emu:
            loop.run(main_async(args, emu, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
