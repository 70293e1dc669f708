"""The HTTP base the SIS REST clients (Clever, OneRoster) are built on.

Plain Python on ``requests``, ``tenacity`` and ``requests-oauthlib``/``oauthlib`` (no Airflow
import). A provider's client subclasses :class:`RestClient` and names itself (``provider``),
its errors (``error``, ``auth_error``, ``paging_error``) and how its failures read; this module
does the rest the same way for both:

- **Session and origin.** One ``requests`` session, the caller's (never closed here) or the
  client's own (closed by ``close()``). ``resolve`` turns a relative uri into a URL on the
  configured host and refuses an absolute one to any other scheme/host/port, so a credential
  never leaves for another server.
- **Retries** (:meth:`RestClient.send`) with ``tenacity``: connection errors, timeouts and
  ``ChunkedEncodingError``, 429 and the provider's retryable 5xx (``retryable``) are retried,
  at most ``max_retries`` times (``stop_after_attempt(max_retries + 1)``). The wait
  (:class:`RetryWait`, :func:`rate_limit_wait`): a 429 waits until ``X-RateLimit-Reset`` (Unix
  seconds) when that lies ahead, else ``Retry-After`` (seconds or an HTTP date), else the
  backoff, at most 120 s; everything else backs off ``backoff * 2**attempt``, at most 60 s. A
  200 with ``X-RateLimit-Remaining: 0`` makes the next request wait for the reset first.
  Waits go through the injected ``sleep`` and read the injected ``clock``. When the retries
  run out the error says what came back last (``HTTP 503 ... on all 6 attempts``, ``could not
  reach ... after 6 attempts (ConnectionError)``).
- **Failures** (:meth:`RestClient.checked`): a 200 passes; 401/403 raise the provider's auth
  error at once (a subclass of :class:`SISAuthError`); anything else the provider's error
  naming the method, path, status and the server's own description and code, with the
  credentials redacted should a server echo them.
- **JSON** (:meth:`RestClient.decode_json`): a body that is not a JSON object is reported by
  its status, content type, size and the decoder's complaint, never by its content (it may
  hold student data).
- **Paging checks** (:class:`PageGuard`): a link followed twice, ids going backwards (range
  paging), a page of rows all read already, and rows read against a count the server gave.
  The paging loops themselves stay with each provider.
- **OAuth.** :func:`oauth1_signer` signs with ``requests_oauthlib.OAuth1`` (RFC 5849, in the
  ``Authorization`` header, a fresh nonce and timestamp per request and per retry, the
  timestamp from the injected clock); :class:`BearerAuth` sets a bearer token fetched per
  request, so a token renewed during a long wait is the one sent.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import requests
import tenacity
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_AUTH_HEADER
from oauthlib.oauth1 import Client as OAuth1Client
from requests.auth import AuthBase
from requests_oauthlib import OAuth1
from tenacity.wait import wait_base

from include.sis_sync.providers.errors import SISAuthError, SISRequestError

__all__ = [
    "MAX_BACKOFF",
    "MAX_RATE_LIMIT_WAIT",
    "RETRYABLE_EXCEPTIONS",
    "BearerAuth",
    "PageGuard",
    "RestClient",
    "RetryWait",
    "backoff_wait",
    "oauth1_signer",
    "rate_limit_wait",
]

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0  # seconds, the longest wait between two retries of an error
MAX_RATE_LIMIT_WAIT = 120.0  # seconds, the longest wait a rate limit may ask for
RETRYABLE_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


# --------------------------------------------------------------------------------------------
# Waits
# --------------------------------------------------------------------------------------------


def backoff_wait(backoff: float, attempt: int) -> float:
    """``backoff * 2**attempt`` seconds (``attempt`` 0 before the first retry), at most 60."""
    return min(backoff * (2**attempt), MAX_BACKOFF)


def _seconds_until(value: str | None, now: float, *, http_date: bool) -> float | None:
    """Seconds from ``now`` given as a delay (``"7"``), a Unix time or an HTTP date."""
    raw = (value or "").strip()
    if not raw:
        return None
    try:
        number = float(raw)
    except ValueError:
        if not http_date:
            return None
        try:
            return email.utils.parsedate_to_datetime(raw).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return number if http_date else number - now


def rate_limit_wait(headers: Any, *, attempt: int, backoff: float, now: float) -> float:
    """How long a 429 waits: until ``X-RateLimit-Reset`` (Unix seconds) when that is ahead,
    else ``Retry-After`` (seconds or an HTTP date) when not past, else the backoff; at most
    ``MAX_RATE_LIMIT_WAIT``.
    """
    wait = _seconds_until(headers.get("X-RateLimit-Reset"), now, http_date=False)
    if wait is None or wait <= 0:
        wait = _seconds_until(headers.get("Retry-After"), now, http_date=True)
    if wait is None or wait < 0:
        wait = backoff_wait(backoff, attempt)
    return min(wait, MAX_RATE_LIMIT_WAIT)


class RetryWait(wait_base):
    """tenacity's wait for a SIS request: a 429 waits for the rate limit, the rest back off."""

    def __init__(self, backoff: float, clock: Callable[[], float]) -> None:
        self.backoff = backoff
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        attempt = retry_state.attempt_number - 1
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            response = outcome.result()
            if response.status_code == 429:
                return rate_limit_wait(
                    response.headers, attempt=attempt, backoff=self.backoff, now=self.clock()
                )
        return backoff_wait(self.backoff, attempt)


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------


