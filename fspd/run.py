"""The operations layer: turn a job spec into a source, sinks and a pipeline, and run it.

``run_job`` is what ``fspd run``, the verb commands and the daemon all call.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiobotocore.session import AioSession

from fspd import endpoint_policy
from fspd.aws import AwsClients, AwsTarget, call
from fspd.blocks import BLOCK_SIZE, Kind
from fspd.budget import JobControl, SharedLimits
from fspd.checkpoint import Checkpoint, spec_digest
from fspd.config import Settings
from fspd.endpoints.context import JobContext
from fspd.endpoints.ebs import (
    SOURCE_REGION_TAG,
    SOURCE_SNAPSHOT_TAG,
    EbsDeltaSource,
    EbsSnapshotSink,
    EbsSnapshotSource,
)
from fspd.endpoints.files import FileSink, FileSource
from fspd.endpoints.s3 import archive_sink, archive_source
from fspd.errors import BadInput, TransferFailed
from fspd.jobs import (
    AwsEndpointSpec,
    EbsChainSourceSpec,
    EbsDestinationSpec,
    EbsSourceSpec,
    JobSpec,
    S3DestinationSpec,
    S3SourceSpec,
)
from fspd.log import get_logger
from fspd.pipeline import Gap, Pipeline, Sink, Source, VolumeInfo
from fspd.progress import Progress

log = get_logger("fspd.run")

# AWS list prices (us-east-1, USD per 1,000 requests) for the dry-run estimate.
PRICE_LIST = 0.0006
PRICE_GET = 0.003
PRICE_PUT = 0.006
PER_SNAPSHOT_CAP_RPS = 1000


def default_region(profile: str | None = None) -> str:
    region = AioSession(profile=profile).get_config_variable("region")
    return str(region or "us-east-1")


def target_for(spec: AwsEndpointSpec) -> AwsTarget:
    return AwsTarget(region=spec.region or default_region(spec.profile), profile=spec.profile,
                     endpoint_url=spec.endpoint_url, role_arn=spec.role_arn,
                     external_id=spec.external_id)


def build_source(ctx: JobContext, spec: JobSpec) -> Source:
    src = spec.source
    if isinstance(src, EbsSourceSpec):
        target = target_for(src)
        if src.base_snapshot_id:
            return EbsDeltaSource(ctx, target, src.base_snapshot_id, src.snapshot_id)
        return EbsSnapshotSource(ctx, target, src.snapshot_id)
    if isinstance(src, S3SourceSpec):
        return archive_source(ctx, src, target_for(src))
    return FileSource(ctx, src.path)


def build_sinks(ctx: JobContext, spec: JobSpec) -> list[Sink]:
    sinks: list[Sink] = []
    lineage: dict[str, str] = {}
    if isinstance(spec.source, EbsSourceSpec):
        # Lets a later chain job find the copies made so far (see _execute_chain).
        lineage = {SOURCE_SNAPSHOT_TAG: spec.source.snapshot_id,
                   SOURCE_REGION_TAG: target_for(spec.source).region}
    for dest, name in zip(spec.destinations, spec.destination_names(), strict=True):
        if isinstance(dest, EbsDestinationSpec):
            token = dest.client_token or default_client_token(ctx.job_id, name)
            sinks.append(EbsSnapshotSink(
                ctx, target_for(dest), name=name, parent_snapshot_id=dest.parent_snapshot_id,
                volume_size_gib=dest.volume_size_gib, description=dest.description,
                tags=lineage | dest.tags, copy_tags=dest.copy_tags, encrypted=dest.encrypted,
                kms_key_arn=dest.kms_key_arn, timeout_minutes=dest.timeout_minutes,
                client_token=token, skip_zero_blocks=dest.skip_zero_blocks))
        elif isinstance(dest, S3DestinationSpec):
            region = (target_for(spec.source).region
                      if isinstance(spec.source, EbsSourceSpec) else None)
            sinks.append(archive_sink(ctx, dest, name, spec.source, target_for(dest), region))
        else:
            sinks.append(FileSink(ctx, dest.path, name=name, mode=dest.mode))
    return sinks


def default_client_token(job_id: str, destination: str) -> str:
    """Stable for one job and destination (a rerun lands on the same snapshot), distinct for
    any other pair however long the names: a hash, not a truncation."""
    digest = hashlib.sha256(f"{job_id}\0{destination}".encode()).hexdigest()[:40]
    return f"fspd-{digest}"


async def _count(source: Source, progress: Progress) -> dict[str, int]:
    blocks = zero = gaps = 0
    async for entry in source.entries():
        if isinstance(entry, Gap):
            gaps += entry.stop - entry.start
            continue
        blocks += 1
        progress.blocks_listed = blocks
        if entry.kind is Kind.ZERO:
            zero += 1
    progress.blocks_total = blocks
    return {"blocks": blocks, "zero_blocks": zero, "unlisted_blocks": gaps}


def _plan(spec: JobSpec, counts: dict[str, int], info: VolumeInfo) -> dict[str, Any]:
    blocks = counts["blocks"]
    data_blocks = blocks - counts["zero_blocks"]
    reads = data_blocks if isinstance(spec.source, EbsSourceSpec) else 0
    puts = sum(blocks for d in spec.destinations if isinstance(d, EbsDestinationSpec))
    list_requests = max(1, -(-blocks // 10_000)) if isinstance(spec.source, EbsSourceSpec) else 0
    cost = (list_requests * PRICE_LIST + reads * PRICE_GET + puts * PRICE_PUT) / 1000
    streams = max(1, len(spec.destinations))
    seconds = max(reads, puts / streams) / PER_SNAPSHOT_CAP_RPS
    return {
        "blocks_to_move": data_blocks, "bytes_to_move": data_blocks * BLOCK_SIZE,
        "zero_blocks": counts["zero_blocks"], "get_requests": reads, "put_requests": puts,
        "list_requests": list_requests, "estimated_cost_usd": round(cost, 6),
        "estimated_seconds_at_cap": round(seconds, 1), "volume_size": info.volume_size,
    }


async def run_job(spec: JobSpec, settings: Settings, *, job_id: str | None = None,
                  progress: Progress | None = None, state_dir: Path | None = None,
                  control: JobControl | None = None) -> dict[str, Any]:
    """Run one job to completion and return its result record. Raises FspdError on failure
    (after every destination has been aborted and reported). Cancelling the task running it
    stops every stage; ``control`` pauses/resumes it and applies a shared bandwidth limit."""
    job_id = job_id or spec.name or uuid.uuid4().hex[:12]
    endpoint_policy.check_job(spec, settings.aws.allow_endpoints,
                              lambda end: target_for(end).region)
    progress = progress or Progress(job_id=job_id)
    progress.job_id = job_id
    started = time.time()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    checkpoint: Checkpoint | None = None
    if state_dir is None:  # nothing to resume from: a scratch directory for this run only
        tmp = tempfile.TemporaryDirectory(prefix="fspd-")
        state_dir = Path(tmp.name)
    else:
        checkpoint = Checkpoint.open(state_dir, job_id, spec_digest(spec.model_dump_json()))
        if checkpoint.resumed:
            log.info("job_resuming", job=job_id, state_dir=str(state_dir))
    executor = ThreadPoolExecutor(settings.transfer.worker_threads,
                                  thread_name_prefix=f"fspd-{job_id}")
    progress.start()
    try:
        async with AwsClients(settings) as clients:
            limits = (control.limits if control and control.limits
                      else SharedLimits.from_settings(settings.transfer))
            ctx = JobContext(job_id, settings, clients, progress, executor, state_dir,
                             checkpoint=checkpoint, shared_limits=limits)
            try:
                result = await _with_deadline(_execute(ctx, spec, control), settings)
            finally:
                await ctx.close()
        progress.finish("completed")
        if checkpoint is not None:
            checkpoint.discard()
    except asyncio.CancelledError:
        progress.finish("cancelled")
        raise
    except BaseException as exc:
        progress.finish("failed")
        progress.error(str(exc))
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if tmp is not None:
            tmp.cleanup()
    result.update({
        "job_id": job_id, "verb": spec.verb, "state": "completed",
        "started_at": started, "duration_s": round(time.time() - started, 3),
        "blocks_done": progress.blocks_done, "blocks_skipped": progress.blocks_skipped,
        "bytes_done": progress.bytes_done, "retries": dict(progress.retries),
        "resumed": bool(checkpoint and checkpoint.resumed),
        "blocks_resumed": progress.blocks_resumed,
    })
    if checkpoint is not None and checkpoint.notes:
        result["notes"] = list(checkpoint.notes)
    return result


async def _with_deadline(coro: Any, settings: Settings) -> dict[str, Any]:
    deadline = settings.retry.job_deadline_s
    if not deadline:
        return await coro
    try:
        async with asyncio.timeout(deadline):
            return await coro
    except TimeoutError:
        raise TransferFailed(f"job exceeded its deadline of {deadline:.0f} s") from None


async def check_regions(ctx: JobContext, spec: JobSpec) -> None:
    """Every region a job names must exist for its account (one DescribeRegions per account
    and endpoint), before anything starts."""
    ends: list[tuple[str, AwsEndpointSpec]] = []
    if isinstance(spec.source, AwsEndpointSpec):
        ends.append(("source", spec.source))
    ends += [(f"destinations[{i}]", d) for i, d in enumerate(spec.destinations)
             if isinstance(d, AwsEndpointSpec)]
    # S3 archive endpoints are S3 only (maybe an S3-compatible store): no EC2 to ask.
    ends = [(f, e) for f, e in ends if not isinstance(e, S3SourceSpec | S3DestinationSpec)]
    known: dict[tuple[Any, ...], set[str]] = {}
    for field, end in ends:
        target = target_for(end)
        account = (target.profile, target.role_arn, target.endpoint_url)
        if account not in known:
            ec2 = await ctx.clients.client("ec2", target)
            resp = await ctx.retrier().run(lambda ec2=ec2: call(ec2, "DescribeRegions"))
            known[account] = {r["RegionName"] for r in resp.get("Regions", [])}
        if target.region not in known[account]:
            raise BadInput(f"region {target.region} is not available to this account "
                           f"(DescribeRegions lists {', '.join(sorted(known[account]))})",
                           field=f"{field}.region")


async def _execute(ctx: JobContext, spec: JobSpec, control: JobControl | None
                   ) -> dict[str, Any]:
    await check_regions(ctx, spec)
    if isinstance(spec.source, EbsChainSourceSpec):
        return await _execute_chain(ctx, spec, control)
    source = build_source(ctx, spec)
    sinks = build_sinks(ctx, spec) if not spec.dry_run else []
    try:
        info = await source.open()
        base = {"source": info.origin, "volume_size": info.volume_size,
                "byte_length": info.byte_length, "encrypted": info.encrypted}
        if spec.dry_run or not spec.destinations:
            counts = await _count(source, ctx.progress)
            base.update(counts)
            base["bytes"] = counts["blocks"] * BLOCK_SIZE
            if spec.dry_run:
                base["plan"] = _plan(spec, counts, info)
                base["dry_run"] = True
            return base
        pipeline = Pipeline(
            source, sinks, ctx.progress,
            fetch_concurrency=ctx.settings.transfer.fetch_concurrency,
            queue_blocks=ctx.settings.transfer.queue_blocks,
            sink_policies=[spec.on_destination_failure] * len(sinks), control=control,
            checkpoint=ctx.checkpoint, memory=ctx.limits.memory,
            checkpoint_interval=ctx.settings.transfer.checkpoint_interval_s)
        base["destinations"] = await pipeline.run(info)
        reads = getattr(source, "reads", None)
        if reads is not None:
            base["source_reads"] = reads
        report = getattr(source, "report", None)
        if callable(report):  # e.g. an S3 archive: its chain, or an FSP archive's coverage
            base["source_report"] = report()
        return base
    finally:
        await source.close()


async def _copies_so_far(ctx: JobContext, spec: JobSpec) -> tuple[int, str | None]:
    """(index in the chain of the newest snapshot already copied, its copy's id), found by
    the lineage tags fspd puts on every copy; (-1, None) when nothing has been copied."""
    src, dest = spec.source, spec.destinations[0]
    assert isinstance(src, EbsChainSourceSpec) and isinstance(dest, EbsDestinationSpec)
    ec2 = await ctx.clients.client("ec2", target_for(dest))
    filters = [{"Name": f"tag:{SOURCE_SNAPSHOT_TAG}", "Values": list(src.snapshot_ids)},
               {"Name": "status", "Values": ["completed"]}]
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:  # EC2 pages long answers
        page = await ctx.retrier().run(lambda token=token: call(
            ec2, "DescribeSnapshots", OwnerIds=["self"], Filters=filters, MaxResults=1000,
            **({"NextToken": token} if token else {})))
        found += page.get("Snapshots", [])
        token = page.get("NextToken")
        if not token:
            break
    copies: dict[str, str] = {}
    for snap in found:
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", []) or []}
        if tags.get(SOURCE_REGION_TAG, target_for(src).region) == target_for(src).region:
            copies[tags[SOURCE_SNAPSHOT_TAG]] = snap["SnapshotId"]
    for index in range(len(src.snapshot_ids) - 1, -1, -1):
        if src.snapshot_ids[index] in copies:
            return index, copies[src.snapshot_ids[index]]
    if dest.parent_snapshot_id:
        return 0, dest.parent_snapshot_id
    return -1, None


async def _execute_chain(ctx: JobContext, spec: JobSpec, control: JobControl | None
                         ) -> dict[str, Any]:
    """Bring a destination up to date with a source lineage: a full copy of the first
    snapshot if nothing was copied yet, then one sync step per newer snapshot."""
    src, dest = spec.source, spec.destinations[0]
    assert isinstance(src, EbsChainSourceSpec) and isinstance(dest, EbsDestinationSpec)
    done_index, parent = await _copies_so_far(ctx, spec)
    endpoint = {k: getattr(src, k) for k in ("region", "profile", "endpoint_url", "role_arn",
                                              "external_id")}
    steps: list[dict[str, Any]] = []
    info: VolumeInfo | None = None
    for index in range(done_index + 1, len(src.snapshot_ids)):
        snapshot_id = src.snapshot_ids[index]
        base = src.snapshot_ids[index - 1] if parent else None
        step = JobSpec(
            source=EbsSourceSpec(type="ebs", snapshot_id=snapshot_id, base_snapshot_id=base,
                                 **endpoint),
            destinations=[dest.model_copy(update={
                "parent_snapshot_id": parent, "name": f"step-{index}",
                "client_token": f"{dest.client_token}-{index}" if dest.client_token else None,
            })])
        source = build_source(ctx, step)
        try:
            info = await source.open()
            pipeline = Pipeline(source, build_sinks(ctx, step), ctx.progress,
                                fetch_concurrency=ctx.settings.transfer.fetch_concurrency,
                                queue_blocks=ctx.settings.transfer.queue_blocks,
                                control=control, checkpoint=ctx.checkpoint,
                                memory=ctx.limits.memory,
                                checkpoint_interval=ctx.settings.transfer.checkpoint_interval_s)
            result = (await pipeline.run(info))[0]
        finally:
            await source.close()
        parent = result["snapshot_id"]
        steps.append({"source_snapshot_id": snapshot_id, "base_snapshot_id": base, **result})
        log.info("chain_step_done", source=snapshot_id, copy=parent, step=index)
    return {"source": f"chain of {len(src.snapshot_ids)} in {target_for(src).region}",
            "volume_size": info.volume_size if info else None, "steps": steps,
            "already_copied": done_index + 1, "latest_copy": parent,
            "destinations": [steps[-1]] if steps else []}


def state_dir_for(root: Path, job_id: str) -> Path:
    path = root / job_id
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


