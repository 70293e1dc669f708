"""A local OneRoster 1.1 REST server (rostering, read-only), over real HTTP on 127.0.0.1.

Why: the OneRoster REST provider must be tested against something that answers the way SIS
vendors' OneRoster servers do (collection envelopes, GUIDRefs, ``limit``/``offset`` paging with
or without headers, filters, OAuth 2 client credentials or ClassLink-style OAuth 1.0a
signatures, imsx error bodies) without real credentials or the network, and against the ways
they misbehave (ignoring ``limit`` or ``offset``, rate limits, expiring tokens).

Served under ``/ims/oneroster/v1p1`` (``API_PREFIX``), GET only:

- collections ``/orgs``, ``/academicSessions``, ``/courses``, ``/classes``, ``/users``,
  ``/enrollments`` answer ``{"<collection>": [...]}``; ``/schools`` (orgs of type school, key
  ``orgs``), ``/students`` and ``/teachers`` (users of that role, key ``users``);
- items ``/<collection>/{sourcedId}`` answer ``{"<singular>": {...}}`` (``org``,
  ``academicSession``, ``course``, ``class``, ``user``, ``enrollment``), 404 when unknown.

Query parameters: ``limit`` (default 100, no maximum) and ``offset`` (default 0);
``filter=<field><op>'<value>'`` with ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` or ``~``
(contains, case-insensitive), at most two clauses joined by `` AND `` or `` OR ``, on the
top-level scalar fields of the collection (``dateLastModified`` compares as a date-time; a
date alone is midnight UTC); ``sort=<field>&orderBy=asc|desc`` (default ``sourcedId`` ascending,
ties broken by ``sourcedId``); ``fields=a,b`` keeps only those top-level fields.

Authentication (``auth=``):

- ``"oauth2"``: ``POST /oauth/token`` (``token_url``) with HTTP Basic client id/secret and the
  form ``grant_type=client_credentials`` (``scope`` optional; any of the server's scopes)
  answers ``{"access_token", "token_type": "bearer", "expires_in", "scope"}``; errors follow
  RFC 6749 (``{"error": "invalid_client"|"invalid_scope"|"unsupported_grant_type", ...}``).
  API calls need ``Authorization: Bearer <token>``; a missing, unknown or expired token is
  401 with an imsx body and ``WWW-Authenticate: Bearer error="invalid_token"``.
- ``"oauth1"``: no token endpoint (404). Every API call must carry an OAuth 1.0a
  ``HMAC-SHA256`` signature made with the client id as consumer key and the secret as consumer
  secret, no token (ClassLink's scheme), in the ``Authorization: OAuth ...`` header or in the
  query. The signature is verified with oauthlib's RFC 5849 implementation (parameters from the
  header and query, base string URI from the ``Host`` header); the timestamp must be within
  ``oauth1_window`` seconds of the server's time and a nonce may be used once.

Paging styles (``paging=``): ``"total"`` sends ``X-Total-Count`` and a ``Link`` header
(``first``, ``prev``, ``next`` while rows remain, ``last``; absolute URLs keeping every other
parameter); ``"link"`` the ``Link`` header only; ``"short"`` and ``"empty"`` neither. With
``"short"`` a client knows the end by a page shorter than ``limit``; ``"empty"`` is the same on
the wire, for the case the tests set up where the row count is a multiple of ``limit``, so the
last page is full and only the next, empty, page tells the end.

Misbehaviour on demand: ``ignore_limit=True`` answers every row from ``offset`` on whatever
``limit`` says, ``ignore_limit=<n>`` pages of ``n`` rows whatever ``limit`` says;
``repeat_pages=True`` ignores ``offset`` (always the first page); ``fail_next``,
``rate_limit_next`` (429 with ``Retry-After``) and ``expire_tokens``.

Where the specification is silent, the simulator assumes:

1. **Errors** are a bare imsx_StatusInfo object: ``{"imsx_codeMajor": "failure",
   "imsx_severity": "error", "imsx_description": "...", "imsx_CodeMinor":
   {"imsx_codeMinorField": [{"imsx_codeMinorFieldName": "TargetEndSystem",
   "imsx_codeMinorFieldValue": "<code>"}]}}`` with codes ``invalid_filter_field`` (400, bad
   filter), ``invalid_selection_field`` (400, bad ``fields``), ``invaliddata`` (400, bad
   ``limit``/``offset``/``sort``), ``unauthorisedrequest`` (401), ``forbidden`` (403),
   ``unknownobject`` (404), ``server_busy`` (429) and ``internal_server_error`` (5xx).
2. **Objects** converted from the generator's OneRoster CSV frames: blank ``status`` is
   ``active`` and blank ``dateLastModified`` is ``BASE_STAMP`` (2026-08-01); blank optional
   scalars are left out; multi-value cells become lists; ``enabledUser`` and ``primary`` are
   JSON booleans (strings ``"true"``/``"false"``, as ClassLink sends them, with
   ``string_booleans=True``); a user without CSV ``userIds`` gets ``[{"type": "SIS",
   "identifier": <identifier>}]``; passwords are never served; orgs and academic sessions
   carry ``children`` GUIDRefs computed from ``parent``; class terms are GUIDRefs of type
   ``academicSession``.
3. **GUIDRef hrefs** are held relative (``/ims/oneroster/v1p1/users/<id>``) and served
   absolute, under the server's own base URL.
4. **Changes** (``update``, ``add``, ``mark_deleted``, ``remove``, ``apply``) stamp
   ``dateLastModified`` with ``clock()`` but never earlier than 1 ms after the newest stamp
   already held, so a ``dateLastModified>`` delta always sees them. ``mark_deleted`` keeps the
   object with ``status: tobedeleted``; ``remove`` drops it outright (a delta never sees that).
5. **Order**: rows are paged in ``sourcedId`` order unless ``sort`` says otherwise, so offsets
   are stable between requests while nothing is added.

``requests`` logs ``{method, path, query, status, auth}`` of every request (``auth`` is the
kind of credential presented: ``bearer``, ``oauth1``, ``basic`` or None); never a header value,
a token, a secret or an ``oauth_signature``.

Run ``python -m include.sis_sync.simulators.oneroster --preset demo --port 8766 --client-id X
--client-secret Y [--auth oauth1]`` to serve a generated district until SIGINT/SIGTERM
(SIGUSR1 moves the district on a day). The secret is never printed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from oauthlib.oauth1.rfc5849 import signature as oauth1_signature

from include.sis_sync.simulators.http import (
    Answer,
    LocalServer,
    Request,
    district_parser,
    serve_until_stopped,
)

if TYPE_CHECKING:
    from include.sis_sync.sample.generator import District

__all__ = [
    "API_PREFIX",
    "BASE_STAMP",
    "COLLECTIONS",
    "DEFAULT_LIMIT",
    "DEFAULT_SCOPE",
    "PAGING_STYLES",
    "SINGULAR",
    "TOKEN_PATH",
    "OneRosterData",
    "OneRosterServer",
    "guid_ref",
    "imsx_error",
    "main",
    "oneroster_data_from_district",
]

API_PREFIX = "/ims/oneroster/v1p1"
TOKEN_PATH = "/oauth/token"
COLLECTIONS = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")
SINGULAR = {
    "orgs": "org",
    "academicSessions": "academicSession",
    "courses": "course",
    "classes": "class",
    "users": "user",
    "enrollments": "enrollment",
}
# Endpoints serving a subset of a collection: path -> (collection, field, value).
SUBSETS = {
    "schools": ("orgs", "type", "school"),
    "students": ("users", "role", "student"),
    "teachers": ("users", "role", "teacher"),
}
SCOPE_ROOT = "https://purl.imsglobal.org/spec/or/v1p1/scope/"
DEFAULT_SCOPE = f"{SCOPE_ROOT}roster-core.readonly {SCOPE_ROOT}roster.readonly"
PAGING_STYLES = ("total", "link", "short", "empty")
DEFAULT_LIMIT = 100
BASE_STAMP = "2026-08-01T00:00:00.000Z"
OAUTH1_METHOD = "HMAC-SHA256"
# Top-level scalar fields a filter or sort may name, per collection.
BASE_FIELDS = ("sourcedId", "status", "dateLastModified")
SCALAR_FIELDS: dict[str, tuple[str, ...]] = {
    "orgs": (*BASE_FIELDS, "name", "type", "identifier"),
    "academicSessions": (*BASE_FIELDS, "title", "type", "startDate", "endDate", "schoolYear"),
    "courses": (*BASE_FIELDS, "title", "courseCode"),
    "classes": (*BASE_FIELDS, "title", "classCode", "classType", "location"),
    "users": (
        *BASE_FIELDS,
        "username",
        "enabledUser",
        "givenName",
        "familyName",
        "middleName",
        "role",
        "identifier",
        "email",
        "sms",
        "phone",
    ),
    "enrollments": (*BASE_FIELDS, "role", "primary", "beginDate", "endDate"),
}
_CLAUSE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<|~)\s*'(.*)'\s*$", re.S)
_CONNECTOR = re.compile(r"\s+(AND|OR)\s+")
_CODE_BY_STATUS = {
    400: "invaliddata",
    401: "unauthorisedrequest",
    403: "forbidden",
    404: "unknownobject",
    429: "server_busy",
}


def _stamp(moment: float) -> str:
    """An ISO-8601 UTC timestamp with milliseconds (``2026-08-01T00:00:00.000Z``)."""
    when = datetime.fromtimestamp(moment, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _parse_moment(value: str) -> datetime:
    """A date-time (or a date: midnight UTC) as an aware datetime; ValueError when not one."""
    text = value.strip()
    if not text:
        raise ValueError("empty date-time")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# The district as OneRoster 1.1 JSON objects
# --------------------------------------------------------------------------------------------


@dataclass
class OneRosterData:
    """A district as OneRoster 1.1 REST objects, each collection keyed by ``sourcedId``."""

    orgs: dict[str, dict[str, Any]] = field(default_factory=dict)
    academic_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrollments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def collections(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every collection keyed by its endpoint name (``academicSessions``...)."""
        return {
            "orgs": self.orgs,
            "academicSessions": self.academic_sessions,
            "courses": self.courses,
            "classes": self.classes,
            "users": self.users,
            "enrollments": self.enrollments,
        }

    def counts(self) -> dict[str, int]:
        return {name: len(objects) for name, objects in self.collections().items()}


