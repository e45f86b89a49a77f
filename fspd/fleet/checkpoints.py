"""A fleet job's checkpoint in S3: the journal of fspd/checkpoint.py, so any host can resume.

Each attempt writes under its own key (``<prefix><job>/attempt-<n>.json``, the attempt also in
the object's metadata), so a host that lost the job cannot overwrite the checkpoint of the
attempt that took it over; the table's item names the current checkpoint, and that write is
fenced by the attempt. A save first confirms the attempt with a fenced table write, then puts
the object, then records its key (fenced again): a fenced-out host stops at the first step, and
an object it managed to put in between is never named by the item.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fspd.aws import call
from fspd.checkpoint import FILENAME, atomic_write
from fspd.config import FleetSettings
from fspd.fleet.table import JobTable, Lease


class CheckpointStore:
    def __init__(self, s3: Any, fleet: FleetSettings, table: JobTable) -> None:
        self.s3, self.table = s3, table
        self.bucket, self.prefix = fleet.checkpoint_bucket, fleet.checkpoint_prefix

    def key(self, job_id: str, attempt: int) -> str:
        return f"{self.prefix}{job_id}/attempt-{attempt:06d}.json"

    async def save(self, lease: Lease, body: bytes,
                   files: dict[str, bytes] | None = None) -> str:
        """Store this attempt's journal, after the files beside it that back it (an upload's
        digest log: ``files`` holds those changed since the last save, by name);
        :class:`FencedOut` (nothing stored) if the attempt is no longer current. Returns the
        journal's key."""
        await self.table.record(lease)  # fenced: a superseded attempt stops here
        key = self.key(lease.job_id, lease.attempt)
        for name, data in (files or {}).items():
            await call(self.s3, "PutObject", Bucket=self.bucket, Key=f"{key}.files/{name}",
                       Body=data, Metadata={"fspd-attempt": str(lease.attempt)})
        await call(self.s3, "PutObject", Bucket=self.bucket, Key=key, Body=body,
                   ContentType="application/json",
                   Metadata={"fspd-attempt": str(lease.attempt), "fspd-owner": lease.owner})
        await self.table.record(lease, checkpoint_key=key)
        return key

    async def _files(self, key: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        params = {"Bucket": self.bucket, "Prefix": f"{key}.files/"}
        while True:
            page = await call(self.s3, "ListObjectsV2", **params)
            for obj in page.get("Contents", []):
                name = obj["Key"].rpartition("/")[2]
                if name and not name.startswith(".") and name != FILENAME:
                    result = await call(self.s3, "GetObject", Bucket=self.bucket,
                                        Key=obj["Key"])
                    async with result["Body"] as stream:
                        out[name] = bytes(await stream.read())
            if not page.get("IsTruncated"):
                return out
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def load(self, job_id: str) -> bytes | None:
        """The job's current journal (named by its item), or None if it has none yet."""
        item = await self.table.get(job_id)
        key = (item or {}).get("checkpoint_key")
        if not key:
            return None
        result = await call(self.s3, "GetObject", Bucket=self.bucket, Key=key)
        async with result["Body"] as stream:
            return bytes(await stream.read())

    async def restore(self, job_id: str, state_dir: Path) -> bool:
        """Put the job's journal, and the files saved with it, where
        :meth:`fspd.checkpoint.Checkpoint.open` and the sinks read them; False when there
        is none."""
        item = await self.table.get(job_id)
        key = (item or {}).get("checkpoint_key")
        body = await self.load(job_id)
        if body is None or not key:
            return False
        files = await self._files(str(key))
        await asyncio.to_thread(_write_journal, state_dir, body, files)
        return True


def _write_journal(state_dir: Path, body: bytes, files: dict[str, bytes]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data in files.items():  # what the journal claims, before the journal
        atomic_write(state_dir / name, data)
    atomic_write(state_dir / FILENAME, body)
