"""EBS Direct endpoints: a completed snapshot as a source, the changed blocks between two
snapshots as a source, and a new snapshot as a sink."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fspd.aws import AwsTarget, call
from fspd.blocks import (
    BLOCK_SIZE,
    GIB,
    Bitmap,
    Block,
    BlockRef,
    DigestFile,
    Kind,
    from_b64,
    gib_for_bytes,
    is_zero,
)
from fspd.checkpoint import decode_bitmap, digests_problem, encode_bitmap, spec_digest
from fspd.context import JobContext
from fspd.endpoint import Gap, VolumeInfo
from fspd.endpoints import registry
from fspd.errors import BadInput, TransferFailed
from fspd.jobs import EbsDestinationSpec, EbsSourceSpec, JobSpec
from fspd.log import get_logger
from fspd.retry import ApiError, CorruptBlock, Retrier

log = get_logger("fspd.ebs")

BYTE_LENGTH_TAG = "fspd:byte-length"
SOURCE_SNAPSHOT_TAG = "fspd:source-snapshot"
SOURCE_REGION_TAG = "fspd:source-region"


async def describe_snapshot(ctx: JobContext, target: AwsTarget, snapshot_id: str,
                            field: str) -> dict[str, Any]:
    ec2 = await ctx.clients.client("ec2", target)

    async def describe() -> dict[str, Any]:
        try:
            return await call(ec2, "DescribeSnapshots", SnapshotIds=[snapshot_id])
        except ApiError as exc:
            if exc.code == "InvalidSnapshot.NotFound":  # permanent: not retried
                raise BadInput(f"snapshot {snapshot_id} does not exist in {target.region}",
                               field=field) from None
            raise
    resp = await _control(ctx).run(describe)
    snaps = resp.get("Snapshots", [])
    if not snaps:
        raise BadInput(f"snapshot {snapshot_id} does not exist in {target.region}", field=field)
    return snaps[0]


def _control(ctx: JobContext) -> Retrier:
    """Control-plane calls: botocore makes one attempt each (aws.py), so this is their only
    retry layer, with the not-found grace window and messages for permanent errors."""
    return ctx.retrier()


def _tags(snap: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in snap.get("Tags", []) or []}


def _info_from(snap: dict[str, Any], target: AwsTarget) -> VolumeInfo:
    tags = _tags(snap)
    byte_length = None
    if tags.get(BYTE_LENGTH_TAG, "").isdigit():
        byte_length = int(tags[BYTE_LENGTH_TAG])
    return VolumeInfo(
        volume_size=int(snap["VolumeSize"]) * GIB, byte_length=byte_length,
        encrypted=bool(snap.get("Encrypted")), kms_key_arn=snap.get("KmsKeyId"),
        description=snap.get("Description"), tags=tags,
        origin=f"{snap['SnapshotId']} in {target.region}",
    )


class _PageTokenExpired(TransferFailed):
    """A listing's page token expired: the walk restarts from the next unseen index (a
    ``TransferFailed``, so the retry layer passes it on at once)."""


class _EbsReader:
    """Fetch and verify blocks of one snapshot; refresh block tokens that expired."""

    snapshot_id: str

    def __init__(self, ctx: JobContext, target: AwsTarget) -> None:
        self.ctx = ctx
        self.target = target
        self._ebs: Any = None
        self._api: Any = None
        self._retrier: Retrier | None = None

    async def _open_reader(self, snapshot_id: str) -> None:
        self._ebs = await self.ctx.clients.client("ebs", self.target)
        self._api = await self.ctx.block_api(self.target)
        self._retrier = self.ctx.retrier(self.ctx.rate("get", self.target, snapshot_id))

    async def _verified_get(self, ref: BlockRef) -> Block:
        data, checksum = await self._api.get_block(self.snapshot_id, ref.index, ref.token)
        raw = await self.ctx.digest(data)
        if len(data) != BLOCK_SIZE or raw != from_b64(checksum):
            raise CorruptBlock(f"block {ref.index} of {self.snapshot_id}: "
                               f"{len(data)} bytes, checksum mismatch")
        return Block(ref.index, data, raw, is_zero(data))

    async def fetch(self, ref: BlockRef) -> Block:
        assert self._retrier is not None

        async def refresh() -> None:
            ref.token = await self._fresh_token(ref.index)

        return await self._retrier.run(lambda: self._verified_get(ref), refresh_token=refresh)

    async def _fresh_token(self, index: int) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class EbsSnapshotSource(_EbsReader):
    """Every block of a completed snapshot; unlisted blocks are gaps (they read as zeros)."""

    def __init__(self, ctx: JobContext, target: AwsTarget, snapshot_id: str) -> None:
        super().__init__(ctx, target)
        self.snapshot_id = snapshot_id
        self.info: VolumeInfo | None = None

    async def open(self) -> VolumeInfo:
        snap = await describe_snapshot(self.ctx, self.target, self.snapshot_id,
                                       "source.snapshot_id")
        if snap.get("State") != "completed":
            raise BadInput(f"snapshot {self.snapshot_id} is {snap.get('State')}, not completed;"
                           " only completed snapshots can be read", field="source.snapshot_id")
        self.info = _info_from(snap, self.target)
        await self._open_reader(self.snapshot_id)
        return self.info

    async def _page(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return await call(self._ebs, op, **req)
        except ApiError as exc:
            if "NextToken" in req and exc.code == "ValidationException" \
                    and exc.reason == "INVALID_PAGE_TOKEN":
                raise _PageTokenExpired(str(exc)) from None
            raise

    async def _pages(self, op: str, start: int = 0, **params: Any
                     ) -> AsyncIterator[dict[str, Any]]:
        """Walk a paged listing. Pages may be empty and still carry a token; an expired page
        token restarts the walk from the next index not yet seen."""
        page_size = self.ctx.settings.transfer.list_page_size
        token: str | None = None
        next_index = start
        retrier = _control(self.ctx)
        while True:
            req = dict(params, MaxResults=page_size)
            if token:
                req["NextToken"] = token
            else:
                req["StartingBlockIndex"] = next_index
            try:
                page = await retrier.run(lambda req=req: self._page(op, req))
            except _PageTokenExpired:
                token = None
                continue
            yield page
            items = page.get("Blocks") or page.get("ChangedBlocks") or []
            if items:
                next_index = items[-1]["BlockIndex"] + 1
            token = page.get("NextToken")
            if not token:
                return

    async def entries(self) -> AsyncIterator[BlockRef | Gap]:
        assert self.info is not None
        next_index = 0
        async for page in self._pages("ListSnapshotBlocks", SnapshotId=self.snapshot_id):
            for b in page.get("Blocks", []):
                index = b["BlockIndex"]
                if index > next_index:
                    yield Gap(next_index, index)
                yield BlockRef(index, Kind.DATA, b["BlockToken"])
                next_index = index + 1
        if next_index < self.info.block_count:
            yield Gap(next_index, self.info.block_count)

    async def _fresh_token(self, index: int) -> str:
        async for page in self._pages("ListSnapshotBlocks", start=index,
                                      SnapshotId=self.snapshot_id):
            for b in page.get("Blocks", []):
                if b["BlockIndex"] == index:
                    return str(b["BlockToken"])
                if b["BlockIndex"] > index:
                    break
            break
        raise TransferFailed(f"block {index} is no longer listed in {self.snapshot_id}")


class EbsDeltaSource(EbsSnapshotSource):
    """The blocks that changed from ``base`` to ``snapshot``: changed data is fetched from the
    newer snapshot; a block absent from it becomes zeros. Unchanged blocks are not touched,
    except beyond the base's end, where the newer volume reads zeros."""

    def __init__(self, ctx: JobContext, target: AwsTarget, base_snapshot_id: str,
                 snapshot_id: str) -> None:
        super().__init__(ctx, target, snapshot_id)
        self.base_snapshot_id = base_snapshot_id
        self.base_blocks = 0

    async def open(self) -> VolumeInfo:
        base = await describe_snapshot(self.ctx, self.target, self.base_snapshot_id,
                                       "source.base_snapshot_id")
        self.base_blocks = int(base["VolumeSize"]) * GIB // BLOCK_SIZE
        return await super().open()

    async def entries(self) -> AsyncIterator[BlockRef | Gap]:
        assert self.info is not None
        next_index = self.base_blocks
        async for page in self._pages("ListChangedBlocks", FirstSnapshotId=self.base_snapshot_id,
                                      SecondSnapshotId=self.snapshot_id):
            for b in page.get("ChangedBlocks", []):
                index = b["BlockIndex"]
                if index > next_index:
                    yield Gap(next_index, index)
                next_index = max(next_index, index + 1)
                token = b.get("SecondBlockToken")
                yield BlockRef(index, Kind.DATA if token else Kind.ZERO, token)
        if next_index < self.info.block_count:
            yield Gap(next_index, self.info.block_count)

    async def _fresh_token(self, index: int) -> str:
        async for page in self._pages("ListChangedBlocks", start=index,
                                      FirstSnapshotId=self.base_snapshot_id,
                                      SecondSnapshotId=self.snapshot_id):
            for b in page.get("ChangedBlocks", []):
                if b["BlockIndex"] == index and b.get("SecondBlockToken"):
                    return str(b["SecondBlockToken"])
            break
        raise TransferFailed(f"block {index} is no longer listed as changed in "
                             f"{self.snapshot_id}")


