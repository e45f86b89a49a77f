"""``fspd analyze``: sizes, deltas and unique blocks of a snapshot lineage, in one streaming
pass over the block listings.

For snapshots S1..Sn of one volume in time order, fspd lists D1 = ListSnapshotBlocks(S1)
and Dk = ListChangedBlocks(S(k-1), Sk) for k > 1, all n listings at once, and merges them by
block index. A block *version* (what a snapshot stores at an index) is written by one
snapshot and shared by the following ones until the index is written again, so:

* allocated(Sk) = allocated(S(k-1)) + indexes Dk adds - indexes Dk drops;
* changed(Sk) = the entries of Dk (as ``fspd diff`` counts them); of these, the ones Sk holds
  are the data Sk first stored (``new``), which is what it adds to the lineage's bill;
* unique(Sk) = indexes Sk holds that are in Dk (the version is Sk's own: no older snapshot
  has it) and in D(k+1) (S(k+1) no longer has it; for the newest snapshot there is no
  S(k+1)). No other snapshot of the lineage refers to such a block: deleting Sk frees it.

Memory: one page per listing (plus one prefetched), whatever the volume's size.

Limits: "unique" is relative to the snapshots analysed; a snapshot left out (older, newer or
in between) may still refer to a block counted here. EBS's own accounting is per account and
may differ: snapshots copied from or sharing blocks with other lineages (a volume restored
from a snapshot, AMIs, Fast Snapshot Restore, archive tier) are not seen from the listings.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fspd.aws import AwsTarget, call
from fspd.blocks import BLOCK_SIZE
from fspd.context import JobContext
from fspd.endpoints.ebs import EbsSnapshotSource, describe_snapshot
from fspd.errors import BadInput, TransferFailed

GIB = 1 << 30
FIRST, SECOND = 1, 2  # entry flags: the older / the newer snapshot of the pair has the block


@dataclass
class SnapshotFigures:
    snapshot_id: str
    start_time: str
    volume_size_gib: int
    allocated_blocks: int = 0
    changed_blocks: int = 0   # entries of the listing against the previous snapshot
    new_blocks: int = 0       # of those, the blocks this snapshot holds (data it stored)
    unique_blocks: int = 0    # held by no other snapshot analysed: deleting it frees these
    monthly_cost_usd: float = 0.0  # new_blocks at the list price

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("allocated", "changed", "new", "unique"):
            d[f"{key}_bytes"] = d[f"{key}_blocks"] * BLOCK_SIZE
        return d


async def resolve(ctx: JobContext, target: AwsTarget, snapshot_ids: Sequence[str],
                  volume_id: str | None) -> list[dict[str, Any]]:
    """The lineage's DescribeSnapshots records, oldest first. Each must be completed."""
    if volume_id is not None:
        snaps = await _volume_snapshots(ctx, target, volume_id)
        if not snaps:
            raise BadInput(f"no completed snapshot of {volume_id} in {target.region}",
                           field="--volume")
    else:
        seen: set[str] = set()
        snaps = []
        for sid in snapshot_ids:
            if sid in seen:
                raise BadInput(f"{sid} is given twice", field="SNAPSHOT")
            seen.add(sid)
            snap = await describe_snapshot(ctx, target, sid, "SNAPSHOT")
            if snap.get("State") != "completed":
                raise BadInput(f"snapshot {sid} is {snap.get('State')}, not completed",
                               field="SNAPSHOT")
            snaps.append(snap)
    return sorted(snaps, key=lambda s: s["StartTime"])  # stable: ties keep the given order


async def _volume_snapshots(ctx: JobContext, target: AwsTarget, volume_id: str
                            ) -> list[dict[str, Any]]:
    ec2 = await ctx.clients.client("ec2", target)
    retrier = ctx.retrier()
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {
            "OwnerIds": ["self"], "MaxResults": ctx.settings.analyze.describe_page_size,
            "Filters": [{"Name": "volume-id", "Values": [volume_id]},
                        {"Name": "status", "Values": ["completed"]}]}
        if token:
            params["NextToken"] = token
        page = await retrier.run(lambda p=params: call(ec2, "DescribeSnapshots", **p))
        out += page.get("Snapshots", [])
        token = page.get("NextToken")
        if not token:
            return out


