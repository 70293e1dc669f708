"""The error every SIS API client raises: what failed, where, with which HTTP status."""

from __future__ import annotations


class SISRequestError(RuntimeError):
    """A request to a SIS API that failed; ``status`` is the HTTP status when there was one.

    Messages name the method, the path and the status, never a token or a secret.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
