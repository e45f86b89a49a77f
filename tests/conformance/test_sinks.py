"""Every sink passes the same tests: it stores a full image, a sparse one, one ending in a
partial block and one with written zero blocks; it resumes after a checkpoint, survives a
cancellation mid-stream (a later run still fills it), fails the job cleanly when its writes
fail, and, when it can tell that an earlier run completed it, takes no block again. The
source is a local file; what the sink holds is read back its own way."""

from __future__ import annotations

import pytest

from fspd.errors import FspdError
from tests.conformance import harness
from tests.conformance.ends import SINK_ENDS, SINKS, Env, SinkEnd
from tests.conformance.memory_sink import VOLUMES

each_sink = pytest.mark.parametrize("sink", SINKS)


def file_job(path: object) -> harness.JobSpec:
    return harness.JobSpec(source={"type": "file", "path": str(path)})


async def assert_holds(end: SinkEnd, outcome: harness.Outcome, image: bytes) -> None:
    assert outcome.result is not None
    got = await end.read(outcome.result, len(image) + harness.B)
    assert got[:len(image)] == image
    assert got[len(image):] == bytes(len(got) - len(image)), "bytes past the image"


@each_sink
@pytest.mark.parametrize("kind", sorted(harness.IMAGES))
async def test_stores_the_image(sink: str, env: Env, kind: str) -> None:
    path, image = harness.image(env.tmp_path, kind)
    end = SINK_ENDS[sink](env)
    outcome = await harness.transfer(file_job(path), end.dest(), env.settings())
    await assert_holds(end, outcome, image)


@each_sink
async def test_resumes_after_a_checkpoint(sink: str, env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    end, state = SINK_ENDS[sink](env), env.tmp_path / "state"
    state.mkdir()
    await harness.cancelled_midway(file_job(path), end.dest(), env.settings(), after=4,
                                   state_dir=state)
    outcome = await harness.transfer(file_job(path), end.dest(), env.settings(),
                                     state_dir=state)
    assert outcome.progress.blocks_resumed >= 1, "nothing of the first run was kept"
    assert outcome.fetches < len(image) // harness.B
    await assert_holds(end, outcome, image)


@each_sink
async def test_survives_a_cancellation_mid_stream(sink: str, env: Env) -> None:
    path, image = harness.image(env.tmp_path, "full")
    end = SINK_ENDS[sink](env)
    await harness.cancelled_midway(file_job(path), end.dest(), env.settings(), after=2)
    outcome = await harness.transfer(file_job(path), end.dest(), env.settings())
    await assert_holds(end, outcome, image)


@each_sink
async def test_a_failing_write_fails_the_job(sink: str, env: Env) -> None:
    path, _ = harness.image(env.tmp_path, "full")
    end = SINK_ENDS[sink](env)
    end.prepare_to_fail()
    gate = harness.Gate(on_first=end.break_writes)
    with pytest.raises(FspdError):
        await harness.transfer(file_job(path), end.dest(), env.settings(), gate=gate)
    assert gate.source_closed


@each_sink
async def test_an_already_complete_target_takes_no_block_again(sink: str, env: Env) -> None:
    end = SINK_ENDS[sink](env)
    if not end.may_be_complete:
        pytest.skip(f"the {sink} sink has no already-complete capability: a rerun rewrites "
                    "(resuming from its journal when one is left)")
    path, image = harness.image(env.tmp_path, "full")
    state = env.tmp_path / "state"
    state.mkdir()
    # The first run crashes right after committing: its journal is left behind.
    await harness.transfer(file_job(path), end.dest(), env.settings(), state_dir=state,
                           discard=False)
    outcome = await harness.transfer(file_job(path), end.dest(), env.settings(),
                                     state_dir=state)
    assert outcome.fetches == 0
    await assert_holds(end, outcome, image)


def test_the_toy_sink_is_served_through_the_registry() -> None:
    """One module and one registration line: the registry opens it like any sink."""
    from fspd.endpoints import registry
    from tests.conformance.memory_sink import MemorySink, MemorySinkSpec

    assert registry.sink_factory(MemorySinkSpec(volume="x")) is MemorySink
    assert VOLUMES is not None
