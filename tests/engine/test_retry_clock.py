"""The retry policy, request pacing and bandwidth on a fake clock: backoff bounds, the
attempt limits, AWS's retry table for EBS Direct (/work/shared/reference/ebs-direct-api.md),
throttle adaptation and the token-refresh path. Nothing here sleeps for real."""

from __future__ import annotations

import ast
import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import fspd
from fspd.budget import Bandwidth, SharedLimits
from fspd.errors import ExitCode, FspdError, PermissionProblem, TransferFailed
from fspd.retry import ApiError, RateController, Retrier
from tests.fakes import FakeClock

BASE, CAP = 0.1, 1.0


def retrier(clock: FakeClock, *, max_attempts: int = 5, max_throttle_attempts: int = 20,
            rate: RateController | None = None, retries: list[str] | None = None) -> Retrier:
    return Retrier(max_attempts=max_attempts, max_throttle_attempts=max_throttle_attempts,
                   backoff_base=BASE, backoff_cap=CAP, not_found_window=5.0, rate=rate,
                   on_retry=(retries.append if retries is not None else None), clock=clock)


class Server:
    """Answers with each error of ``errors`` in turn, then with success."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def failing(error: Callable[[], Exception]) -> Callable[[], Awaitable[str]]:
    """A call that fails with a new ``error()`` every time."""

    async def call() -> str:
        raise error()

    return call


def server_error() -> ApiError:
    return ApiError("GetSnapshotBlock", "InternalServerException", "boom", status=500)


async def test_transient_backoff_is_full_jitter_under_the_capped_exponential_bound() -> None:
    bounds = [min(CAP, BASE * 2 ** attempt) for attempt in (1, 2, 3, 4)]  # 0.2 0.4 0.8 1.0
    seen: list[list[float]] = [[] for _ in bounds]
    for _ in range(100):  # a bound missed by chance: p < 1e-9
        clock = FakeClock()
        server = Server(*(server_error() for _ in bounds))
        assert await retrier(clock).run(server) == "ok"
        assert server.calls == len(bounds) + 1
        assert len(clock.sleeps) == len(bounds)
        for position, delay in enumerate(clock.sleeps):
            assert 0.0 <= delay <= bounds[position], (position, delay)
            seen[position].append(delay)
        assert clock.now == pytest.approx(1000.0 + sum(clock.sleeps))
    for position, delays in enumerate(seen):
        # Full jitter: spread over the whole of [0, bound], not bunched near it.
        assert min(delays) < 0.2 * bounds[position]
        assert max(delays) > 0.8 * bounds[position]


async def test_transient_errors_give_up_after_max_attempts() -> None:
    clock = FakeClock()
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise server_error()

    with pytest.raises(TransferFailed, match="gave up after 5 attempts"):
        await retrier(clock, max_attempts=5).run(call)
    assert calls == 5
    assert len(clock.sleeps) == 4  # no wait after the last attempt


async def test_throttling_gives_up_after_max_throttle_attempts_with_capped_backoff() -> None:
    clock = FakeClock()
    retries: list[str] = []
    error = failing(lambda: ApiError("PutSnapshotBlock", "RequestThrottledException", "slow",
                                     status=429, reason="RESOURCE_LEVEL_THROTTLE"))
    with pytest.raises(TransferFailed, match="still throttled after 12 attempts"):
        await retrier(clock, max_throttle_attempts=12, retries=retries).run(error)
    assert retries == ["throttled"] * 11
    assert len(clock.sleeps) == 11
    assert all(0.0 <= d <= CAP for d in clock.sleeps)


# The retry table of AWS's guide for EBS Direct: (error, retried?).
RETRY_TABLE = [
    (ApiError("GetSnapshotBlock", "InternalServerException", "", status=500), True),
    (ApiError("GetSnapshotBlock", "ThrottlingException", "", status=400), True),
    (ApiError("GetSnapshotBlock", "RequestThrottledException", "", status=400,
              reason="ACCOUNT_THROTTLED"), True),
    (ApiError("PutSnapshotBlock", "RequestThrottledException", "", status=429,
              reason="RESOURCE_LEVEL_THROTTLE"), True),
    (ApiError("GetSnapshotBlock", "RequestThrottledException", "", status=400,
              reason="DEPENDENCY_REQUEST_THROTTLED"), True),
    (ApiError("PutSnapshotBlock", "ValidationException", "Failed to read block data",
              status=400), True),
    (ApiError("PutSnapshotBlock", "ValidationException", "bad", status=400,
              reason="INVALID_BLOCK"), False),
    (ApiError("ListChangedBlocks", "ValidationException", "", status=400,
              reason="UNRELATED_SNAPSHOTS"), False),
    (ApiError("PutSnapshotBlock", "ValidationException", "", status=400,
              reason="CONFLICTING_BLOCK_UPDATE"), False),
    (ApiError("GetSnapshotBlock", "ResourceNotFoundException", "", status=404,
              reason="SNAPSHOT_NOT_FOUND"), False),
    (ApiError("GetSnapshotBlock", "AccessDeniedException", "", status=403,
              reason="UNAUTHORIZED_ACCOUNT"), False),
    (ApiError("StartSnapshot", "ConflictException", "", status=409), False),
    (ApiError("StartSnapshot", "ServiceQuotaExceededException", "", status=402), False),
    (ApiError("StartSnapshot", "ConcurrentLimitExceededException", "", status=400), False),
]


@pytest.mark.parametrize(("error", "retried"), RETRY_TABLE,
                         ids=[f"{e.code}-{e.reason or e.status}" for e, _ in RETRY_TABLE])
async def test_the_retry_table_decides_what_is_retried(error: ApiError, retried: bool) -> None:
    clock = FakeClock()
    server = Server(error)
    if retried:
        assert await retrier(clock).run(server) == "ok"
        assert server.calls == 2
        assert len(clock.sleeps) == 1
    else:
        with pytest.raises(FspdError) as raised:
            await retrier(clock).run(server)
        assert server.calls == 1
        assert clock.sleeps == []
        assert error.code in str(raised.value)
        expected = ExitCode.PERMISSION if error.status == 403 else ExitCode.TRANSFER_FAILED
        assert raised.value.exit_code == expected


async def test_not_found_is_retried_only_within_its_window_on_the_retriers_clock() -> None:
    clock = FakeClock()
    retries: list[str] = []
    error = failing(lambda: ApiError("CompleteSnapshot", "ResourceNotFoundException", "",
                                     status=404, reason="SNAPSHOT_NOT_FOUND"))
    grace_until = clock.now + 5.0
    with pytest.raises(TransferFailed, match="ResourceNotFoundException"):
        await retrier(clock, retries=retries).run(error, not_found_grace_until=grace_until)
    assert clock.now >= grace_until  # kept trying until the window had passed
    assert clock.now - grace_until <= CAP  # and no longer than one more backoff
    assert set(retries) == {"not_found"} and len(retries) >= 5


async def test_an_expired_block_token_is_refreshed_and_the_request_retried() -> None:
    clock = FakeClock()
    retries: list[str] = []
    refreshed = 0

    async def refresh() -> None:
        nonlocal refreshed
        refreshed += 1

    server = Server(ApiError("GetSnapshotBlock", "ValidationException", "expired",
                             status=400, reason="INVALID_BLOCK_TOKEN"))
    assert await retrier(clock, retries=retries).run(server, refresh_token=refresh) == "ok"
    assert (server.calls, refreshed, retries) == (2, 1, ["token_refreshed"])
    assert clock.sleeps == []  # a fresh token needs no wait


async def test_token_refreshes_are_bounded_and_without_a_refresher_the_error_is_fatal() -> None:
    refreshed = 0

    async def refresh() -> None:
        nonlocal refreshed
        refreshed += 1

    def expired() -> ApiError:
        return ApiError("GetSnapshotBlock", "ValidationException", "expired", status=400,
                        reason="INVALID_BLOCK_TOKEN")

    with pytest.raises(TransferFailed, match="INVALID_BLOCK_TOKEN"):
        await retrier(FakeClock()).run(failing(expired), refresh_token=refresh)
    assert refreshed == 2
    server = Server(expired())
    with pytest.raises(TransferFailed, match="INVALID_BLOCK_TOKEN"):
        await retrier(FakeClock()).run(server)
    assert server.calls == 1


@pytest.mark.parametrize("code", ["ExpiredToken", "ExpiredTokenException"])
async def test_expired_credentials_fail_at_once_naming_the_permission(code: str) -> None:
    clock = FakeClock()
    refreshed = 0

    async def refresh() -> None:
        nonlocal refreshed
        refreshed += 1

    server = Server(ApiError("PutSnapshotBlock", code, "The security token included in the "
                             "request is expired", status=400))
    with pytest.raises(PermissionProblem, match="ebs:PutSnapshotBlock") as raised:
        await retrier(clock).run(server, refresh_token=refresh)
    assert raised.value.exit_code == ExitCode.PERMISSION
    assert (server.calls, refreshed, clock.sleeps) == (1, 0, [])


async def test_pacing_spaces_requests_at_the_rate_on_the_clock() -> None:
    clock = FakeClock()
    rc = RateController(100.0, clock=clock)
    start = clock.now
    for _ in range(201):
        await rc.acquire()
    # 200 intervals of 10 ms, less the burst credit the first request may take.
    assert clock.now - start == pytest.approx(2.0 - rc.burst_s, abs=0.011)


async def test_retrier_and_rate_controller_settle_under_a_server_quota() -> None:
    """32 requests in flight (20 ms each) against a server that throttles above 300 per
    second: the shared controller learns the quota from the throttled share and the stream
    then gets nearly all of it with few requests throttled (without the controller, about a
    quarter of the requests are throttled)."""
    quota, clock = 300, FakeClock()
    rc = RateController(970.0, clock=clock)
    recent: deque[float] = deque()  # answered within the last second
    succeeded: list[float] = []
    throttled: list[bool] = []  # per request

    async def call() -> str:
        await clock.sleep(0.02)
        now = clock.now
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        throttled.append(len(recent) >= quota)
        if throttled[-1]:
            raise ApiError("GetSnapshotBlock", "RequestThrottledException", "", status=400,
                           reason="RESOURCE_LEVEL_THROTTLE")
        recent.append(now)
        succeeded.append(now)
        return "ok"

    r = retrier(clock, max_throttle_attempts=1000, rate=rc)
    start, wall = clock.now, time.monotonic()

    async def worker() -> None:
        while clock.now - start < 30.0:
            await r.run(call)

    await asyncio.gather(*(worker() for _ in range(32)))
    assert time.monotonic() - wall < 10.0  # 30 s of traffic on the fake clock
    assert rc.cuts >= 1
    last_10s = sum(1 for t in succeeded if t > clock.now - 10.0) / 10.0
    assert 0.85 * quota <= last_10s <= quota, last_10s
    assert sum(throttled[-3000:]) / 3000 < 0.03, "still throttled often after 30 s"


async def test_bandwidth_bucket_paces_bytes_on_the_clock() -> None:
    clock = FakeClock()
    bucket = Bandwidth(1_000_000, burst_s=0.5, clock=clock)
    start = clock.now
    for _ in range(20):
        await bucket.consume(500_000)  # 10 MB at 1 MB/s
    assert clock.now - start == pytest.approx(10.0, abs=0.6)  # less the first burst


def test_shared_limits_pace_every_stream_on_their_clock() -> None:
    clock: Any = FakeClock()
    limits = SharedLimits(per_snapshot_rps=1000, per_account_rps=1000, max_buffered_blocks=8,
                          clock=clock)
    rate = limits.rate("get", "account", "snap-1")
    assert rate.clock is clock and rate.parent is not None and rate.parent.clock is clock
    assert limits.bandwidth.clock is clock


@pytest.mark.parametrize("module", ["retry.py", "budget.py"])
def test_retry_and_pacing_read_time_only_through_their_clock(module: str) -> None:
    """A direct ``time.monotonic()`` or ``asyncio.sleep()`` would bypass the fake clock and
    make these tests wait for real."""
    source = (Path(fspd.__file__).parent / module).read_text()
    direct = {f"{node.value.id}.{node.attr}" for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and (node.value.id, node.attr) in {("time", "monotonic"), ("time", "time"),
                                                 ("time", "sleep"), ("asyncio", "sleep")}}
    assert direct == set()
