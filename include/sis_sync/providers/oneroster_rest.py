"""OneRoster 1.1 REST client: the rostering collections, with paging, OAuth and retries.

Plain Python (no Airflow import) on the shared HTTP base
(:class:`include.sis_sync.providers.http.RestClient`: one ``requests`` session, retries with
``tenacity``, failures and JSON bodies read the same way as the Clever client's) and on
``oauthlib``/``requests-oauthlib`` for OAuth; the Airflow hook only builds one of these from a
connection (base URL as host, client id as login, client secret as password).

- **Base URL.** The server's URL up to ``/ims/oneroster/v1p1`` (tolerated at the end, and any
  path before it is kept: ``https://host/district`` reads ``https://host/district/ims/...``).
- **OAuth 2** (``auth="oauth2"``, the default): client credentials with oauthlib's
  ``BackendApplicationClient``: ``POST token_url`` with HTTP Basic client id/secret and
  ``grant_type=client_credentials`` (plus ``scope`` when given), through the same session and
  retries as the API calls; ``token_url`` defaults to ``<base URL>/oauth/token``. The answer
  is checked by oauthlib (an ``error``, a missing ``access_token``). The token is cached until
  ``min(60 s, expires_in / 10)`` before it expires (``expires_in`` missing: one hour), asked
  for on every request (``BearerAuth``), so a renewal falls between retries too. A 401 from
  the API drops the token and retries the request once with a fresh one; a second 401, a 403
  or a token endpoint refusing the client (400/401/403) raise ``OneRosterAuthError`` at once.
- **OAuth 1.0a** (``auth="oauth1"``, as ClassLink uses): no token; every request (every retry
  too) is signed by ``requests_oauthlib.OAuth1`` (the base's ``oauth1_signer``) with
  HMAC-SHA256, the client id as consumer key and the secret as consumer secret, a fresh nonce
  and a timestamp from the injected ``clock``, the parameters in the ``Authorization: OAuth``
  header. A 401 or 403 raises ``OneRosterAuthError`` at once.
- **Paging.** ``limit``/``offset``; the next offset is the previous one plus the rows the page
  held (so a server sending more rows than asked is followed at its own page size, logged
  once). The read ends on an empty page, or: with ``X-Total-Count``, when that many rows have
  been read (then the rows read must equal it, else ``OneRosterPagingError``); else with a
  ``Link`` header, when it has no ``rel="next"``; else at a page shorter than the page size
  (``limit``, or the server's when it sent more). The Link URLs themselves are not followed.
  A page whose ``sourcedId``\\ s were all read already means the server ignores ``offset``:
  ``OneRosterPagingError`` rather than loop; a row seen twice on an otherwise new page (the
  list shifted under the reader) is yielded once and logged (the base's ``PageGuard``).
- **Retries** (the base's). 429 waits ``Retry-After`` (seconds or an HTTP date), or until
  ``X-RateLimit-Reset`` when the server sends one, else the backoff, at most 120 s;
  500/502/503/504 and connection errors (timeouts, broken chunked bodies) back off
  ``backoff * 2**attempt`` (at most 60 s). Both bounded by ``max_retries``; the token
  endpoint is retried the same way.
- **Failures.** Other 4xx raise ``OneRosterError`` naming the method, path, status and the
  server's imsx description and code. A 200 that is not a JSON object is reported by its
  status, content type, size and the JSON decoder's complaint, never by its content.
- Messages never hold the client secret or a token; they go only into headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error
from requests.auth import HTTPBasicAuth

from include.sis_sync.providers.errors import SISAuthError, SISRequestError
from include.sis_sync.providers.http import BearerAuth, PageGuard, RestClient, oauth1_signer

__all__ = [
    "API_PATH",
    "COLLECTIONS",
    "OneRosterAuthError",
    "OneRosterClient",
    "OneRosterError",
    "OneRosterPagingError",
    "modified_since_filter",
]

log = logging.getLogger(__name__)

API_PATH = "/ims/oneroster/v1p1"
COLLECTIONS = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")
DEFAULT_EXPIRES_IN = 3600


class OneRosterError(SISRequestError):
    """A OneRoster request that failed; ``code`` is the imsx codeMinor when the server sent one."""


class OneRosterAuthError(OneRosterError, SISAuthError):
    """The server refused the client's credentials or token; never shows the secret."""


