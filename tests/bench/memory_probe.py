"""Run in its own process by the benchmark: RSS of an idle fspd, then the peak RSS of a job
that lists (or downloads a fixed number of blocks of) a large synthetic snapshot.

usage: python -m tests.bench.memory_probe URL SNAPSHOT TARGET BLOCKS list|download
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from fspd import jobs, log, loop
from fspd.config import AwsSettings, Settings
from fspd.progress import Progress
from fspd.run import run_job
from tests.conftest import TEST_ALLOW_ENDPOINTS


async def _until(predicate: Any, task: asyncio.Task[Any]) -> None:
    while not predicate() and not task.done():
        await asyncio.sleep(0.01)


def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child
    of a big process would report its parent's peak."""
    return _status_mib("VmHWM")


async def main(url: str, snap: str, target: str, blocks: int, mode: str) -> dict[str, float]:
    source = {"type": "ebs", "snapshot_id": snap, "endpoint_url": url}
    dests = [] if mode == "list" else [{"type": "file", "path": target}]
    spec = jobs.validate({"source": source, "destinations": dests})
    idle = rss_mib()
    progress = Progress()
    task = asyncio.create_task(run_job(spec, Settings(aws=AwsSettings(
        allow_endpoints=TEST_ALLOW_ENDPOINTS)), progress=progress))
    if mode == "download":
        await _until(lambda: progress.blocks_done >= blocks, task)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        done = progress.blocks_done
        if done < blocks:
            raise SystemExit(f"download ended early: {progress.last_error}")
    else:
        done = (await task)["blocks"]
    return {"idle_rss_mib": idle, "peak_rss_mib": peak_rss_mib(), "blocks": done}


if __name__ == "__main__":
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIAFSPDBENCH0000001")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    log.configure("error", json=True)
    url, snap, target, blocks, mode = sys.argv[1:6]
    result = loop.run(main(url, snap, target, int(blocks), mode))
    if os.path.exists(target):
        os.unlink(target)
    print(json.dumps(result))
