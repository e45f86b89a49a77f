"""What the web view shows beyond the control API: each job's route in words, a chart sample
per job and second made from the daemon's progress events (the last hour, bounded), and the
host's totals; fanned out to the pages following ``/ui/api/events`` (see fspd/daemon/ui.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fspd.log import get_logger

if TYPE_CHECKING:
    from fspd.daemon.service import Service

log = get_logger("fspd.daemon.ui")

SAMPLE_EVERY_S = 1.0  # one chart sample per job and second at most
HISTORY_S = 3600.0  # charts show the last hour
MAX_SAMPLES = int(HISTORY_S / SAMPLE_EVERY_S)
MAX_SERIES = 16  # jobs with a chart history kept (running ones first)
# A sample in the history: a tuple of these (~200 bytes; an hour of one job ~0.7 MiB, so the
# whole history stays under ~12 MiB). Queue depths are kept for the latest sample only.
FIELDS = ("t", "bytes", "bps", "throttled", "retries")


# --- describing jobs ---------------------------------------------------------------------

def _where(spec: Any) -> str:
    kind = getattr(spec, "type", "?")
    if kind == "ebs":
        base = getattr(spec, "base_snapshot_id", None)
        snap = getattr(spec, "snapshot_id", None) or "new snapshot"
        text = f"{base}..{snap}" if base else snap
    elif kind == "ebs-chain":
        ids = spec.snapshot_ids
        text = f"{ids[0]}..{ids[-1]} ({len(ids)} snapshots)"
    elif kind == "s3":
        text = f"s3://{spec.bucket}/{spec.prefix}"
    else:
        text = str(getattr(spec, "path", kind))
    region = getattr(spec, "region", None)
    return f"{text} ({region})" if region and kind.startswith("ebs") else text


def route(rec: Any) -> dict[str, Any]:
    """Source and destinations of a job record, in words (plain strings: the page escapes)."""
    spec = getattr(rec, "spec", None)
    if spec is None:
        return {"source": None, "destinations": []}
    names = spec.destination_names()
    return {"source": _where(spec.source),
            "destinations": [f"{name}: {_where(d)}" if d.name else _where(d)
                             for name, d in zip(names, spec.destinations, strict=False)]}


# --- the recorder ------------------------------------------------------------------------

class Recorder:
    """Turns the daemon's progress events into chart samples and host totals, and fans them
    out to the pages following ``/ui/api/events``. Everything it keeps is bounded."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.series: dict[str, deque[tuple[float, ...]]] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # job: its last sample, with queues
        self.host: dict[str, Any] = {}
        self.clients: set[asyncio.Queue[str]] = set()
        self._last: dict[str, tuple[float, dict[str, int]]] = {}  # job: (t, stage done counts)
        self._rps: dict[str, dict[str, float]] = {}  # job: requests/s by stream
        self._task: asyncio.Task[None] | None = None

    # lifecycle (aiohttp signals)
    async def start(self, _app: web.Application) -> None:
        self._task = asyncio.create_task(self._run(), name="ui recorder")

    async def stop(self, _app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        sub = self.service.events.subscribe()
        try:
            next_host = 0.0
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), SAMPLE_EVERY_S)
                except TimeoutError:
                    event = {}
                if event is None:  # the daemon is stopping
                    return
                try:
                    if event:
                        self._on_event(event)
                    if time.monotonic() >= next_host:
                        next_host = time.monotonic() + SAMPLE_EVERY_S
                        self.host = self.host_totals()
                        self._send("host", self.host)
                except Exception:  # the view must not stop on one odd event
                    log.exception("ui_recorder_failed", event=event.get("event"))
        finally:
            self.service.events.unsubscribe(sub)

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        if not self.clients:
            return
        line = f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        for queue in list(self.clients):
            while True:
                try:
                    queue.put_nowait(line)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()

    def _record(self, name: str) -> Any:
        return self.service.scheduler.jobs.get(name)

    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("job")
        if not isinstance(name, str):
            return
        rec = self._record(name)
        kind = event.get("event")
        if kind == "progress":
            self._send("progress", event)
            self._sample(name, event, rec)
        else:  # state changes (and the job's first appearance): with its route
            self._send("job", {**event, "route": route(rec)})
            if event.get("state") in ("completed", "failed", "cancelled"):
                self._rps.pop(name, None)
                self._last.pop(name, None)

    def _sample(self, name: str, event: dict[str, Any], rec: Any) -> None:
        series = self.series.get(name)
        now = time.time()
        if series and now - series[-1][0] < SAMPLE_EVERY_S:
            return
        progress = rec.progress.snapshot() if rec is not None else {}
        stages = progress.get("stages", {})
        retries = progress.get("retries", {})
        throttled = int(retries.get("throttled", 0))
        sample = {
            "t": round(now, 2), "bytes": event.get("bytes_done", 0),
            "bps": event.get("rate_recent_bps", 0), "throttled": throttled,
            "retries": int(event.get("retries", 0)) - throttled,
            "queues": {k: v.get("queue_depth", 0) for k, v in stages.items()},
            "in_flight": {k: v.get("in_flight", 0) for k, v in stages.items()},
        }
        self._requests(name, rec, stages, now)
        if series is None:
            series = self.series[name] = deque(maxlen=MAX_SAMPLES)
            self._forget_old_series()
        series.append(tuple(sample[k] for k in FIELDS))
        self.latest[name] = sample
        self._send("sample", {"job": name, "sample": sample})

    def samples(self, name: str) -> list[dict[str, Any]]:
        """The job's history, oldest first; the last sample with its queue depths."""
        out = [dict(zip(FIELDS, values, strict=True)) for values in self.series.get(name, ())]
        if out and name in self.latest:
            out[-1] = self.latest[name]
        return out

    def _forget_old_series(self) -> None:
        if len(self.series) <= MAX_SERIES:
            return
        running = {r.id for r in self.service.scheduler.running()}
        for name in [n for n in self.series if n not in running]:
            if len(self.series) <= MAX_SERIES:
                return
            del self.series[name]
            self.latest.pop(name, None)

    def _requests(self, name: str, rec: Any, stages: dict[str, Any], now: float) -> None:
        """Requests/s of the job's EBS streams, from its stages' block counts: a fetch from an
        EBS source is one GetSnapshotBlock, a write to an EBS destination one Put."""
        done = {k: int(v.get("done", 0)) for k, v in stages.items()}
        last = self._last.get(name)
        self._last[name] = (now, done)
        if rec is None or last is None or now <= last[0]:
            return
        spec = rec.spec
        dt = now - last[0]
        streams: dict[str, float] = {}
        if spec.source.type in ("ebs", "ebs-chain") and "fetch" in done:
            streams["get"] = (done["fetch"] - last[1].get("fetch", 0)) / dt
        for dest_name, dest in zip(spec.destination_names(), spec.destinations, strict=False):
            key = f"write:{dest_name}"
            if dest.type == "ebs" and key in done:
                streams[f"put:{dest_name}"] = (done[key] - last[1].get(key, 0)) / dt
        self._rps[name] = streams

    def host_totals(self) -> dict[str, Any]:
        scheduler = self.service.scheduler
        transfer = self.service.settings.transfer
        running = {r.id for r in scheduler.running()}
        rps = {k: v for k, v in self._rps.items() if k in running}
        gets = [v for s in rps.values() for k, v in s.items() if k == "get"]
        puts = [v for s in rps.values() for k, v in s.items() if k.startswith("put:")]
        limits = getattr(scheduler, "limits", None)
        memory = getattr(limits, "memory", None)
        return {
            "t": round(time.time(), 2),
            "bps": sum(r.progress.rates()[1] for r in scheduler.running()
                       if r.state != "paused"),
            "get_rps": round(sum(gets), 1), "put_rps": round(sum(puts), 1),
            "busiest_stream_rps": round(max([*gets, *puts], default=0.0), 1),
            "per_snapshot_rps": transfer.per_snapshot_rps,
            "per_account_rps": transfer.per_account_rps,
            "memory_blocks": getattr(memory, "held", None),
            "memory_budget_blocks": transfer.max_buffered_blocks,
            "bandwidth_limit_bps": scheduler.bandwidth.rate,
            "counts": dict(scheduler.counts()),
        }
