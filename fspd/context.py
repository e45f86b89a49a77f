"""What every endpoint of one job shares: settings, AWS clients, the thread pool, accounting,
and one rate controller per request stream (AWS's quotas are per snapshot).

Below both ``endpoints/`` and ``archive/``. :func:`job_context` is the one place a job's
context is set up and torn down (``run.run_job``, which the CLI and the daemon call, and
``archive.verify.run_verify``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fspd.aws import AwsClients, AwsTarget
from fspd.blockapi import BlockApi, BotocoreBlockApi, SignedHttpBlockApi
from fspd.blocks import digest
from fspd.budget import SharedLimits
from fspd.checkpoint import Checkpoint
from fspd.config import Settings
from fspd.hashing import BlockHasher, thread_count
from fspd.progress import Progress
from fspd.retry import RateController, Retrier

T = TypeVar("T")


@dataclass
class JobContext:
    job_id: str
    settings: Settings
    clients: AwsClients
    progress: Progress
    executor: ThreadPoolExecutor
    state_dir: Path
    checkpoint: Checkpoint | None = None
    shared_limits: InitVar[SharedLimits | None] = None  # another job's, to share them
    limits: SharedLimits = field(init=False)
    _block_apis: dict[AwsTarget, BlockApi] = field(default_factory=dict)
    hasher: BlockHasher | None = field(init=False)  # None: the loop hashes fetched blocks

    def __post_init__(self, shared_limits: SharedLimits | None) -> None:
        self.limits = shared_limits or SharedLimits.from_settings(self.settings.transfer)
        threads = thread_count(self.settings.transfer)
        self.hasher = BlockHasher(threads) if threads else None

    async def digest(self, data: bytes) -> bytes:
        """A fetched block's SHA-256, on the hashing threads where there are any."""
        if self.hasher is None:
            return digest(data)
        return await self.hasher.digest(data)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (hashing, compression, file I/O) on the job's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def block_api(self, target: AwsTarget) -> BlockApi:
        api = self._block_apis.get(target)
        if api is None:
            ebs = await self.clients.client("ebs", target)
            t, r = self.settings.transfer, self.settings.retry
            if t.fast_path:
                api = await SignedHttpBlockApi.for_client(
                    ebs, await self.clients.credentials(target),
                    max_connections=max(t.fetch_concurrency, t.put_concurrency) + 8,
                    connect_timeout=r.connect_timeout_s, read_timeout=r.read_timeout_s,
                    ca_bundle=await self.clients.ca_bundle(target))
            else:
                api = BotocoreBlockApi(ebs)
            self._block_apis[target] = api
        return api

    def rate(self, op: str, target: AwsTarget, snapshot_id: str) -> RateController:
        """The pacing of one snapshot's Get or Put stream, shared with every other job of this
        process that uses the same snapshot, and chained to its account's pacing."""
        account = (target.region, target.profile, target.role_arn, target.endpoint_url)
        return self.limits.rate(op, account, snapshot_id)

    def resume_state(self, sink_name: str) -> dict[str, Any] | None:
        """What an earlier, interrupted run of this job left for this destination."""
        return self.checkpoint.sink_state(sink_name) if self.checkpoint else None

    def note(self, message: str) -> None:
        """Something the result should tell the user (a restart, a skipped resume)."""
        if self.checkpoint is not None:
            self.checkpoint.notes.append(message)

    def retrier(self, rate: RateController | None = None) -> Retrier:
        r = self.settings.retry
        return Retrier(
            max_attempts=r.max_attempts, max_throttle_attempts=r.max_throttle_attempts,
            backoff_base=r.backoff_base_s, backoff_cap=r.backoff_cap_s,
            not_found_window=r.not_found_window_s, rate=rate, on_retry=self.progress.retry,
        )

    async def close(self) -> None:
        for api in self._block_apis.values():
            await api.close()
        self._block_apis.clear()
        if self.hasher is not None:
            self.hasher.close()


@asynccontextmanager
async def job_context(job_id: str, settings: Settings, *, progress: Progress | None = None,
                      state_dir: Path | None = None, checkpoint: Checkpoint | None = None,
                      shared_limits: SharedLimits | None = None,
                      name: str | None = None) -> AsyncIterator[JobContext]:
    """A job's context for the duration of the block: its thread pool, AWS clients and (when
    no ``state_dir`` is given, so nothing is resumed) a scratch directory, all released on
    the way out whatever happened. ``name`` names the threads (else the job id) and the
    scratch directory."""
    executor = ThreadPoolExecutor(settings.transfer.worker_threads,
                                  thread_name_prefix=f"fspd-{name or job_id}")
    scratch: tempfile.TemporaryDirectory[str] | None = None
    try:
        if state_dir is None:
            scratch = tempfile.TemporaryDirectory(prefix=f"fspd-{name}-" if name else "fspd-")
            state_dir = Path(scratch.name)
        async with AwsClients(settings) as clients:
            ctx = JobContext(job_id, settings, clients, progress or Progress(job_id=job_id),
                             executor, state_dir, checkpoint=checkpoint,
                             shared_limits=shared_limits)
            try:
                yield ctx
            finally:
                await ctx.close()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if scratch is not None:
            scratch.cleanup()
