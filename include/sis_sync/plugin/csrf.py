"""Cross-site request protection for the admin pages' forms.

The Airflow UI signs users in with a cookie, which a browser also sends with a form that
another site posts here. Every form therefore carries a token bound to the signed-in user
(an HMAC under the API server's secret, which another site cannot compute), and a post whose
``Origin`` names another host is refused before the token is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import cache
from urllib.parse import urlsplit

FIELD = "csrf_token"


@cache
def _secret() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api_auth", "jwt_secret", fallback="") or conf.get(
        "api", "secret_key", fallback=""
    )
    if not secret:
        raise RuntimeError("no [api_auth] jwt_secret or [api] secret_key to sign forms with")
    return secret.encode()


def token_for(user_id: str) -> str:
    """The form token of one user."""
    return hmac.new(_secret(), f"sis-sync-form:{user_id}".encode(), hashlib.sha256).hexdigest()


def token_ok(user_id: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(token_for(user_id), str(token))


def origin_ok(origin: str | None, host: str | None) -> bool:
    """A post's ``Origin`` (when the browser sends one) must be this server's own host."""
    if not origin:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == (host or "").lower()