class BearerAuth(AuthBase):
    """``Authorization: Bearer <token()>``, asked for anew on every request (and retry)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        return request


class _ClockedOAuth1Client(OAuth1Client):
    """oauthlib's RFC 5849 client, with the timestamp read from an injected clock.

    ``oauth_version`` (optional in RFC 5849) is sent as ``1.0`` unless ``version`` is None.
    A ``nonce``/``timestamp`` given to the constructor is used as is (oauthlib's test hook).
    """

    def __init__(
        self, *args: Any, clock: Callable[[], float], version: str | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._version = version

    def get_oauth_params(self, request: Any) -> list[tuple[str, str]]:
        params = []
        for name, value in super().get_oauth_params(request):
            if name == "oauth_timestamp" and self.timestamp is None:
                value = str(int(self._clock()))
            elif name == "oauth_version":
                if self._version is None:
                    continue
                value = self._version
            params.append((name, value))
        return params


def oauth1_signer(
    client_key: str,
    client_secret: str,
    *,
    clock: Callable[[], float] = time.time,
    signature_method: str = SIGNATURE_HMAC_SHA256,
    token: str | None = None,
    token_secret: str | None = None,
    version: str | None = "1.0",
    nonce: str | None = None,
    timestamp: str | None = None,
) -> OAuth1:
    """A ``requests`` auth signing every request with OAuth 1.0a (RFC 5849), in the header.

    ``client_key``/``client_secret`` are the consumer key and secret; ``token``/
    ``token_secret`` the token credentials, when the scheme has any (ClassLink's has none).
    Each request gets a fresh nonce and a timestamp from ``clock``; ``nonce`` and
    ``timestamp`` fix them (only to check a published example).
    """
    return OAuth1(
        client_key,
        client_secret,
        resource_owner_key=token,
        resource_owner_secret=token_secret,
        signature_method=signature_method,
        signature_type=SIGNATURE_TYPE_AUTH_HEADER,
        client_class=_ClockedOAuth1Client,
        clock=clock,
        version=version,
        nonce=nonce,
        timestamp=timestamp,
    )


# --------------------------------------------------------------------------------------------
# The client base
# --------------------------------------------------------------------------------------------


class RestClient:
    """What a SIS REST client shares: session, origin, retries, failures and JSON bodies.

    ``base_url`` (a trailing ``api_prefix`` cut off) is where relative uris resolve. Subclasses
    set ``provider`` (the name in messages), ``error``, ``auth_error``, ``paging_error`` and
    ``api_prefix``, and may override ``retryable``, ``error_details``, ``auth_failure``,
    ``status_hint``, ``non_json_hint`` and ``secrets``.
    """

    provider: ClassVar[str] = "SIS"
    error: ClassVar[type[SISRequestError]] = SISRequestError
    auth_error: ClassVar[type[SISAuthError]] = SISAuthError
    paging_error: ClassVar[type[SISRequestError]] = SISRequestError
    retry_statuses: ClassVar[frozenset[int]] = frozenset({429, 500, 502, 503, 504})
    non_json_hint: ClassVar[str] = ""
    api_prefix: ClassVar[str] = ""  # tolerated at the end of ``base_url``, and cut off

    def __init__(
        self,
        base_url: str,
        max_retries: int,
        backoff: float,
        timeout: float,
        session: requests.Session | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        base_url = base_url.rstrip("/")
        if self.api_prefix and base_url.endswith(self.api_prefix):
            base_url = base_url[: -len(self.api_prefix)]
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._origin = (parts.scheme, parts.netloc)
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._resume_at = 0.0  # set when the server said no requests remain in this window

    def close(self) -> None:
        """Close the HTTP session if the client created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- provider hooks --------------------------------------------------------------------

    def retryable(self, status: int) -> bool:
        """Whether an answer with this status is worth another attempt."""
        return status in self.retry_statuses

    def error_details(self, response: requests.Response) -> tuple[str, str]:
        """The server's description and code of an error answer (``""`` when none)."""
        return "", ""

    def auth_failure(
        self, status: int, method: str, path: str, code: str, detail: str
    ) -> SISAuthError:
        """The error for a 401/403 answer to an API request."""
        return self.auth_error(
            f"{self.provider} refused the credentials (HTTP {status}) for {method} {path}",
            status=status,
            method=method,
            path=path,
            code=code or None,
        )

    def status_hint(self, status: int) -> str:
        """A few words after ``HTTP <status> for <method> <path>`` (``""``: none)."""
        return ""

    def secrets(self) -> Iterable[str | None]:
        """Credentials that must never reach a message, should a server echo them."""
        return ()

    # -- URLs and messages -----------------------------------------------------------------

    def resolve(self, uri: str) -> tuple[str, str]:
        """The absolute URL of ``uri`` (relative: under ``base_url``) and its path.

        An absolute uri must be on the configured scheme, host and port.
        """
        if uri.startswith(("http://", "https://")):
            parts = urlsplit(uri)
            if (parts.scheme, parts.netloc) != self._origin:
                raise self.error(
                    f"refusing to follow a link to another host ({parts.netloc}): the "
                    f"credentials are only sent to the configured {self.provider} host"
                )
            return uri, parts.path
        return self.base_url + uri, urlsplit(uri).path

    def redact(self, text: str) -> str:
        """``text`` without any credential in it."""
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- sending ---------------------------------------------------------------------------

    def send(self, method: str, url: str, path: str, **kwargs: Any) -> requests.Response:
        """``method url`` with retries; the last answer that is not retried.

        ``kwargs`` (``params``, ``headers``, ``data``, ``auth``; None left out) go to the
        session's ``get``/``post``; ``path`` names the request in logs and errors.
        """
        call = getattr(self._session, method.lower())
        options = {key: value for key, value in kwargs.items() if value is not None}

        def attempt() -> requests.Response:
            pause = self._resume_at - self._clock()
            if pause > 0:
                self._sleep(min(pause, MAX_RATE_LIMIT_WAIT))
            self._resume_at = 0.0
            return call(url, timeout=self.timeout, **options)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=RetryWait(self.backoff, self._clock),
            retry=(
                tenacity.retry_if_exception_type(RETRYABLE_EXCEPTIONS)
                | tenacity.retry_if_result(lambda response: self.retryable(response.status_code))
            ),
            sleep=self._sleep,
            before_sleep=lambda state: self._before_retry(state, method, path),
            retry_error_callback=lambda state: self._gave_up(state, method, path),
        )
        return retrying(attempt)

    def _before_retry(self, state: tenacity.RetryCallState, method: str, path: str) -> None:
        outcome = state.outcome
        assert outcome is not None
        if outcome.failed:
            reason = type(outcome.exception()).__name__
        else:
            response = outcome.result()
            reason = f"HTTP {response.status_code}"
            response.close()
        log.warning(
            "%s %s %s failed (%s); retry %d/%d in %.1fs",
            self.provider,
            method,
            path,
            reason,
            state.attempt_number,
            self.max_retries,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def _gave_up(self, state: tenacity.RetryCallState, method: str, path: str) -> None:
        outcome = state.outcome
        assert outcome is not None
        attempts = state.attempt_number
        if outcome.failed:
            exc = outcome.exception()
            raise self.error(
                f"could not reach {self.provider} at {self.base_url} for {method} {path} after "
                f"{attempts} attempts ({type(exc).__name__})",
                method=method,
                path=path,
            ) from exc
        response = outcome.result()
        status = response.status_code
        description, code = self.error_details(response)
        what = "rate limited (429)" if status == 429 else f"HTTP {status}"
        raise self.error(
            f"{self.provider} answered {what} for {method} {path} on all {attempts} attempts"
            + (f": {self.redact(description)}" if description else ""),
            status=status,
            method=method,
            path=path,
            code=code or None,
        )

    def checked(self, response: requests.Response, method: str, path: str) -> requests.Response:
        """``response`` when it is a 200; else the provider's error (auth error on 401/403)."""
        status = response.status_code
        if status == 200:
            self._note_remaining(response)
            return response
        description, code = self.error_details(response)
        detail = self.redact(description)
        if status in (401, 403):
            raise self.auth_failure(status, method, path, code, detail)
        raise self.error(
            f"{self.provider} answered HTTP {status} for {method} {path}{self.status_hint(status)}"
            + (f" ({code})" if code else "")
            + (f": {detail}" if detail else ""),
            status=status,
            method=method,
            path=path,
            code=code or None,
        )

    def _note_remaining(self, response: requests.Response) -> None:
        """Remember to wait for the reset when the server says no requests remain."""
        if response.headers.get("X-RateLimit-Remaining", "").strip() != "0":
            return
        try:
            self._resume_at = float(response.headers.get("X-RateLimit-Reset") or 0)
        except ValueError:
            self._resume_at = 0.0

    # -- bodies ----------------------------------------------------------------------------

    def decode_json(self, response: requests.Response, method: str, path: str) -> dict[str, Any]:
        """The JSON object of ``response``'s body, or an error saying what came instead.

        The message gives the status, the content type, the body's size and the decoder's
        complaint: never the body, which may hold student data.
        """
        content = response.content or b""
        kind = response.headers.get("Content-Type") or "no Content-Type"
        status = response.status_code
        try:
            body = json.loads(content)
        except UnicodeDecodeError:
            complaint = "not UTF-8 text"
        except json.JSONDecodeError as exc:
            complaint = f"{exc.msg}: line {exc.lineno} column {exc.colno}"
        else:
            if isinstance(body, dict):
                return body
            raise self.error(
                f"{self.provider} answered {method} {path}: HTTP {status} with JSON that is not "
                f"an object (a {type(body).__name__}, {len(content)} bytes)",
                status=status,
                method=method,
                path=path,
            )
        json_type = "json" in kind.lower()
        raise self.error(
            f"{self.provider} answered {method} {path}: HTTP {status} with Content-Type {kind}"
            + ("" if json_type else ", not JSON")
            + f": {len(content)} bytes that are not valid JSON ({complaint})"
            + ("" if json_type or not self.non_json_hint else f"; {self.non_json_hint}"),
            status=status,
            method=method,
            path=path,
        )


# --------------------------------------------------------------------------------------------
# Paging checks
# --------------------------------------------------------------------------------------------


class PageGuard:
    """The checks every paging loop makes, raising the client's ``paging_error``.

    ``ascending=True`` (range paging: ids must keep ascending) remembers only the last id;
    otherwise every id read is remembered, so a row served twice is read once.
    """

    def __init__(self, client: RestClient, name: str, path: str, *, ascending: bool) -> None:
        self.client = client
        self.name = name
        self.path = path
        self.ascending = ascending
        self.count = 0  # distinct rows admitted
        self._links: set[str] = set()
        self._seen: set[str] = set()
        self._last: str | None = None

    def _fail(self, message: str) -> SISRequestError:
        return self.client.paging_error(message, method="GET", path=self.path)

    def follow(self, link: str) -> None:
        """Record a page link about to be read; one read already is an error (a loop)."""
        if link in self._links:
            provider = self.client.provider
            raise self._fail(f"{provider} paging of {self.name} repeated the link {link}")
        self._links.add(link)

    def admit(self, ids: Sequence[str | None], *, where: str = "", why: str = "") -> list[bool]:
        """Which rows of a page (by id) are new; raises when the page cannot be right.

        Ascending: an id not above the one before raises. Otherwise: a page whose ids were
        all read already raises (``where``, ``why`` say where and the likely cause); a row
        read before on an otherwise new page is marked not new.
        """
        if self.ascending:
            for row_id in ids:
                if row_id is None:
                    continue
                if self._last is not None and row_id <= self._last:
                    raise self._fail(
                        f"{self.client.provider} paging of {self.name} went backwards at "
                        f"{row_id}: stopping rather than read a record twice"
                    )
                self._last = row_id
            self.count += len(ids)
            return [True] * len(ids)
        if ids and all(row_id in self._seen for row_id in ids):
            raise self._fail(
                f"{self.client.provider} sent the same {self.name} again {where} ({len(ids)} "
                f"rows already read): {why}; stopping rather than loop"
            )
        fresh = []
        for row_id in ids:
            new = row_id is None or row_id not in self._seen
            if new and row_id is not None:
                self._seen.add(row_id)
            fresh.append(new)
        self.count += sum(fresh)
        return fresh

    def check_total(self, total: int | None, source: str) -> None:
        """The distinct rows read must equal ``total``, the count ``source`` gave (None: none)."""
        if total is not None and self.count != total:
            raise self._fail(
                f"{self.client.provider} reported {source} {total} for {self.name} but "
                f"{self.count} distinct rows were read: the list changed while paging or the "
                "server pages inconsistently; run the sync again"
            )
