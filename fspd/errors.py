"""Error types that reach the user, and the exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    PERMISSION = 3
    TRANSFER_FAILED = 4
    CANCELLED = 5
    NOT_RUNNING = 6


class FspdError(Exception):
    """An error with a message a user can act on. Never shown with a traceback."""

    exit_code = ExitCode.TRANSFER_FAILED

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    def to_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "field": self.field, "message": str(self)}


class BadInput(FspdError):
    """A job spec, flag or path is wrong; ``field`` names it."""

    exit_code = ExitCode.BAD_INPUT


class PermissionProblem(FspdError):
    """AWS (or the local system) refused an action; the message names the permission."""

    exit_code = ExitCode.PERMISSION


class TransferFailed(FspdError):
    """The transfer could not be completed (after bounded retries)."""

    exit_code = ExitCode.TRANSFER_FAILED


class Cancelled(FspdError):
    exit_code = ExitCode.CANCELLED
