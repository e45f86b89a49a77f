"""The operations layer: turn a job spec into a source, sinks and a pipeline, and run it.

``run_job`` is what ``fspd run``, the verb commands and the daemon all call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fspd import endpoint_policy
from fspd.aws import AwsClients, AwsTarget, call, profile_session
from fspd.blocks import BLOCK_SIZE, Kind
from fspd.budget import JobControl, SharedLimits
from fspd.checkpoint import Checkpoint, probe_writable, spec_digest
from fspd.config import Settings
from fspd.endpoints.context import JobContext
from fspd.endpoints.ebs import (
    SOURCE_REGION_TAG,
    SOURCE_SNAPSHOT_TAG,
    EbsDeltaSource,
    EbsSnapshotSink,
    EbsSnapshotSource,
    PutRules,
)
from fspd.endpoints.files import FileSink, FileSource
from fspd.endpoints.s3 import archive_sink, archive_source
from fspd.errors import BadInput, FspdError, PermissionProblem, TransferFailed
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
from fspd.retry import ApiError, fatal_error

log = get_logger("fspd.run")

# AWS list prices (us-east-1, USD per 1,000 requests) for the dry-run estimate.
PRICE_LIST = 0.0006
PRICE_GET = 0.003
PRICE_PUT = 0.006
PER_SNAPSHOT_CAP_RPS = 1000


def default_region(profile: str | None = None) -> str:
    region = profile_session(profile).get_config_variable("region")
    return str(region or "us-east-1")


def target_for(spec: AwsEndpointSpec) -> AwsTarget:
    return AwsTarget(region=spec.region or default_region(spec.profile), profile=spec.profile,
                     endpoint_url=spec.endpoint_url, role_arn=spec.role_arn,
                     external_id=spec.external_id)


def _named_by_end(exc: BadInput, field: str) -> BadInput:
    """A profile error (field ``profile``) named by the end it belongs to (``source.profile``,
    ``destinations[0].profile``); any other error as it is."""
    if exc.field != "profile":
        return exc
    return BadInput(str(exc).removeprefix("profile: "), field=f"{field}.profile")


def _region_of(field: str, end: AwsEndpointSpec) -> str:
    try:
        return target_for(end).region
    except BadInput as exc:
        raise _named_by_end(exc, field) from None


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
            sinks.append(_ebs_sink(ctx, dest, name, lineage, spec))
        elif isinstance(dest, S3DestinationSpec):
            region = (target_for(spec.source).region
                      if isinstance(spec.source, EbsSourceSpec) else None)
            job = {"id": ctx.job_id, "spec": spec_digest(spec.model_dump_json())}
            sinks.append(archive_sink(ctx, dest, name, spec.source, target_for(dest), region,
                                      job))
        else:
            sinks.append(FileSink(ctx, dest.path, name=name, mode=dest.mode))
    return sinks


def _ebs_sink(ctx: JobContext, dest: EbsDestinationSpec, name: str,
              lineage: dict[str, str], spec: JobSpec) -> EbsSnapshotSink:
    token = dest.client_token or default_client_token(ctx.job_id, name, spec)
    return EbsSnapshotSink(
        ctx, target_for(dest), name=name, parent_snapshot_id=dest.parent_snapshot_id,
        volume_size_gib=dest.volume_size_gib, description=dest.description,
        tags=lineage | dest.tags, copy_tags=dest.copy_tags, encrypted=dest.encrypted,
        kms_key_arn=dest.kms_key_arn, timeout_minutes=dest.timeout_minutes,
        client_token=token, skip_zero_blocks=dest.skip_zero_blocks)


def default_client_token(job_id: str, destination: str, spec: JobSpec | None = None) -> str:
    """Stable for one job, version of its job file and destination (a rerun lands on the
    same snapshot), distinct for any other triple however long the names: a hash, not a
    truncation. An edited job file gets new snapshots, never the old version's pending one
    (whose parameters differ: ConflictException, or blocks it does not count)."""
    content = spec_digest(spec.model_dump_json()) if spec is not None else ""
    digest = hashlib.sha256(f"{job_id}\0{destination}\0{content}".encode()).hexdigest()[:40]
    return f"fspd-{digest}"


async def _count(source: Source, progress: Progress,
                 puts_by: list[tuple[EbsSnapshotSink, PutRules]] | None = None
                 ) -> dict[str, Any]:
    """Walk the listing: blocks, zero blocks, unlisted blocks; with ``puts_by`` (a dry run),
    also the PutSnapshotBlock requests each new snapshot would be sent, by its own rules."""
    puts_by = puts_by or []
    puts = [0] * len(puts_by)
    # A file's zero blocks are skipped only once read: read them here too (locally), where
    # a destination would skip them.
    probe = getattr(source, "probe_zero", None) if any(
        rules.skip_zero for _, rules in puts_by) else None
    blocks = zero = gaps = 0
    async for entry in source.entries():
        progress.listed_to(entry.stop if isinstance(entry, Gap) else entry.index + 1)
        if isinstance(entry, Gap):
            gaps += entry.stop - entry.start
            for i, (sink, rules) in enumerate(puts_by):
                async for _ in sink.zero_indexes(rules, entry.start, entry.stop):
                    puts[i] += 1
            continue
        blocks += 1
        progress.blocks_listed = blocks
        is_zero = entry.kind is Kind.ZERO or bool(probe and await probe(entry))
        zero += is_zero
        for i, (_, rules) in enumerate(puts_by):
            puts[i] += rules.block_puts(is_zero)
    for i, (sink, rules) in enumerate(puts_by):
        tail = sink.tail(rules)
        if tail:
            async for _ in sink.zero_indexes(rules, *tail):
                puts[i] += 1
    progress.blocks_total = blocks
    out: dict[str, Any] = {"blocks": blocks, "zero_blocks": zero, "unlisted_blocks": gaps}
    if puts_by:
        out["puts"] = {sink.name: n for (sink, _), n in zip(puts_by, puts, strict=True)}
    return out


async def _put_rules(ctx: JobContext, spec: JobSpec, info: VolumeInfo
                     ) -> list[tuple[EbsSnapshotSink, PutRules]]:
    """Each new snapshot's put rules, as its sink would decide them (no snapshot started)."""
    out = []
    for dest, name in zip(spec.destinations, spec.destination_names(), strict=True):
        if isinstance(dest, EbsDestinationSpec):
            sink = _ebs_sink(ctx, dest, name, {}, spec)
            out.append((sink, await sink.plan(info)))
    return out


