"""OneRoster 1.1 REST client: the rostering collections, with paging, OAuth and retries.

Plain Python on ``requests`` (no Airflow import); the Airflow hook only builds one of these from
a connection (base URL as host, client id as login, client secret as password).

- **Base URL.** The server's URL up to ``/ims/oneroster/v1p1`` (tolerated at the end, and any
  path before it is kept: ``https://host/district`` reads ``https://host/district/ims/...``).
- **OAuth 2** (``auth="oauth2"``, the default): client credentials. ``POST token_url`` with
  HTTP Basic client id/secret and ``grant_type=client_credentials`` (plus ``scope`` when
  given); ``token_url`` defaults to ``<base URL>/oauth/token``. The token is cached until
  ``min(60 s, expires_in / 10)`` before it expires (``expires_in`` missing: one hour). A 401
  from the API drops the token and retries the request once with a fresh one; a second 401,
  a 403 or a token endpoint refusing the client raise ``OneRosterAuthError``.
- **OAuth 1.0a** (``auth="oauth1"``, as ClassLink uses): no token; every request (every retry
  too) is signed with HMAC-SHA256 per RFC 5849 using the client id as consumer key and the
  secret as consumer secret (key ``<secret>&``), the parameters in the ``Authorization: OAuth``
  header. The signing is written here, independently of oauthlib (which the local server uses
  to verify). A 401 raises ``OneRosterAuthError`` at once.
- **Paging.** ``limit``/``offset``; the next offset is the previous one plus the rows the page
  held (so a server sending more rows than asked is followed at its own page size, logged
  once). The read ends on an empty page, or: with ``X-Total-Count``, when that many rows have
  been read (then the rows read must equal it, else ``OneRosterPagingError``); else with a
  ``Link`` header, when it has no ``rel="next"``; else at a page shorter than the page size
  (``limit``, or the server's when it sent more). The Link URLs themselves are not followed.
  A page whose ``sourcedId``\\ s were all read already means the server ignores ``offset``:
  ``OneRosterPagingError`` rather than loop; a row seen twice on an otherwise new page (the
  list shifted under the reader) is yielded once and logged.
- **Retries.** 429 waits ``Retry-After`` (seconds or an HTTP date; at most 120 s), else the
  backoff; 500/502/503/504 and connection errors back off ``backoff * 2**attempt`` (at most
  60 s). Both bounded by ``max_retries``. Other 4xx raise ``OneRosterError`` naming the
  method, path, status and the server's imsx description and code.
- Messages never hold the client secret or a token; they go only into headers.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from include.sis_sync.providers.errors import SISRequestError

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
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_BACKOFF = 60.0
MAX_RATE_LIMIT_WAIT = 120.0
DEFAULT_EXPIRES_IN = 3600
_RETRY_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
_REL = re.compile(r'rel\s*=\s*"?([^";]+)"?', re.I)


class OneRosterError(SISRequestError):
    """A OneRoster request that failed; ``code`` is the imsx codeMinor when the server sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, method=method, path=path)
        self.code = code


class OneRosterAuthError(OneRosterError):
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


def _pct(value: str) -> str:
    """RFC 5849 section 3.6 percent-encoding (unreserved characters kept)."""
    return quote(value.encode("utf-8"), safe="-._~")


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


