"""The errors a request can end with: each its HTTP status and the OpenAI error type and code it is sent as."""

from __future__ import annotations


class ServeError(Exception):
    """An error a request ends with, and the HTTP status, OpenAI error type and code it is reported as."""

    status, type_, code = 500, "server_error", None

    def __init__(self, message: str, *, retry_after: int | None = None, param: str | None = None):
        super().__init__(message)
        self.retry_after, self.param = retry_after, param


class BadRequest(ServeError):
    status, type_ = 400, "invalid_request_error"


class Busy(ServeError):
    status, type_, code = 429, "rate_limit_error", "queue_full"


class Draining(ServeError):
    status, type_, code = 503, "server_error", "shutting_down"


class TimedOut(ServeError):
    status, type_, code = 504, "timeout_error", "timeout"


class PayloadTooLarge(ServeError):
    status, type_, code = 413, "invalid_request_error", "request_too_large"


class Unauthorized(ServeError):
    status, type_, code = 401, "authentication_error", "invalid_api_key"


class NotFound(ServeError):
    status, type_, code = 404, "not_found_error", "model_not_found"
