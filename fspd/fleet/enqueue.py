"""Putting a job into the fleet: its item first (conditionally: a job id is used once), then
its message, so a message never names a job that is not in the table. ``fspd submit --fleet``
and the fleet spool directory (fspd/daemon/fleet_spool.py) both enqueue through here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fspd import jobs
from fspd.fleet.queue import JobQueue
from fspd.fleet.table import QUEUED, JobExists, JobTable


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    message_id: str
    resent: bool = False  # the item was there already (an enqueue cut short): message only


def job_id_for(name: str | None, filename: str, data: bytes) -> str:
    """The job's own ``name``, else the file's stem and a digest of its bytes (the same file
    submitted twice is the same job, refused the second time)."""
    if name:
        return name
    return f"{jobs.safe_name(Path(filename).stem)[:100]}-{hashlib.sha256(data).hexdigest()[:12]}"


async def enqueue(table: JobTable, queue: JobQueue, data: bytes, filename: str, *,
                  resume: bool = False) -> Enqueued:
    """Validate the job (BadInput naming the field), write its item, send its message.
    :class:`JobExists` if the id is taken, unless ``resume`` (a job file found half-enqueued
    after a crash or an outage) and the item is this very file, never claimed: then its
    message may never have been sent, and is sent now (at worst a second message, which the
    hosts treat as a duplicate delivery)."""
    spec = jobs.parse(data, filename, fleet=True)  # {host} allowed: expanded by its host
    job_id = job_id_for(spec.name, filename, data)
    text = data.decode("utf-8")
    try:
        await table.put_new(job_id, text, filename=filename)
    except JobExists:
        if not resume:
            raise
        item = await table.get(job_id) or {}
        if (item.get("spec"), item.get("state"), item.get("attempt")) != (text, QUEUED, 0):
            raise
        return Enqueued(job_id, await queue.send(job_id), resent=True)
    return Enqueued(job_id, await queue.send(job_id))
