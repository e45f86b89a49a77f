"""The one pipeline every job runs: list → fetch (verify) → write/put ×N → commit.

Stages are joined by bounded queues, so a slow stage makes the earlier ones wait and memory
stays flat whatever the volume size: at most ``queue_blocks`` blocks wait in each queue plus
the blocks in flight. A block is fetched once and handed to every sink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fspd.blocks import BLOCK_SIZE, Block, BlockRef, Kind
from fspd.budget import BlockBudget, JobControl, Reservation
from fspd.checkpoint import Checkpoint
from fspd.endpoint import Gap, Sink, SinkCapabilities, Source, SourceCapabilities, VolumeInfo
from fspd.errors import FspdError, TransferFailed
from fspd.log import get_logger
from fspd.progress import Progress

log = get_logger("fspd.pipeline")


_STOP = object()


class _Fanout:
    """A block travelling to several sinks; counted done when the last sink has it."""

    __slots__ = ("block", "held", "remaining", "skipped", "tokens")

    def __init__(self, block: Block, remaining: int, held: bool,
                 tokens: tuple[Reservation, ...] = ()) -> None:
        self.block: Block | None = block
        self.remaining = remaining
        self.skipped = True
        self.held = held  # holds a permit of the shared memory budget
        self.tokens = tokens  # or is counted in these windows' reservations


@dataclass
class SinkState:
    sink: Sink
    queue: asyncio.Queue[Any]
    policy: str = "fail"  # "fail": the job fails with it; "drop": carry on without it
    error: BaseException | None = None
    caps: SinkCapabilities = field(init=False)

    def __post_init__(self) -> None:
        self.caps = SinkCapabilities.of(self.sink)  # looked up once, not per block


class Pipeline:
    def __init__(self, source: Source, sinks: list[Sink], progress: Progress, *,
                 fetch_concurrency: int, queue_blocks: int,
                 sink_policies: list[str] | None = None,
                 control: JobControl | None = None, checkpoint: Checkpoint | None = None,
                 checkpoint_interval: float = 5.0,
                 memory: BlockBudget | asyncio.Semaphore | None = None) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        self.source = source
        self._skips = SourceCapabilities.of(source).skips
        self.progress = progress
        self.fetch_concurrency = fetch_concurrency
        self.control = control or JobControl()
        self.checkpoint = checkpoint
        self._has: list[Callable[[int], bool]] = []
        self._unopened: set[int] = set()  # dropped before they were opened: no checkpoint
        # Blocks in memory are bounded across all jobs of the process by ``memory``; the
        # permits this pipeline holds are counted so that none leaks when it is cancelled.
        self._memory = memory
        self._held = 0
        self.checkpoint_interval = checkpoint_interval
        self._fetch_q: asyncio.Queue[Any] = asyncio.Queue(queue_blocks)
        policies = sink_policies or ["fail"] * len(sinks)
        self.sinks = [SinkState(s, asyncio.Queue(queue_blocks), p)
                      for s, p in zip(sinks, policies, strict=True)]
        progress.stage("list", self._fetch_q.qsize)
        self._fetch_stats = progress.stage("fetch")
        for st in self.sinks:
            progress.stage(f"write:{st.sink.name}", st.queue.qsize)

    async def run(self, info: VolumeInfo) -> list[dict[str, Any]]:
        """Move every block; return each sink's commit result (or failure record)."""
        # For estimating the total while listing (a chain job runs one pipeline per step).
        self.progress.volume_blocks, self.progress.list_position = info.block_count, 0
        opened: list[SinkState] = []
        try:
            for st in self.sinks:
                try:
                    await st.sink.open(info)
                except (FspdError, OSError) as exc:
                    if st.policy != "drop" or len(self.sinks) == 1:
                        raise
                    self._drop(st, exc)  # "drop": a target that cannot be opened is left out
                    continue
                opened.append(st)
            if not opened:
                raise TransferFailed("every destination failed to open: " + "; ".join(
                    str(st.error) for st in self.sinks))
        except BaseException as error:  # the sinks already open are aborted, not leaked
            for st in opened:
                with contextlib.suppress(Exception):
                    await self._abort(st, error)
            raise
        self._unopened = {id(st) for st in self.sinks if st not in opened}
        has = [st.caps.resumable for st in opened]
        self._has = [r.has for r in has if r is not None] if all(has) else []
        if all(st.caps.already_complete for st in self.sinks):
            return [await st.sink.commit() for st in self.sinks]
        resumable = self.checkpoint is not None and all(
            st.caps.resumable is not None for st in self.sinks)
        try:
            return await self._run(resumable)
        finally:
            while self._held:
                self._release()
            for st in self.sinks:  # window reservations, whatever state the job ended in
                if st.caps.budget is not None:
                    st.caps.budget.release_budget()

    def _drop(self, st: SinkState, exc: BaseException) -> None:
        """Carry on without ``st`` (its policy is "drop"); the result and progress say so."""
        st.error = exc
        self.progress.error(f"{st.sink.name}: {exc}")
        self.progress.destinations.setdefault(st.sink.name, {})["state"] = "dropped"
        log.warning("destination_dropped", destination=st.sink.name, error=str(exc))
        if st.caps.budget is not None:  # its windows will never complete
            st.caps.budget.release_budget()

    def _release(self) -> None:
        if self._memory is not None and self._held:
            self._held -= 1
            self._memory.release()

    async def _run(self, resumable: bool) -> list[dict[str, Any]]:
        try:
            async with asyncio.TaskGroup() as tg:
                journal = tg.create_task(self._journal()) if resumable else None
                tg.create_task(self._list())
                fetchers = [tg.create_task(self._fetch()) for _ in range(self.fetch_concurrency)]
                writers = [tg.create_task(self._write(st))
                           for st in self.sinks for _ in range(st.sink.concurrency)]
                await asyncio.gather(*fetchers)
                for st in self.sinks:
                    for _ in range(st.sink.concurrency):
                        await st.queue.put(_STOP)
                await asyncio.gather(*writers)
                if journal is not None:
                    journal.cancel()
            await self._save_checkpoint(resumable)  # a crash while committing loses nothing
        except BaseExceptionGroup as group:
            error = _first_cause(group)
            await self._save_checkpoint(resumable)
            notes = await self._abort_all(error)
            if isinstance(error, FspdError) and notes:
                error = type(error)(f"{error} ({'; '.join(notes)})")
            raise error from None
        except BaseException as error:
            await self._save_checkpoint(resumable)
            await self._abort_all(error)
            raise
        return await self._commit_all()

    async def _commit_all(self) -> list[dict[str, Any]]:
        """Commit each sink. One that fails is aborted; with the "drop" policy the others
        carry on, otherwise the rest are aborted too and the error says what was left."""
        results = []
        for position, st in enumerate(self.sinks):
            if st.error is not None:
                results.append(await self._abort(st, st.error))
                continue
            try:
                results.append(await st.sink.commit())
            except (FspdError, OSError) as exc:
                record = await self._abort(st, exc)
                if st.policy == "drop" and len(self.sinks) > 1:
                    st.error = exc
                    self.progress.error(f"{st.sink.name}: {exc}")
                    results.append(record)
                    continue
                notes = [str(record["note"])] if record.get("note") else []
                for rest in self.sinks[position + 1:]:
                    later = await self._abort(rest, exc)
                    if later.get("note"):
                        notes.append(str(later["note"]))
                if isinstance(exc, FspdError) and notes:
                    raise type(exc)(f"{exc} ({'; '.join(notes)})") from None
                raise
        if all(st.error is not None for st in self.sinks):
            raise TransferFailed("every destination failed: " + "; ".join(
                f"{st.sink.name}: {st.error}" for st in self.sinks))
        return results

    async def _journal(self) -> None:
        """Save a checkpoint every ``checkpoint_interval`` seconds while blocks move."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            await self._save_checkpoint(True)

    async def _save_checkpoint(self, resumable: bool) -> None:
        if not resumable or self.checkpoint is None:
            return
        try:
            states = {st.sink.name: await st.caps.resumable.checkpoint_state()
                      for st in self.sinks
                      if id(st) not in self._unopened and st.caps.resumable is not None}
            await asyncio.to_thread(self.checkpoint.save, states)
        except (OSError, FspdError) as exc:  # the transfer goes on; the next save may work
            log.warning("checkpoint_failed", error=str(exc))

    def _already_done(self, index: int) -> bool:
        return bool(self._has) and all(has(index) for has in self._has)

    async def _abort(self, st: SinkState, error: BaseException) -> dict[str, Any]:
        record = await st.sink.abort(error)
        if record.get("note"):
            self.progress.left_behind.append(str(record["note"]))
        return record

    async def _abort_all(self, error: BaseException) -> list[str]:
        """Abort every sink; return what they say the user should know (a snapshot left
        pending, say), so the job's error carries it."""
        notes = []
        for st in self.sinks:
            try:
                record = await self._abort(st, st.error or error)
            except Exception as exc:
                log.warning("abort_failed", sink=st.sink.name, error=str(exc))
                continue
            if record.get("note"):
                notes.append(str(record["note"]))
        return notes

    async def _list(self) -> None:
        listed = 0
        watchers = [st.caps.listing.listed for st in self.sinks if st.caps.listing is not None]
        async for entry in self.source.entries():
            for watch in watchers:
                watch(entry)
            self.progress.listed_to(entry.stop if isinstance(entry, Gap) else entry.index + 1)
            if isinstance(entry, Gap):
                await self._to_sinks(entry)
                continue
            listed += 1
            self.progress.blocks_listed = listed
            if self._already_done(entry.index):
                if self._skips is not None:
                    self._skips.skipped(entry)
                self.progress.blocks_resumed += 1
                self.progress.block_done(skipped=True)
                continue
            if entry.kind is Kind.ZERO:
                await self._to_sinks(Block.zeros(entry.index))
            else:
                await self._fetch_q.put((entry, await self._reserve(entry)))
        self.progress.blocks_total = listed
        for st in self.sinks:
            if st.caps.listing is not None:
                st.caps.listing.listing_done()
        for _ in range(self.fetch_concurrency):
            await self._fetch_q.put(_STOP)

    async def _reserve(self, ref: BlockRef) -> tuple[Reservation, ...]:
        """Reserve budget for the window(s) this block opens in sinks that keep whole windows
        (S3 archives), before the block is fetched; return the reservations covering it.

        Why this cannot deadlock: a window's units are taken at once (all or nothing, in
        listing order, strictly FIFO with every other request on the budget), before any of
        its blocks is fetched, and its blocks then need no further permit. Whatever holds
        units can therefore always finish without asking for more — an admitted window only
        needs its own blocks, which the listing has already passed to the fetchers — so every
        wait ends. The listing packs windows that are complete but not yet packed before it
        waits, since no writer may come to do it while the listing is stalled."""
        if not isinstance(self._memory, BlockBudget):
            return ()
        keepers = [st.caps.windows for st in self.sinks
                   if st.error is None and st.caps.windows is not None]
        if not keepers:
            return ()
        asks = [(sink, units) for sink in keepers
                if (units := await sink.window_needs(ref.index))]
        if asks:
            total = sum(units for _, units in asks)
            if not self._memory.try_take(total):
                for sink in keepers:
                    await sink.flush_ready()
                await self._memory.take(total)
            for sink, units in asks:
                sink.window_reserved(ref.index, Reservation(self._memory, units))
        tokens = tuple(t for sink in keepers if (t := sink.reservation(ref.index)) is not None)
        for token in tokens:
            token.retain()
        return tokens

    async def _fetch(self) -> None:
        stats = self._fetch_stats
        while (item := await self._fetch_q.get()) is not _STOP:
            ref, tokens = item
            await self.control.admit(BLOCK_SIZE)
            # A block its window's reservation counts takes no permit of its own.
            held = self._memory is not None and not tokens
            if held:
                await self._memory.acquire()
                self._held += 1
            stats.in_flight += 1
            try:
                block = await self.source.fetch(ref)
            except BaseException:
                if held:
                    self._release()
                _drop(tokens)
                raise
            finally:
                stats.in_flight -= 1
            stats.done += 1
            await self._to_sinks(block, held=held, tokens=tokens)
            # Waiting for its next permit, a fetcher must not keep this block alive: its
            # permit goes back when the sinks have it, and the budget would not count it.
            del block

    async def _to_sinks(self, item: Block | Gap, *, held: bool = False,
                        tokens: tuple[Reservation, ...] = ()) -> None:
        live = [st for st in self.sinks if st.error is None]
        if not live:
            if held:
                self._release()
            _drop(tokens)
            return
        carrier: Any = (_Fanout(item, len(live), held, tokens) if isinstance(item, Block)
                        else item)
        for st in live:
            await st.queue.put(carrier)

    async def _write(self, st: SinkState) -> None:
        stats = self.progress.stage(f"write:{st.sink.name}")
        while (item := await st.queue.get()) is not _STOP:
            if st.error is not None:  # dropped: drain so the other sinks keep moving
                self._account(item, skipped=True)
                continue
            stats.in_flight += 1
            try:
                if isinstance(item, Gap):
                    await st.sink.gap(item)
                else:
                    if await st.sink.write(item.block):
                        item.skipped = False
                    self._account(item, skipped=item.skipped)
            except (TimeoutError, FspdError, OSError) as exc:
                if len(self.sinks) > 1 and isinstance(exc, FspdError):
                    exc = type(exc)(f"destination {st.sink.name}: {exc}")
                if st.policy != "drop" or len(self.sinks) == 1:
                    raise exc from None
                self._drop(st, exc)
                if isinstance(item, _Fanout):
                    self._account(item, skipped=True)
            finally:
                stats.in_flight -= 1
            stats.done += 1

    def _account(self, item: Any, *, skipped: bool) -> None:
        if not isinstance(item, _Fanout):
            return
        item.remaining -= 1
        if not skipped:
            item.skipped = False
        if item.remaining == 0:
            self.progress.block_done(skipped=item.skipped)
            item.block = None  # a writer waiting for its next item still refers to this one
            if item.held:
                self._release()
            _drop(item.tokens)
            item.tokens = ()


def _drop(tokens: tuple[Reservation, ...]) -> None:
    for token in tokens:
        token.drop()


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The error that started a TaskGroup's failure, preferring a user-facing one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, FspdError):
            return exc
    for exc in leaves:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0]
