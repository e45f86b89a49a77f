"""The operations layer: turn a job spec into a source, sinks and a pipeline, and run it.

``run_job`` is what ``fspd run``, the verb commands and the daemon all call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

from fspd import endpoint_policy
from fspd.aws import AwsTarget, call
from fspd.blocks import BLOCK_SIZE, Kind
from fspd.budget import JobControl
from fspd.checkpoint import Checkpoint, probe_writable, spec_digest
from fspd.config import Settings
from fspd.context import JobContext, job_context
from fspd.endpoint import PlansPuts, Sink, Source, SourceCapabilities, Steps
from fspd.endpoints import registry
from fspd.endpoints.registry import target_for
from fspd.errors import BadInput, FspdError, PermissionProblem, TransferFailed
from fspd.jobs import AwsEndpointSpec, JobSpec
from fspd.log import get_logger
from fspd.pipeline import Gap, Pipeline, VolumeInfo
from fspd.progress import Progress
from fspd.retry import ApiError, fatal_error

log = get_logger("fspd.run")

# AWS list prices (us-east-1, USD per 1,000 requests) for the dry-run estimate.
PRICE_LIST = 0.0006
PRICE_GET = 0.003
PRICE_PUT = 0.006
PER_SNAPSHOT_CAP_RPS = 1000


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


async def _count(source: Source, progress: Progress,
                 puts_by: list[tuple[PlansPuts, Any]] | None = None) -> dict[str, Any]:
    """Walk the listing: blocks, zero blocks, unlisted blocks; with ``puts_by`` (a dry run),
    also the PutSnapshotBlock requests each new snapshot would be sent, by its own rules."""
    puts_by = puts_by or []
    puts = [0] * len(puts_by)
    # A file's zero blocks are skipped only once read: read them here too (locally), where
    # a destination would skip them.
    probe = SourceCapabilities.of(source).zero_probe if any(
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
        is_zero = entry.kind is Kind.ZERO or bool(probe and await probe.probe_zero(entry))
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
                     ) -> list[tuple[PlansPuts, Any]]:
    """Each destination's put rules, as its sink would decide them (nothing started)."""
    return [(planner, await planner.plan(info))
            for planner in registry.open_planners(ctx, spec)]


def _plan(spec: JobSpec, counts: dict[str, int], info: VolumeInfo) -> dict[str, Any]:
    blocks = counts["blocks"]
    data_blocks = blocks - counts["zero_blocks"]
    billed = spec.source.reads_ebs_direct
    reads = data_blocks if billed else 0
    puts = sum(counts.get("puts", {}).values())
    list_requests = max(1, -(-blocks // 10_000)) if billed else 0
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
    # Without a state directory there is nothing to resume from: the job context gives the
    # run a scratch directory of its own.
    checkpoint = open_checkpoint(state_dir, job_id, spec) if state_dir is not None else None
    log.debug("job_starting", job=job_id, verb=spec.verb, source=spec.source.type,
              destinations=[d.type for d in spec.destinations], dry_run=spec.dry_run,
              state_dir=str(state_dir) if state_dir else None)
    progress.start()
    try:
        async with job_context(job_id, settings, progress=progress, state_dir=state_dir,
                               checkpoint=checkpoint,
                               shared_limits=control.limits if control else None) as ctx:
            result = await _with_deadline(_execute(ctx, spec, control), settings)
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
    targets: list[tuple[str, AwsEndpointSpec, AwsTarget]] = []
    for field, end in registry.aws_ends(spec):
        try:
            target = target_for(end)
            await ctx.clients.credentials(target)
        except BadInput as exc:
            raise _named_by_end(exc, field) from None
        targets.append((field, end, target))
    # S3 archive endpoints are S3 only (maybe an S3-compatible store): no EC2 to ask
    # (their spec class says so: regions_from_ec2).
    known: dict[tuple[Any, ...], set[str]] = {}
    for field, end, target in targets:
        if not end.regions_from_ec2:
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
    steps = registry.open_steps(ctx, spec)
    if steps is not None:
        return await _execute_steps(ctx, steps, control)
    source = registry.open_source(ctx, spec)
    sinks = registry.open_sinks(ctx, spec) if not spec.dry_run else []
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
        base["destinations"] = await _pipeline(ctx, spec, source, sinks, control).run(info)
        caps = SourceCapabilities.of(source)
        if caps.reads is not None:
            base["source_reads"] = caps.reads.reads
        if caps.report is not None:  # e.g. an S3 archive: its chain, or an FSP archive's coverage
            base["source_report"] = caps.report.report()
        return base
    finally:
        await source.close()


def _pipeline(ctx: JobContext, spec: JobSpec, source: Source, sinks: list[Sink],
              control: JobControl | None) -> Pipeline:
    transfer = ctx.settings.transfer
    return Pipeline(
        source, sinks, ctx.progress, fetch_concurrency=transfer.fetch_concurrency,
        queue_blocks=transfer.queue_blocks,
        sink_policies=[spec.on_destination_failure] * len(sinks), control=control,
        checkpoint=ctx.checkpoint, memory=ctx.limits.memory,
        checkpoint_interval=transfer.checkpoint_interval_s)


async def _execute_steps(ctx: JobContext, steps: Steps, control: JobControl | None
                         ) -> dict[str, Any]:
    """A source served as a sequence of jobs (a chain: one sync step per snapshot), each
    with one destination."""
    while (step := await steps.next_step()) is not None:
        source = registry.open_source(ctx, step)
        try:
            info = await source.open()
            pipeline = _pipeline(ctx, step, source, registry.open_sinks(ctx, step), control)
            result = (await pipeline.run(info))[0]
        finally:
            await source.close()
        steps.step_done(info, result)
    return steps.result()


def state_dir_for(root: Path, job_id: str) -> Path:
    path = root / job_id
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise BadInput(f"cannot create the state directory {path} "
                       f"({exc.strerror or exc})", field="state_dir") from None
    return path