@dataclass(frozen=True)
class PutRules:
    """Which blocks a new snapshot is sent: the sink follows these, and a dry run counts with
    them, so its plan is what the run will do."""

    block_count: int  # blocks of the new snapshot's volume
    skip_zero: bool  # zero blocks need not be written (unencrypted, no parent)
    fill_gaps: bool  # every gap is written as zeros (an unencrypted source, encrypted result)
    # With a parent, its blocks under a gap, or past the end of what the source covers, are
    # written as zeros so that none of the parent's data shows through.
    parent_blocks: int
    covered: int

    def block_puts(self, zero: bool) -> int:
        return 0 if zero and self.skip_zero else 1


async def listed_blocks(ctx: JobContext, target: AwsTarget, snapshot_id: str, start: int,
                        stop: int) -> AsyncIterator[int]:
    """The indexes ListSnapshotBlocks gives for ``snapshot_id`` in ``[start, stop)``."""
    if start >= stop:
        return
    reader = EbsSnapshotSource(ctx, target, snapshot_id)
    reader._ebs = await ctx.clients.client("ebs", target)
    async for page in reader._pages("ListSnapshotBlocks", start=start, SnapshotId=snapshot_id):
        for b in page.get("Blocks", []):
            index = int(b["BlockIndex"])
            if index >= stop:
                return
            if index >= start:
                yield index


