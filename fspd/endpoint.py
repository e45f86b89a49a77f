"""The endpoint contract: what every source and sink implements, and the named optional
capabilities some of them add.

A capability is a small protocol. The pipeline and the operations layer look each one up
once, when the endpoint is opened (:meth:`SinkCapabilities.of`, :meth:`SourceCapabilities.of`),
and never probe an endpoint's attributes on the hot path. An endpoint has a capability by
implementing its methods; nothing needs to be declared beyond that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fspd.blocks import BLOCK_SIZE, Block, BlockRef
from fspd.budget import Reservation
from fspd.jobs import JobSpec


@dataclass(frozen=True, slots=True)
class Gap:
    """Blocks ``[start, stop)`` that the source does not have: they read as zeros."""

    start: int
    stop: int


@dataclass
class VolumeInfo:
    """What a source knows about the volume it serves."""

    volume_size: int  # bytes, a multiple of 1 GiB for EBS
    byte_length: int | None = None  # the original length, when not a whole number of GiB
    encrypted: bool = False
    kms_key_arn: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    origin: str = ""  # "snap-… in us-east-1", "/path/to/file"
    # The source's entries cover blocks [0, covered_blocks) (None: the whole volume); past
    # that it reads zeros without saying so (a file ends before its GiB-rounded volume).
    covered_blocks: int | None = None

    @property
    def block_count(self) -> int:
        return -(-self.volume_size // BLOCK_SIZE)


# -- required -------------------------------------------------------------------------------

class Source(Protocol):
    async def open(self) -> VolumeInfo: ...

    def entries(self) -> AsyncIterator[BlockRef | Gap]:
        """Block refs (ascending) and gaps covering the volume, for this job's semantics."""
        ...

    async def fetch(self, ref: BlockRef) -> Block:
        """Read and verify one block (retrying as the retry policy says)."""
        ...

    async def close(self) -> None: ...


class Sink(Protocol):
    name: str
    concurrency: int  # writers the pipeline runs for this sink

    async def open(self, info: VolumeInfo) -> None: ...

    async def write(self, block: Block) -> bool:
        """Write one block; return False when it was skipped (a safely skippable zero)."""
        ...

    async def gap(self, gap: Gap) -> None: ...

    async def commit(self) -> dict[str, Any]: ...

    async def abort(self, error: BaseException) -> dict[str, Any]:
        """Undo or leave behind safely; a ``note`` in the record tells the user what was
        left (a pending snapshot, say)."""
        ...


# -- optional sink capabilities -------------------------------------------------------------

@runtime_checkable
class Resumable(Protocol):
    """Survives an interrupted run: ``has`` says a block is already there (from an earlier
    run), ``checkpoint_state`` makes what was written durable and returns the state to
    journal. A block every sink ``has`` is not fetched again; a job is journalled only when
    every sink is resumable."""

    def has(self, index: int) -> bool: ...

    async def checkpoint_state(self) -> dict[str, Any]: ...


@runtime_checkable
class ListingAware(Protocol):
    """Told every listing entry, in order, before its block is fetched, and when the listing
    ends (S3 archives group blocks into segments and must know what to expect)."""

    def listed(self, entry: BlockRef | Gap) -> None: ...

    def listing_done(self) -> None: ...


@runtime_checkable
class MayBeComplete(Protocol):
    """Found, when opened, that an earlier run finished the target already (a completed
    snapshot, a written manifest). When every sink is, the job only commits."""

    already_complete: bool


@runtime_checkable
class HoldsBudget(Protocol):
    """Holds shares of the block memory budget past ``write``; ``release_budget`` returns
    them all, whatever state the job ended in (idempotent)."""

    def release_budget(self) -> None: ...


@runtime_checkable
class KeepsWindows(HoldsBudget, Protocol):
    """Keeps blocks after ``write`` returns, by whole windows (S3 archives): the memory budget
    is reserved per window before its blocks are fetched, see ``Pipeline._reserve``."""

    async def window_needs(self, index: int) -> int:
        """Units the block's window still needs (0 when reserved already); may wait for the
        sink's own windows-in-flight limit."""
        ...

    def window_reserved(self, index: int, reservation: Reservation) -> None: ...

    def reservation(self, index: int) -> Reservation | None: ...

    async def flush_ready(self) -> None:
        """Pack the windows that have all their blocks."""
        ...


