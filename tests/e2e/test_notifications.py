"""Portal admins are told of their syncs by mail, through a real SMTP server (aiosmtpd,
started by the test on a free port behind the ``smtp_default`` connection): one mail when a
sync waits for them, one when it is committed, none when they reject it; each with the
counts and a link to the report. Without a mail server the message is logged and the run
goes on."""

from __future__ import annotations

import email
import json
import logging
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from airflow.utils.state import DagRunState

from include.sis_sync import notifications
from include.sis_sync.config import get_portal
from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import generate_district, write_drop
from tests.e2e.standalone import free_port
from tests.helpers import run_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
ADMINS = ["ada@district.example", "ben@district.example"]


class Inbox:
    """What the local SMTP server received."""

    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.original_content)
        mail["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.mails.append(mail)
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.mails]

    def body(self, index: int) -> str:
        part = next(p for p in self.mails[index].walk() if p.get_content_type() == "text/html")
        return part.get_payload(decode=True).decode()


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    port = free_port()
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "sis-sync@district.example",
                },
            }
        ),
    )
    try:
        yield handler
    finally:
        controller.stop()


def test_waiting_and_committed_syncs_are_mailed_with_their_link(
    make_portal, respond, inbox: Inbox
) -> None:
    portal = make_portal("mailed", name="mailed portal", auto_commit=False, notify=ADMINS)
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    approver = respond(portal.dag_id, "Approve")
    run = portal.run(drop_date="2026-09-01")
    assert approver.answered.is_set() and run.state == DagRunState.SUCCESS
    sync_id = run_rows(portal.lms_url)[-1]["id"]
    assert inbox.subjects() == [
        f"[SIS sync] mailed portal: sync {sync_id} waits for your approval",
        f"[SIS sync] mailed portal: sync {sync_id} was committed",
    ]
    for index, mail in enumerate(inbox.mails):
        assert mail["X-Envelope-To"] == ", ".join(ADMINS)
        body = inbox.body(index)
        assert f'href="/sis-sync/portals/sis_sync__mailed/runs/{sync_id}"' in body
        assert "add" in body
    assert "Committed" in inbox.body(1)


def test_a_rejected_sync_sends_no_committed_mail(make_portal, respond, inbox: Inbox) -> None:
    portal = make_portal("rejected_mail", auto_commit=False, notify=ADMINS)
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    respond(portal.dag_id, "Reject")
    assert portal.run(drop_date="2026-09-01").state == DagRunState.SUCCESS
    assert [s.rsplit(" ", 4)[-4:] for s in inbox.subjects()] == [
        ["waits", "for", "your", "approval"]
    ]


def test_a_failed_sync_is_mailed_with_why(make_portal, inbox: Inbox) -> None:
    portal = make_portal("failing_mail", auto_commit=True, notify=ADMINS)
    drop = portal.drops / "2026-09-01"
    write_drop(generate_district("demo"), drop)
    (drop / "users.csv").write_text("sourcedId,status\n")  # not a OneRoster users file
    assert portal.run(drop_date="2026-09-01").state == DagRunState.FAILED
    (subject,) = inbox.subjects()
    assert subject.endswith("failed")
    assert "Why:" in inbox.body(0) and "users.csv" in inbox.body(0)


def test_without_a_mail_server_the_message_is_logged(
    make_portal, caplog: pytest.LogCaptureFixture
) -> None:
    """No ``smtp_default`` connection: the committed run's message, and an expiry's, land in
    the log whole (counts and link), and the run still succeeds."""
    portal = make_portal("unmailed", name="unmailed portal", auto_commit=True, notify=ADMINS)
    write_drop(generate_district("demo"), portal.drops / "2026-09-01")
    with caplog.at_level(logging.WARNING, logger=notifications.__name__):
        assert portal.run(drop_date="2026-09-01").state == DagRunState.SUCCESS
        sync_id = run_rows(portal.lms_url)[-1]["id"]
        sent = notifications.notify(
            engine_for(portal.lms_url), get_portal("unmailed"), sync_id, "expired"
        )
    assert sent is False
    logged = [r.getMessage() for r in caplog.records if "not mailed" in r.getMessage()]
    assert len(logged) == 2, logged
    assert f"Sync {sync_id} of portal unmailed portal was committed" in logged[0]
    assert f"Sync {sync_id} of portal unmailed portal expired without an answer" in logged[1]
    for message in logged:
        assert (
            "add" in message and f"/sis-sync/portals/sis_sync__unmailed/runs/{sync_id}" in message
        )
