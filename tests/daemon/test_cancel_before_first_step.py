"""A cancellation that lands before a job's task has taken its first step still ends the job.

asyncio skips the whole body of a task cancelled before it first runs, ``finally`` clauses
included, so code that reports a job's end from inside its coroutine never reports it. Two
places can be hit: the scheduler (a cancel between ``dispatch`` and ``_run``'s first step)
and a worker process (a ``cancel`` read in the same batch as its ``start``: on a busy host the
worker is descheduled while the parent writes both). Both are made to happen here on purpose,
not by timing: the first by cancelling in the same loop iteration as the dispatch, the second
by stopping the worker (SIGSTOP) while the parent writes both messages.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from fspd import jobs
from fspd.config import DaemonSettings, Settings
from fspd.daemon.events import EventHub
from fspd.daemon.pool import RemoteControl, WorkerPool
from fspd.daemon.scheduler import Scheduler
from fspd.daemon.spool import Spool
from fspd.progress import Progress

JOB = b'verb = "download"\nsnapshot_id = "snap-0123456789abcdef0"\npath = "/tmp/never.img"\n'


def test_a_job_cancelled_between_dispatch_and_its_first_step_lands_in_failed(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    name = spool.submit(JOB, "early.toml")

    async def scenario() -> None:
        scheduler = Scheduler(Settings(), spool, EventHub())
        await scheduler.scan()  # reads it, claims it into active/, creates its task
        rec = scheduler.jobs[name]
        assert rec.task is not None and rec.state == "queued" and rec.box == "active"
        scheduler.cancel(rec, "test")  # before the task's first step
        await asyncio.sleep(0)  # let the cancelled task finish
        assert rec.state == "cancelled", rec.state

    asyncio.run(scenario())
    assert (spool.box("failed") / name).exists()
    assert not (spool.box("active") / name).exists()
    _box, record = spool.sidecar(name)  # type: ignore[misc]
    assert record["error"] == "Cancelled" and "before it started" in record["message"]


def test_a_worker_told_to_cancel_a_job_in_the_same_read_as_its_start_reports_it(
        tmp_path: Path) -> None:
    settings = Settings(daemon=DaemonSettings(workers=1))
    spec = jobs.parse(JOB)

    async def scenario() -> None:
        pool = WorkerPool(settings)
        await pool.start()
        try:
            (worker,) = pool.workers.values()
            sent: list[str] = []
            send = worker.send

            def spy(*message: Any) -> None:
                sent.append(message[0])
                send(*message)

            worker.send = spy  # type: ignore[method-assign]
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                run = asyncio.create_task(pool.run(
                    spec, settings, job_id="early", progress=Progress(job_id="early"),
                    state_dir=tmp_path / "state", control=RemoteControl()))
                while "start" not in sent:
                    await asyncio.sleep(0)
                run.cancel()
                while "cancel" not in sent:
                    await asyncio.sleep(0)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            # The worker reads both at once. Without an outcome the run would wait forever.
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(run, 30)
            assert worker.alive and not worker.attempts
        finally:
            await pool.close(10)

    asyncio.run(scenario())