class OneRosterClient:
    """Reads the rostering collections of a OneRoster 1.1 REST server.

    ``sleep`` and ``clock`` are injectable so tests never really wait; ``clock`` also dates
    OAuth 1.0a signatures and token expiry.
    """

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
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        base = base_url.rstrip("/")
        if base.endswith(API_PATH):
            base = base[: -len(API_PATH)]
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if token_url is not None and urlsplit(token_url).scheme not in ("http", "https"):
            raise ValueError(f"token_url must be an http(s) URL, got {token_url!r}")
        self.base_url = base
        self.api_url = base + API_PATH
        self.client_id = client_id
        self.auth = auth
        self.token_url = token_url or f"{base}/oauth/token"
        self.scope = scope
        self.limit = limit
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._secret = client_secret
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None
        self._token_renew_at = 0.0

    def __repr__(self) -> str:
        return (
            f"OneRosterClient(base_url={self.base_url!r}, client_id={self.client_id!r}, "
            f"auth={self.auth!r}, limit={self.limit})"
        )

    def close(self) -> None:
        """Close the HTTP session if the client created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> OneRosterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """``text`` without the secret or the current token, should a server echo them."""
        for secret in (self._secret, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- OAuth -----------------------------------------------------------------------------

    def _oauth1_header(self, method: str, url: str, params: list[tuple[str, str]]) -> str:
        """The ``Authorization: OAuth ...`` header signing ``method url?params`` (RFC 5849)."""
        oauth = [
            ("oauth_consumer_key", self.client_id),
            ("oauth_nonce", secrets.token_hex(16)),
            ("oauth_signature_method", "HMAC-SHA256"),
            ("oauth_timestamp", str(int(self._clock()))),
            ("oauth_version", "1.0"),
        ]
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
        if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
            host = f"{host}:{port}"
        base_uri = urlunsplit((scheme, host, parts.path or "/", "", ""))
        pairs = sorted((_pct(k), _pct(v)) for k, v in [*params, *oauth])
        normalized = "&".join(f"{k}={v}" for k, v in pairs)
        base_string = "&".join((_pct(method.upper()), _pct(base_uri), _pct(normalized)))
        key = f"{_pct(self._secret)}&".encode()
        digest = hmac.new(key, base_string.encode("utf-8"), hashlib.sha256).digest()
        signature = base64.b64encode(digest).decode("ascii")
        fields = [*oauth, ("oauth_signature", signature)]
        return "OAuth " + ", ".join(f'{_pct(k)}="{_pct(v)}"' for k, v in fields)

    def _access_token(self) -> str:
        if self._token is not None and self._clock() < self._token_renew_at:
            return self._token
        self._token = None
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        path = urlsplit(self.token_url).path or "/"
        response = self._send(
            "POST",
            path,
            lambda: self._session.post(
                self.token_url,
                data=form,
                auth=(self.client_id, self._secret),
                headers={"Accept": "application/json"},
                timeout=self.timeout,
            ),
        )
        if response.status_code != 200:
            description, code = imsx_details(response)
            detail = self._redact(f"{code}: {description}" if code else description)
            message = (
                f"the OneRoster token endpoint {self.token_url} refused client id "
                f"{self.client_id!r} (HTTP {response.status_code}"
                + (f" {detail}" if detail else "")
                + "): check the client id, client secret, token URL and scope"
            )
            error = (
                OneRosterAuthError if response.status_code in (400, 401, 403) else OneRosterError
            )
            raise error(
                message, status=response.status_code, method="POST", path=path, code=code or None
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise OneRosterAuthError(
                f"the OneRoster token endpoint {self.token_url} answered without an access_token",
                status=200,
                method="POST",
                path=path,
            )
        try:
            expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        self._token = token
        self._token_renew_at = self._clock() + expires_in - min(60.0, expires_in / 10)
        return token

    # -- HTTP ------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * (2**attempt), MAX_BACKOFF)

    def _retry_after(self, response: requests.Response, attempt: int) -> float:
        raw = (response.headers.get("Retry-After") or "").strip()
        wait: float | None = None
        if raw:
            try:
                wait = float(raw)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(raw)
                    wait = when.timestamp() - self._clock()
                except (TypeError, ValueError):
                    wait = None
        if wait is None or wait < 0:
            wait = self._backoff(attempt)
        return min(wait, MAX_RATE_LIMIT_WAIT)

    def _send(
        self, method: str, path: str, make: Callable[[], requests.Response]
    ) -> requests.Response:
        """``make()`` with retries of connection errors, 429 and 5xx; any other response."""
        attempt = 0
        while True:
            try:
                response = make()
            except _RETRY_EXCEPTIONS as exc:
                if attempt >= self.max_retries:
                    raise OneRosterError(
                        f"could not reach the OneRoster server for {method} {path} after "
                        f"{attempt + 1} attempts ({type(exc).__name__})",
                        method=method,
                        path=path,
                    ) from exc
                wait = self._backoff(attempt)
                reason = type(exc).__name__
            else:
                status = response.status_code
                if status != 429 and status not in RETRY_STATUSES:
                    return response
                if attempt >= self.max_retries:
                    description, code = imsx_details(response)
                    what = "rate limited (429)" if status == 429 else f"HTTP {status}"
                    raise OneRosterError(
                        f"OneRoster answered {what} for {method} {path} on all "
                        f"{attempt + 1} attempts"
                        + (f": {self._redact(description)}" if description else ""),
                        status=status,
                        method=method,
                        path=path,
                        code=code or None,
                    )
                if status == 429:
                    wait = self._retry_after(response, attempt)
                else:
                    wait = self._backoff(attempt)
                reason = f"HTTP {status}"
                response.close()
            log.warning(
                "OneRoster %s %s failed (%s); retry %d/%d in %.1fs",
                method,
                path,
                reason,
                attempt + 1,
                self.max_retries,
                wait,
            )
            self._sleep(wait)
            attempt += 1

    def get(self, path: str, params: list[tuple[str, str]] | None = None) -> requests.Response:
        """GET ``API_PATH + path`` with authentication and retries; the 200 response."""
        path = "/" + path.lstrip("/")
        full_path = API_PATH + path
        params = [(str(k), str(v)) for k, v in (params or [])]
        url = self.api_url + path
        if params:
            url += "?" + "&".join(f"{_pct(k)}={_pct(v)}" for k, v in params)
        refreshed = False
        while True:

            def make() -> requests.Response:
                headers = {"Accept": "application/json"}
                if self.auth == "oauth1":
                    headers["Authorization"] = self._oauth1_header("GET", url, params)
                else:
                    headers["Authorization"] = f"Bearer {self._access_token()}"
                return self._session.get(url, headers=headers, timeout=self.timeout)

            response = self._send("GET", full_path, make)
            status = response.status_code
            if status == 200:
                return response
            description, code = imsx_details(response)
            detail = self._redact(description)
            if status == 401 and self.auth == "oauth2" and not refreshed:
                log.info("OneRoster GET %s: access token refused; fetching a new one", full_path)
                self._token = None
                refreshed = True
                continue
            if status in (401, 403):
                what = (
                    "a freshly issued access token"
                    if self.auth == "oauth2"
                    else f"the OAuth 1.0a signature of client id {self.client_id!r}"
                )
                raise OneRosterAuthError(
                    f"OneRoster refused {what} for GET {full_path} (HTTP {status}"
                    + (f" {code}" if code else "")
                    + (f": {detail}" if detail else "")
                    + "): check the client id and secret, the auth method and the client's "
                    "access to this endpoint",
                    status=status,
                    method="GET",
                    path=full_path,
                    code=code or None,
                )
            raise OneRosterError(
                f"OneRoster answered HTTP {status} for GET {full_path}"
                + (f" ({code})" if code else "")
                + (f": {detail}" if detail else ""),
                status=status,
                method="GET",
                path=full_path,
                code=code or None,
            )

    @staticmethod
    def _json(response: requests.Response, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content")
            raise OneRosterError(
                f"OneRoster answered GET {path} with {kind}, not JSON",
                status=response.status_code,
                method="GET",
                path=path,
            ) from None
        if not isinstance(body, dict):
            raise OneRosterError(f"OneRoster answered GET {path} with JSON that is not an object")
        return body

    @staticmethod
    def _links(response: requests.Response) -> set[str] | None:
        """The rel values of the Link header (None when there is no Link header)."""
        header = response.headers.get("Link")
        if header is None:
            return None
        rels: set[str] = set()
        for match in _LINK.finditer(header):
            for rel in _REL.findall(match.group(2)):
                rels.update(rel.lower().split())
        return rels

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
        seen: set[str] = set()
        total: int | None = None
        adapted = False
        while True:
            response = self.get(
                f"/{name}", [("limit", str(self.limit)), ("offset", str(offset)), *kept]
            )
            body = self._json(response, path)
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
            if all(i in seen for i in ids):
                raise OneRosterPagingError(
                    f"OneRoster sent the same {name} again at offset {offset} ({len(ids)} rows "
                    "already read): the server seems to ignore offset; stopping rather than "
                    "loop",
                    method="GET",
                    path=path,
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
            duplicates = 0
            for sourced_id, row in zip(ids, rows, strict=True):
                if sourced_id in seen:
                    duplicates += 1
                    continue
                seen.add(sourced_id)
                yield row
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
        if total is not None and len(seen) != total:
            raise OneRosterPagingError(
                f"OneRoster reported X-Total-Count {total} for {name} but {len(seen)} distinct "
                "rows were read: the list changed while paging or the server pages "
                "inconsistently; run the sync again",
                method="GET",
                path=path,
            )

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
