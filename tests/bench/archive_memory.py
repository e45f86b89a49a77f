"""Peak RSS of one movetos3 job (EBS snapshot → S3 archive) against the emulator and moto's
server, for several block budgets and window sizes (issue 12 item 12: S3 windows counted
against ``[transfer] max_buffered_blocks``). Each case runs in a fresh process.

usage: python -m tests.bench.archive_memory [GIB] [BUDGET:SEGMENT_BLOCKS ...]
       (default: 1 GiB of incompressible data; 32:16 32:32 32:64 512:64 512:512; a first
       row archives a handful of blocks: the fixed cost of a job)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from fspd import jobs, log, loop
from fspd.blocks import BLOCK_SIZE
from fspd.config import AwsSettings, Settings, TransferSettings
from fspd.emulator.control import EmulatorControl, EmulatorProcess
from fspd.errors import FspdError
from fspd.run import run_job
from tests.bench.memory_probe import peak_rss_mib, rss_mib
from tests.conftest import TEST_ALLOW_ENDPOINTS, TEST_ENV

CASES = ["32:16", "32:32", "32:64", "512:64", "512:512"]


async def probe(emulator: str, moto: str, snap: str, bucket: str, prefix: str, budget: int,
                segment_blocks: int) -> dict[str, Any]:
    spec = jobs.validate({
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator},
        "destinations": [{"type": "s3", "bucket": bucket, "prefix": prefix,
                          "endpoint_url": moto, "segment_blocks": segment_blocks}]})
    conf = Settings(transfer=TransferSettings(max_buffered_blocks=budget),
                    aws=AwsSettings(allow_endpoints=TEST_ALLOW_ENDPOINTS))
    idle = rss_mib()
    start = time.monotonic()
    try:
        result = await run_job(spec, conf)
    except FspdError as exc:
        return {"budget": budget, "segment_blocks": segment_blocks, "error": str(exc)}
    return {"budget": budget, "segment_blocks": segment_blocks, "idle_rss_mib": idle,
            "peak_rss_mib": peak_rss_mib(), "growth_mib": peak_rss_mib() - idle,
            "budget_mib": budget * BLOCK_SIZE / 2**20, "seconds": time.monotonic() - start,
            "blocks": result.get("blocks")}


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def main(gib: int, cases: list[str]) -> list[dict[str, Any]]:
    import boto3
    os.environ.update(TEST_ENV)
    with tempfile.TemporaryDirectory() as data:
        emu = EmulatorProcess(data_dir=Path(data))
        emu.start()
        moto, moto_url = _moto()
        try:
            control = EmulatorControl(emu.url)
            snap = control.synthetic(volume_size=gib, allocation="full", seed=12)
            # The fixed cost: the same job over a handful of blocks.
            tiny = control.synthetic(volume_size=1, allocation="sparse", density=0.004, seed=13)
            bucket = "fspd-bench"
            boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(
                Bucket=bucket)
            rows = []
            for n, case in enumerate(["32:16:tiny", *cases]):
                budget, width, *small = case.split(":")
                out = subprocess.run(
                    [sys.executable, "-m", "tests.bench.archive_memory", "--probe", emu.url,
                     moto_url, tiny if small else snap, bucket, f"run{n}", budget, width],
                    capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                rows[-1]["case"] = case
                print(json.dumps(rows[-1]), flush=True)
            return rows
        finally:
            moto.terminate()
            moto.wait(10)
            emu.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        os.environ.update(TEST_ENV)
        log.configure("error", json=True)
        e, m, snap_id, bkt, pfx, b, w = sys.argv[2:9]
        print(json.dumps(loop.run(probe(e, m, snap_id, bkt, pfx, int(b), int(w)))))
    else:
        size = int(sys.argv[1]) if len(sys.argv) > 1 else 1
        main(size, sys.argv[2:] or CASES)