class _Listing:
    """One listing as ascending (index, flags) pages, one page fetched ahead."""

    def __init__(self, pages: AsyncIterator[list[tuple[int, int]]]) -> None:
        self._pages = pages
        self._next: asyncio.Task[list[tuple[int, int]] | None] | None = None

    async def _fetch(self) -> list[tuple[int, int]] | None:
        try:
            return await anext(self._pages)
        except StopAsyncIteration:
            return None

    async def page(self) -> list[tuple[int, int]] | None:
        task = self._next or asyncio.ensure_future(self._fetch())
        page = await task
        self._next = asyncio.ensure_future(self._fetch()) if page is not None else None
        return page

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
        await self._pages.aclose()  # type: ignore[attr-defined]


async def _pages(reader: EbsSnapshotSource, first: str | None, second: str
                 ) -> AsyncIterator[list[tuple[int, int]]]:
    if first is None:
        async for page in reader._pages("ListSnapshotBlocks", SnapshotId=second):
            yield [(int(b["BlockIndex"]), SECOND) for b in page.get("Blocks", [])]
        return
    try:
        async for page in reader._pages("ListChangedBlocks", FirstSnapshotId=first,
                                        SecondSnapshotId=second):
            yield [(int(b["BlockIndex"]),
                    (FIRST if "FirstBlockToken" in b else 0)
                    | (SECOND if "SecondBlockToken" in b else 0))
                   for b in page.get("ChangedBlocks", [])]
    except TransferFailed as exc:
        if "UNRELATED_SNAPSHOTS" in str(exc):
            raise BadInput(f"{first} and {second} are not of one lineage (EBS: unrelated "
                           "snapshots)", field="SNAPSHOT") from None
        raise


async def analyze(ctx: JobContext, target: AwsTarget, snaps: list[dict[str, Any]],
                  price_per_gib_month: float) -> list[SnapshotFigures]:
    """The figures of each snapshot of ``snaps`` (oldest first); see the module's docstring."""
    figures = [SnapshotFigures(s["SnapshotId"], iso(s["StartTime"]), int(s["VolumeSize"]))
               for s in snaps]
    ebs = await ctx.clients.client("ebs", target)
    listings = []
    for k, fig in enumerate(figures):
        reader = EbsSnapshotSource(ctx, target, fig.snapshot_id)
        reader._ebs = ebs
        prev = figures[k - 1].snapshot_id if k else None
        listings.append(_Listing(_pages(reader, prev, fig.snapshot_id)))
    try:
        await _merge(listings, figures)
    finally:
        for listing in listings:
            await listing.close()
    allocated = 0
    for fig in figures:
        allocated += fig.allocated_blocks  # held the delta until here
        fig.allocated_blocks = allocated
        fig.monthly_cost_usd = round(fig.new_blocks * BLOCK_SIZE / GIB * price_per_gib_month, 4)
    return figures


async def _merge(listings: list[_Listing], figures: list[SnapshotFigures]) -> None:
    """Walk all listings in index order; per index, count each figure. ``allocated_blocks``
    holds the delta against the previous snapshot here (summed up by the caller)."""
    last = len(listings) - 1
    pages: list[list[tuple[int, int]]] = []
    heap: list[tuple[int, int, int]] = []  # (index, listing, position in its page)
    for k, listing in enumerate(listings):
        page = await _nonempty(listing)
        pages.append(page or [])
        if page:
            heap.append((page[0][0], k, 0))
    heapq.heapify(heap)
    group: list[tuple[int, int]] = []  # (listing, flags) at the current index
    while heap:
        index = heap[0][0]
        group.clear()
        while heap and heap[0][0] == index:
            _, k, pos = heapq.heappop(heap)
            group.append((k, pages[k][pos][1]))
            pos += 1
            if pos == len(pages[k]):
                page = await _nonempty(listings[k])
                if page is None:
                    continue
                pages[k], pos = page, 0
            heapq.heappush(heap, (pages[k][pos][0], k, pos))
        present = {k for k, _ in group}
        for k, flags in group:
            fig = figures[k]
            fig.changed_blocks += 1
            if flags & SECOND:
                fig.new_blocks += 1
                if k == last or k + 1 in present:
                    fig.unique_blocks += 1
                if not flags & FIRST:
                    fig.allocated_blocks += 1
            elif flags & FIRST:
                fig.allocated_blocks -= 1


async def _nonempty(listing: _Listing) -> list[tuple[int, int]] | None:
    """The listing's next page with entries (a page may be empty and still carry a token),
    or None at its end."""
    while (page := await listing.page()) == []:
        pass
    return page


def iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)
