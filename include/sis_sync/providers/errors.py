"""The errors every SIS API client raises: what failed, where, with which HTTP status."""

from __future__ import annotations


class SISRequestError(RuntimeError):
    """A request to a SIS API that failed; ``status`` is the HTTP status when there was one.

    ``code`` is the server's own error code when it sent one (OneRoster's imsx codeMinor, an
    OAuth ``error``). Messages name the method, the path and the status, never a token, a
    secret or a response body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.code = code


class SISAuthError(SISRequestError):
    """The SIS refused the credentials (401/403, or a token endpoint refusing the client).

    Permanent: never retried, as a retry cannot fix a wrong or revoked credential. Each
    provider's auth error subclasses this one, so a caller can list a single permanent error.
    """
