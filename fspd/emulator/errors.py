"""The one error type handlers raise; the server renders it per protocol (JSON or EC2 XML)."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client as AWS would.

    ``code`` is the EBS error shape name (x-amzn-ErrorType) or the EC2 error code.
    """

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason


def validation(message: str, reason: str = "INVALID_PARAMETER_VALUE") -> ApiError:
    return ApiError(400, "ValidationException", message, reason)


def not_found(snapshot_id: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException",
                    f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND")


def access_denied(message: str, reason: str = "UNAUTHORIZED_ACCOUNT") -> ApiError:
    return ApiError(403, "AccessDeniedException", message, reason)


def throttled(message: str, reason: str) -> ApiError:
    return ApiError(400, "RequestThrottledException", message, reason)


def internal(message: str = "An internal error occurred.") -> ApiError:
    return ApiError(500, "InternalServerException", message)