class EbsSnapshotSink:
    """Writes a new snapshot: StartSnapshot, PutSnapshotBlock per block, CompleteSnapshot with
    ChangedBlocksCount and the LINEAR checksum, then waits until it is completed."""

    def __init__(self, ctx: JobContext, target: AwsTarget, *, name: str,
                 parent_snapshot_id: str | None = None, volume_size_gib: int | None = None,
                 description: str | None = None, tags: dict[str, str] | None = None,
                 copy_tags: bool = True, encrypted: bool | None = None,
                 kms_key_arn: str | None = None, timeout_minutes: int | None = None,
                 client_token: str | None = None, skip_zero_blocks: bool = True) -> None:
        self.ctx = ctx
        self.target = target
        self.name = name
        self.concurrency = ctx.settings.transfer.put_concurrency
        self.parent_snapshot_id = parent_snapshot_id
        self.volume_size_gib = volume_size_gib
        self.description = description
        self.tags = tags or {}
        self.copy_tags = copy_tags
        self.encrypted = encrypted
        self.kms_key_arn = kms_key_arn
        self.timeout_minutes = timeout_minutes or ctx.settings.snapshot.timeout_minutes
        self.client_token = client_token
        self.skip_zero_blocks = skip_zero_blocks
        self.snapshot_id: str | None = None
        self.already_complete = False
        self._skip_zero = False
        self._rules_in_force = PutRules(0, False, False, 0, 0)
        self._digests: DigestFile | None = None
        self._handled = Bitmap(0)
        self._grace_until = 0.0

    async def _parent(self) -> dict[str, Any] | None:
        if not self.parent_snapshot_id:
            return None
        return await describe_snapshot(self.ctx, self.target, self.parent_snapshot_id,
                                       f"{self.name}.parent_snapshot_id")

    def _rules(self, info: VolumeInfo, parent: dict[str, Any] | None) -> tuple[PutRules, bool]:
        """(the put rules, whether the new snapshot is encrypted)."""
        parent_gib = int(parent["VolumeSize"]) if parent else 0
        # A child is at least as large as its parent (EBS requires it).
        size_gib = self.volume_size_gib or max(gib_for_bytes(info.volume_size), parent_gib)
        block_count = size_gib * GIB // BLOCK_SIZE
        if parent is not None:  # a child takes its parent's encryption
            encrypted = bool(parent.get("Encrypted"))
        elif self.encrypted is not None:
            encrypted = self.encrypted
        else:  # a KMS key means an encrypted snapshot; without either, the source's
            encrypted = bool(self.kms_key_arn) or info.encrypted
        covered = info.block_count if info.covered_blocks is None else info.covered_blocks
        return PutRules(
            block_count=block_count,
            # Unwritten blocks read as zeros only in an unencrypted snapshot without a parent.
            skip_zero=self.skip_zero_blocks and not encrypted and parent is None,
            fill_gaps=encrypted and not info.encrypted,
            parent_blocks=min(parent_gib * GIB // BLOCK_SIZE, block_count),
            covered=min(covered, block_count)), encrypted

    async def plan(self, info: VolumeInfo) -> PutRules:
        """The rules a run would follow, found without starting a snapshot (for --dry-run)."""
        return self._rules(info, await self._parent())[0]

    async def open(self, info: VolumeInfo) -> None:
        parent = await self._parent()
        rules, encrypted = self._rules(info, parent)
        size_gib = rules.block_count * BLOCK_SIZE // GIB
        tags = {k: v for k, v in info.tags.items()
                if not k.startswith(("aws:", SOURCE_SNAPSHOT_TAG, SOURCE_REGION_TAG))} \
            if self.copy_tags else {}
        if info.byte_length is not None:
            tags[BYTE_LENGTH_TAG] = str(info.byte_length)
        tags.update(self.tags)
        params: dict[str, Any] = {"VolumeSize": size_gib, "Timeout": self.timeout_minutes}
        if self.client_token:
            params["ClientToken"] = self.client_token
        description = self.description if self.description is not None else info.description
        if description:
            params["Description"] = description[:255]
        if tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in list(tags.items())[:50]]
        if self.parent_snapshot_id:
            # A child inherits its parent's encryption; EBS rejects Encrypted with a parent.
            params["ParentSnapshotId"] = self.parent_snapshot_id
        elif encrypted:
            params["Encrypted"] = True
            if self.kms_key_arn:
                params["KmsKeyArn"] = self.kms_key_arn
        state = self.ctx.resume_state(self.name)
        if state and state.get("type") == "ebs" and state.get("client_token"):
            self.client_token = params["ClientToken"] = str(state["client_token"])
        resp = await self._start(params)
        if state and resp.get("Status") not in ("pending", "completed"):
            # The interrupted run's snapshot can no longer take blocks (its Timeout passed):
            # start a new one under a new token, and say so.
            self.ctx.note(f"{self.name}: snapshot {resp.get('SnapshotId')} of the interrupted "
                          f"run is {resp.get('Status')}; started a new snapshot from scratch")
            self.client_token = params["ClientToken"] = \
                f"{self.client_token or 'fspd'}-r{int(time.time())}"[-64:]
            resp = await self._start(params)
            state = None
        self.snapshot_id = str(resp["SnapshotId"])
        # Same ClientToken as a finished run: the snapshot exists and is complete already.
        self.already_complete = resp.get("Status") == "completed"
        self._grace_until = time.monotonic() + self.ctx.settings.retry.not_found_window_s
        self.ctx.progress.snapshot_ids[self.name] = self.snapshot_id
        log.info("snapshot_started", destination=self.name, snapshot_id=self.snapshot_id,
                 region=self.target.region, volume_size_gib=size_gib, encrypted=encrypted)
        self._rules_in_force = rules
        self._skip_zero = rules.skip_zero
        self._block_count = rules.block_count
        self._api = await self.ctx.block_api(self.target)
        self._retrier = self.ctx.retrier(self.ctx.rate("put", self.target, self.snapshot_id))
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self._digests = DigestFile(self.ctx.state_dir / f"{self.snapshot_id}.digests",
                                   self._block_count)
        self._handled = Bitmap(self._block_count)
        if state and state.get("snapshot_id") == self.snapshot_id:
            try:
                written = decode_bitmap(state["written"], self._block_count)
                handled = decode_bitmap(state["handled"], self._block_count)
                problem = await self.ctx.offload(digests_problem, self._digests.path, written)
                if problem:
                    raise ValueError(problem)
            except (KeyError, ValueError) as exc:
                # The snapshot still takes blocks: put every one again (a put replaces).
                self.ctx.note(f"{self.name}: the checkpoint of snapshot {self.snapshot_id} is "
                              f"damaged ({exc}); sending every block again into it")
                log.warning("snapshot_checkpoint_damaged", destination=self.name,
                            snapshot_id=self.snapshot_id, error=str(exc))
            else:
                self._digests.written, self._handled = written, handled
                log.info("snapshot_resumed", destination=self.name,
                         snapshot_id=self.snapshot_id, blocks_done=self._handled.count)

    async def _start(self, params: dict[str, Any]) -> dict[str, Any]:
        ebs = await self.ctx.clients.client("ebs", self.target)
        return await _control(self.ctx).run(lambda: call(ebs, "StartSnapshot", **params))

    def has(self, index: int) -> bool:
        return self.already_complete or index in self._handled

    async def checkpoint_state(self) -> dict[str, Any]:
        assert self._digests is not None
        written = Bitmap(self._block_count, self._digests.written.to_bytes())
        handled = Bitmap(self._block_count, self._handled.to_bytes())
        await self.ctx.offload(self._digests.sync)  # digests durable before they are claimed
        return {"type": "ebs", "snapshot_id": self.snapshot_id,
                "client_token": self.client_token, "written": encode_bitmap(written),
                "handled": encode_bitmap(handled)}

    async def write(self, block: Block) -> bool:
        if (block.zero and self._skip_zero) or self.already_complete:
            self._handled.set(block.index)
            return False
        if block.index >= self._block_count:
            raise TransferFailed(f"block {block.index} is beyond the {self.name} snapshot's "
                                 "volume size")
        sid, checksum = self.snapshot_id, block.checksum
        assert sid is not None and self._digests is not None
        await self._retrier.run(
            lambda: self._api.put_block(sid, block.index, block.data, checksum),
            not_found_grace_until=self._grace_until)
        self._digests.record(block.index, block.digest)
        self._handled.set(block.index)
        return True

    async def gap(self, gap: Gap) -> None:
        # An unencrypted source read into an encrypted snapshot, or a gap over the parent's
        # blocks: zeros must be written, or random bytes / the parent's data would show.
        await self._write_zeros(self.zero_indexes(self._rules_in_force, gap.start, gap.stop))

    async def zero_indexes(self, rules: PutRules, start: int, stop: int
                           ) -> AsyncIterator[int]:
        """The blocks of a gap ``[start, stop)`` that must be written as zeros."""
        if rules.fill_gaps:
            for index in range(start, min(stop, rules.block_count)):
                yield index
        elif rules.parent_blocks and self.parent_snapshot_id:
            async for index in listed_blocks(self.ctx, self.target, self.parent_snapshot_id,
                                             start, min(stop, rules.parent_blocks)):
                yield index

    def tail(self, rules: PutRules) -> tuple[int, int] | None:
        """Past the end of what the source covers, the parent's blocks: a gap to zero."""
        if rules.parent_blocks > rules.covered:
            return rules.covered, rules.parent_blocks
        return None

    async def _write_zeros(self, indexes: AsyncIterator[int]) -> None:
        """Write zero blocks at ``indexes``, ``concurrency`` at a time, in bounded batches."""
        batch: list[int] = []
        async for index in indexes:
            if self.already_complete:
                return
            if index not in self._handled:
                batch.append(index)
            if len(batch) >= 1024:
                await self._write_zero_batch(batch)
                batch = []
        await self._write_zero_batch(batch)

    async def _write_zero_batch(self, batch: list[int]) -> None:
        todo = iter(batch)

        async def worker() -> None:
            for index in todo:  # the workers share one iterator: each index is written once
                await self.write(Block.zeros(index))

        tasks = [asyncio.ensure_future(worker())
                 for _ in range(min(self.concurrency, len(batch)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def commit(self) -> dict[str, Any]:
        assert self._digests is not None and self.snapshot_id is not None
        if self.already_complete:
            self._close_digests(remove=True)
            return {"destination": self.name, "type": "ebs", "region": self.target.region,
                    "snapshot_id": self.snapshot_id, "state": "completed",
                    "note": "completed by an earlier run with the same ClientToken"}
        # Past the end of a source shorter than the parent, the parent's blocks become zeros.
        tail = self.tail(self._rules_in_force)
        if tail:
            await self._write_zeros(self.zero_indexes(self._rules_in_force, *tail))
        count = self._digests.written.count
        checksum = self._digests.aggregate()
        ebs = await self.ctx.clients.client("ebs", self.target)
        sid = self.snapshot_id
        await _control(self.ctx).run(lambda: call(
            ebs, "CompleteSnapshot", SnapshotId=sid, ChangedBlocksCount=count, Checksum=checksum,
            ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR"),
            not_found_grace_until=time.monotonic() + self.ctx.settings.retry.not_found_window_s)
        await self._wait_completed()
        self._close_digests(remove=True)
        log.info("snapshot_completed", destination=self.name, snapshot_id=sid, blocks=count)
        return {"destination": self.name, "type": "ebs", "region": self.target.region,
                "snapshot_id": sid, "blocks_written": count, "checksum": checksum,
                "state": "completed"}

    async def _wait_completed(self) -> None:
        deadline = time.monotonic() + self.ctx.settings.retry.completion_wait_s
        delay = 0.2
        while True:
            snap = await describe_snapshot(self.ctx, self.target, str(self.snapshot_id),
                                           self.name)
            state = snap.get("State")
            if state == "completed":
                return
            if state == "error":
                raise TransferFailed(f"snapshot {self.snapshot_id} in {self.target.region} "
                                     f"ended in state error: {snap.get('StateMessage', '')}")
            if time.monotonic() > deadline:
                raise TransferFailed(f"snapshot {self.snapshot_id} still {state} after "
                                     f"{self.ctx.settings.retry.completion_wait_s:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _close_digests(self, *, remove: bool) -> None:
        if self._digests is not None:
            self._digests.close()
            if remove:
                self._digests.path.unlink(missing_ok=True)

    async def abort(self, error: BaseException) -> dict[str, Any]:
        self._close_digests(remove=False)
        note = None
        if self.snapshot_id and not self.already_complete:
            expiry = f"AWS deletes it after its Timeout ({self.timeout_minutes} min)"
            if self.ctx.checkpoint is not None:
                note = (f"kept pending snapshot {self.snapshot_id} in {self.target.region} "
                        f"for resume (checkpoint in {self.ctx.state_dir}); {expiry} unless "
                        "the job is run again")
            else:
                note = (f"left pending snapshot {self.snapshot_id} in {self.target.region}; "
                        f"{expiry}")
            log.warning("snapshot_left_pending", destination=self.name,
                        snapshot_id=self.snapshot_id, region=self.target.region)
        return {"destination": self.name, "type": "ebs", "region": self.target.region,
                "snapshot_id": self.snapshot_id, "state": "failed", "error": str(error),
                "note": note}


def default_client_token(job_id: str, destination: str, spec: JobSpec | None = None) -> str:
    """Stable for one job, version of its job file and destination (a rerun lands on the
    same snapshot), distinct for any other triple however long the names: a hash, not a
    truncation. An edited job file gets new snapshots, never the old version's pending one
    (whose parameters differ: ConflictException, or blocks it does not count)."""
    content = spec_digest(spec.model_dump_json()) if spec is not None else ""
    digest = hashlib.sha256(f"{job_id}\0{destination}\0{content}".encode()).hexdigest()[:40]
    return f"fspd-{digest}"


@registry.source(EbsSourceSpec)
def open_source(ctx: JobContext, job: JobSpec) -> EbsSnapshotSource:
    src = job.source
    assert isinstance(src, EbsSourceSpec)
    target = registry.target_for(src)
    if src.base_snapshot_id:
        return EbsDeltaSource(ctx, target, src.base_snapshot_id, src.snapshot_id)
    return EbsSnapshotSource(ctx, target, src.snapshot_id)


@registry.sink(EbsDestinationSpec)
def open_sink(ctx: JobContext, job: JobSpec, dest: EbsDestinationSpec, name: str
              ) -> EbsSnapshotSink:
    lineage: dict[str, str] = {}
    if isinstance(job.source, EbsSourceSpec):
        # Lets a later chain job find the copies made so far (see endpoints/chain.py).
        lineage = {SOURCE_SNAPSHOT_TAG: job.source.snapshot_id,
                   SOURCE_REGION_TAG: registry.target_for(job.source).region}
    return _new_snapshot(ctx, job, dest, name, lineage)


@registry.planner(EbsDestinationSpec)
def plan_sink(ctx: JobContext, job: JobSpec, dest: EbsDestinationSpec, name: str
              ) -> EbsSnapshotSink:
    """For a dry run: the sink's put rules are asked, no snapshot is started."""
    return _new_snapshot(ctx, job, dest, name, {})


def _new_snapshot(ctx: JobContext, job: JobSpec, dest: EbsDestinationSpec, name: str,
                  lineage: dict[str, str]) -> EbsSnapshotSink:
    token = dest.client_token or default_client_token(ctx.job_id, name, job)
    return EbsSnapshotSink(
        ctx, registry.target_for(dest), name=name, parent_snapshot_id=dest.parent_snapshot_id,
        volume_size_gib=dest.volume_size_gib, description=dest.description,
        tags=lineage | dest.tags, copy_tags=dest.copy_tags, encrypted=dest.encrypted,
        kms_key_arn=dest.kms_key_arn, timeout_minutes=dest.timeout_minutes,
        client_token=token, skip_zero_blocks=dest.skip_zero_blocks)
