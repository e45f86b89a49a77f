"""A toy sink that keeps the volume in memory: used only by the tests, as the reader of every
source in the conformance suite and as proof that a new sink is one spec class, one module
and one registration line (the last line of this file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fspd.blocks import Block
from fspd.checkpoint import JournalShape
from fspd.context import JobContext
from fspd.endpoint import Gap, VolumeInfo
from fspd.endpoints import registry
from fspd.errors import TransferFailed
from fspd.jobs import JobSpec


class MemorySinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["memory"] = "memory"
    volume: str  # the key of the volume in VOLUMES
    complete: bool = False  # say an earlier run finished it (the already-complete capability)


@dataclass
class Volume:
    """What a memory sink holds, kept across runs of a job (as a disk would be)."""

    blocks: dict[int, bytes] = field(default_factory=dict)  # index → data; absent: zeros
    info: VolumeInfo | None = None
    committed: bool = False
    aborted: BaseException | None = None
    fail_writes: bool = False  # the next write fails (a disk that stopped taking data)

    def read(self, offset: int, length: int, block_size: int) -> bytes:
        out = bytearray()
        while length:
            index, start = divmod(offset, block_size)
            n = min(length, block_size - start)
            out += self.blocks.get(index, bytes(block_size))[start:start + n]
            offset, length = offset + n, length - n
        return bytes(out)


VOLUMES: dict[str, Volume] = {}


class MemorySink:
    def __init__(self, ctx: JobContext, job: JobSpec, spec: MemorySinkSpec, name: str) -> None:
        self.ctx, self.name, self.concurrency = ctx, name, 2
        self.volume = VOLUMES.setdefault(spec.volume, Volume())
        self.already_complete = False
        self._complete = spec.complete
        self._written: set[int] = set()

    async def open(self, info: VolumeInfo) -> None:
        self.volume.info, self.already_complete = info, self._complete
        state = self.ctx.resume_state(self.name)
        if state:  # what an interrupted run wrote is still there
            self._written = set(state["written"]) & set(self.volume.blocks)
        else:
            self.volume.blocks.clear()

    def has(self, index: int) -> bool:
        return index in self._written

    async def checkpoint_state(self) -> dict[str, Any]:
        return {"type": "memory", "written": sorted(self._written)}

    async def write(self, block: Block) -> bool:
        if self.volume.fail_writes:
            raise TransferFailed(f"{self.name}: block {block.index} could not be stored")
        if block.zero:
            self.volume.blocks.pop(block.index, None)
        else:
            self.volume.blocks[block.index] = bytes(block.data)
        self._written.add(block.index)
        return not block.zero

    async def gap(self, gap: Gap) -> None:
        for index in range(gap.start, gap.stop):
            self.volume.blocks.pop(index, None)

    async def commit(self) -> dict[str, Any]:
        self.volume.committed = True
        return {"name": self.name, "state": "completed", "blocks": len(self.volume.blocks)}

    async def abort(self, error: BaseException) -> dict[str, Any]:
        self.volume.aborted = error
        return {"name": self.name, "state": "failed", "error": str(error)}


registry.sink(MemorySinkSpec, journal=JournalShape())(MemorySink)
