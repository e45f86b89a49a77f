"""How fspd reacts to failures, following AWS's retry table for EBS Direct:

* throttling slows the whole stream down (a shared rate controller that reacts to the
  share of throttled answers) and is retried;
* 5xx, network errors and corrupt reads are retried with full-jitter exponential backoff;
* permanent errors (access denied, validation, conflict, quotas) fail at once, with a message
  that names the permission or parameter;
* "snapshot not found" right after StartSnapshot / completion is retried for a bounded window.
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from fspd.clock import SYSTEM_CLOCK, Clock
from fspd.errors import FspdError, PermissionProblem, TransferFailed
from fspd.log import get_logger

T = TypeVar("T")
log = get_logger("fspd.retry")

THROTTLE_CODES = frozenset({
    "ThrottlingException", "RequestThrottledException", "Throttling", "SlowDown",
    "TooManyRequestsException", "RequestLimitExceeded", "ThrottledException",
})
ACCESS_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "AuthFailure",
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId",
})

# Which IAM action each operation needs, for messages a user can act on.
IAM_ACTION = {
    "StartSnapshot": "ebs:StartSnapshot", "PutSnapshotBlock": "ebs:PutSnapshotBlock",
    "CompleteSnapshot": "ebs:CompleteSnapshot", "ListSnapshotBlocks": "ebs:ListSnapshotBlocks",
    "ListChangedBlocks": "ebs:ListChangedBlocks", "GetSnapshotBlock": "ebs:GetSnapshotBlock",
    "DescribeSnapshots": "ec2:DescribeSnapshots", "DescribeRegions": "ec2:DescribeRegions",
    "DeleteSnapshot": "ec2:DeleteSnapshot",
}


# AWS answers a bad signature with the canonical request it expected, and that request holds
# the X-Amz-Security-Token header: a session token in an error message. Messages are cut there.
_CANONICAL = re.compile(r"\s*The (Canonical String|String-to-Sign) for this request.*",
                        re.IGNORECASE | re.DOTALL)
_TOKEN = re.compile(r"(x-amz-security-token[:=]\s*)[^\s&'\"]+", re.IGNORECASE)


def scrub(message: str) -> str:
    """An AWS error message without the canonical request or any security token in it."""
    return _TOKEN.sub(r"\1***", _CANONICAL.sub(" (canonical request omitted)", message))


class Verdict(Enum):
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    NOT_FOUND = "not_found"
    TOKEN_EXPIRED = "token_expired"
    FATAL = "fatal"


class ApiError(Exception):
    """An error answered by an AWS API, in one shape whichever client raised it."""

    def __init__(self, operation: str, code: str, message: str = "", *, status: int = 0,
                 reason: str = "") -> None:
        self.operation = operation
        self.code = code
        self.message = message = scrub(message)
        self.status = status
        self.reason = reason
        super().__init__(f"{operation}: {code}{f' ({reason})' if reason else ''}: {message}")

    @classmethod
    def from_client_error(cls, exc: Exception, operation: str = "") -> ApiError:
        response = getattr(exc, "response", {}) or {}
        error = response.get("Error", {})
        return cls(
            operation or getattr(exc, "operation_name", "") or "request",
            str(error.get("Code", "Unknown")),
            str(error.get("Message", "")),
            status=int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
            reason=str(response.get("Reason") or error.get("Reason") or ""),
        )


class CorruptBlock(Exception):
    """A block whose bytes do not match its checksum."""


class Unreachable(Exception):
    """A request that got no answer from ``endpoint``: refused, reset, timed out, no DNS."""

    def __init__(self, operation: str, endpoint: str, cause: BaseException) -> None:
        self.operation = operation
        self.endpoint = endpoint.rstrip("/")
        self.cause = cause
        self.never_answers = _never_answers(cause)
        self.untrusted = _untrusted_certificate(cause)
        super().__init__(f"{operation} to {self.endpoint}: {_describe_cause(cause)}")


# Endpoints that have answered this process at least once (any HTTP response). A refused
# connection to one of them is an outage worth retrying; to any other, a wrong address.
_answered: set[str] = set()


def endpoint_answered(endpoint: str) -> None:
    _answered.add(endpoint.rstrip("/"))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (botocore's ``error`` kwarg, aiohttp's ``os_error``)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 10:
        cur = todo.pop()
        if cur is None or cur in seen:
            continue
        seen.append(cur)
        kwargs = getattr(cur, "kwargs", None)
        todo += [getattr(cur, "os_error", None), cur.__cause__, cur.__context__,
                 kwargs.get("error") if isinstance(kwargs, dict) else None]
    return seen


def _never_answers(exc: BaseException) -> bool:
    """Connection refused, or a host name that does not resolve: nothing to wait for."""
    for cur in _chain(exc):
        if isinstance(cur, ConnectionRefusedError) or getattr(cur, "errno", None) == \
                errno.ECONNREFUSED:
            return True
        if isinstance(cur, socket.gaierror) and cur.errno in (socket.EAI_NONAME,
                                                               getattr(socket, "EAI_NODATA", -5)):
            return True
    return False


def _untrusted_certificate(exc: BaseException) -> str | None:
    """Why the endpoint's TLS certificate was refused (not trusted, wrong name, expired), if
    it was: no retry changes that. (By class name: aiohttp's and botocore's errors wrap or
    subclass ``ssl.SSLCertVerificationError``.)"""
    for cur in _chain(exc):
        cert = getattr(cur, "certificate_error", cur)  # aiohttp's wrapper holds the ssl one
        if any(cls.__name__ == "SSLCertVerificationError" for cls in type(cert).__mro__):
            return str(getattr(cert, "verify_message", "") or cert)
    return None


def _describe_cause(exc: BaseException) -> str:
    for cur in _chain(exc):
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, socket.gaierror):
            return f"host name lookup failed: {cur.strerror}"
    for cur in _chain(exc):
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, ApiError):
        if exc.code in THROTTLE_CODES or exc.status == 429:
            return Verdict.THROTTLED
        if exc.code == "ResourceNotFoundException":
            return Verdict.NOT_FOUND
        if exc.code == "ValidationException":
            if exc.reason == "INVALID_BLOCK_TOKEN":
                return Verdict.TOKEN_EXPIRED
            if "failed to read block data" in exc.message.lower():
                return Verdict.TRANSIENT
            return Verdict.FATAL
        if exc.status >= 500 or exc.code in ("InternalServerException", "InternalError",
                                             "ServiceUnavailable", "RequestTimeout"):
            return Verdict.TRANSIENT
        return Verdict.FATAL
    if isinstance(exc, Unreachable):
        if exc.untrusted:
            return Verdict.FATAL
        first_contact = exc.endpoint not in _answered
        return Verdict.FATAL if exc.never_answers and first_contact else Verdict.TRANSIENT
    if isinstance(exc, CorruptBlock | asyncio.TimeoutError | TimeoutError | ConnectionError):
        return Verdict.TRANSIENT
    # aiohttp and botocore network errors, without importing them here. botocore's other
    # errors (no credentials, unknown profile, bad parameters) do not go away on a retry.
    module = type(exc).__module__
    if module.startswith(("aiohttp", "urllib3")):
        return Verdict.TRANSIENT
    if module.startswith("botocore.exceptions"):
        names = {cls.__name__ for cls in type(exc).__mro__}
        network = {"HTTPClientError", "ConnectionError", "IncompleteReadError"}
        return Verdict.TRANSIENT if names & network else Verdict.FATAL
    return Verdict.FATAL


def fatal_error(exc: BaseException) -> FspdError:
    """Turn a permanent failure into a message naming what the user must fix."""
    if isinstance(exc, FspdError):
        return exc
    if isinstance(exc, ApiError):
        if exc.code in ACCESS_CODES or exc.status == 403:
            action = IAM_ACTION.get(exc.operation, exc.operation)
            return PermissionProblem(
                f"AWS refused {exc.operation} ({exc.code}"
                f"{', ' + exc.reason if exc.reason else ''}): the credentials need permission "
                f"for {action}. AWS said: {exc.message}")
        return TransferFailed(f"{exc.operation} failed: {exc.code}"
                              f"{' (' + exc.reason + ')' if exc.reason else ''}: {exc.message}")
    if isinstance(exc, Unreachable) and exc.untrusted:
        return TransferFailed(
            f"the TLS certificate of {exc.endpoint} is not trusted ({exc.untrusted}) on "
            f"{exc.operation}: if the endpoint uses a private certificate authority, give its "
            "PEM bundle with AWS_CA_BUNDLE (or ca_bundle in the AWS config profile)")
    if isinstance(exc, Unreachable):
        return TransferFailed(
            f"cannot reach {exc.endpoint} ({_describe_cause(exc.cause)}) on the first "
            f"{exc.operation} request: nothing listens there; check the endpoint "
            "(--endpoint-url, AWS_ENDPOINT_URL[_EBS|_EC2|_S3]) and the region")
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return PermissionProblem(f"no usable AWS credentials: {exc}")
    return TransferFailed(f"{type(exc).__name__}: {exc}")


def _account_level(exc: BaseException) -> bool:
    """Throttled for the account (all snapshots), rather than for one snapshot."""
    return isinstance(exc, ApiError) and (exc.reason == "ACCOUNT_THROTTLED"
                                          or exc.code == "ThrottlingException")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff (AWS architecture blog's recommended variant)."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


@dataclass
class _Episode:
    """A run of windows with cuts: the test of whether slowing down helps."""

    first_share: float
    first_rate: float   # the rate before it
    ceiling: float      # the rate to go back to after it, if it is a storm (else 0)
    shares: list[float] = field(default_factory=list)  # of the windows after the first


class RateController:
    """Client-side pacing for one request stream (for example Get on one snapshot).

    Callers ``await acquire()`` before each request and report each answer with
    ``on_success()`` or ``on_throttle()``. The rate starts at ``max_rate`` and reacts to the
    *share* of throttled answers in short windows, not to each throttle:

    * Each window (``window_s``, and at least ``min_samples`` answers) compares its throttled
      share with the *background*: the share that goes on whatever our rate (an average of
      the quiet windows). Only an excess beyond chance counts (``noise_sigmas`` binomial
      standard deviations at the window's size, and at least ``tolerance``).
    * An excess cuts the rate, once per window, to what the server accepted -- the rate less
      the excess share, and no more than it answered with success -- less ``margin``, at
      most halving. Over a quota that lands just under it (at 1.5x a quota a third is
      throttled, and a cut by a third meets it); 100 % throttling halves the rate every
      window, to ``min_rate`` within seconds.
    * The cuts are a test of where the throttles come from. When the share falls back to the
      background, slowing down helped: a quota, and the cut stands. When the rate has come
      down by ``test_depth`` and two windows stay as throttled as the first, slowing down
      does not help: that share becomes the background, and the rate goes back, within
      ``recover_s``, to where it was (less the first window's excess over the new
      background). Shares above ``background_max`` are never background.
    * After a cut the rate holds for ``recover_s`` (a quota is near), then probes upwards:
      by ``probe`` of the rate per ``recover_s`` at first, faster the longer all is well
      (x2 about 6 s after the cut, x10 after 11 s). After a storm (``storm_share`` or more
      throttled when it began) it also climbs back to the rate the storm found, within
      another 2 ``recover_s`` -- unless a storm came within ``storm_memory_s`` before: a
      quota far below the rate looks like a storm that keeps coming back.

    Why: cutting by a factor for every throttle burst (CUBIC's x0.7, at most every 0.2 s,
    ~9 s to recover) let a steady 5 % of randomly throttled requests -- 50 throttles a
    second that slowing down does not make go away -- ratchet the rate down to ``min_rate``:
    a 2 GiB download took 17-37x as long. Here they cost a test of one or two cuts, then
    nothing (tests/engine/test_rate_controller.py; the benchmark's "Random throttling").
    ``clock`` (its time and its sleep) is injectable so that tests run the reaction and the
    pacing on a fake clock.
    """

    window_s = 0.25        # one decision, and at most one cut, per window
    min_samples = 16       # a window closes only once it holds this many answers
    tolerance = 0.01       # an excess share this small is never acted on
    noise_sigmas = 2.5     # nor an excess within this many standard deviations of chance
    background_max = 0.2   # shares above this are never background
    background_weight = 0.1  # of a quiet window's share in the background (an EWMA)
    test_depth = 0.2       # cut this far with the share not falling: it is background
    max_cut = 0.5          # a cut keeps at least this share of the rate
    storm_share = 0.5      # a share that starts a storm: the rate goes back after it
    storm_memory_s = 60.0  # unless the last storm was this recent
    margin = 0.05          # a cut goes this far below what the server accepted
    recover_s = 1.0        # hold after a cut; time to climb back when it was background
    probe = 0.02           # after the hold, +2 % per recover_s at first

    # Credit kept for a late event loop: a busy loop wakes sleepers late, and without credit
    # every late wake-up would be capacity lost for good (measured: a pacer set to 970/s gave
    # ~620/s inside a CPU-bound upload). 50 ms of credit (~48 requests at 970/s) stays well
    # inside the service's own burst allowance.
    burst_s = 0.05

    def __init__(self, max_rate: float, *, min_rate: float = 1.0,
                 parent: RateController | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.parent = parent  # a wider stream this one is part of (the account's)
        self.max_rate = max_rate
        self.min_rate = min_rate
        self.rate = max_rate
        self.clock = clock
        self.background = 0.0
        self.cuts = 0
        self._next_slot = 0.0
        now = clock.monotonic()
        self._window_start = now
        self._ok = self._throttled = 0
        # The recovery curve: from _cut_rate at _cut_time up to _target, then above it.
        self._cut_time = now - self.recover_s
        self._cut_rate = self._target = self._ceiling = max_rate
        self._episode: _Episode | None = None
        self._generation = 0  # cuts so far: slots reserved before a cut are void
        self._last_storm = -math.inf

    def reserve(self) -> float:
        """Take the next request slot; how long to wait for it (seconds)."""
        now = self.clock.monotonic()
        slot = max(now - self.burst_s, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        while True:
            generation = self._generation
            delay = self.reserve()
            if delay > 0:
                await self.clock.sleep(delay)
            # A slot reserved before a cut is void: without this, every request already
            # waiting (up to the stream's concurrency) would still go at the old rate.
            if generation == self._generation:
                break
        if self.parent is not None:
            await self.parent.acquire()

    def on_success(self) -> None:
        if self.parent is not None:
            self.parent.on_success()
        self._ok += 1
        now = self.clock.monotonic()
        if not self._close_window(now):
            self.rate = self._recovered(now)

    def on_throttle(self, *, account: bool = False) -> None:
        """Count a throttle; ``account`` throttles count for the whole account's stream."""
        if account and self.parent is not None:
            self.parent.on_throttle()
            return
        self._throttled += 1
        self._close_window(self.clock.monotonic())

    def _recovered(self, now: float) -> float:
        """The rate on the recovery curve at ``now``."""
        x = (now - self._cut_time) / self.recover_s - 1.0
        target = self._target
        if x <= 0:  # concave: fast at first, flat near the target
            rate = target + (target - self._cut_rate) * x ** 3
        else:  # probing: slowly at first (a quota is near), faster while all is well
            rate = (target * (1 + self.probe * x + (x / 5) ** 3)
                    + (self._ceiling - target) * min(1.0, x / 2) ** 3)
        return min(self.max_rate, max(self.min_rate, rate))

    def _curve(self, now: float, start: float, target: float, ceiling: float) -> None:
        """Set the rate to ``start``; climb to ``target`` within ``recover_s``, then probe
        above it, and back to ``ceiling`` within 2 more ``recover_s``."""
        self._cut_time = now
        self._cut_rate = self.rate = start
        self._target = max(start, target)
        self._ceiling = max(self._target, ceiling)

    def _noise(self, share: float, answers: int) -> float:
        """How far a window's share may stray from ``share`` by chance."""
        share = max(share, 1.0 / answers)
        return self.noise_sigmas * math.sqrt(share * (1.0 - share) / answers)

    def _close_window(self, now: float) -> bool:
        """End the window if it is due and act on its share. Whether the rate was set."""
        elapsed = now - self._window_start
        answers = self._ok + self._throttled
        if elapsed < self.window_s or answers < self.min_samples:
            return False
        share = self._throttled / answers
        accepted_rate = self._ok / elapsed
        self._window_start = now
        self._ok = self._throttled = 0
        b = self.background
        excess = share - b
        quiet = excess <= max(self.tolerance, self._noise(b, answers))
        episode = self._episode
        if episode is not None:
            if quiet:
                self._episode = None  # slowing down helped: a quota, and the cuts stand
                return False
            episode.shares.append(share)
            last = episode.shares[-2:]
            noise = self._noise(episode.first_share, answers)
            if (len(last) == 2 and self._cut_rate <= episode.first_rate * (1 - self.test_depth)
                    and max(last) <= min(self.background_max, episode.first_share + noise)
                    and min(last) >= episode.first_share - noise):
                # Slower by test_depth, and two windows (the cut's own in-flight requests
                # gone) as throttled as the first: it is not our rate. Back to the rate
                # before, less what the first window had beyond the new background.
                self.background = sum(last) / 2
                self._episode = None
                back = episode.first_rate * (1 - max(0.0, episode.first_share - self.background))
                self._curve(now, self.rate, back, back)
                return True
        elif quiet:
            self.background = b + self.background_weight * (share - b)
            return False
        self.cuts += 1
        current = min(self.rate, self._recovered(now))
        accepted = min(current * (1.0 - excess), accepted_rate) * (1.0 - self.margin)
        if episode is None:
            # After a storm (most requests throttled from the start) the rate goes back to
            # where the storm found it; not after a second storm within storm_memory_s
            # (a quota far below the rate looks like a storm that comes back).
            storm = share >= self.storm_share
            back_to = current if storm and now - self._last_storm > self.storm_memory_s else 0
            self._last_storm = now if storm else self._last_storm
            episode = self._episode = _Episode(share, current, back_to)
        self._curve(now, max(self.min_rate, current * self.max_cut, accepted), accepted,
                    episode.ceiling)
        # Slots handed out at the old rate are taken back (see acquire), and a gap is left
        # so that the server's bucket can refill before we resume.
        self._generation += 1
        self._next_slot = now + 1.0 / self.rate
        return True


class Retrier:
    """Runs one request under the retry policy, sharing a :class:`RateController` with the
    other requests of the same stream and counting what it did in ``on_retry(kind)``.
    ``not_found_grace_until`` is a time on ``clock`` (the system's monotonic clock unless a
    test gives another)."""

    def __init__(self, *, max_attempts: int, max_throttle_attempts: int, backoff_base: float,
                 backoff_cap: float, not_found_window: float, rate: RateController | None = None,
                 on_retry: Callable[[str], None] | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_attempts = max_attempts
        self.max_throttle_attempts = max_throttle_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.not_found_window = not_found_window
        self.rate = rate
        self.on_retry = on_retry or (lambda kind: None)
        self.clock = clock

    async def run(self, call: Callable[[], Awaitable[T]], *,
                  refresh_token: Callable[[], Awaitable[None]] | None = None,
                  not_found_grace_until: float = 0.0) -> T:
        attempts = throttles = refreshes = 0
        while True:
            if self.rate is not None:
                await self.rate.acquire()
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                verdict = classify(exc)
                if verdict is Verdict.THROTTLED:
                    throttles += 1
                    if self.rate is not None:
                        self.rate.on_throttle(account=_account_level(exc))
                    if throttles >= self.max_throttle_attempts:
                        raise TransferFailed(
                            f"still throttled after {throttles} attempts: {exc}") from None
                    self.on_retry("throttled")
                    delay = backoff_delay(min(throttles, 8), self.backoff_base, self.backoff_cap)
                    # Throttling is pacing, not trouble: at debug, or it would flood the log.
                    _log_retry(exc, throttles, self.max_throttle_attempts, delay, debug=True)
                    await self.clock.sleep(delay)
                    continue
                if verdict is Verdict.TOKEN_EXPIRED and refresh_token and refreshes < 2:
                    refreshes += 1
                    self.on_retry("token_refreshed")
                    _log_retry(exc, refreshes, 3, 0.0)
                    await refresh_token()
                    continue
                if verdict is Verdict.NOT_FOUND and self.clock.monotonic() < not_found_grace_until:
                    self.on_retry("not_found")
                    delay = backoff_delay(min(attempts, 5) + 1, self.backoff_base,
                                          self.backoff_cap)
                    attempts += 1
                    _log_retry(exc, attempts, None, delay)
                    await self.clock.sleep(delay)
                    continue
                if verdict is Verdict.TRANSIENT:
                    attempts += 1
                    if attempts >= self.max_attempts:
                        raise TransferFailed(
                            f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}"
                        ) from None
                    self.on_retry("corrupt" if isinstance(exc, CorruptBlock) else "transient")
                    delay = backoff_delay(attempts, self.backoff_base, self.backoff_cap)
                    _log_retry(exc, attempts, self.max_attempts, delay)
                    await self.clock.sleep(delay)
                    continue
                raise fatal_error(exc) from None
            if self.rate is not None:
                self.rate.on_success()
            return result


def _what(exc: BaseException) -> str:
    if isinstance(exc, ApiError | Unreachable):
        return exc.operation
    if isinstance(exc, CorruptBlock):
        return "block read (checksum mismatch)"
    return type(exc).__name__


def _log_retry(exc: BaseException, attempt: int, of: int | None, delay: float, *,
               debug: bool = False) -> None:
    """One line per retry: what failed, which attempt of how many, when the next one goes."""
    what = _what(exc)
    limit = f" of {of}" if of else " (within the not-found window)"
    detail = (f"{what} failed on attempt {attempt}{limit}: {exc}; next try in {delay:.2f} s")
    emit = log.debug if debug else log.info
    emit("request_retrying", detail=detail, operation=what, attempt=attempt, attempts=of,
         next_try_s=round(delay, 3))
