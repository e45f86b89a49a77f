"""Which network failures fail at once and which are retried: a refused connection is a wrong
address on the first contact with an endpoint, and an outage once that endpoint has answered."""

from __future__ import annotations

import socket

from fspd.errors import TransferFailed
from fspd.retry import Unreachable, Verdict, classify, endpoint_answered, fatal_error


def _refused(endpoint: str) -> Unreachable:
    return Unreachable("ListSnapshotBlocks", endpoint,
                       ConnectionRefusedError(111, "Connect call failed"))


def test_refused_on_first_contact_is_fatal_and_names_the_endpoint() -> None:
    exc = _refused("http://127.0.0.1:1/")
    assert classify(exc) is Verdict.FATAL
    error = fatal_error(exc)
    assert isinstance(error, TransferFailed)
    assert "http://127.0.0.1:1 (connection refused)" in str(error)


def test_refused_after_the_endpoint_has_answered_is_retried() -> None:
    endpoint_answered("http://127.0.0.1:2/")
    assert classify(_refused("http://127.0.0.1:2")) is Verdict.TRANSIENT


def test_an_unknown_host_is_fatal_but_a_timeout_or_reset_is_retried() -> None:
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert classify(Unreachable("DescribeRegions", "http://nope.invalid", unknown)) \
        is Verdict.FATAL
    for cause in (TimeoutError("timed out"), ConnectionResetError(104, "reset")):
        assert classify(Unreachable("GetSnapshotBlock", "http://127.0.0.1:3", cause)) \
            is Verdict.TRANSIENT
