"""Which endpoints a job may send the daemon's credentials to.

A job names an ``endpoint_url`` for each end; fspd signs every request to it with its own
credentials. A job file may therefore only name AWS's own endpoints for the job's partition,
or an endpoint the operator listed in ``[aws] allow_endpoints``. Endpoints chosen on the
command line (``--endpoint-url``) or in the environment (``AWS_ENDPOINT_URL*``) are the
operator's own choice and are not checked here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fspd.errors import BadInput

_PATTERN = re.compile(r"^(https?)://(\*|(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])"
                      r"(?::(\d{1,5}|\*))?/?$")
_HOST = re.compile(r"^(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])$")
_AWS_HOST = re.compile(r"^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.amazonaws\.com(\.cn)?$")
_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Pattern:
    scheme: str
    host: str  # exact, "*.suffix" or "*"
    port: int | None  # None: any port

    def matches(self, scheme: str, host: str, port: int) -> bool:
        return (scheme == self.scheme and fnmatch.fnmatchcase(host, self.host)
                and (self.port is None or port == self.port))


def parse_pattern(text: str) -> Pattern:
    """``scheme://host[:port]`` (host ``*.example.com`` or ``*``, port ``*``) or ValueError."""
    m = _PATTERN.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not an endpoint like https://s3.example.com, "
                         "https://*.example.com or http://127.0.0.1:8484 (no path)")
    scheme, host, port = m.groups()
    return Pattern(scheme, host, None if port == "*" else int(port or _DEFAULT_PORT[scheme]))


def _parts(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL fspd may connect to, or None if it is not one."""
    if any(ord(c) < 0x21 or c == "\\" for c in url):
        return None
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    scheme, host = split.scheme.lower(), split.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if scheme not in _DEFAULT_PORT or "@" in split.netloc or not _HOST.match(host):
        return None
    return scheme, host, port or _DEFAULT_PORT[scheme]


def exact_pattern(url: str) -> str | None:
    """The allow-list entry naming exactly the endpoint of ``url`` (None if it is not one)."""
    parts = _parts(url)
    return None if parts is None else f"{parts[0]}://{parts[1]}:{parts[2]}"


def is_aws_endpoint(scheme: str, host: str, port: int, region: str) -> bool:
    """AWS's own endpoint for the region's partition (https only)."""
    m = _AWS_HOST.match(host)
    if scheme != "https" or port != 443 or not m:
        return False
    return bool(m.group(1)) == region.startswith("cn-")


def allowed(url: str, region: str, patterns: Iterable[Pattern]) -> bool:
    parts = _parts(url)
    if parts is None:
        return False
    return is_aws_endpoint(*parts, region) or any(p.matches(*parts) for p in patterns)


def _ends(spec: Any) -> Iterator[tuple[str, Any]]:
    yield "source", spec.source
    for i, dest in enumerate(spec.destinations):
        yield f"destinations[{i}]", dest


def check_job(spec: Any, allow: Iterable[str], region_of: Callable[[str, Any], str]) -> None:
    """Refuse (BadInput naming the field) any ``endpoint_url`` of ``spec`` not allowed.
    ``region_of(field, end)`` gives an end's region (its own, or its profile's default),
    naming ``field`` in any error."""
    patterns = [parse_pattern(p) for p in allow]
    for field, end in _ends(spec):
        url = getattr(end, "endpoint_url", None)
        if url is None or allowed(url, region_of(field, end), patterns):
            continue
        raise BadInput(f"{url} is not an endpoint jobs may name: fspd signs requests with its "
                       "own credentials, so a job may name only AWS's endpoints for its "
                       "partition or one listed in [aws] allow_endpoints of the config",
                       field=f"{field}.endpoint_url")