def guid_ref(kind: str, sourced_id: str) -> dict[str, str]:
    """A GUIDRef with a relative href (served absolute)."""
    collection = {
        "org": "orgs",
        "academicSession": "academicSessions",
        "course": "courses",
        "class": "classes",
        "user": "users",
        "enrollment": "enrollments",
    }[kind]
    href = f"{API_PREFIX}/{collection}/{sourced_id}"
    return {"href": href, "sourcedId": sourced_id, "type": kind}


def _split(value: Any) -> list[str]:
    """A OneRoster multi-value cell as a list (blank -> [])."""
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _user_ids(cell: str, identifier: str) -> list[dict[str, str]]:
    """CSV ``userIds`` (``{type:id},{type:id}``) as objects; the SIS number when blank."""
    found = [
        {"type": kind.strip(), "identifier": value.strip()}
        for kind, value in re.findall(r"\{([^:{}]*):([^{}]*)\}", cell or "")
    ]
    if not found and identifier:
        found = [{"type": "SIS", "identifier": identifier}]
    return found


def _records(frame: Any) -> list[dict[str, str]]:
    return [
        {key: "" if value is None else str(value) for key, value in row.items()}
        for row in frame.to_dict("records")
    ]


def oneroster_data_from_district(
    district: District, *, last_modified: str = BASE_STAMP, string_booleans: bool = False
) -> OneRosterData:
    """Convert the generator's OneRoster CSV frames into OneRoster 1.1 JSON objects.

    Deterministic. Rows with a status/dateLastModified keep them; blanks become ``active`` and
    ``last_modified``. ``string_booleans`` sends ``enabledUser``/``primary`` as ``"true"``.
    """

    def flag(cell: str) -> bool | str:
        value = cell.strip().lower() == "true"
        return ("true" if value else "false") if string_booleans else value

    def base(row: dict[str, str]) -> dict[str, Any]:
        return {
            "sourcedId": row["sourcedId"],
            "status": row["status"] or "active",
            "dateLastModified": row["dateLastModified"] or last_modified,
        }

    def optional(obj: dict[str, Any], row: dict[str, str], *names: str) -> None:
        for name in names:
            if row.get(name):
                obj[name] = row[name]

    data = OneRosterData()
    orgs = _records(district.orgs)
    for row in orgs:
        obj = {**base(row), "name": row["name"], "type": row["type"]}
        optional(obj, row, "identifier")
        if row["parentSourcedId"]:
            obj["parent"] = guid_ref("org", row["parentSourcedId"])
        obj["children"] = [
            guid_ref("org", o["sourcedId"])
            for o in orgs
            if o["parentSourcedId"] == row["sourcedId"]
        ]
        data.orgs[row["sourcedId"]] = obj
    sessions = _records(district.academic_sessions)
    for row in sessions:
        obj = {**base(row), "title": row["title"], "type": row["type"]}
        optional(obj, row, "startDate", "endDate")
        if row["parentSourcedId"]:
            obj["parent"] = guid_ref("academicSession", row["parentSourcedId"])
        obj["children"] = [
            guid_ref("academicSession", s["sourcedId"])
            for s in sessions
            if s["parentSourcedId"] == row["sourcedId"]
        ]
        optional(obj, row, "schoolYear")
        data.academic_sessions[row["sourcedId"]] = obj
    for row in _records(district.courses):
        obj = {**base(row), "title": row["title"]}
        if row["schoolYearSourcedId"]:
            obj["schoolYear"] = guid_ref("academicSession", row["schoolYearSourcedId"])
        optional(obj, row, "courseCode")
        obj["grades"] = _split(row["grades"])
        obj["subjects"] = _split(row["subjects"])
        obj["subjectCodes"] = _split(row["subjectCodes"])
        obj["org"] = guid_ref("org", row["orgSourcedId"])
        data.courses[row["sourcedId"]] = obj
    for row in _records(district.classes):
        obj = {**base(row), "title": row["title"]}
        optional(obj, row, "classCode", "classType", "location")
        obj["grades"] = _split(row["grades"])
        obj["subjects"] = _split(row["subjects"])
        obj["subjectCodes"] = _split(row["subjectCodes"])
        obj["periods"] = _split(row["periods"])
        obj["course"] = guid_ref("course", row["courseSourcedId"])
        obj["school"] = guid_ref("org", row["schoolSourcedId"])
        obj["terms"] = [guid_ref("academicSession", t) for t in _split(row["termSourcedIds"])]
        data.classes[row["sourcedId"]] = obj
    for row in _records(district.users):
        obj = {
            **base(row),
            "username": row["username"],
            "userIds": _user_ids(row["userIds"], row["identifier"]),
            "enabledUser": flag(row["enabledUser"] or "true"),
            "givenName": row["givenName"],
            "familyName": row["familyName"],
        }
        optional(obj, row, "middleName")
        obj["role"] = row["role"]
        optional(obj, row, "identifier", "email", "sms", "phone")
        obj["agents"] = [guid_ref("user", a) for a in _split(row["agentSourcedIds"])]
        obj["orgs"] = [guid_ref("org", o) for o in _split(row["orgSourcedIds"])]
        obj["grades"] = _split(row["grades"])
        data.users[row["sourcedId"]] = obj
    for row in _records(district.enrollments):
        obj = {
            **base(row),
            "user": guid_ref("user", row["userSourcedId"]),
            "class": guid_ref("class", row["classSourcedId"]),
            "school": guid_ref("org", row["schoolSourcedId"]),
            "role": row["role"],
            "primary": flag(row["primary"] or "false"),
        }
        optional(obj, row, "beginDate", "endDate")
        data.enrollments[row["sourcedId"]] = obj
    for objects in data.collections().values():
        ordered = dict(sorted(objects.items()))
        objects.clear()
        objects.update(ordered)
    return data


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def imsx_error(status: int, description: str, code_minor: str | None = None) -> dict[str, Any]:
    """An imsx_StatusInfo failure body."""
    code = (
        code_minor
        or _CODE_BY_STATUS.get(status)
        or ("internal_server_error" if status >= 500 else "invaliddata")
    )
    return {
        "imsx_codeMajor": "failure",
        "imsx_severity": "error",
        "imsx_description": description,
        "imsx_CodeMinor": {
            "imsx_codeMinorField": [
                {"imsx_codeMinorFieldName": "TargetEndSystem", "imsx_codeMinorFieldValue": code}
            ]
        },
    }


