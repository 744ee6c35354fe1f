"""Kubernetes API errors, rendered as `kind: Status` objects like the real API server does."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the emulator answers with: HTTP code + a Kubernetes `Status` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(qualified: str, name: str) -> dict[str, Any]:
    """`qualified` is `plural.group` (`jobs.batch`, core: `configmaps`), as in real API messages."""
    plural, _, group = qualified.partition(".")
    return {"name": name, "group": group, "kind": plural}


def not_found(qualified: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details=_details(qualified, name))


def already_exists(qualified: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', details=_details(qualified, name))


def conflict(qualified: str, name: str, why: str = "") -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        details=_details(qualified, name),
    )


def invalid(qualified: str, name: str, causes: list[str]) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: ' + ", ".join(causes),
        details={**_details(qualified, name), "causes": [{"message": cause} for cause in causes]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        "the server has received too many requests and has asked us to try again later",
        details={"retryAfterSeconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def internal_error(message: str = "an error on the server has prevented the request from succeeding") -> ApiError:
    return ApiError(500, "InternalError", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
