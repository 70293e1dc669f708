"""Rendering the admin pages: Jinja2 templates with autoescaping on, so every value a page
shows (roster names hold quotes, ampersands, accents and angle brackets) is escaped."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")
NONE_SHOWN = "\u2013"  # an en dash where a value is missing


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else NONE_SHOWN


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return NONE_SHOWN
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02} min" if hours else f"{minutes} min {sec:02} s"


def _query(base: dict[str, Any], **changes: Any) -> str:
    """A query string: ``base`` with ``changes``, leaving out empty values."""
    merged = {**base, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "", False)})


ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["when"] = _when
ENV.filters["duration"] = _duration
ENV.globals["query"] = _query


def render(template: str, **values: Any) -> str:
    return ENV.get_template(template).render(**values)
