"""Logging setup: structlog, JSON lines off a TTY, console rendering on one.

structlog is imported on first use (:func:`get_logger`), not by :func:`configure`: a command
that never logs (``fspd --help``, ``fspd status``) does not pay for importing it.

Credentials never reach a log line: :func:`_redact` drops values of keys that look secret,
and replaces this process's own secret values (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
...) wherever they appear inside any other value, such as an error message.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_SECRET_MARKERS = ("secret", "password", "token", "credential", "authorization", "session_key")


_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def _secret_values() -> list[str]:
    """Secret values this process knows of; read each time, so a value set later counts."""
    return [v for k in _SECRET_ENV if len(v := os.environ.get(k, "")) >= 8]


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, secrets) for v in value)
    return value


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    secrets = _secret_values()
    for key in list(event):
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS):
            event[key] = "***"
        elif secrets:
            event[key] = _scrub(event[key], secrets)
    return event


class _LineLogger:
    """Writes each rendered line in one piece. While a progress bar (tqdm) is drawn on the
    same terminal, the bar is cleared first and redrawn after, so a log line gets a line of
    its own instead of being glued onto the bar's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)  # loaded only if a bar was made
        if tqdm is not None and getattr(tqdm, "_instances", None):
            with tqdm.external_write_mode(file=self._stream):
                self._write(message)
        else:
            self._write(message)

    def _write(self, message: str) -> None:
        self._stream.write(message + "\n")
        self._stream.flush()

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


def _printable(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, names and messages from job files are shown with their control
    characters escaped (JSON lines escape them anyway)."""
    from fspd.display import printable

    for key, value in event.items():
        if isinstance(value, str):
            event[key] = "\n".join(printable(line) for line in value.split("\n"))
    return event


_pending: dict[str, Any] | None = None  # configure()'s settings, until structlog is loaded


def configure(level: str = "info", *, json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog for the process. ``json=None`` picks JSON unless stderr is a TTY.
    Applied at once if structlog is loaded, else when the first logger is asked for."""
    global _pending
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    _pending = {"level": logging.getLevelNamesMapping()[level.upper()], "json": json,
                "stream": stream}
    if "structlog" in sys.modules:
        _structlog()


def _structlog() -> Any:
    """structlog, configured as the last :func:`configure` asked."""
    global _pending
    import structlog

    if _pending is None:
        return structlog
    json, stream = _pending["json"], _pending["stream"]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            *(() if json else (_printable,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_pending["level"]),
        logger_factory=lambda *_args: _LineLogger(stream),
        cache_logger_on_first_use=False,
    )
    _pending = None
    return structlog


def get_logger(name: str | None = None) -> Any:
    structlog = _structlog()
    return structlog.get_logger(name) if name else structlog.get_logger()
