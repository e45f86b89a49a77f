"""Jobs in the daemon: found in the spool, queued by priority then arrival, run under the
global limits (``max_jobs``, the budgets shared by every worker), run in the worker
processes (fspd/daemon/pool.py), finished into done/ or failed/.

A job's id is its spool file name. Jobs put back by SIGTERM, or found in active/ unlocked (left
by a daemon that died), run again with the same engine job id and the same per-job
``state_dir``, so the engine resumes from its checkpoint there (and reuses its ClientTokens);
``JobRecord.restarted`` marks the ones found in active/.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspd import jobs
from fspd.budget import JobControl
from fspd.config import Settings
from fspd.daemon.events import EventHub
from fspd.daemon.pool import RemoteControl, WorkerPool
from fspd.daemon.spool import Entry, Spool
from fspd.daemon.states import STATES as STATES  # (re-exported: fspd.daemon.metrics)
from fspd.daemon.states import TERMINAL
from fspd.errors import BadInput, Cancelled, FspdError
from fspd.fleet.lifecycle import Fleet, Taken
from fspd.log import get_logger
from fspd.progress import Progress
from fspd.run import state_dir_for

log = get_logger("fspd.daemon")

MAX_LISTED_MATCHES = 10  # an ambiguous job prefix lists at most this many ids
# Files beside a job's journal that it relies on, saved with a fleet job's checkpoint in S3 so
# another host can resume: an upload's digest log, an S3 archive's local manifest.
JOURNAL_FILES = ("*.digests", "*.manifest.jsonl")


@dataclass
class JobRecord:
    id: str
    box: str  # where the job file is now: new, active, done or failed
    spec: jobs.JobSpec
    arrival: tuple[int, int]  # (mtime_ns in new/, sequence): ties in priority go by arrival
    progress: Progress
    control: JobControl
    state: str = "queued"
    restarted: bool = False
    held: bool = False  # paused before it started: not dispatched until resumed
    lock_fd: int | None = None
    task: asyncio.Task[None] | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    cancel_reason: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def priority(self) -> int:
        return self.spec.priority

    def summary(self) -> dict[str, Any]:
        p = self.progress
        average, recent = p.rates()
        return {
            "job": self.id, "name": self.spec.name, "verb": self.spec.verb,
            "state": self.state, "priority": self.priority, "box": self.box,
            "restarted": self.restarted, "submitted_at": self.submitted_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "bytes_done": p.bytes_done, "blocks_done": p.blocks_done,
            **p.estimate(), "rate_avg_bps": round(average),
            "rate_recent_bps": 0 if self.state == "paused" else round(recent),
            "retries": sum(p.retries.values()), "errors": p.errors,
            "last_error": p.last_error, "snapshot_ids": dict(p.snapshot_ids),
            "error": self.error,
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        progress = self.progress.snapshot()
        progress["job_id"] = self.id
        out["progress"] = progress
        out["result"] = self.result
        return out


def _fleet_progress(rec: JobRecord) -> dict[str, Any]:
    """The progress summary a fleet job's item carries (``fspd status --fleet``)."""
    summary = rec.summary()
    return {k: summary.get(k) for k in ("bytes_done", "percent", "eta_s", "rate_recent_bps")}


def _begun(task: asyncio.Task[Any]) -> bool:
    """Whether the task's coroutine has taken its first step. Cancelling a task before it
    has skips its whole body, ``finally`` clauses included."""
    return inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED  # type: ignore[arg-type]


def engine_job_id(name: str) -> str:
    """A short, stable id for the engine (it builds ClientTokens from it, capped at 64)."""
    stem = jobs.safe_name(name.rsplit(".", 1)[0])[:32]
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


