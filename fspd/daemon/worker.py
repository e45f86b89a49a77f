"""One worker process of ``fspd serve``: runs whole jobs on its own uvloop loop.

Started by the parent (fspd/daemon/pool.py) as ``python -m fspd.daemon.worker SOCK_FD
REGION_FD INDEX LOG_LEVEL LOG_JSON``: SOCK_FD is its end of a socketpair with the parent,
REGION_FD the shared limits (fspd/daemon/shared.py). Messages both ways are length-prefixed
pickles (the socketpair is private to the two processes):

parent -> worker: ``("start", key, spec, settings, engine_id, state_dir, paused)``,
``("pause"|"resume"|"cancel", key)``, ``("settings", settings)`` (a SIGHUP's reload).
worker -> parent: ``("hello", pid)``, ``("progress", key, state)`` every
:data:`PROGRESS_INTERVAL_S` while a job runs, ``("done", key, outcome, payload, state)`` with
outcome ok (payload: the result), error (the error's dict), crash (its text) or cancelled,
and ``("stats", cpu_s, loop_cpu_s)`` (the process's CPU, and its event-loop thread's).

SIGTERM stops the worker: its jobs are cancelled (each reported "cancelled", so the parent
puts it back) and it exits. SIGINT is ignored (a terminal's Ctrl-C reaches the whole process
group; the parent decides). The worker dies with the parent (PR_SET_PDEATHSIG) and exits when
the socket closes, so it never outlives the daemon with a job the next daemon would rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import pickle
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from fspd import log
from fspd.blocks import BLOCK_SIZE
from fspd.budget import JobControl
from fspd.daemon.shared import SharedRegion, SharedTargetLocks, WorkerLimits
from fspd.endpoints import files
from fspd.errors import FspdError
from fspd.memory import trim
from fspd.progress import Progress, StageStats
from fspd.run import run_job  # at start: a worker is ready for its first job

PROGRESS_INTERVAL_S = 0.1
MAX_MESSAGE = 64 << 20
_HEADER = struct.Struct(">I")
_SKIP = {"_samples", "paused_since", "paused_s", "stages"}  # the parent keeps its own
PR_SET_PDEATHSIG = 1

logger = log.get_logger("fspd.worker")


# --- framing and progress state (both sides) ---------------------------------------------

def encode(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if size > MAX_MESSAGE:
            raise ValueError(f"message of {size} bytes")
        return pickle.loads(await reader.readexactly(size))  # our own peer: trusted
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def progress_state(p: Progress) -> dict[str, Any]:
    """What the parent's copy of a job's :class:`Progress` needs from the worker's."""
    state = {k: v for k, v in vars(p).items() if k not in _SKIP}
    state["stages"] = {name: s.snapshot() for name, s in p.stages.items()}
    return state


def apply_state(p: Progress, state: dict[str, Any]) -> None:
    """Bring the parent's copy up to ``state``; its recent rate is sampled here, as
    :meth:`Progress.block_done` samples it in the worker."""
    before = p.bytes_done
    for key, value in state.items():
        if key != "stages":
            setattr(p, key, value)
    for name, s in state["stages"].items():
        depth = s["queue_depth"]
        p.stages[name] = StageStats(name, s["in_flight"], s["done"],
                                    queue_depth_fn=lambda depth=depth: depth)
    now = time.monotonic()
    if p.bytes_done < before:  # a new attempt (another worker): its rate starts again
        p._samples.clear()
    if p.bytes_done != before and (not p._samples or now - p._samples[-1][0] >= 0.25):
        p._samples.append((now, p.bytes_done))
    elif not p._samples and p.started is not None:
        p._samples.append((p.started, 0))


def blocks_per_s(p: Progress) -> float:
    return p.rates()[1] / BLOCK_SIZE


# --- the worker --------------------------------------------------------------------------