@dataclass(frozen=True, slots=True)
class SinkCapabilities:
    """A sink's optional capabilities, each the sink itself or None."""

    resumable: Resumable | None = None
    listing: ListingAware | None = None
    complete: MayBeComplete | None = None
    budget: HoldsBudget | None = None
    windows: KeepsWindows | None = None

    @classmethod
    def of(cls, sink: Sink) -> SinkCapabilities:
        return cls(resumable=sink if isinstance(sink, Resumable) else None,
                   listing=sink if isinstance(sink, ListingAware) else None,
                   complete=sink if isinstance(sink, MayBeComplete) else None,
                   budget=sink if isinstance(sink, HoldsBudget) else None,
                   windows=sink if isinstance(sink, KeepsWindows) else None)

    @property
    def already_complete(self) -> bool:
        """Read after ``open``, which decides it."""
        return self.complete is not None and self.complete.already_complete


# -- optional source capabilities -----------------------------------------------------------

@runtime_checkable
class ProbesZero(Protocol):
    """Can tell whether a listed block is all zeros without a fetch counted as a transfer
    (a local file: the dry run counts the puts a destination would skip)."""

    async def probe_zero(self, ref: BlockRef) -> bool: ...


@runtime_checkable
class CountsReads(Protocol):
    """Counts the blocks it read (reported as ``source_reads``)."""

    reads: int


@runtime_checkable
class Reports(Protocol):
    """Has something to add to the job's result (an archive's chain, an FSP archive's
    coverage), as ``source_report``."""

    def report(self) -> dict[str, Any]: ...


@runtime_checkable
class HearsSkips(Protocol):
    """Told, in listing order, of each listed block the pipeline will not fetch because every
    destination has it from an earlier run (an S3 archive loads whole windows and must not
    wait for those blocks)."""

    def skipped(self, ref: BlockRef) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceCapabilities:
    zero_probe: ProbesZero | None = None
    reads: CountsReads | None = None
    report: Reports | None = None
    skips: HearsSkips | None = None

    @classmethod
    def of(cls, source: Source) -> SourceCapabilities:
        return cls(zero_probe=source if isinstance(source, ProbesZero) else None,
                   reads=source if isinstance(source, CountsReads) else None,
                   report=source if isinstance(source, Reports) else None,
                   skips=source if isinstance(source, HearsSkips) else None)


# -- dry runs and stepped sources -----------------------------------------------------------

class PutPlan(Protocol):
    skip_zero: bool  # zero blocks are not sent (so a dry run must find them)

    def block_puts(self, zero: bool) -> int:
        """Requests one listed block costs."""
        ...


@runtime_checkable
class PlansPuts(Protocol):
    """A destination that can tell, before anything is written, how many requests it would
    send (a new snapshot: PutSnapshotBlock per block, by its own put rules)."""

    name: str

    async def plan(self, info: VolumeInfo) -> Any:
        """The put rules (a ``PutPlan``) it would follow for a volume like ``info``."""
        ...

    def zero_indexes(self, rules: Any, start: int, stop: int) -> AsyncIterator[int]:
        """The blocks of a gap ``[start, stop)`` it would write as zeros."""
        ...

    def tail(self, rules: Any) -> tuple[int, int] | None:
        """A range past the source's end it would write as zeros, if any."""
        ...


class Steps(Protocol):
    """A source served as a sequence of jobs, each run like any other job (a lineage of
    snapshots: a full copy, then one sync step per newer snapshot)."""

    async def next_step(self) -> JobSpec | None:
        """The next job to run, or None when the destination is up to date."""
        ...

    def step_done(self, info: VolumeInfo, result: dict[str, Any]) -> None:
        """What the last step's single destination committed."""
        ...

    def result(self) -> dict[str, Any]: ...
