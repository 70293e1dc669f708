"""Clever API v3.0 client: the Data API lists and records and the Events API.

Plain Python (no Airflow import) on the shared HTTP base
(:class:`include.sis_sync.providers.http.RestClient`: one ``requests`` session, retries with
``tenacity``, failures and JSON bodies read the same way as the OneRoster client's); the Airflow
hook only builds one of these from a connection (the district-app token is the connection's
password). The token goes only into the ``Authorization: Bearer`` header.

- **Paging.** Lists are read with ``limit`` (default 10000, Clever's maximum) and by following
  the ``links`` entry whose ``rel`` is ``next`` until there is none. Relative uris
  (``/v3.0/users?limit=...&starting_after=<id>``) are resolved against ``base_url``; an absolute
  uri to another host is refused, so the token never leaves for another server. Ids must keep
  ascending from page to page (Clever's range paging): a page that goes back or repeats a link
  fails rather than loop or return duplicates (the base's ``PageGuard``).
- **Records.** ``get_record(resource, id)`` reads ``/v3.0/{resource}/{id}``: the record, or
  None when Clever answers 404.
- **Retries** (the base's). 429: wait until ``X-RateLimit-Reset`` (Unix seconds, against the
  injected ``clock``), else ``Retry-After`` (seconds or an HTTP date), else the backoff, at most
  120 s, then retry. Any 5xx but 501 and connection errors (timeouts, broken chunked bodies):
  exponential backoff (``backoff * 2**attempt``, at most 60 s). Both are bounded by
  ``max_retries``. A response with ``X-RateLimit-Remaining: 0`` makes the next request wait
  for the reset first.
- **Failures.** 401/403 raise ``CleverAuthError`` at once, never retried (a
  ``SISAuthError``); other 4xx and 501 raise ``CleverError`` naming the method, path, status
  and Clever's message. A 200 that is not a JSON object is reported by its status, content
  type, size and the JSON decoder's complaint, never by its content. Messages never hold the
  token.
- **Events.** ``events(starting_after)`` yields event objects oldest first. Clever answers
  ``/events`` with 404 when events are not enabled for the district or when ``starting_after``
  is no longer in its 30-day window (the simulator's documented assumption); the client tells
  them apart by asking ``/events?limit=1`` and raises ``CleverEventsUnavailable`` with
  ``reason`` ``"disabled"`` or ``"checkpoint_expired"``: either way the caller runs a full sync.
- Unknown keys in responses are kept and ignored, as Clever adds fields over time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from include.sis_sync.providers.errors import SISAuthError, SISRequestError
from include.sis_sync.providers.http import PageGuard, RestClient

__all__ = [
    "API_PREFIX",
    "MAX_LIMIT",
    "CleverAuthError",
    "CleverClient",
    "CleverError",
    "CleverEventsUnavailable",
]

API_PREFIX = "/v3.0"
MAX_LIMIT = 10_000
_RESOURCE = re.compile(r"^[a-z_]+$")


class CleverError(SISRequestError):
    """A Clever request that failed; ``status`` is the HTTP status when there was one."""


class CleverAuthError(CleverError, SISAuthError):
    """Clever refused the district token (401/403). Never retried; never shows the token."""


class CleverEventsUnavailable(CleverError):
    """Events cannot serve this delta: ``reason`` is ``"disabled"`` or ``"checkpoint_expired"``."""

    def __init__(self, message: str, *, reason: str, status: int | None = 404) -> None:
        super().__init__(message, status=status, method="GET", path=f"{API_PREFIX}/events")
        self.reason = reason


class CleverClient(RestClient):
    """Reads one district from Clever's API v3.0 with its district-app bearer token.

    ``base_url`` is the API host (``https://api.clever.com``; a trailing ``/v3.0`` is
    tolerated). ``sleep`` and ``clock`` are injectable so tests never really wait.
    """

    provider = "Clever"
    error = CleverError
    auth_error = CleverAuthError
    paging_error = CleverError
    api_prefix = API_PREFIX
    non_json_hint = (
        "check that the base URL is Clever's API and the token a district-app token, and that "
        "the endpoint exists"
    )

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
        super().__init__(base_url, max_retries, backoff, timeout, session, sleep, clock)
        self.limit = limit
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"CleverClient(base_url={self.base_url!r}, limit={self.limit})"

    # -- what the base asks of a provider --------------------------------------------------

    def retryable(self, status: int) -> bool:
        return status == 429 or (500 <= status < 600 and status != 501)

    def error_details(self, response: requests.Response) -> tuple[str, str]:
        """Clever's ``{"message": ...}``."""
        try:
            body = response.json()
        except ValueError:
            return "", ""
        message = body.get("message") if isinstance(body, dict) else None
        return (str(message)[:300] if message else ""), ""

    def auth_failure(
        self, status: int, method: str, path: str, code: str, detail: str
    ) -> CleverAuthError:
        return CleverAuthError(
            f"Clever rejected the district token (HTTP {status}) for {method} {path}: "
            "check the connection's password (the district-app token) and that the "
            "district still shares data with the app",
            status=status,
            method=method,
            path=path,
        )

    def status_hint(self, status: int) -> str:
        return f" (limit may not exceed {MAX_LIMIT})" if status == 413 else ""

    def secrets(self) -> Iterable[str | None]:
        return (self._token,)

    # -- HTTP ------------------------------------------------------------------------------

    def _request(self, uri: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET ``uri`` (relative to ``/v3.0`` unless it starts with ``/``) with retries; the
        decoded JSON object of the 200."""
        if not uri.startswith(("/", "http://", "https://")):
            uri = f"{API_PREFIX}/{uri}"
        url, path = self.resolve(uri)
        response = self.send("GET", url, path, params=params, headers=self._headers)
        return self.decode_json(self.checked(response, "GET", path), "GET", path)

    # -- lists -----------------------------------------------------------------------------

    def list(self, resource: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every record of a list endpoint (``users``, ``sections``...), following ``next``.

        Yields the inner objects (each item's ``data``). ``params`` are query parameters
        (``role="student"``); None values are left out; ``limit`` defaults to the client's.
        """
        query = {key: value for key, value in params.items() if value is not None}
        query.setdefault("limit", self.limit)
        path = f"{API_PREFIX}/{resource.strip('/')}"
        guard = PageGuard(self, resource, path, ascending=True)
        uri: str | None = path
        first = True
        while uri is not None:
            guard.follow(uri)
            body = self._request(uri, query if first else None)
            first = False
            rows = body.get("data") or []
            if not isinstance(rows, list):
                raise CleverError(f"Clever answered GET {uri} without a data list")
            records = []
            for row in rows:
                record = row.get("data") if isinstance(row, dict) else None
                if not isinstance(record, dict):
                    raise CleverError(f"Clever answered GET {uri} with an item lacking data")
                records.append(record)
            guard.admit([r["id"] if isinstance(r.get("id"), str) else None for r in records])
            yield from records
            uri = self._next(body)

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

    def get_record(self, resource: str, record_id: str) -> dict[str, Any] | None:
        """One record (``GET /v3.0/{resource}/{id}``'s inner ``data``), None when Clever
        answers 404 (no such record, or no longer shared with the app).

        ``resource`` is a list name (``users``, ``sections``, ``schools``...).
        """
        name = resource.strip("/")
        if not _RESOURCE.match(name):
            raise ValueError(f"resource must be a list name such as 'users', got {resource!r}")
        if not record_id:
            raise ValueError("a record id is required")
        path = f"{API_PREFIX}/{name}/{quote(record_id, safe='')}"
        try:
            body = self._request(path)
        except CleverError as exc:
            if exc.status == 404:
                return None
            raise
        record = body.get("data")
        if not isinstance(record, dict):
            raise CleverError(
                f"Clever answered GET {path} without a data object",
                status=200,
                method="GET",
                path=path,
            )
        return record

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
