"""`RequestError`: a request `spa serve` refuses, with its HTTP status and a one-line reason."""

from __future__ import annotations

from spa.errors import SpaError


class RequestError(SpaError):
    """A request the server refuses; `status` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
