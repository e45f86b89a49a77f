"""The worker processes of ``fspd serve`` (``daemon.workers`` of them), seen from the parent.

The parent keeps the spool, the control socket, systemd and every job's record; a job runs
wholly in one worker (fspd/daemon/worker.py), which streams its progress back, so the socket
shows it as before. :meth:`WorkerPool.run` is the scheduler's ``run_job``: it places the job on
the least-loaded worker (blocks per second, then fewest jobs), forwards pause/resume/cancel,
and returns the result or raises the job's error. If the worker dies (kill -9, OOM), its
jobs go to another worker and resume from their checkpoints (same engine id and state
directory); the dead worker's memory units go back to the budget and a new worker takes its
place. The limits shared by all workers are in fspd/daemon/shared.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspd import jobs
from fspd.budget import JobControl
from fspd.config import Settings
from fspd.daemon.shared import SharedBandwidth, SharedRegion
from fspd.daemon.worker import apply_state, blocks_per_s, encode, receive
from fspd.errors import FspdError, TransferFailed
from fspd.log import get_logger
from fspd.progress import Progress

log = get_logger("fspd.daemon")

MAX_WORKER_LOSSES = 3  # a job whose worker died this often fails (it may be the cause)
RESPAWN_DELAY_S = 0.5  # a worker that keeps dying is not restarted in a tight loop
HELLO_TIMEOUT_S = 60.0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container's cpuset or
    systemd's CPUAffinity= narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class RemoteControl(JobControl):
    """A job's pause/resume in the parent, forwarded to the worker that runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.forward: Callable[[str], None] | None = None

    def pause(self) -> None:
        super().pause()
        if self.forward is not None:
            self.forward("pause")

    def resume(self) -> None:
        super().resume()
        if self.forward is not None:
            self.forward("resume")


class RemoteError(FspdError):
    """A job's error, as the worker reported it."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(str(record.get("message")))
        self.record = record
        self.field = record.get("field")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


class WorkerCrashed(Exception):
    """An unexpected error in the worker's run of a job (its log has the traceback)."""


class WorkerLost(Exception):
    """The worker running a job died."""


@dataclass
class Attempt:
    progress: Progress
    done: asyncio.Future[tuple[str, Any]]


@dataclass
class WorkerHandle:
    index: int
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    pid: int = 0
    attempts: dict[int, Attempt] = field(default_factory=dict)
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    blocks_done: int = 0  # by the jobs (attempts) it finished
    alive: bool = True
    reader_task: asyncio.Task[None] | None = None

    def send(self, *message: Any) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(encode(message))

    @property
    def blocks_per_s(self) -> float:
        return sum(blocks_per_s(a.progress) for a in self.attempts.values())

    def status(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "jobs": len(self.attempts),
                "blocks_per_s": round(self.blocks_per_s, 1), "blocks_done": self.blocks_done,
                "cpu_s": round(self.cpu_s, 3), "loop_cpu_s": round(self.loop_cpu_s, 3)}


