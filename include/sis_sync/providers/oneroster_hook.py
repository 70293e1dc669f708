"""The Airflow side of the OneRoster REST provider: a hook over the HTTP provider's ``HttpHook``.

The connection holds what a SIS hands out: the base URL as host (up to, not including,
``/ims/oneroster/v1p1``), the client id as login, the client secret as password (masked by
Airflow), and in its extra ``token_url``, ``auth`` (``oauth2`` or ``oauth1``) and ``scope``.
Those extra keys are settings this hook reads; unlike ``HttpHook.get_conn`` it never sends
them as HTTP headers.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.http.hooks.http import HttpHook

from include.sis_sync.providers.oneroster_rest import OneRosterAuthError, OneRosterClient

SETTINGS = ("token_url", "auth", "scope")


class OneRosterHook(HttpHook):
    """Opens a :class:`OneRosterClient` on an Airflow http connection."""

    conn_name_attr = "http_conn_id"
    hook_name = "OneRoster REST (SIS Sync)"

    def __init__(self, http_conn_id: str) -> None:
        super().__init__(method="GET", http_conn_id=http_conn_id)

    def client(self, *, limit: int = 1000) -> OneRosterClient:
        connection = self.get_connection(self.http_conn_id)
        if not connection.login or not connection.password:
            raise OneRosterAuthError(
                f"connection {self.http_conn_id!r} needs the client id as login and the client "
                "secret as password"
            )
        extra: dict[str, Any] = connection.extra_dejson or {}
        unknown = sorted(set(extra) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"connection {self.http_conn_id!r}: unknown extra key(s) {', '.join(unknown)}; "
                f"a OneRoster connection's extra holds only {', '.join(SETTINGS)}"
            )
        host = connection.host or ""
        if "://" not in host:
            scheme = connection.schema or "https"
            host = f"{scheme}://{host}" + (f":{connection.port}" if connection.port else "")
        return OneRosterClient(
            host.rstrip("/"),
            connection.login,
            connection.password,
            auth=extra.get("auth", "oauth2"),
            token_url=extra.get("token_url"),
            scope=extra.get("scope"),
            limit=limit,
        )