class Scheduler:
    def __init__(self, settings: Settings, spool: Spool, events: EventHub,
                 on_change: Callable[[], None] = lambda: None, *,
                 log_json: bool | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.events = events
        self.on_change = on_change
        # The worker processes, and the budgets they share: bandwidth, request pacing per
        # snapshot/account, memory (fspd/daemon/shared.py).
        self.pool = WorkerPool(settings, log_json=log_json)
        self.bandwidth = self.pool.bandwidth
        self.jobs: dict[str, JobRecord] = {}
        self.stopping = False
        self.finished_counts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()  # bytes, blocks, retries of finished jobs
        self.retry_totals: Counter[str] = Counter()
        self._seq = itertools.count()
        self._scan_lock = asyncio.Lock()
        self.fleet_host: Fleet | None = None  # set by fspd/daemon/fleet.py with [fleet]
        # Set whenever a slot may have come free (dispatch runs at each job's end): the
        # fleet's draw loop waits on it rather than polling, so a host asks SQS for its next
        # job as soon as one ends.
        self.slot_freed = asyncio.Event()

    # --- lookup and counts ---------------------------------------------------------------

    def resolve(self, ident: str) -> str | None:
        """The full id that ``ident`` names: an exact id, or else the one job whose id starts
        with it, among the jobs this daemon knows and the finished ones in done/ and failed/
        (so a prefix still works after a restart). None if no job matches; BadInput (field
        ``job``) listing the matches if several do."""
        if ident in self.jobs:
            return ident
        names = set(self.jobs)
        if "/" not in ident and not ident.startswith("."):  # never a path out of the spool
            finished = {*self.spool.names("done"), *self.spool.names("failed")}
            if ident in finished:
                return ident
            names |= finished
        matches = sorted(n for n in names if n.startswith(ident))
        if len(matches) > 1:
            shown = ", ".join(matches[:MAX_LISTED_MATCHES])
            more = len(matches) - MAX_LISTED_MATCHES
            raise BadInput(f"{ident!r} matches {len(matches)} jobs: {shown}"
                           + (f" and {more} more" if more > 0 else "")
                           + "; give more of the id", field="job")
        return matches[0] if matches else None

    def find(self, ident: str) -> JobRecord | None:
        """The record of the job ``ident`` names, if this daemon still holds it in memory
        (see :meth:`resolve`; raises BadInput if the prefix is ambiguous)."""
        name = self.resolve(ident)
        return None if name is None else self.jobs.get(name)

    def counts(self) -> Counter[str]:
        return Counter(r.state for r in self.jobs.values())

    def running(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if r.task is not None and not r.task.done()]

    # --- finding jobs --------------------------------------------------------------------

    async def scan(self) -> None:
        """Pick up jobs in new/ and jobs left unlocked in active/; then start what fits."""
        if self.stopping:
            return
        async with self._scan_lock:
            for entry in self.spool.entries("active"):
                if entry.name not in self.jobs:
                    await self._recover(entry)
            present = set()
            for entry in self.spool.entries("new"):
                present.add(entry.name)
                old = self.jobs.get(entry.name)
                if (old is not None and old.state in TERMINAL
                        and (old.task is None or old.task.done())):
                    # Put back into new/ by an operator after fixing the cause: a new run
                    # of the same job (same engine id), which resumes from its checkpoint.
                    log.info("job_retried", job=entry.name, was=old.state)
                    del self.jobs[entry.name]
                    old = None
                if old is None:
                    await self._discover(entry)
            for name, rec in list(self.jobs.items()):  # taken by another daemon
                if rec.box == "new" and rec.state == "queued" and name not in present:
                    del self.jobs[name]
        self.dispatch()

    async def _discover(self, entry: Entry) -> None:
        if entry.kind != "file":
            self._reject("new", entry.name, None, BadInput(
                "is a symlink; job files in the spool must be regular files (not followed)"
                if entry.kind == "symlink" else "is not a regular file", field="(file)"))
            return
        try:
            data = await self.spool.read("new", entry.name, self.settings.daemon.max_job_file_bytes)
            spec = jobs.parse(data, entry.name)
        except BadInput as exc:
            fd = self.spool.claim(entry.name)  # so only one daemon writes the error record
            if fd is not None:
                self._reject("active", entry.name, fd, exc)
            return
        except FileNotFoundError:
            return
        self._add(entry.name, "new", spec, entry.mtime_ns)

    async def _recover(self, entry: Entry) -> None:
        if entry.kind != "file":
            self._reject("active", entry.name, None, BadInput(
                "is not a regular file (symlinks are not followed)", field="(file)"))
            return
        fd = self.spool.lock("active", entry.name)
        if fd is None:
            return  # a live daemon is running it
        try:
            data = await self.spool.read("active", entry.name,
                                         self.settings.daemon.max_job_file_bytes)
            spec = jobs.parse(data, entry.name)
        except BadInput as exc:
            self._reject("active", entry.name, fd, exc)
            return
        rec = self._add(entry.name, "active", spec, 0)  # restarted jobs go first
        rec.lock_fd = fd
        rec.restarted = True
        log.info("job_restarted", job=entry.name)

    def _add(self, name: str, box: str, spec: jobs.JobSpec, mtime_ns: int) -> JobRecord:
        rec = JobRecord(id=name, box=box, spec=spec, arrival=(mtime_ns, next(self._seq)),
                        progress=Progress(job_id=name),
                        control=RemoteControl())
        self.jobs[name] = rec
        log.info("job_queued", job=name, verb=spec.verb, priority=spec.priority)
        self._changed(rec)
        return rec

    def _reject(self, box: str, name: str, fd: int | None, exc: FspdError) -> None:
        record = {**exc.to_dict(), "job": name, "failed_at": time.time()}
        try:
            final = self.spool.finish(box, name, "failed", record)
        except OSError as err:
            log.error("spool_move_failed", job=name, error=str(err))
            return
        finally:
            if fd is not None:
                os.close(fd)
        self.finished_counts["rejected"] += 1
        log.warning("job_rejected", job=final, field=exc.field, error=str(exc))
        self.events.publish({"event": "state", "job": final, "state": "failed",
                             "error": record})
        self.on_change()

    # --- running -------------------------------------------------------------------------

    def dispatch(self) -> None:
        self.slot_freed.set()
        limit = self.settings.daemon.max_jobs
        while not self.stopping and len(self.running()) < limit:
            waiting = [r for r in self.jobs.values()  # (a fleet job runs only from the queue)
                       if r.state == "queued" and r.task is None and not r.held
                       and r.box != "fleet"]
            if not waiting:
                return
            rec = min(waiting, key=lambda r: (-r.priority, r.arrival))
            if rec.box == "new":
                fd = self.spool.claim(rec.id)
                if fd is None:
                    log.info("job_taken_elsewhere", job=rec.id)
                    del self.jobs[rec.id]
                    continue
                rec.lock_fd, rec.box = fd, "active"
            rec.task = asyncio.create_task(self._run(rec), name=f"job {rec.id}")
            rec.task.add_done_callback(lambda _task: self.dispatch())  # its slot is free now

    async def _run(self, rec: JobRecord) -> None:
        rec.state = "paused" if rec.control.paused else "running"
        if rec.control.paused:
            rec.progress.pause()
        rec.started_at = time.time()
        self._changed(rec)
        settings = self.settings  # a reload applies to jobs started after it
        state_root = Path(settings.daemon.state_dir) / "jobs"
        log.info("job_started", job=rec.id, verb=rec.spec.verb, restarted=rec.restarted)
        try:
            result = await self.pool.run(
                rec.spec, settings, job_id=engine_job_id(rec.id), progress=rec.progress,
                state_dir=state_dir_for(state_root, engine_job_id(rec.id)),
                control=rec.control)
        except asyncio.CancelledError:
            if rec.cancel_reason is None:  # the daemon is stopping: next start runs it
                self._requeue(rec)
            else:
                left = "".join(f"; {note}" for note in rec.progress.left_behind)
                self._end(rec, "failed", "cancelled", {
                    "error": "Cancelled", "field": None,
                    "message": f"cancelled: {rec.cancel_reason}{left}"})
            return
        except FspdError as exc:
            self._end(rec, "failed", "failed", exc.to_dict())
        except Exception as exc:
            log.exception("job_crashed", job=rec.id)
            self._end(rec, "failed", "failed", {
                "error": "InternalError", "field": None,
                "message": f"internal error ({type(exc).__name__}: {exc}); the daemon log "
                           "has the details"})
        else:
            result = {**result, "job": rec.id, "engine_job_id": result.get("job_id"),
                      "snapshot_ids": dict(rec.progress.snapshot_ids)}
            self._end(rec, "done", "completed", result)
        finally:
            if rec.lock_fd is not None:
                os.close(rec.lock_fd)
                rec.lock_fd = None

    # --- fleet jobs (fspd/daemon/fleet.py takes them from the fleet's queue) ----------------

    def free_slots(self) -> int:
        """Slots the fleet may fill now: those no running job nor waiting spool job needs."""
        waiting = sum(1 for r in self.jobs.values()
                      if r.state == "queued" and r.task is None and not r.held)
        return 0 if self.stopping else max(
            0, self.settings.daemon.max_jobs - len(self.running()) - waiting)

    def start_fleet_job(self, host: Fleet, taken: Taken, spec: jobs.JobSpec) -> JobRecord:
        self.fleet_host = host
        rec = self._add(taken.lease.job_id, "fleet", spec, 0)
        rec.task = asyncio.create_task(self._run_fleet(rec, host, taken),
                                       name=f"fleet job {rec.id}")
        rec.task.add_done_callback(lambda _task: self.dispatch())
        return rec

    async def _run_fleet(self, rec: JobRecord, host: Fleet, taken: Taken) -> None:
        """Run a fleet job from its S3 checkpoint, under its lease (fspd/fleet/lifecycle.py);
        its outcome goes to the fleet's table, not to the spool."""
        rec.state, rec.started_at = "running", time.time()
        self._changed(rec)
        settings = self.settings
        job_id = engine_job_id(rec.id)
        state_dir = state_dir_for(Path(settings.daemon.state_dir) / "jobs", job_id)
        rec.restarted = await host.store.restore(rec.id, state_dir)
        journal = state_dir / "checkpoint.json"
        uploaded: dict[str, tuple[int, int]] = {}  # file beside the journal → (size, mtime)

        def saved() -> tuple[bytes, dict[str, bytes]] | None:
            """The journal, then the files that back it (read after it, so they hold at
            least what it claims), those changed since the last save."""
            try:
                body = journal.read_bytes()
            except FileNotFoundError:
                return None
            files = {}
            for path in (p for pattern in JOURNAL_FILES for p in state_dir.glob(pattern)):
                stat = path.stat()
                if uploaded.get(path.name) != (stat.st_size, stat.st_mtime_ns):
                    files[path.name] = path.read_bytes()
                    uploaded[path.name] = (stat.st_size, stat.st_mtime_ns)
            return body, files

        def cancelled() -> Cancelled:
            left = "".join(f"; {note}" for note in rec.progress.left_behind)
            rec.error = {"error": "Cancelled", "field": None,
                         "message": f"cancelled: {rec.cancel_reason}{left}"}
            return Cancelled(rec.error["message"])

        async def run(_lease: Any) -> Any:
            if rec.cancel_reason is not None:  # cancelled while it was being set up
                raise cancelled()
            try:
                result = await self.pool.run(rec.spec, settings, job_id=job_id,
                                             progress=rec.progress, state_dir=state_dir,
                                             control=rec.control)
            except asyncio.CancelledError:
                if rec.cancel_reason is None or self.stopping:
                    raise  # fenced out, or the daemon is stopping
                raise cancelled() from None
            # its notes (a resume refused, a restart) show in `fspd status JOB`
            rec.result = {**result, "job": rec.id, "attempt": taken.lease.attempt}
            return result

        log.info("fleet_job_started", job=rec.id, attempt=taken.lease.attempt,
                 resumed=rec.restarted)
        try:
            outcome = await host.run(taken, run, journal=saved,
                                     progress=lambda: _fleet_progress(rec))
        except asyncio.CancelledError:  # stopping: the job goes to another host after its lease
            rec.state, rec.task = "queued", None
            self._changed(rec)
            raise
        except Exception as exc:
            log.exception("fleet_job_crashed", job=rec.id)
            outcome, rec.error = "failed", {"error": type(exc).__name__, "message": str(exc)}
        rec.finished_at = time.time()
        rec.state = {"done": "completed", "fenced": "cancelled",
                     "cancelled": "cancelled"}.get(outcome, "failed")
        self._account(rec)
        self.finished_counts[rec.state] += 1
        log.info("fleet_job_finished", job=rec.id, outcome=outcome)
        self._changed(rec)
        self._trim_history()

    def _account(self, rec: JobRecord) -> None:
        p = rec.progress
        self.totals["bytes"] += p.bytes_done
        self.totals["blocks"] += p.blocks_done
        self.retry_totals.update(p.retries)

    def _end(self, rec: JobRecord, box: str, state: str, record: dict[str, Any]) -> None:
        rec.finished_at = time.time()
        record = {**record, "job": rec.id, "state": state, "started_at": rec.started_at,
                  "finished_at": rec.finished_at, "submitted_at": rec.submitted_at,
                  "progress": {**rec.progress.snapshot(), "job_id": rec.id}}
        try:
            final = self.spool.finish("active", rec.id, box, record)
            if final != rec.id:
                log.warning("job_renamed_in_spool", job=rec.id, box=box, name=final)
        except OSError as exc:
            log.error("spool_move_failed", job=rec.id, error=str(exc))
        rec.box, rec.state = box, state
        if box == "done":
            rec.result = record
        else:
            rec.error = {k: record.get(k) for k in ("error", "field", "message")}
        self._account(rec)
        self.finished_counts[state] += 1
        log.info("job_finished", job=rec.id, state=state,
                 error=None if rec.error is None else rec.error.get("message"))
        self._changed(rec)
        self._trim_history()

    def _requeue(self, rec: JobRecord) -> None:
        name = self.spool.requeue(rec.id)
        rec.box, rec.state = "new", "queued"
        rec.task = None
        self._account(rec)
        log.info("job_requeued", job=rec.id, as_name=name)
        self._changed(rec)

    def _trim_history(self) -> None:
        keep = self.settings.daemon.history
        done = [n for n, r in self.jobs.items() if r.state in TERMINAL]
        for name in done[:max(0, len(done) - keep)]:
            del self.jobs[name]

    def _changed(self, rec: JobRecord) -> None:
        self.events.publish({"event": "state", **rec.summary()})
        self.on_change()

    # --- control -------------------------------------------------------------------------

    def cancel(self, rec: JobRecord, who: str) -> None:
        if rec.state in TERMINAL:
            raise BadInput(f"job is already {rec.state}", field="job")
        rec.cancel_reason = f"by {who}"
        if rec.box == "fleet":  # its run ends it in the fleet's table (fspd/fleet/lifecycle.py)
            rec.control.resume()
            if self.fleet_host is not None:
                self.fleet_host.cancel(rec.id)
            return
        if rec.task is not None and _begun(rec.task):  # it ends itself, in _run
            rec.control.resume()  # a paused job must wake up to see the cancellation
            rec.task.cancel()
            return
        if rec.task is not None:  # dispatched, but _run has not taken its first step: now
            rec.task.cancel()     # it never will, so the job is ended here
            rec.task = None
        if rec.box == "new":
            fd = self.spool.claim(rec.id)
            if fd is None:
                del self.jobs[rec.id]
                raise BadInput("job was taken by another daemon", field="job")
            rec.lock_fd = fd
        try:
            self._end(rec, "failed", "cancelled", {
                "error": "Cancelled", "field": None,
                "message": f"cancelled before it started: {rec.cancel_reason}"})
        finally:
            if rec.lock_fd is not None:
                os.close(rec.lock_fd)
                rec.lock_fd = None

    def pause(self, rec: JobRecord) -> None:
        if rec.state in TERMINAL:
            raise BadInput(f"job is already {rec.state}", field="job")
        rec.control.pause()
        rec.progress.pause()  # its rate is 0 and its ETA unknown until it resumes
        if rec.task is None:
            rec.held = True
        else:
            rec.state = "paused"
        self._changed(rec)

    def resume(self, rec: JobRecord) -> None:
        if rec.state in TERMINAL:
            raise BadInput(f"job is already {rec.state}", field="job")
        rec.control.resume()
        rec.progress.resume()
        rec.held = False
        if rec.task is not None:
            rec.state = "running"
        self._changed(rec)
        self.dispatch()

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        self.bandwidth.set_rate(settings.daemon.bandwidth_bytes_per_s)
        self.dispatch()

    def publish_progress(self) -> None:
        for rec in self.running():
            self.events.publish({"event": "progress", **rec.summary()})

    async def shutdown(self, grace_s: float) -> None:
        """Stop claiming; cancel running jobs and put them back into new/ (bounded wait);
        put claimed-but-not-started jobs back too."""
        self.stopping = True
        tasks = [r.task for r in self.running() if r.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for rec in self.running():
                if rec.task in pending:
                    log.warning("job_stop_timeout", job=rec.id, grace_s=grace_s)
                    self._requeue(rec)
        for rec in list(self.jobs.values()):
            if rec.box == "active" and rec.state == "queued":
                self._requeue(rec)
            if rec.lock_fd is not None:
                os.close(rec.lock_fd)
                rec.lock_fd = None