class Worker:
    def __init__(self, sock: socket.socket, region: SharedRegion, index: int,
                 log_json: bool | None) -> None:
        self.sock = sock
        self.region = region
        self.index = index
        self.log_json = log_json
        self.limits: WorkerLimits | None = None
        self.jobs: dict[int, tuple[asyncio.Task[tuple[str, Any]], Progress, JobControl]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.stopping = asyncio.Event()

    def send(self, *message: Any) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode(message))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        self.send("hello", os.getpid())
        ticker = asyncio.create_task(self._tick())
        reading = asyncio.create_task(self._read(reader))
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([reading, stop], return_when=asyncio.FIRST_COMPLETED)
        logger.info("worker_stopping", worker=self.index, pid=os.getpid(),
                    jobs=len(self.jobs), signal="SIGTERM" if stop.done() else None)
        tasks = [task for task, _p, _c in self.jobs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in (ticker, reading, stop):
            task.cancel()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        self.writer.close()
        return 0

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (message := await receive(reader)) is not None:
            op = message[0]
            if op == "start":
                self._start(*message[1:])
            elif op == "settings":
                settings = message[1]
                with contextlib.suppress(KeyError):
                    log.configure(settings.log_level, json=self.log_json)
                logger.info("worker_reloaded", worker=self.index, pid=os.getpid(),
                            log_level=settings.log_level)
            elif (job := self.jobs.get(message[1])) is not None:
                task, _progress, control = job
                if op == "pause":
                    control.pause()
                elif op == "resume":
                    control.resume()
                elif op == "cancel":
                    control.resume()  # a paused job must wake up to see the cancellation
                    task.cancel()

    def _start(self, key: int, spec: Any, settings: Any, engine_id: str, state_dir: Path,
               paused: bool) -> None:
        if self.limits is None:  # the first job's settings, as the daemon's budgets were
            self.limits = WorkerLimits(self.region, self.index, settings.transfer)
        progress = Progress(job_id=engine_id)
        control = JobControl(limits=self.limits)
        if paused:
            control.pause()
        task = asyncio.create_task(self._job(spec, settings, engine_id, state_dir, progress,
                                             control), name=f"job {engine_id}")
        # Reported from a done callback, not from the coroutine: a "cancel" read in the same
        # batch as its "start" cancels the task before its first step, and then no line of
        # the coroutine ever runs (the parent would wait for its outcome forever).
        task.add_done_callback(functools.partial(self._report, key, progress))
        self.jobs[key] = (task, progress, control)

    def _report(self, key: int, progress: Progress, task: asyncio.Task[tuple[str, Any]]
                ) -> None:
        self.jobs.pop(key, None)
        trim()  # the job's buffers are free: give the pages back (fspd/memory.py)
        if task.cancelled():
            outcome, payload = "cancelled", None
        elif (exc := task.exception()) is not None:  # a BaseException _job does not turn
            outcome, payload = "crash", f"{type(exc).__name__}: {exc}"
        else:
            outcome, payload = task.result()
        self.send("done", key, outcome, payload, progress_state(progress))

    async def _job(self, spec: Any, settings: Any, engine_id: str, state_dir: Path,
                   progress: Progress, control: JobControl) -> tuple[str, Any]:
        """The job's outcome and its payload, as the parent's ``done`` message carries them."""
        try:
            return "ok", await run_job(spec, settings, job_id=engine_id, progress=progress,
                                       state_dir=state_dir, control=control)
        except asyncio.CancelledError:
            return "cancelled", None
        except FspdError as exc:
            return "error", exc.to_dict()
        except Exception as exc:
            logger.exception("job_crashed_in_worker", job=engine_id, worker=self.index)
            return "crash", f"{type(exc).__name__}: {exc}"

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            for key, (_task, progress, _control) in list(self.jobs.items()):
                self.send("progress", key, progress_state(progress))
            times = os.times()
            self.send("stats", times.user + times.system, time.thread_time())
            if self.writer is not None:
                with contextlib.suppress(ConnectionError):
                    await self.writer.drain()


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def main(argv: list[str]) -> int:
    sock_fd, region_fd, index = int(argv[0]), int(argv[1]), int(argv[2])
    level, json_flag = argv[3], argv[4]
    _die_with_parent(int(argv[5]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent re-reads the config
    log_json = {"json": True, "text": False}.get(json_flag)
    log.configure(level, json=log_json)
    sock = socket.socket(fileno=sock_fd)
    region = SharedRegion(region_fd)
    # A job refused a target that a job of another worker writes names that job.
    files._LOCKED = SharedTargetLocks(region, index)  # type: ignore[assignment]

    from fspd.loop import run
    return run(Worker(sock, region, index, log_json).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