class WorkerPool:
    def __init__(self, settings: Settings, *, log_json: bool | None = None) -> None:
        self.settings = settings
        self.size = settings.daemon.workers or usable_cpus()
        self.log_json = log_json
        self.region = SharedRegion.create(
            memory_units=settings.transfer.max_buffered_blocks,
            bandwidth=settings.daemon.bandwidth_bytes_per_s)
        self.bandwidth = SharedBandwidth(self.region)
        self.workers: dict[int, WorkerHandle] = {}
        self.closing = False
        self.respawns = 0
        self._keys = itertools.count(1)
        self._changed = asyncio.Condition()
        self._respawning: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(i) for i in range(self.size)))
        log.info("workers_started", workers=self.size,
                 pids=[w.pid for w in self.workers.values()])

    async def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        json_flag = {True: "json", False: "text"}.get(self.log_json, "auto")  # type: ignore[arg-type]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fspd.daemon.worker", str(child_end.fileno()),
                str(self.region.fd), str(index), self.settings.log_level, json_flag,
                str(os.getpid()), pass_fds=(child_end.fileno(), self.region.fd),
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            child_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        handle = WorkerHandle(index, proc, writer)
        try:
            hello = await asyncio.wait_for(receive(reader), HELLO_TIMEOUT_S)
        except TimeoutError:
            hello = None
        if not hello or hello[0] != "hello":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"worker {index} did not start (exit status {proc.returncode})")
        handle.pid = hello[1]
        self.workers[index] = handle
        handle.reader_task = asyncio.create_task(self._read(handle, reader),
                                                 name=f"worker {index}")
        async with self._changed:
            self._changed.notify_all()

    async def _read(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        while (message := await receive(reader)) is not None:
            op = message[0]
            if op == "stats":
                w.cpu_s, w.loop_cpu_s = message[1], message[2]
                continue
            attempt = w.attempts.get(message[1])
            if attempt is None:
                continue
            if op == "progress":
                apply_state(attempt.progress, message[2])
            elif op == "done":
                apply_state(attempt.progress, message[4])
                w.attempts.pop(message[1], None)
                w.blocks_done += attempt.progress.blocks_done
                if not attempt.done.done():
                    attempt.done.set_result((message[2], message[3]))
        await self._lost(w)

    async def _lost(self, w: WorkerHandle) -> None:
        w.alive = False
        w.writer.close()
        status = await w.proc.wait()
        reclaimed = self.region.reclaim(w.index)
        if self.workers.get(w.index) is w:
            del self.workers[w.index]
        for attempt in w.attempts.values():
            if not attempt.done.done():
                attempt.done.set_exception(WorkerLost(f"worker {w.pid} exited ({status})"))
        if self.closing:
            return
        log.warning("worker_died", worker=w.index, pid=w.pid, status=status,
                    jobs=len(w.attempts), memory_units_reclaimed=reclaimed)
        w.attempts.clear()
        self.respawns += 1
        await asyncio.sleep(RESPAWN_DELAY_S)
        if not self.closing:
            try:
                await self._spawn(w.index)
                log.info("worker_respawned", worker=w.index, pid=self.workers[w.index].pid)
            except (OSError, RuntimeError) as exc:
                log.error("worker_respawn_failed", worker=w.index, error=str(exc))

    async def close(self, grace_s: float) -> None:
        """SIGTERM every worker (their jobs were stopped by the scheduler first); SIGKILL
        those still there after ``grace_s``."""
        self.closing = True
        workers = list(self.workers.values())
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(w.proc.wait()) for w in workers]
        if waits:
            await asyncio.wait(waits, timeout=grace_s)
            for w in workers:
                if w.proc.returncode is None:
                    log.warning("worker_stop_timeout", worker=w.index, pid=w.pid)
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
            await asyncio.gather(*waits, return_exceptions=True)
        for w in workers:
            if w.reader_task is not None:
                w.reader_task.cancel()
        log.info("workers_stopped", workers=len(workers))

    def reload(self, settings: Settings) -> None:
        """A SIGHUP's new settings reach every worker (its log level; each job gets the
        settings of its start anyway)."""
        self.settings = settings
        for w in self.workers.values():
            w.send("settings", settings)

    def status(self) -> list[dict[str, Any]]:
        return [self.workers[i].status() for i in sorted(self.workers)]

    # --- running a job -------------------------------------------------------------------

    async def _place(self) -> WorkerHandle:
        """The least-loaded live worker: fewest blocks per second, then fewest jobs. Waits
        while none is alive (one is being respawned)."""
        async with self._changed:
            await self._changed.wait_for(lambda: any(w.alive for w in self.workers.values()))
            live = [w for w in self.workers.values() if w.alive]
        return min(live, key=lambda w: (w.blocks_per_s, len(w.attempts), w.index))

    async def run(self, spec: jobs.JobSpec, settings: Settings, *, job_id: str,
                  progress: Progress, state_dir: Path, control: JobControl) -> dict[str, Any]:
        """Run a job in a worker, as :func:`fspd.run.run_job` runs it in-process."""
        losses = 0
        while True:
            w = await self._place()
            key = next(self._keys)
            attempt = Attempt(progress, asyncio.get_running_loop().create_future())
            w.attempts[key] = attempt
            if isinstance(control, RemoteControl):
                control.forward = lambda op, w=w, key=key: w.send(op, key)
            w.send("start", key, spec, settings, job_id, state_dir, control.paused)
            log.debug("job_placed", job=job_id, worker=w.index, pid=w.pid)
            try:
                outcome, payload = await self._outcome(w, key, attempt)
            except WorkerLost as exc:
                losses += 1
                log.warning("job_worker_lost", job=job_id, worker=w.index, losses=losses,
                            error=str(exc))
                if losses >= MAX_WORKER_LOSSES:
                    raise TransferFailed(
                        f"the worker process running the job died {losses} times (last: "
                        f"{exc}); the daemon log says why") from None
                continue  # another worker resumes it from its checkpoint
            finally:
                if isinstance(control, RemoteControl):
                    control.forward = None
            if outcome == "ok":
                return payload  # type: ignore[no-any-return]
            if outcome == "error":
                raise RemoteError(payload)
            if outcome == "crash":
                raise WorkerCrashed(payload)
            # "cancelled" without our asking: the worker was told to stop (SIGTERM)
            losses += 1
            if losses >= MAX_WORKER_LOSSES:
                raise TransferFailed("the worker process running the job stopped "
                                     f"{losses} times") from None
            log.warning("job_worker_stopped", job=job_id, worker=w.index)

    async def _outcome(self, w: WorkerHandle, key: int, attempt: Attempt) -> tuple[str, Any]:
        try:
            return await asyncio.shield(attempt.done)
        except asyncio.CancelledError:
            # Cancelled (by a user, or the daemon is stopping): the worker cancels the job
            # and reports where it got to (what it left behind) before this one ends.
            w.send("cancel", key)
            with contextlib.suppress(WorkerLost):
                await asyncio.shield(attempt.done)
            raise
