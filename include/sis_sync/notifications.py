"""Telling a portal's admins about its syncs: one waits for them, was committed, failed or
expired. A rejected sync sends nothing (its admin rejected it).

Mail goes through the SMTP provider's notifier to the portal's ``notify`` list, with the
mail server in the ``smtp_default`` connection. A message holds the sync's counts and a link to
its report, never a name or an email of the roster. When no mail server is configured, or
sending fails, the message is logged instead and the run goes on: a notification is never
lost and never fails a sync.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from include.sis_sync.config import Portal
from include.sis_sync.diff import ACTIONS
from include.sis_sync.links import report_url
from include.sis_sync.report import build_report

log = logging.getLogger(__name__)
SMTP_CONN_ID = "smtp_default"
# sync status -> the event a mail tells
EVENTS = {
    "awaiting_approval": "waits for your approval",
    "committed": "was committed",
    "failed": "failed",
    "refused": "was refused",
    "expired": "expired without an answer",
}


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    html: str


def message_for(
    engine: sa.Engine, portal: Portal, run_id: int, status: str, ui_base: str = ""
) -> Message | None:
    """The mail about sync ``run_id`` having reached ``status``, or None when that status
    tells nobody anything (rejected, still running)."""
    event = EVENTS.get(status)
    if event is None:
        return None
    report = build_report(engine, run_id)
    link = report_url(portal.dag_id, run_id, ui_base)
    totals = {a: sum(c.get(a, 0) for c in report["counts"].values()) for a in ACTIONS}
    counted = ", ".join(f"{n} {a}" for a, n in totals.items() if n) or "no changes"
    lines = [
        f"Sync {run_id} of portal {portal.name} {event}.",
        f"Changes ({report['counts_are']}): {counted}.",
    ]
    if report["guards_tripped"]:
        lines.append(f"Guards tripped: {len(report['guards_tripped'])}.")
    if report["decided"]:
        lines.append(f"{report['decided']}.")
    if status in ("failed", "refused") and report["error"]:
        lines.append(f"Why: {report['error'][:500]}")
    lines.append(f"Report: {link}")
    subject = f"[SIS sync] {portal.name}: sync {run_id} {event}"
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines[:-1])
    body += f'<p><a href="{html.escape(link)}">Open the sync report</a></p>'
    return Message(subject, "\n".join(lines), body)


def send(portal: Portal, message: Message, context: Any = None) -> bool:
    """Mail the message to the portal's ``notify`` list; log it when there is no one to mail,
    no mail server, or the mail fails. Returns whether a mail went out."""
    if not portal.notify:
        log.info("notification (portal %s has no notify list): %s", portal.id, message.text)
        return False
    if not _smtp_configured():
        log.warning("notification not mailed (no %s connection): %s", SMTP_CONN_ID, message.text)
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        to=list(portal.notify),
        subject=message.subject,
        html_content=message.html,
        smtp_conn_id=SMTP_CONN_ID,
    )
    try:
        notifier.notify(context or {})
    except Exception as exc:  # a mail that cannot go out must never fail the sync
        log.warning("notification not mailed (%s: %s): %s", type(exc).__name__, exc, message.text)
        return False
    log.info("notification mailed to %d address(es): %s", len(portal.notify), message.subject)
    return True


def _smtp_configured() -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(SMTP_CONN_ID)
    except Exception:
        return False
    return True


def notify(
    engine: sa.Engine,
    portal: Portal,
    run_id: int,
    status: str,
    ui_base: str = "",
    context: Any = None,
) -> bool:
    """Tell the portal's admins that sync ``run_id`` reached ``status`` (if that tells them
    anything). Never raises."""
    try:
        message = message_for(engine, portal, run_id, status, ui_base)
    except Exception:
        log.exception("could not build the notification of sync %s", run_id)
        return False
    return send(portal, message, context) if message else False