def _error(status: int, description: str, code: str | None = None, **headers: str) -> Answer:
    return Answer(status, imsx_error(status, description, code), dict(headers))


def _oauth_error(status: int, error: str, description: str, **headers: str) -> Answer:
    body = {"error": error, "error_description": description}
    return Answer(status, body, {"Cache-Control": "no-store", **headers})


@dataclass
class _Fault:
    status: int
    remaining: int
    path_prefix: str
    headers: dict[str, str]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class OneRosterServer(LocalServer):
    """A OneRoster 1.1 REST server for one district, in a background thread.

    ``start()`` binds ``host``:``port`` (0: a free port) and returns ``base_url``
    (``http://127.0.0.1:<port>``); the API is under ``base_url + API_PREFIX`` (``api_url``)
    and the OAuth 2 token endpoint at ``token_url``. ``clock`` gives the time stamped on
    changes (settable: ``server.clock = lambda: ...``); ``auth_clock`` the time tokens expire
    and OAuth 1.0a timestamps are checked against. ``paging``, ``ignore_limit`` and
    ``repeat_pages`` are plain attributes too and may change between requests.
    """

    server_version = "OneRosterSimulator/1.1"
    thread_name = "oneroster-simulator"

    def __init__(
        self,
        data: OneRosterData,
        *,
        client_id: str,
        client_secret: str,
        auth: str = "oauth2",
        token_ttl: int = 3600,
        scope: str = DEFAULT_SCOPE,
        paging: str = "total",
        ignore_limit: bool | int = False,
        repeat_pages: bool = False,
        oauth1_window: float = 300.0,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        auth_clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("a client id and a client secret are required")
        if auth not in ("oauth2", "oauth1"):
            raise ValueError(f"auth must be 'oauth2' or 'oauth1', got {auth!r}")
        if paging not in PAGING_STYLES:
            raise ValueError(f"paging must be one of {', '.join(PAGING_STYLES)}, got {paging!r}")
        if token_ttl < 1:
            raise ValueError("token_ttl must be at least 1 second")
        self.client_id = client_id
        super().__init__(host, port)
        self._secret = client_secret
        self.auth = auth
        self.token_ttl = token_ttl
        self.scopes = frozenset(scope.split())
        self.paging = paging
        self.ignore_limit = ignore_limit
        self.repeat_pages = repeat_pages
        self.oauth1_window = oauth1_window
        self.clock = clock
        self.auth_clock = auth_clock
        self.requests: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self._store = copy.deepcopy(data.collections())
        self._tokens: dict[str, float] = {}  # access token -> expiry (auth_clock seconds)
        self._nonces: dict[tuple[str, str], float] = {}  # (timestamp, nonce) -> first seen
        self._faults: list[_Fault] = []
        self._latest = max(
            (
                _parse_moment(obj["dateLastModified"]).timestamp()
                for objects in self._store.values()
                for obj in objects.values()
                if obj.get("dateLastModified")
            ),
            default=0.0,
        )

    def __repr__(self) -> str:
        return f"OneRosterServer(base_url={self.base_url!r}, auth={self.auth!r})"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    # -- faults and tokens -----------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        path_prefix: str = "",
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status``.

        ``path_prefix`` is matched against the request path with or without the API prefix
        (``"/users"`` is ``/ims/oneroster/v1p1/users``; ``"/oauth/token"`` the token endpoint);
        ``""`` matches every request. The body is an imsx failure.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        prefix = path_prefix
        if prefix and not prefix.startswith((API_PREFIX, "/oauth")):
            prefix = API_PREFIX + "/" + prefix.lstrip("/")
        with self._lock:
            self._faults.append(_Fault(status, count, prefix, dict(headers or {})))

    def rate_limit_next(
        self, count: int = 1, *, retry_after: int = 1, path_prefix: str = ""
    ) -> None:
        """Answer the next ``count`` requests with 429 and ``Retry-After: retry_after``."""
        self.fail_next(
            429, count, path_prefix, headers={"Retry-After": str(max(0, int(retry_after)))}
        )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> int:
        """Expire every access token issued so far; returns how many were live."""
        with self._lock:
            now = self.auth_clock()
            live = sum(1 for expiry in self._tokens.values() if expiry > now)
            for token in self._tokens:
                self._tokens[token] = now
            return live

    def _take_fault(self, path: str) -> Answer | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    break
            else:
                return None
        if fault.status == 429:
            text = "server busy: too many requests, retry later"
        elif fault.status >= 500:
            text = "internal server error (injected)"
        else:
            text = f"injected HTTP {fault.status}"
        return _error(fault.status, text, **fault.headers)

    # -- request handling ------------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        try:
            answer = self._answer(request)
        except Exception as exc:  # a simulator bug must still answer, and visibly
            answer = _error(500, f"simulator error: {type(exc).__name__}: {exc}")
        query = parse_qs(request.raw_query, keep_blank_values=True)
        authorization = request.headers.get("authorization", "")
        scheme = authorization.partition(" ")[0].lower()
        kind = {"bearer": "bearer", "oauth": "oauth1", "basic": "basic"}.get(scheme)
        if kind is None and "oauth_signature" in query:
            kind = "oauth1"
        with self._lock:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": {
                        k: v[0] if len(v) == 1 else list(v)
                        for k, v in query.items()
                        if not k.startswith("oauth_")
                    },
                    "status": answer.status,
                    "auth": kind,
                }
            )
        return answer

    def _answer(self, request: Request) -> Answer:
        fault = self._take_fault(request.path)
        if fault is not None:
            return fault
        if request.path == TOKEN_PATH and self.auth == "oauth2":
            return self._token(request)
        if not request.path.startswith(API_PREFIX + "/"):
            return _error(404, f"no such endpoint: {request.path}")
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        if request.method not in ("GET", "HEAD"):
            return _error(
                405, f"{request.method} is not supported: the server is read-only", Allow="GET"
            )
        segments = [s for s in request.path[len(API_PREFIX) + 1 :].split("/") if s]
        query = parse_qs(request.raw_query, keep_blank_values=True)
        if len(segments) == 1 and segments[0] in COLLECTIONS:
            return self._list(segments[0], segments[0], query, None)
        if len(segments) == 1 and segments[0] in SUBSETS:
            collection, name, value = SUBSETS[segments[0]]
            return self._list(collection, segments[0], query, (name, value))
        if len(segments) == 2 and segments[0] in COLLECTIONS:
            return self._item(*segments)
        return _error(404, f"no such endpoint: {request.path}")

    # -- OAuth 2 ---------------------------------------------------------------------------

    def _basic_credentials(self, authorization: str) -> tuple[str, str] | None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, sep, secret = decoded.partition(":")
        return (client_id, secret) if sep else None

    def _client_matches(self, client_id: str, secret: str) -> bool:
        """RFC 6749 form-encodes Basic credentials; most clients do not: accept either."""
        for cid, sec in ((client_id, secret), (unquote_plus(client_id), unquote_plus(secret))):
            if hmac.compare_digest(cid.encode(), self.client_id.encode()) and hmac.compare_digest(
                sec.encode(), self._secret.encode()
            ):
                return True
        return False

    def _token(self, request: Request) -> Answer:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "use POST", Allow="POST")
        credentials = self._basic_credentials(request.headers.get("authorization", ""))
        if credentials is None or not self._client_matches(*credentials):
            return _oauth_error(
                401,
                "invalid_client",
                "client authentication failed (HTTP Basic with the client id and secret)",
                **{"WWW-Authenticate": 'Basic realm="oneroster"'},
            )
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        grant = (form.get("grant_type") or [""])[-1]
        if grant != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "only grant_type=client_credentials is supported"
            )
        asked = (form.get("scope") or [""])[-1].split()
        unknown = sorted(set(asked) - self.scopes)
        if unknown:
            return _oauth_error(400, "invalid_scope", f"unknown scope(s): {' '.join(unknown)}")
        granted = " ".join(asked) if asked else " ".join(sorted(self.scopes))
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = self.auth_clock()
            self._tokens = {t: e for t, e in self._tokens.items() if e > now - 86_400}
            self._tokens[token] = now + self.token_ttl
            self.tokens_issued += 1
        return Answer(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_ttl,
                "scope": granted,
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _authenticate(self, request: Request) -> Answer | None:
        if self.auth == "oauth1":
            return self._verify_oauth1(request)
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _error(
                401,
                "unauthorised request: a bearer access token is required",
                **{"WWW-Authenticate": 'Bearer realm="oneroster"'},
            )
        with self._lock:
            expiry = self._tokens.get(token)
            live = expiry is not None and expiry > self.auth_clock()
        if not live:
            return _error(
                401,
                "unauthorised request: the access token is unknown or has expired",
                **{"WWW-Authenticate": 'Bearer realm="oneroster", error="invalid_token"'},
            )
        return None

    # -- OAuth 1.0a ------------------------------------------------------------------------

    def _verify_oauth1(self, request: Request) -> Answer | None:
        def deny(reason: str) -> Answer:
            return _error(
                401,
                f"unauthorised request: {reason}",
                **{"WWW-Authenticate": 'OAuth realm="oneroster"'},
            )

        authorization = request.headers.get("authorization", "")
        headers = {"Authorization": authorization} if authorization.startswith("OAuth ") else {}
        try:
            params = oauth1_signature.collect_parameters(
                uri_query=request.raw_query, headers=headers, exclude_oauth_signature=False
            )
        except ValueError as exc:
            return deny(f"the OAuth 1.0a parameters cannot be read ({exc})")
        oauth = {}
        for name, value in params:
            if name.startswith("oauth_"):
                if name in oauth:
                    return deny(f"{name} is given twice")
                oauth[name] = value
        required = (
            "oauth_consumer_key",
            "oauth_signature_method",
            "oauth_signature",
            "oauth_timestamp",
            "oauth_nonce",
        )
        missing = [name for name in required if not oauth.get(name)]
        if missing:
            return deny(f"an OAuth 1.0a signature is required (missing {', '.join(missing)})")
        if oauth["oauth_signature_method"] != OAUTH1_METHOD:
            return deny(f"oauth_signature_method must be {OAUTH1_METHOD}")
        if oauth.get("oauth_version", "1.0") != "1.0":
            return deny("oauth_version must be 1.0")
        if not hmac.compare_digest(oauth["oauth_consumer_key"].encode(), self.client_id.encode()):
            return deny("unknown consumer key")
        try:
            stamp = int(oauth["oauth_timestamp"])
        except ValueError:
            return deny("oauth_timestamp must be whole seconds")
        now = self.auth_clock()
        if abs(now - stamp) > self.oauth1_window:
            return deny("oauth_timestamp is too far from the server's time")
        host = request.headers.get("host") or urlsplit(self.base_url).netloc
        uri = f"http://{host}{request.path}"
        signed = SimpleNamespace(
            uri=uri,
            http_method=request.method,
            params=[(k, v) for k, v in params if k != "oauth_signature"],
            signature=oauth["oauth_signature"],
        )
        try:
            valid = oauth1_signature.verify_hmac_sha256(signed, client_secret=self._secret)
        except ValueError as exc:
            return deny(f"the signature cannot be checked ({exc})")
        if not valid:
            return deny("invalid OAuth 1.0a signature")
        key = (oauth["oauth_timestamp"], oauth["oauth_nonce"])
        with self._lock:
            self._nonces = {
                k: seen for k, seen in self._nonces.items() if seen > now - 2 * self.oauth1_window
            }
            if key in self._nonces:
                return deny("oauth_nonce has already been used")
            self._nonces[key] = now
        return None

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _one(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def _int_param(
        self, query: dict[str, list[str]], name: str, default: int, minimum: int
    ) -> int | Answer:
        raw = self._one(query, name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            return _error(400, f"{name} must be an integer, got {raw!r}")
        if value < minimum:
            return _error(400, f"{name} must be at least {minimum}")
        return value

    def _predicate(self, collection: str, text: str) -> Callable[[dict[str, Any]], bool] | Answer:
        """A filter expression as a predicate over objects (or a 400 answer)."""
        parts = _CONNECTOR.split(text.strip())
        clauses, connectors = parts[0::2], parts[1::2]
        if len(clauses) > 2 or len(set(connectors)) > 1:
            return _error(
                400,
                f"invalid filter {text!r}: at most two clauses joined by ' AND ' or ' OR '",
                "invalid_filter_field",
            )
        tests: list[Callable[[dict[str, Any]], bool]] = []
        for clause in clauses:
            match = _CLAUSE.match(clause)
            if match is None:
                return _error(
                    400,
                    f"invalid filter clause {clause!r}: expected <field><op>'<value>'",
                    "invalid_filter_field",
                )
            name, op, value = match.groups()
            if name not in SCALAR_FIELDS[collection]:
                return _error(
                    400, f"invalid filter field {name!r} for {collection}", "invalid_filter_field"
                )
            if name == "dateLastModified" and op != "~":
                try:
                    bound = _parse_moment(value)
                except ValueError:
                    return _error(
                        400,
                        f"invalid filter value {value!r}: dateLastModified needs an ISO-8601 "
                        "date or date-time",
                        "invalid_filter_field",
                    )
                tests.append(_moment_test(name, op, bound))
            else:
                tests.append(_text_test(name, op, value))
        if len(tests) == 1:
            return tests[0]
        first, second = tests
        if connectors[0] == "AND":
            return lambda obj: first(obj) and second(obj)
        return lambda obj: first(obj) or second(obj)

    def _list(
        self,
        collection: str,
        endpoint: str,
        query: dict[str, list[str]],
        subset: tuple[str, str] | None,
    ) -> Answer:
        limit = self._int_param(query, "limit", DEFAULT_LIMIT, 1)
        if isinstance(limit, Answer):
            return limit
        offset = self._int_param(query, "offset", 0, 0)
        if isinstance(offset, Answer):
            return offset
        predicate = None
        text = self._one(query, "filter")
        if text:
            predicate = self._predicate(collection, text)
            if isinstance(predicate, Answer):
                return predicate
        sort = self._one(query, "sort") or "sourcedId"
        if sort not in SCALAR_FIELDS[collection]:
            return _error(400, f"invalid sort field {sort!r} for {collection}")
        order = (self._one(query, "orderBy") or "asc").lower()
        if order not in ("asc", "desc"):
            return _error(400, f"orderBy must be asc or desc, got {order!r}")
        fields = [f for f in (self._one(query, "fields") or "").split(",") if f.strip()]
        with self._lock:
            rows = list(self._store[collection].values())
            if subset is not None:
                rows = [r for r in rows if r.get(subset[0]) == subset[1]]
            if predicate is not None:
                rows = [r for r in rows if predicate(r)]
            rows.sort(key=lambda r: r["sourcedId"])
            if sort != "sourcedId" or order == "desc":
                rows.sort(key=lambda r: _text(r.get(sort)), reverse=order == "desc")
            total = len(rows)
            start = 0 if self.repeat_pages else offset
            if self.ignore_limit is True:
                size = max(total - start, 0)
            elif self.ignore_limit:
                size = int(self.ignore_limit)
            else:
                size = limit
            page = [self._served(r) for r in rows[start : start + size]]
        if fields:
            known = {key for obj in page for key in obj} | set(SCALAR_FIELDS[collection])
            unknown = [f for f in fields if f not in known]
            if unknown:
                return _error(
                    400,
                    f"invalid selection field(s) {', '.join(unknown)} for {collection}",
                    "invalid_selection_field",
                )
            page = [{f: obj[f] for f in fields if f in obj} for obj in page]
        headers: dict[str, str] = {}
        if self.paging == "total":
            headers["X-Total-Count"] = str(total)
        if self.paging in ("total", "link"):
            headers["Link"] = self._link_header(endpoint, query, offset, limit, total)
        return Answer(200, {collection: page}, headers)

    def _link_header(
        self, endpoint: str, query: dict[str, list[str]], offset: int, limit: int, total: int
    ) -> str:
        kept = [(k, v) for k, values in query.items() for v in values if k not in _NOT_KEPT]
        url = f"{self.api_url}/{endpoint}"

        def link(at: int, rel: str) -> str:
            return f'<{url}?{urlencode([*kept, ("limit", limit), ("offset", at)])}>; rel="{rel}"'

        last = max(0, (total - 1) // limit * limit)
        links = [link(0, "first")]
        if offset > 0:
            links.append(link(max(0, offset - limit), "prev"))
        if offset + limit < total:
            links.append(link(offset + limit, "next"))
        links.append(link(last, "last"))
        return ", ".join(links)

    def _served(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``obj`` with every relative GUIDRef href made absolute."""
        base = self.base_url

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                out = {k: walk(v) for k, v in value.items()}
                href = out.get("href")
                if isinstance(href, str) and href.startswith("/") and "sourcedId" in out:
                    out["href"] = base + href
                return out
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        return walk(obj)

    def _item(self, collection: str, sourced_id: str) -> Answer:
        with self._lock:
            obj = self._store[collection].get(sourced_id)
            if obj is None:
                return _error(404, f"{SINGULAR[collection]} {sourced_id} not found")
            return Answer(200, {SINGULAR[collection]: self._served(obj)})

    # -- data and changes ------------------------------------------------------------------

    def _check(self, collection: str) -> dict[str, dict[str, Any]]:
        if collection not in self._store:
            raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
        return self._store[collection]

    def get(self, collection: str, sourced_id: str) -> dict[str, Any] | None:
        """One object as served (absolute hrefs), or None."""
        with self._lock:
            obj = self._check(collection).get(sourced_id)
            return self._served(obj) if obj is not None else None

    def objects(self, collection: str) -> list[dict[str, Any]]:
        """Every object of a collection as served, in ``sourcedId`` order."""
        with self._lock:
            store = self._check(collection)
            return [self._served(store[key]) for key in sorted(store)]

    def now(self) -> str:
        """The stamp the next change gets: ``clock()``, never before the newest stamp + 1 ms."""
        with self._lock:
            moment = max(float(self.clock()), self._latest + 0.001)
            self._latest = moment
            return _stamp(moment)

    def _note(self, stamp: str) -> None:
        with contextlib.suppress(ValueError):
            self._latest = max(self._latest, _parse_moment(stamp).timestamp())

    def update(
        self, collection: str, sourced_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change top-level fields and stamp the object; returns it as now stored.

        ``dateLastModified`` is ``now()`` unless ``changes`` sets it.
        """
        if "sourcedId" in changes:
            raise ValueError("an object's sourcedId cannot change")
        with self._lock:
            obj = self._check(collection).get(sourced_id)
            if obj is None:
                raise KeyError(f"{collection} {sourced_id} not found")
            obj.update(copy.deepcopy(dict(changes)))
            if "dateLastModified" in changes:
                self._note(str(changes["dateLastModified"]))
            else:
                obj["dateLastModified"] = self.now()
            return copy.deepcopy(obj)

    def add(self, collection: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Add an object (``sourcedId`` required); ``status`` defaults to active."""
        obj = copy.deepcopy(dict(obj))
        sourced_id = obj.get("sourcedId")
        if not sourced_id:
            raise ValueError("an object needs a sourcedId")
        with self._lock:
            store = self._check(collection)
            if sourced_id in store:
                raise ValueError(f"{collection} {sourced_id} already exists")
            obj.setdefault("status", "active")
            if obj.get("dateLastModified"):
                self._note(obj["dateLastModified"])
            else:
                obj["dateLastModified"] = self.now()
            store[sourced_id] = obj
            return copy.deepcopy(obj)

    def mark_deleted(self, collection: str, sourced_id: str) -> dict[str, Any]:
        """Set ``status: tobedeleted`` and stamp the object (it stays served)."""
        return self.update(collection, sourced_id, {"status": "tobedeleted"})

    def remove(self, collection: str, sourced_id: str) -> dict[str, Any]:
        """Drop an object outright, as some SIS do: a dateLastModified delta never sees it."""
        with self._lock:
            store = self._check(collection)
            if sourced_id not in store:
                raise KeyError(f"{collection} {sourced_id} not found")
            return store.pop(sourced_id)

    def apply(self, data: OneRosterData) -> dict[str, int]:
        """Make the served objects match ``data``; returns counts of added/updated/deleted.

        New objects are added, changed ones updated (fields other than the stamp; a
        ``tobedeleted`` one that is back becomes active), and objects ``data`` lacks are marked
        ``tobedeleted`` (those already marked are left alone). Use it with the generator's
        ``next_day`` to move the district on.
        """
        counts = {"added": 0, "updated": 0, "deleted": 0}
        with self._lock:
            for collection, wanted in data.collections().items():
                store = self._store[collection]
                for key in sorted(wanted):
                    target = {k: v for k, v in wanted[key].items() if k != "dateLastModified"}
                    current = store.get(key)
                    if current is None:
                        self.add(collection, target)
                        counts["added"] += 1
                        continue
                    changes = {k: v for k, v in target.items() if current.get(k) != v}
                    dropped = [k for k in current if k not in target and k != "dateLastModified"]
                    if changes or dropped:
                        for k in dropped:
                            del current[k]
                        self.update(collection, key, changes)
                        counts["updated"] += 1
                for key in sorted(set(store) - set(wanted)):
                    if store[key].get("status") != "tobedeleted":
                        self.mark_deleted(collection, key)
                        counts["deleted"] += 1
        return counts


_NOT_KEPT = frozenset({"limit", "offset"})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    return left <= right


def _moment_test(name: str, op: str, bound: datetime) -> Callable[[dict[str, Any]], bool]:
    def test(obj: dict[str, Any]) -> bool:
        try:
            moment = _parse_moment(_text(obj.get(name)))
        except ValueError:
            return False
        return _compare(op, moment, bound)

    return test


def _text_test(name: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    if op == "~":
        needle = value.lower()
        return lambda obj: needle in _text(obj.get(name)).lower()
    return lambda obj: _compare(op, _text(obj.get(name)), value)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a generated district until SIGINT or SIGTERM (SIGUSR1: the next day)."""
    from include.sis_sync.sample import generator

    parser = district_parser(
        "include.sis_sync.simulators.oneroster",
        "Serve a generated district as a local OneRoster 1.1 REST server.",
        port=8766,
    )
    parser.add_argument(
        "--client-id",
        default=os.environ.get("ONEROSTER_SIMULATOR_CLIENT_ID", "test-client"),
        help="the client id (default $ONEROSTER_SIMULATOR_CLIENT_ID or test-client)",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("ONEROSTER_SIMULATOR_CLIENT_SECRET", "test-secret"),
        help="the client secret (default $ONEROSTER_SIMULATOR_CLIENT_SECRET or test-secret)",
    )
    parser.add_argument("--auth", choices=("oauth2", "oauth1"), default="oauth2")
    parser.add_argument("--paging", choices=PAGING_STYLES, default="total")
    parser.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime (s)")
    args = parser.parse_args(argv)

    district = generator.generate_district(args.preset)
    data = oneroster_data_from_district(district)
    server = OneRosterServer(
        data,
        client_id=args.client_id,
        client_secret=args.client_secret,
        auth=args.auth,
        token_ttl=args.token_ttl,
        paging=args.paging,
        host=args.host,
        port=args.port,
    )
    counts = data.counts()

    def token() -> str:  # the URL is known once the server has its port
        return f", token URL {server.token_url}" if args.auth == "oauth2" else ""

    return serve_until_stopped(
        server,
        district,
        oneroster_data_from_district,
        "OneRoster simulator",
        lambda: (
            f"{args.preset} district at {server.api_url} ({args.auth}{token()}; client id "
            f"{args.client_id}; {counts['orgs']} orgs, {counts['users']} users, "
            f"{counts['classes']} classes, {counts['enrollments']} enrollments)"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
