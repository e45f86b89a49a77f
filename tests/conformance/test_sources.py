"""Every source passes the same tests: it serves a full image, a sparse one, one ending in a
partial block and one with written zero blocks; a job reading it resumes after a checkpoint,
can be cancelled mid-stream, fails cleanly when its destination cannot write, and reads
nothing when the destination is already complete. The toy memory sink reads it back (the
chain, served as steps into a new snapshot, is read back from that snapshot)."""

from __future__ import annotations

from typing import Any

import pytest

from fspd.errors import FspdError
from tests.conformance import harness
from tests.conformance.ends import SOURCES, EbsEnd, Env, MemoryEnd, SinkEnd, place

each_source = pytest.mark.parametrize("source", SOURCES)


def reader(source: str, env: Env, **kw: Any) -> SinkEnd:
    """What reads the source back: the toy memory sink, or for the chain (whose steps name
    their own EBS destinations) the snapshot it leaves."""
    return EbsEnd(env) if source == "chain" else MemoryEnd(env, **kw)


async def read_back(end: SinkEnd, outcome: harness.Outcome, length: int) -> bytes:
    result = outcome.result or {}
    if isinstance(end, EbsEnd):
        result = {"snapshot_id": result["latest_copy"]}
    return await end.read(result, length)


async def assert_serves(source: str, env: Env, kind: str) -> None:
    path, image = harness.image(env.tmp_path, kind)
    placed = await place(source, env, image, path)
    end = reader(source, env)
    outcome = await harness.transfer(placed.job, end.dest(), env.settings())
    got = await read_back(end, outcome, len(placed.expected) + harness.B)
    assert got[:len(placed.expected)] == placed.expected
    assert got[len(placed.expected):] == bytes(len(got) - len(placed.expected))
    assert outcome.source_closed


@each_source
@pytest.mark.parametrize("kind", sorted(harness.IMAGES))
async def test_serves_the_image(source: str, env: Env, kind: str) -> None:
    await assert_serves(source, env, kind)


@each_source
async def test_resumes_after_a_checkpoint(source: str, env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    placed = await place(source, env, image, path)
    end, state = reader(source, env), env.tmp_path / "state"
    state.mkdir()
    await harness.cancelled_midway(placed.job, end.dest(), env.settings(), after=3,
                                   state_dir=state)
    outcome = await harness.transfer(placed.job, end.dest(), env.settings(), state_dir=state)
    # A chain's earlier step took some of the three blocks the first run was let fetch.
    assert outcome.progress.blocks_resumed >= (1 if source == "chain" else 3), \
        "blocks already written were read again"
    assert outcome.fetches < len(image) // harness.B
    got = await read_back(end, outcome, len(placed.expected))
    assert got == placed.expected


@each_source
async def test_can_be_cancelled_mid_stream(source: str, env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    placed = await place(source, env, image, path)
    end = reader(source, env)
    progress = await harness.cancelled_midway(placed.job, end.dest(), env.settings(), after=2)
    assert progress.blocks_done < len(image) // harness.B
    outcome = await harness.transfer(placed.job, end.dest(), env.settings())  # still readable
    assert await read_back(end, outcome, len(placed.expected)) == placed.expected


@each_source
async def test_a_failing_write_fails_the_job_and_closes_the_source(source: str,
                                                                  env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    placed = await place(source, env, image, path)
    end = reader(source, env)
    gate = harness.Gate(on_first=end.break_writes)
    with pytest.raises(FspdError):
        await harness.transfer(placed.job, end.dest(), env.settings(), gate=gate)
    assert gate.source_closed


@each_source
async def test_reads_nothing_for_an_already_complete_destination(source: str,
                                                                  env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    placed = await place(source, env, image, path)
    if source == "chain":  # a rerun finds every snapshot of the chain copied already
        end: SinkEnd = reader(source, env)
        await harness.transfer(placed.job, end.dest(), env.settings())
        outcome = await harness.transfer(placed.job, end.dest(), env.settings())
        assert outcome.result is not None and outcome.result["already_copied"] == 2
    else:
        end = MemoryEnd(env, complete=True)
        outcome = await harness.transfer(placed.job, end.dest(), env.settings())
    assert outcome.fetches == 0
    assert outcome.source_closed


def test_every_source_type_is_in_the_suite() -> None:
    """A source type registered but missing here fails: add it to ends.SOURCES."""
    from fspd.endpoints import registry
    from fspd.jobs import type_name

    served = {type_name(c) for c in registry.served_types()["source"]}
    covered = {"ebs" if s.startswith("ebs") else "ebs-chain" if s == "chain"
               else "file" if s == "device" else "s3" if s == "fsp" else s for s in SOURCES}
    assert served <= covered, f"not in the suite: {served - covered}"
