"""A lineage of snapshots as a source: brought over one job at a time, a full copy of the
first snapshot when nothing was copied yet, then one sync step per newer snapshot. The copies
made so far are found by the lineage tags every EBS copy carries, so a rerun carries on."""

from __future__ import annotations

from typing import Any

from fspd.aws import call
from fspd.context import JobContext
from fspd.endpoint import VolumeInfo
from fspd.endpoints import registry
from fspd.endpoints.ebs import SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG
from fspd.jobs import EbsChainSourceSpec, EbsDestinationSpec, EbsSourceSpec, JobSpec
from fspd.log import get_logger

log = get_logger("fspd.chain")


class ChainSteps:
    def __init__(self, ctx: JobContext, job: JobSpec) -> None:
        src, dest = job.source, job.destinations[0]
        assert isinstance(src, EbsChainSourceSpec) and isinstance(dest, EbsDestinationSpec)
        self.ctx, self.src, self.dest = ctx, src, dest
        self.done_index = -1
        self.parent: str | None = None
        self._next: int | None = None  # None until the copies so far are known
        self._steps: list[dict[str, Any]] = []
        self._info: VolumeInfo | None = None

    async def next_step(self) -> JobSpec | None:
        if self._next is None:
            self.done_index, self.parent = await self._copies_so_far()
            self._next = self.done_index + 1
        index, src, dest = self._next, self.src, self.dest
        if index >= len(src.snapshot_ids):
            return None
        endpoint = {k: getattr(src, k) for k in ("region", "profile", "endpoint_url",
                                                  "role_arn", "external_id")}
        base = src.snapshot_ids[index - 1] if self.parent else None
        return JobSpec(
            source=EbsSourceSpec(type="ebs", snapshot_id=src.snapshot_ids[index],
                                 base_snapshot_id=base, **endpoint),
            destinations=[dest.model_copy(update={
                "parent_snapshot_id": self.parent, "name": f"step-{index}",
                # A step with a parent takes the parent's encryption (set by the first copy).
                **({"encrypted": None, "kms_key_arn": None} if self.parent else {}),
                "client_token": f"{dest.client_token}-{index}" if dest.client_token else None,
            })])

    def step_done(self, info: VolumeInfo, result: dict[str, Any]) -> None:
        assert self._next is not None
        index = self._next
        snapshot_id = self.src.snapshot_ids[index]
        base = self.src.snapshot_ids[index - 1] if self.parent else None
        self.parent = result["snapshot_id"]
        self._steps.append({"source_snapshot_id": snapshot_id, "base_snapshot_id": base,
                            **result})
        self._info = info
        self._next = index + 1
        log.info("chain_step_done", source=snapshot_id, copy=self.parent, step=index)

    def result(self) -> dict[str, Any]:
        src, steps = self.src, self._steps
        return {"source": f"chain of {len(src.snapshot_ids)} in "
                          f"{registry.target_for(src).region}",
                "volume_size": self._info.volume_size if self._info else None, "steps": steps,
                "already_copied": self.done_index + 1, "latest_copy": self.parent,
                "destinations": [steps[-1]] if steps else []}

    async def _copies_so_far(self) -> tuple[int, str | None]:
        """(index in the chain of the newest snapshot already copied, its copy's id), found
        by the lineage tags fspd puts on every copy; (-1, None) when nothing was copied."""
        src, dest, ctx = self.src, self.dest, self.ctx
        ec2 = await ctx.clients.client("ec2", registry.target_for(dest))
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
        region = registry.target_for(src).region
        copies: dict[str, str] = {}
        for snap in found:
            tags = {t["Key"]: t["Value"] for t in snap.get("Tags", []) or []}
            if tags.get(SOURCE_REGION_TAG, region) == region:
                copies[tags[SOURCE_SNAPSHOT_TAG]] = snap["SnapshotId"]
        for index in range(len(src.snapshot_ids) - 1, -1, -1):
            if src.snapshot_ids[index] in copies:
                return index, copies[src.snapshot_ids[index]]
        if dest.parent_snapshot_id:
            return 0, dest.parent_snapshot_id
        return -1, None


@registry.steps(EbsChainSourceSpec)
def open_steps(ctx: JobContext, job: JobSpec) -> ChainSteps:
    return ChainSteps(ctx, job)
