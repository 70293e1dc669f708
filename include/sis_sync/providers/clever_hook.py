"""The Airflow side of the Clever provider: a hook over the HTTP provider's ``HttpHook``.

The connection (type http) holds the API's base URL as its host (with ``schema: https``) and
the district-app bearer token as its password, so Airflow masks it in every log and form.
The hook turns the password into the ``Authorization: Bearer`` header of the client's session.
"""

from __future__ import annotations

from airflow.providers.http.hooks.http import HttpHook

from include.sis_sync.providers.clever import CleverAuthError, CleverClient


class CleverHook(HttpHook):
    """Opens a :class:`CleverClient` on an Airflow http connection."""

    conn_name_attr = "http_conn_id"
    hook_name = "Clever (SIS Sync)"

    def __init__(self, http_conn_id: str) -> None:
        super().__init__(method="GET", http_conn_id=http_conn_id)

    def client(self, *, limit: int = 10000) -> CleverClient:
        connection = self.get_connection(self.http_conn_id)
        if not connection.password:
            raise CleverAuthError(
                f"connection {self.http_conn_id!r} has no password: put the Clever "
                "district-app token there"
            )
        session = self.get_conn()  # applies the connection's extra options; sets base_url
        session.auth = None  # the token is a bearer token, never HTTP basic auth
        return CleverClient(self.base_url, connection.password, limit=limit, session=session)
