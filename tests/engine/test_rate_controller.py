"""How the shared rate controller reacts to throttling, on a fake clock (milliseconds per test).

Answers arrive at the controller's own rate, as they do from a paced stream; each one is a
throttle with the probability the scenario gives.
"""

from __future__ import annotations

import random

from fspd.retry import RateController
from tests.fakes import FakeClock

MAX = 970.0


def drive(rc: RateController, clock: FakeClock, seconds: float, throttle_share: float,
          rng: random.Random) -> list[tuple[float, float]]:
    """Answer at the controller's rate for ``seconds``; the (time, rate) after each answer."""
    end = clock.now + seconds
    seen = []
    while clock.now < end:
        clock.now += 1.0 / rc.rate
        if rng.random() < throttle_share:
            rc.on_throttle()
        else:
            rc.on_success()
        seen.append((clock.now, rc.rate))
    return seen


def test_steady_5_percent_random_throttling_keeps_the_rate_near_max() -> None:
    for seed in range(3):
        clock = FakeClock()
        rc = RateController(MAX, clock=clock)
        seen = drive(rc, clock, 40.0, 0.05, random.Random(seed))
        rates = [rate for _, rate in seen]
        assert min(rates) >= 0.5 * MAX, f"seed {seed}: the rate fell to {min(rates):.0f}/s"
        # Time-weighted mean: answers come at the rate, so weigh each by 1/rate.
        mean = len(rates) / sum(1.0 / r for r in rates)
        assert mean >= 0.85 * MAX, f"seed {seed}: mean rate {mean:.0f}/s"
        assert 0.03 <= rc.background <= 0.07, "the random share was learned as background"


def test_sustained_total_throttling_cuts_the_rate_toward_min_within_seconds() -> None:
    clock = FakeClock()
    rc = RateController(MAX, clock=clock)
    start = clock.now
    seen = drive(rc, clock, 10.0, 1.0, random.Random(1))
    after_3s = [rate for t, rate in seen if t >= start + 3.0]
    assert after_3s[0] <= 0.05 * MAX
    assert seen[-1][1] <= 0.01 * MAX, "still sending while everything is throttled"
    assert rc.background == 0.0, "total throttling must never count as background"


def test_rate_recovers_after_throttling_ends() -> None:
    clock = FakeClock()
    rng = random.Random(2)
    rc = RateController(MAX, clock=clock)
    drive(rc, clock, 1.0, 1.0, rng)  # a one-second storm
    low = rc.rate
    assert low <= 0.2 * MAX
    ended = clock.now
    seen = drive(rc, clock, 15.0, 0.0, rng)
    back = next((t for t, rate in seen if rate >= 0.9 * MAX), None)
    # One recover_s of hold (a quota may be near), then two to climb back.
    assert back is not None and back - ended <= 4.0, f"from {low:.0f}/s, back after {back}"


def test_a_cut_by_random_throttles_is_undone_within_seconds() -> None:
    """The first windows of a random share look like a quota; once the cuts show that
    slowing down does not help, the rate goes back up."""
    clock = FakeClock()
    rc = RateController(MAX, clock=clock)
    seen = drive(rc, clock, 5.0, 0.08, random.Random(3))
    assert rc.cuts >= 1, "the first throttled windows were not acted on"
    assert seen[-1][1] >= 0.9 * MAX


def test_over_a_quota_the_rate_settles_just_under_it() -> None:
    """A quota at 600/s while max_rate is 970/s: throttles are what exceeds the quota."""
    clock = FakeClock()
    rc = RateController(MAX, clock=clock)
    quota = 600.0
    rng = random.Random(4)
    end = clock.now + 30.0
    throttled = answered = 0
    rates = []
    while clock.now < end:
        clock.now += 1.0 / rc.rate
        over = max(0.0, (rc.rate - quota) / rc.rate)
        if rng.random() < over:
            rc.on_throttle()
            throttled += clock.now > end - 20.0
        else:
            rc.on_success()
        answered += clock.now > end - 20.0
        if clock.now > end - 20.0:
            rates.append(rc.rate)
    mean = len(rates) / sum(1.0 / r for r in rates)
    assert 0.85 * quota <= mean <= 1.05 * quota
    assert throttled / answered < 0.02
    assert rc.background < 0.02, "a quota's throttles must not become background"
