"""Clever's Events API as a delta: the latest state of every object an event names.

Events are applied idempotently: for each object only its last event counts (``*.created`` and
``*.updated`` carry the object as it is now, ``*.deleted`` removes it), so replaying the same
events, or receiving one twice, gives the same delta. A ``sections.updated`` event carries the
section's full ``students`` and ``teachers`` arrays: the enrollments of every section in the
delta are complete for that section, which is how enrollment adds and archives are derived.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# Event record types the pipeline maps; resources and districts events are counted only.
RESOURCES = {
    "users": "users",
    "sections": "sections",
    "schools": "schools",
    "terms": "terms",
    "courses": "courses",
    "districts": "districts",
}


@dataclass
class EventDelta:
    """The newest state of each object named by events, and the objects deleted."""

    current: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    deleted: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    last_event_id: str | None = None
    events: int = 0
    ignored: int = 0

    def add(self, event: Mapping[str, Any]) -> None:
        """Fold one event in; a later event of the same object replaces an earlier one."""
        self.events += 1
        self.last_event_id = str(event["id"])
        record, _, verb = str(event.get("type", "")).partition(".")
        resource = RESOURCES.get(record)
        obj = (event.get("data") or {}).get("object") or {}
        if resource is None or "id" not in obj:
            self.ignored += 1
            return
        key = str(obj["id"])
        current = self.current.setdefault(resource, {})
        deleted = self.deleted.setdefault(resource, {})
        if verb == "deleted":
            current.pop(key, None)
            deleted[key] = dict(obj)
        else:
            deleted.pop(key, None)
            current[key] = dict(obj)

    def counts(self) -> dict[str, dict[str, int]]:
        names = set(self.current) | set(self.deleted)
        return {
            r: {"changed": len(self.current.get(r, {})), "deleted": len(self.deleted.get(r, {}))}
            for r in sorted(names)
        }


def fold(events: Iterable[Mapping[str, Any]]) -> EventDelta:
    delta = EventDelta()
    for event in events:
        delta.add(event)
    return delta


def raw_tables(delta: EventDelta) -> dict[str, pa.Table]:
    """The delta as raw tables like a full read's, with a ``deleted`` flag per object."""
    tables: dict[str, pa.Table] = {}
    for resource in sorted(set(delta.current) | set(delta.deleted)):
        rows = [(k, o, False) for k, o in delta.current.get(resource, {}).items()]
        rows += [(k, o, True) for k, o in delta.deleted.get(resource, {}).items()]
        tables[resource] = pa.table(
            {
                "id": pa.array([k for k, _, _ in rows], pa.string()),
                "json": pa.array(
                    [json.dumps(o, separators=(",", ":"), sort_keys=True) for _, o, _ in rows],
                    pa.string(),
                ),
                "deleted": pa.array([d for _, _, d in rows], pa.bool_()),
            }
        )
    return tables