def _plan(spec: JobSpec, counts: dict[str, int], info: VolumeInfo) -> dict[str, Any]:
    blocks = counts["blocks"]
    data_blocks = blocks - counts["zero_blocks"]
    reads = data_blocks if isinstance(spec.source, EbsSourceSpec) else 0
    puts = sum(counts.get("puts", {}).values())
    list_requests = max(1, -(-blocks // 10_000)) if isinstance(spec.source, EbsSourceSpec) else 0
    cost = (list_requests * PRICE_LIST + reads * PRICE_GET + puts * PRICE_PUT) / 1000
    streams = max(1, len(spec.destinations))
    seconds = max(reads, puts / streams) / PER_SNAPSHOT_CAP_RPS
    return {
        "blocks_to_move": data_blocks, "bytes_to_move": data_blocks * BLOCK_SIZE,
        "zero_blocks": counts["zero_blocks"], "get_requests": reads, "put_requests": puts,
        "list_requests": list_requests, "estimated_cost_usd": round(cost, 6),
        "estimated_seconds_at_cap": round(seconds, 1), "volume_size": info.volume_size,
        "put_requests_by_destination": counts.get("puts", {}),
    }


async def run_job(spec: JobSpec, settings: Settings, *, job_id: str | None = None,
                  progress: Progress | None = None, state_dir: Path | None = None,
                  control: JobControl | None = None) -> dict[str, Any]:
    """Run one job to completion and return its result record. Raises FspdError on failure
    (after every destination has been aborted and reported). Cancelling the task running it
    stops every stage; ``control`` pauses/resumes it and applies a shared bandwidth limit."""
    job_id = job_id or spec.name or uuid.uuid4().hex[:12]
    endpoint_policy.check_job(spec, settings.aws.allow_endpoints, _region_of)
    progress = progress or Progress(job_id=job_id)
    progress.job_id = job_id
    started = time.time()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    checkpoint: Checkpoint | None = None
    if state_dir is None:  # nothing to resume from: a scratch directory for this run only
        tmp = tempfile.TemporaryDirectory(prefix="fspd-")
        state_dir = Path(tmp.name)
    else:
        checkpoint = open_checkpoint(state_dir, job_id, spec)
    executor = ThreadPoolExecutor(settings.transfer.worker_threads,
                                  thread_name_prefix=f"fspd-{job_id}")
    log.debug("job_starting", job=job_id, verb=spec.verb, source=spec.source.type,
              destinations=[d.type for d in spec.destinations], dry_run=spec.dry_run,
              state_dir=str(state_dir))
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


def open_checkpoint(state_dir: Path, job_id: str, spec: JobSpec) -> Checkpoint:
    """The job's journal, after checking (before any request) that it can be written: a job
    that cannot journal must not start, or a crash would leave a snapshot pending that no
    rerun can find."""
    try:
        probe_writable(state_dir)
    except OSError as exc:
        raise BadInput(f"state directory {state_dir} is not writable "
                       f"({exc.strerror or exc}); the job's journal is kept there",
                       field="state_dir") from None
    checkpoint = Checkpoint.open(state_dir, job_id, spec_digest(spec.model_dump_json()))
    if checkpoint.resumed:
        log.info("job_resuming", job=job_id, state_dir=str(state_dir))
    for name, old in checkpoint.superseded.items():
        snapshot_id = old.get("snapshot_id")
        if old.get("type") != "ebs" or not isinstance(snapshot_id, str) \
                or not snapshot_id.startswith("snap-") or "/" in snapshot_id:
            continue
        checkpoint.notes.append(
            f"{name}: abandoned pending snapshot {snapshot_id} of an earlier version of this "
            "job (its job file changed); AWS cancels it when its Timeout passes; writing a "
            "new snapshot")
        (state_dir / f"{snapshot_id}.digests").unlink(missing_ok=True)
    for note in checkpoint.notes:
        log.warning("job_not_resumed_as_is", job=job_id, note=note)
    return checkpoint


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
    """Before anything starts: every AWS end of a job has a known profile and credentials
    (no request is sent otherwise), and every region it names is enabled for its account
    (one DescribeRegions per account and endpoint)."""
    ends: list[tuple[str, AwsEndpointSpec]] = []
    if isinstance(spec.source, AwsEndpointSpec):
        ends.append(("source", spec.source))
    ends += [(f"destinations[{i}]", d) for i, d in enumerate(spec.destinations)
             if isinstance(d, AwsEndpointSpec)]
    targets: list[tuple[str, AwsEndpointSpec, AwsTarget]] = []
    for field, end in ends:
        try:
            target = target_for(end)
            await ctx.clients.credentials(target)
        except BadInput as exc:
            raise _named_by_end(exc, field) from None
        targets.append((field, end, target))
    # S3 archive endpoints are S3 only (maybe an S3-compatible store): no EC2 to ask.
    known: dict[tuple[Any, ...], set[str]] = {}
    for field, end, target in targets:
        if isinstance(end, S3SourceSpec | S3DestinationSpec):
            continue
        account = (target.profile, target.role_arn, target.endpoint_url)
        if account not in known:
            try:
                known[account] = await _enabled_regions(ctx, target)
            except _RegionRefused as exc:
                if await _region_disabled(ctx, target):
                    raise BadInput(f"region {target.region} is not enabled for this account "
                                   "(an opt-in region: enable it under Account > AWS Regions, "
                                   "or name another region)", field=f"{field}.region") from None
                raise PermissionProblem(str(exc)) from None
        if target.region not in known[account]:
            raise BadInput(f"region {target.region} is not enabled for this account, or does "
                           f"not exist (DescribeRegions lists "
                           f"{', '.join(sorted(known[account]))})", field=f"{field}.region")


class _RegionRefused(PermissionProblem):
    """EC2 in the job's region did not accept the credentials (AuthFailure): they are
    wrong, or the region is not enabled for the account. AWS says the same for both."""


_AUTH_CODES = frozenset({"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId"})
# Enabled for every account, so a place to ask whether another region is.
_ALWAYS_ENABLED_REGION = "us-east-1"


async def _enabled_regions(ctx: JobContext, target: AwsTarget) -> set[str]:
    ec2 = await ctx.clients.client("ec2", target)

    async def describe() -> dict[str, Any]:
        try:
            return await call(ec2, "DescribeRegions")
        except ApiError as exc:
            if exc.code in _AUTH_CODES:
                raise _RegionRefused(str(fatal_error(exc))) from None
            raise
    resp = await ctx.retrier().run(describe)
    return {r["RegionName"] for r in resp.get("Regions", [])}


async def _region_disabled(ctx: JobContext, target: AwsTarget) -> bool:
    """Whether the same credentials work in a region every account has, and that region's
    DescribeRegions does not list ``target.region`` as enabled."""
    if target.region == _ALWAYS_ENABLED_REGION:
        return False
    try:
        enabled = await _enabled_regions(
            ctx, dataclasses.replace(target, region=_ALWAYS_ENABLED_REGION))
    except FspdError:
        return False
    return target.region not in enabled


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
            ctx.progress.volume_blocks, ctx.progress.listing_only = info.block_count, True
            puts_by = await _put_rules(ctx, spec, info) if spec.dry_run else None
            counts = await _count(source, ctx.progress, puts_by)
            base.update({k: v for k, v in counts.items() if k != "puts"})
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
                # A step with a parent takes the parent's encryption (set by the first copy).
                **({"encrypted": None, "kms_key_arn": None} if parent else {}),
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
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise BadInput(f"cannot create the state directory {path} "
                       f"({exc.strerror or exc})", field="state_dir") from None
    return path


