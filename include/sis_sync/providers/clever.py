"""Clever API v3.0 client: the Data API lists and the Events API, with paging and retries.

Plain Python on ``requests`` (no Airflow import); the Airflow hook only builds one of these from
a connection (the district-app token is the connection's password).

- **Paging.** Lists are read with ``limit`` (default 10000, Clever's maximum) and by following
  the ``links`` entry whose ``rel`` is ``next`` until there is none. Relative uris
  (``/v3.0/users?limit=...&starting_after=<id>``) are resolved against ``base_url``; an absolute
  uri to another host is refused, so the token never leaves for another server. Ids must keep
  ascending from page to page (Clever's range paging): a page that goes back or repeats a link
  fails rather than loop or return duplicates.
- **Retries.** 429: wait until ``X-RateLimit-Reset`` (Unix seconds), else ``Retry-After``, else
  the backoff, then retry. 500/502/503/504 and connection errors: exponential backoff
  (``backoff * 2**attempt``, at most 60 s). Both are bounded by ``max_retries``. A response
  with ``X-RateLimit-Remaining: 0`` makes the next request wait for the reset first.
- **Failures.** 401/403 raise ``CleverAuthError`` at once; other 4xx and 501 raise
  ``CleverError`` naming the method, path and status. Messages never hold the token, which goes
  only into the ``Authorization`` header.
- **Events.** ``events(starting_after)`` yields event objects oldest first. Clever answers
  ``/events`` with 404 when events are not enabled for the district or when ``starting_after``
  is no longer in its 30-day window (the simulator's documented assumption); the client tells
  them apart by asking ``/events?limit=1`` and raises ``CleverEventsUnavailable`` with
  ``reason`` ``"disabled"`` or ``"checkpoint_expired"``: either way the caller runs a full sync.
- Unknown keys in responses are kept and ignored, as Clever adds fields over time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from include.sis_sync.providers.errors import SISRequestError

__all__ = [
    "API_PREFIX",
    "MAX_LIMIT",
    "CleverAuthError",
    "CleverClient",
    "CleverError",
    "CleverEventsUnavailable",
]

log = logging.getLogger(__name__)

API_PREFIX = "/v3.0"
MAX_LIMIT = 10_000
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_BACKOFF = 60.0  # seconds, the longest wait between two retries of an error
MAX_RATE_LIMIT_WAIT = 120.0  # seconds; Clever's window is one minute
_RETRY_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class CleverError(SISRequestError):
    """A Clever request that failed; ``status`` is the HTTP status when there was one."""


class CleverAuthError(CleverError):
    """Clever refused the district token (401/403). Never retried; never shows the token."""


class CleverEventsUnavailable(CleverError):
    """Events cannot serve this delta: ``reason`` is ``"disabled"`` or ``"checkpoint_expired"``."""

    def __init__(self, message: str, *, reason: str, status: int | None = 404) -> None:
        super().__init__(message, status=status, method="GET", path=f"{API_PREFIX}/events")
        self.reason = reason


class CleverClient:
    """Reads one district from Clever's API v3.0 with its district-app bearer token.

    ``base_url`` is the API host (``https://api.clever.com``; a trailing ``/v3.0`` is
    tolerated). ``sleep`` and ``clock`` are injectable so tests never really wait.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limit: int = MAX_LIMIT,
        max_retries: int = 5,
        backoff: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("a Clever district-app token is required")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        base = base_url.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base
        self.limit = limit
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._origin = (parts.scheme, parts.netloc)
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._resume_at = 0.0  # set when Clever said no requests remain in this window

    def __repr__(self) -> str:
        return f"CleverClient(base_url={self.base_url!r}, limit={self.limit})"

    def close(self) -> None:
        """Close the HTTP session if the client created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> CleverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------

    def _url(self, uri: str) -> tuple[str, str]:
        """The absolute URL of ``uri`` and its path (for messages)."""
        if uri.startswith(("http://", "https://")):
            parts = urlsplit(uri)
            if (parts.scheme, parts.netloc) != self._origin:
                raise CleverError(
                    f"refusing to follow a link to another host ({parts.netloc}): "
                    "the district token is only sent to the configured Clever host"
                )
            return uri, parts.path
        if not uri.startswith("/"):
            uri = f"{API_PREFIX}/{uri}"
        return self.base_url + uri, urlsplit(uri).path

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * (2**attempt), MAX_BACKOFF)

    def _rate_limit_wait(self, response: requests.Response, attempt: int) -> float:
        """Seconds until Clever's rate-limit window resets, from its headers."""
        wait: float | None = None
        reset = response.headers.get("X-RateLimit-Reset")
        if reset:
            try:
                wait = float(reset) - self._clock()
            except ValueError:
                wait = None
        if wait is None or wait <= 0:
            try:
                wait = float(response.headers.get("Retry-After") or "")
            except ValueError:
                wait = None
        if wait is None or wait <= 0:
            wait = self._backoff(attempt)
        return min(wait, MAX_RATE_LIMIT_WAIT)

    def _note_remaining(self, response: requests.Response) -> None:
        """Remember to wait for the reset when Clever says no requests remain."""
        if response.headers.get("X-RateLimit-Remaining", "").strip() != "0":
            return
        try:
            self._resume_at = float(response.headers.get("X-RateLimit-Reset") or 0)
        except ValueError:
            self._resume_at = 0.0

    @staticmethod
    def _server_message(response: requests.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return ""
        message = body.get("message") if isinstance(body, dict) else None
        return str(message)[:300] if message else ""

    def _request(self, uri: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET ``uri`` with retries; the decoded JSON body of a 200."""
        url, path = self._url(uri)
        attempt = 0
        while True:
            pause = self._resume_at - self._clock()
            if pause > 0:
                self._sleep(min(pause, MAX_RATE_LIMIT_WAIT))
            self._resume_at = 0.0
            try:
                response = self._session.get(
                    url, params=params, headers=self._headers, timeout=self.timeout
                )
            except _RETRY_EXCEPTIONS as exc:
                if attempt >= self.max_retries:
                    raise CleverError(
                        f"could not reach Clever at {self.base_url} for GET {path} after "
                        f"{attempt + 1} attempts ({type(exc).__name__})",
                        method="GET",
                        path=path,
                    ) from exc
                wait = self._backoff(attempt)
                log.warning(
                    "Clever GET %s failed (%s); retry %d/%d in %.1fs",
                    path,
                    type(exc).__name__,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                self._sleep(wait)
                attempt += 1
                continue
            status = response.status_code
            if status == 200:
                self._note_remaining(response)
                return self._json(response, path)
            if status in (401, 403):
                raise CleverAuthError(
                    f"Clever rejected the district token (HTTP {status}) for GET {path}: "
                    "check the connection's password (the district-app token) and that the "
                    "district still shares data with the app",
                    status=status,
                    method="GET",
                    path=path,
                )
            retryable = status == 429 or status in RETRY_STATUSES or 501 < status < 600
            if not retryable:
                message = self._server_message(response)
                hint = f" (limit may not exceed {MAX_LIMIT})" if status == 413 else ""
                raise CleverError(
                    f"Clever answered HTTP {status} for GET {path}{hint}"
                    + (f": {message}" if message else ""),
                    status=status,
                    method="GET",
                    path=path,
                )
            if attempt >= self.max_retries:
                what = "rate limited" if status == 429 else f"HTTP {status}"
                raise CleverError(
                    f"Clever answered {what} for GET {path} on all {attempt + 1} attempts",
                    status=status,
                    method="GET",
                    path=path,
                )
            if status == 429:
                wait = self._rate_limit_wait(response, attempt)
            else:
                wait = self._backoff(attempt)
            log.warning(
                "Clever GET %s answered HTTP %d; retry %d/%d in %.1fs",
                path,
                status,
                attempt + 1,
                self.max_retries,
                wait,
            )
            self._sleep(wait)
            attempt += 1

    @staticmethod
    def _json(response: requests.Response, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content")
            raise CleverError(
                f"Clever answered GET {path} with {kind}, not JSON: check that the token is a "
                "district-app token and that the endpoint exists",
                status=response.status_code,
                method="GET",
                path=path,
            ) from None
        if not isinstance(body, dict):
            raise CleverError(f"Clever answered GET {path} with JSON that is not an object")
        return body

    # -- lists -----------------------------------------------------------------------------

    def list(self, resource: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every record of a list endpoint (``users``, ``sections``...), following ``next``.

        Yields the inner objects (each item's ``data``). ``params`` are query parameters
        (``role="student"``); None values are left out; ``limit`` defaults to the client's.
        """
        query = {key: value for key, value in params.items() if value is not None}
        query.setdefault("limit", self.limit)
        uri: str | None = f"{API_PREFIX}/{resource.strip('/')}"
        requested: set[str] = set()
        last_id: str | None = None
        first = True
        while uri is not None:
            requested.add(uri)
            body = self._request(uri, query if first else None)
            first = False
            rows = body.get("data") or []
            if not isinstance(rows, list):
                raise CleverError(f"Clever answered GET {uri} without a data list")
            for row in rows:
                record = row.get("data") if isinstance(row, dict) else None
                if not isinstance(record, dict):
                    raise CleverError(f"Clever answered GET {uri} with an item lacking data")
                record_id = record.get("id")
                if isinstance(record_id, str):
                    if last_id is not None and record_id <= last_id:
                        raise CleverError(
                            f"Clever paging of {resource} went backwards at {record_id}: "
                            "stopping rather than read a record twice"
                        )
                    last_id = record_id
                yield record
            uri = self._next(body)
            if uri is not None and uri in requested:
                raise CleverError(f"Clever paging of {resource} repeated the link {uri}")

    @staticmethod
    def _next(body: dict[str, Any]) -> str | None:
        for link in body.get("links") or []:
            if isinstance(link, dict) and link.get("rel") == "next" and link.get("uri"):
                return str(link["uri"])
        return None

    def count(self, resource: str, **params: Any) -> int | None:
        """The number of records a list holds (``count=true``), or None if Clever gives none.

        Clever documented ``{"count": N}`` for v1; v3.0's definitions only declare the
        parameter, so callers must treat None as "unknown".
        """
        query = {key: value for key, value in params.items() if value is not None}
        body = self._request(f"{API_PREFIX}/{resource.strip('/')}", {**query, "count": "true"})
        value = body.get("count")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def district(self) -> dict[str, Any]:
        """The token's district (``/districts`` holds exactly that one)."""
        for district in self.list("districts"):
            return district
        raise CleverError("Clever returned no district for this token")

    def schools(self) -> Iterator[dict[str, Any]]:
        return self.list("schools")

    def users(self, role: str | None = None) -> Iterator[dict[str, Any]]:
        """Users; every user once, with all their roles, when ``role`` is None."""
        return self.list("users", role=role)

    def sections(self) -> Iterator[dict[str, Any]]:
        return self.list("sections")

    def terms(self) -> Iterator[dict[str, Any]]:
        return self.list("terms")

    def courses(self) -> Iterator[dict[str, Any]]:
        return self.list("courses")

    # -- events ----------------------------------------------------------------------------

    def events(
        self, starting_after: str | None = None, *, record_types: Iterable[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events after ``starting_after`` (all in the window when None), oldest first.

        Yields event objects ``{id, created, type, data: {object, previous_attributes?}}``.
        Raises ``CleverEventsUnavailable`` when events are disabled or the checkpoint has left
        Clever's 30-day window.
        """
        types = list(record_types) if record_types else None
        try:
            yield from self.list("events", starting_after=starting_after, record_type=types)
        except CleverEventsUnavailable:
            raise
        except CleverError as exc:
            if exc.status != 404:
                raise
            raise self._events_unavailable(starting_after) from None

    def _events_unavailable(self, starting_after: str | None) -> CleverEventsUnavailable:
        """Why ``/events`` answered 404: disabled for the district, or an expired checkpoint."""
        disabled = CleverEventsUnavailable(
            "Clever has no events for this district (events are opt-in: Settings > "
            "Integrations > Enable events); run full syncs instead",
            reason="disabled",
        )
        if starting_after is None:
            return disabled
        try:
            self._request(f"{API_PREFIX}/events", {"limit": 1})
        except CleverError as probe:
            if probe.status == 404:
                return disabled
            raise
        return CleverEventsUnavailable(
            f"the checkpoint event {starting_after} is no longer in Clever's events window "
            "(30 days): run a full sync",
            reason="checkpoint_expired",
        )

    def newest_event_id(self, starting_after: str | None = None) -> str | None:
        """The id of the newest event, paging forward with ``limit``/``starting_after`` only.

        Starts after ``starting_after`` (a known checkpoint saves reading the whole window) and
        returns it unchanged when nothing newer exists; None when the window is empty. A
        checkpoint that left the window is ignored (the whole window is read). Record this
        before a full sync so the next quick sync misses nothing.
        """
        newest = starting_after
        try:
            for event in self.events(starting_after):
                newest = event.get("id", newest)
        except CleverEventsUnavailable as exc:
            if exc.reason != "checkpoint_expired":
                raise
            newest = None
            for event in self.events(None):
                newest = event.get("id", newest)
        return newest
