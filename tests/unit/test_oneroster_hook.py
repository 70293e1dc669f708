"""The OneRoster hook reads the connection's settings and never turns them into headers."""

from __future__ import annotations

import json

import pytest

from include.sis_sync.providers.oneroster_hook import OneRosterHook
from include.sis_sync.providers.oneroster_rest import OneRosterAuthError
from include.sis_sync.sample.generator import generate_district
from include.sis_sync.simulators.oneroster import OneRosterServer, oneroster_data_from_district

SETTINGS = {
    "token_url": "https://sis.example.org/oauth/token",
    "auth": "oauth1",
    "scope": "roster-core.readonly",
}


def _connection(monkeypatch: pytest.MonkeyPatch, **fields: object) -> None:
    conn = {
        "conn_type": "http",
        "host": "sis.example.org",
        "schema": "https",
        "login": "client-id",
        "password": "client-secret",
        "extra": SETTINGS,
        **fields,
    }
    monkeypatch.setenv("AIRFLOW_CONN_ONEROSTER_HOOK", json.dumps(conn))


def test_settings_come_from_the_extra_and_are_not_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch)
    client = OneRosterHook("oneroster_hook").client(limit=250)
    assert (client.auth, client.token_url, client.scope) == (
        "oauth1",
        SETTINGS["token_url"],
        SETTINGS["scope"],
    )
    assert client.base_url.startswith("https://sis.example.org")
    headers = {k.lower() for k in client._session.headers}
    assert not headers & {"token_url", "auth", "scope"}


def test_unknown_extra_keys_and_missing_credentials_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _connection(monkeypatch, extra={**SETTINGS, "X-Api-Key": "oops"})
    with pytest.raises(ValueError, match="unknown extra key"):
        OneRosterHook("oneroster_hook").client()
    _connection(monkeypatch, login=None)
    with pytest.raises(OneRosterAuthError, match="client id as login"):
        OneRosterHook("oneroster_hook").client()


def test_hook_client_reads_a_server_with_string_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    data = oneroster_data_from_district(generate_district("demo"), string_booleans=True)
    with OneRosterServer(data, client_id="client-id", client_secret="client-secret") as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        _connection(
            monkeypatch,
            host=host,
            port=int(port),
            schema="http",
            extra={"token_url": server.token_url},
        )
        users = list(OneRosterHook("oneroster_hook").client().collection("users"))
    assert len(users) == len(data.users)
    assert {u["enabledUser"] for u in users} == {"true"}  # strings, as ClassLink sends them