class OneRosterPagingError(OneRosterError):
    """Paging went wrong: repeated pages, or fewer/more rows than ``X-Total-Count`` said."""


def modified_since_filter(since: datetime | str, *, inclusive: bool = False) -> str:
    """``dateLastModified>'<since>'`` (``>=`` when inclusive), the delta-pull filter."""
    if isinstance(since, datetime):
        moment = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if moment.microsecond:
            text += f".{moment.microsecond // 1000:03d}"
        since = text + "Z"
    return f"dateLastModified{'>=' if inclusive else '>'}'{since}'"


def imsx_details(response: requests.Response) -> tuple[str, str]:
    """The imsx description and codeMinor of an error response, read leniently."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if isinstance(body, dict) and isinstance(body.get("statusInfoSet"), list):
        body = body["statusInfoSet"][0] if body["statusInfoSet"] else {}
    if isinstance(body, dict):
        for key in ("imsx_statusInfo", "imsx_StatusInfo", "statusInfo"):
            if isinstance(body.get(key), dict):
                body = body[key]
                break
    if not isinstance(body, dict):
        return "", ""
    description = body.get("imsx_description") or body.get("error_description") or ""
    minor = body.get("imsx_CodeMinor", body.get("imsx_codeMinor"))
    code = ""
    if isinstance(minor, str):
        code = minor
    elif isinstance(minor, dict):
        fields = minor.get("imsx_codeMinorField")
        if isinstance(fields, dict):
            fields = [fields]
        if isinstance(fields, list) and fields and isinstance(fields[0], dict):
            code = str(fields[0].get("imsx_codeMinorFieldValue") or "")
    if not code and isinstance(body.get("error"), str):
        code = body["error"]
    return str(description)[:300], code[:100]


class OneRosterClient(RestClient):
    """Reads the rostering collections of a OneRoster 1.1 REST server.

    ``sleep`` and ``clock`` are injectable so tests never really wait; ``clock`` also dates
    OAuth 1.0a signatures and token expiry.
    """

    provider = "OneRoster"
    error = OneRosterError
    auth_error = OneRosterAuthError
    paging_error = OneRosterPagingError
    api_prefix = API_PATH
    non_json_hint = "check that the base URL is the OneRoster server's"

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        auth: str = "oauth2",
        token_url: str | None = None,
        scope: str | None = None,
        limit: int = 1000,
        max_retries: int = 5,
        backoff: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        timeout: float = 60,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("a OneRoster client id and client secret are required")
        if auth not in ("oauth2", "oauth1"):
            raise ValueError(f"auth must be 'oauth2' or 'oauth1', got {auth!r}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if token_url is not None and urlsplit(token_url).scheme not in ("http", "https"):
            raise ValueError(f"token_url must be an http(s) URL, got {token_url!r}")
        super().__init__(base_url, max_retries, backoff, timeout, session, sleep, clock)
        self.api_url = self.base_url + API_PATH
        self.client_id = client_id
        self.auth = auth
        self.token_url = token_url or f"{self.base_url}/oauth/token"
        self.scope = scope
        self.limit = limit
        self._secret = client_secret
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._signer: requests.auth.AuthBase = (
            oauth1_signer(client_id, client_secret, clock=clock)
            if auth == "oauth1"
            else BearerAuth(self._access_token)
        )

    def __repr__(self) -> str:
        return (
            f"OneRosterClient(base_url={self.base_url!r}, client_id={self.client_id!r}, "
            f"auth={self.auth!r}, limit={self.limit})"
        )

    # -- what the base asks of a provider --------------------------------------------------

    def error_details(self, response: requests.Response) -> tuple[str, str]:
        return imsx_details(response)

    def auth_failure(
        self, status: int, method: str, path: str, code: str, detail: str
    ) -> OneRosterAuthError:
        if self.auth == "oauth1":
            what = f"the OAuth 1.0a signature of client id {self.client_id!r}"
        elif status == 401:  # a first 401 has dropped the token: this one refused the new one
            what = "a freshly issued access token"
        else:
            what = "the access token"
        return OneRosterAuthError(
            f"OneRoster refused {what} for {method} {path} (HTTP {status}"
            + (f" {code}" if code else "")
            + (f": {detail}" if detail else "")
            + "): check the client id and secret, the auth method and the client's "
            "access to this endpoint",
            status=status,
            method=method,
            path=path,
            code=code or None,
        )

    def secrets(self) -> Iterable[str | None]:
        return (self._secret, self._token)

    # -- OAuth 2 ---------------------------------------------------------------------------

    def _access_token(self) -> str:
        """The cached access token, or a new one from the token endpoint."""
        if self._token is not None and self._clock() < self._token_renew_at:
            return self._token
        self._token = None
        oauth = BackendApplicationClient(client_id=self.client_id)
        path = urlsplit(self.token_url).path or "/"
        response = self.send(
            "POST",
            self.token_url,
            path,
            data=oauth.prepare_request_body(scope=self.scope),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            auth=HTTPBasicAuth(self.client_id, self._secret),
        )
        if response.status_code != 200:
            description, code = imsx_details(response)
            detail = self.redact(f"{code}: {description}" if code else description)
            error = (
                OneRosterAuthError if response.status_code in (400, 401, 403) else OneRosterError
            )
            raise error(
                f"the OneRoster token endpoint {self.token_url} refused client id "
                f"{self.client_id!r} (HTTP {response.status_code}"
                + (f" {detail}" if detail else "")
                + "): check the client id, client secret, token URL and scope",
                status=response.status_code,
                method="POST",
                path=path,
                code=code or None,
            )
        body = self.decode_json(response, "POST", path)
        try:
            granted = oauth.parse_request_body_response(response.text, scope=self.scope)
        except Warning as changed:  # another scope than asked: the API says if it matters
            granted = changed.token  # type: ignore[attr-defined]
            log.warning("OneRoster token endpoint: %s", changed)
        except (OAuth2Error, ValueError, TypeError) as exc:
            granted = {"error": getattr(exc, "error", None) or type(exc).__name__}
        token = granted.get("access_token")
        if not isinstance(token, str) or not token:
            reason = granted.get("error")
            raise OneRosterAuthError(
                f"the OneRoster token endpoint {self.token_url} answered without an access_token"
                + (f" ({reason})" if reason else ""),
                status=200,
                method="POST",
                path=path,
                code=reason or None,
            )
        try:
            expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        self._token = token
        self._token_renew_at = self._clock() + expires_in - min(60.0, expires_in / 10)
        return token

    # -- HTTP ------------------------------------------------------------------------------

    def get(self, path: str, params: list[tuple[str, str]] | None = None) -> requests.Response:
        """GET ``API_PATH + path`` with authentication and retries; the 200 response."""
        path = "/" + path.lstrip("/")
        url, full_path = self.resolve(API_PATH + path)
        options = {
            "params": [(str(k), str(v)) for k, v in (params or [])],
            "headers": {"Accept": "application/json"},
            "auth": self._signer,
        }
        response = self.send("GET", url, full_path, **options)
        if response.status_code == 401 and self.auth == "oauth2":
            log.info("OneRoster GET %s: access token refused; fetching a new one", full_path)
            self._token = None
            response = self.send("GET", url, full_path, **options)
        return self.checked(response, "GET", full_path)

    @staticmethod
    def _links(response: requests.Response) -> set[str] | None:
        """The rel values of the Link header (None when there is no Link header)."""
        header = response.headers.get("Link")
        if header is None:
            return None
        return {
            rel.lower()
            for link in requests.utils.parse_header_links(header)
            for rel in str(link.get("rel") or "").split()
        }

    @staticmethod
    def _total(response: requests.Response, path: str) -> int | None:
        raw = response.headers.get("X-Total-Count")
        if raw is None or not raw.strip():
            return None
        try:
            total = int(raw.strip())
        except ValueError:
            log.warning("OneRoster GET %s: ignoring X-Total-Count %r", path, raw[:40])
            return None
        return total if total >= 0 else None

    # -- collections -----------------------------------------------------------------------

    def collection(
        self,
        name: str,
        *,
        filter: str | None = None,
        sort: str | None = None,
        order_by: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every object of a collection (``orgs``, ``users``...), page by page.

        Yields the objects as served, ``tobedeleted`` ones included. ``filter`` is passed as
        is (``modified_since_filter`` builds the delta one).
        """
        if name not in COLLECTIONS:
            raise ValueError(f"unknown collection {name!r}; expected one of {COLLECTIONS}")
        path = f"{API_PATH}/{name}"
        extra = [("filter", filter), ("sort", sort), ("orderBy", order_by)]
        kept = [(k, v) for k, v in extra if v]
        offset = 0
        page_size = self.limit
        guard = PageGuard(self, name, path, ascending=False)
        total: int | None = None
        adapted = False
        while True:
            response = self.get(
                f"/{name}", [("limit", str(self.limit)), ("offset", str(offset)), *kept]
            )
            body = self.decode_json(response, "GET", path)
            rows = body.get(name)
            if not isinstance(rows, list):
                raise OneRosterError(
                    f"OneRoster answered GET {path} without a {name!r} list "
                    f"(keys: {', '.join(sorted(body)[:5]) or 'none'})",
                    status=200,
                    method="GET",
                    path=path,
                )
            page_total = self._total(response, path)
            if page_total is not None:
                total = page_total
            rels = self._links(response)
            if not rows:
                break
            ids: list[str] = []
            for row in rows:
                sourced_id = row.get("sourcedId") if isinstance(row, dict) else None
                if not isinstance(sourced_id, str) or not sourced_id:
                    raise OneRosterError(
                        f"OneRoster answered GET {path} (offset {offset}) with an object "
                        "without a sourcedId",
                        status=200,
                        method="GET",
                        path=path,
                    )
                ids.append(sourced_id)
            fresh = guard.admit(
                ids, where=f"at offset {offset}", why="the server seems to ignore offset"
            )
            if len(rows) > page_size:
                if not adapted:
                    log.warning(
                        "OneRoster GET %s sent %d rows for limit=%d: following the server's "
                        "page size",
                        path,
                        len(rows),
                        self.limit,
                    )
                adapted = True
                page_size = len(rows)
            yield from (row for row, new in zip(rows, fresh, strict=True) if new)
            duplicates = fresh.count(False)
            if duplicates:
                log.warning(
                    "OneRoster GET %s: %d %s at offset %d were already read (the list shifted "
                    "while paging); skipped",
                    path,
                    duplicates,
                    name,
                    offset,
                )
            offset += len(rows)
            if total is not None:
                if offset >= total:
                    break
            elif rels is not None:
                if "next" not in rels:
                    break
            elif len(rows) < page_size:
                break
        guard.check_total(total, "X-Total-Count")

    def orgs(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("orgs", **kw)

    def academic_sessions(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("academicSessions", **kw)

    def courses(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("courses", **kw)

    def classes(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("classes", **kw)

    def users(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("users", **kw)

    def enrollments(self, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.collection("enrollments", **kw)
