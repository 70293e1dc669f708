"""Portal configuration: one YAML file per portal, validated into a typed model.

A bad file raises :class:`PortalConfigError` naming the file and the field; loading a folder
collects such errors beside the good portals so that one broken file never hides the others.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from include.sis_sync.providers import registry
from include.sis_sync.providers.base import Provider, SourceConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORTALS_DIR = PROJECT_ROOT / "include" / "portals"
DEFAULT_DROPS_DIR = PROJECT_ROOT / ".data" / "drops"

PORTAL_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
# Airflow's cron presets that croniter does not know itself (airflow.sdk ... _cron.CRON_PRESETS).
CRON_PRESETS = {"@quarterly": "0 0 1 */3 *"}


class PortalConfigError(ValueError):
    """A portal file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schools(_Strict):
    """Which SIS schools the portal syncs, and the LMS organization each becomes.

    ``multi`` with ``mapping: auto`` syncs every school in the feed and creates an organization
    per school; a mapping ``{sis_school_id: slug}`` syncs only the listed schools. ``single``
    syncs the one ``school``.
    """

    mode: Literal["multi", "single"] = "multi"
    mapping: Literal["auto"] | dict[str, str] = "auto"
    school: str | None = None
    slug: str | None = None

    @model_validator(mode="after")
    def _single_names_school(self) -> Schools:
        if self.mode == "single" and not self.school:
            raise ValueError("a single-school portal must name its 'school' (the SIS school id)")
        if self.mode == "multi" and self.school:
            raise ValueError("'school' is only for mode: single; use 'mapping' for several")
        return self

    @property
    def synced(self) -> frozenset[str] | None:
        """SIS ids of the synced schools, or None for every school in the feed."""
        if self.mode == "single":
            return frozenset({self.school or ""})
        if self.mapping == "auto":
            return None
        return frozenset(self.mapping)

    def slug_for(self, school_key: str) -> str | None:
        """The organization slug a mapping gives a school, if any."""
        if self.mode == "single":
            return self.slug if school_key == self.school else None
        if isinstance(self.mapping, dict):
            return self.mapping.get(school_key)
        return None


class Entities(_Strict):
    """Which data a portal syncs. Contacts (guardians, parents) are off by default."""

    students: bool = True
    teachers: bool = True
    administrators: bool = True
    staff: bool = True
    contacts: bool = False
    sections: bool = True
    enrollments: bool = True


class DateWindow(_Strict):
    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> DateWindow:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class Guards(_Strict):
    """Thresholds over which a sync never auto-commits (both the percent and the count)."""

    archive_percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    archive_min_count: Annotated[int, Field(ge=0)] = 20
    update_percent: Annotated[float, Field(ge=0, le=100)] = 75.0
    update_min_count: Annotated[int, Field(ge=0)] = 20


class Portal(_Strict):
    """One LMS portal and the SIS it is kept in step with."""

    id: str
    name: str
    timezone: str = "UTC"
    # Where the portal reads: one provider's settings, chosen by source.provider (the union
    # of every registered provider's model; see _refresh_sources).
    source: SourceConfig
    schedule: str | None = None
    scheduled_mode: Literal["full", "quick"] = "quick"
    full_sync_every_days: Annotated[int, Field(ge=1)] = 7
    auto_commit: bool = False
    approval_timeout_hours: Annotated[float, Field(gt=0)] = 24.0
    approvers: list[str] = Field(default_factory=list)
    notify: list[str] = Field(default_factory=list)  # emails told of waiting, committed, ...
    schools: Schools = Schools()
    entities: Entities = Entities()
    school_year: DateWindow | None = None
    guards: Guards = Guards()
    retention_days: Annotated[int, Field(ge=1)] = 30
    owner: str = "sis-sync"

    @model_validator(mode="before")
    @classmethod
    def _provider_in_source(cls, data: object) -> object:
        """Portal files name their provider inside ``source``; say so to an older file."""
        if isinstance(data, dict) and "provider" in data:
            raise ValueError(
                "'provider' belongs inside 'source' (source.provider, beside the provider's "
                "own settings): see docs/providers.md"
            )
        return data

    @model_validator(mode="after")
    def _provider_defaults(self) -> Portal:
        """Entity switches the provider turns off unless the file turns them on."""
        chosen = self.entities.model_fields_set
        off = {k: False for k in self.source_provider().off_by_default if k not in chosen}
        if off:
            object.__setattr__(self, "entities", self.entities.model_copy(update=off))
        return self

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not EMAIL.match(v)]
        if bad:
            raise ValueError(f"not email addresses: {', '.join(bad)}")
        return value

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not PORTAL_ID.match(value):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        # Checked here, as Airflow's CronTriggerTimetable would, so that `check` and the DAG
        # file report a bad schedule against this file instead of failing at DAG validation.
        # An empty schedule stays what it was: no schedule.
        if value and not croniter.is_valid(CRON_PRESETS.get(value, value)):
            raise ValueError(f"{value!r} is not a cron expression (e.g. '0 6 * * *' or '@daily')")
        return value

    @property
    def dag_id(self) -> str:
        return f"sis_sync__{self.id}"

    @property
    def provider(self) -> str:
        """The provider's name (``source.provider``)."""
        return self.source.provider

    def source_provider(self) -> Provider:
        """The registered provider that reads this portal's source."""
        return registry.get(self.source.provider)


def _refresh_sources() -> None:
    """Make ``Portal.source`` the union, discriminated on ``provider``, of every registered
    provider's source model (called again whenever a provider registers)."""
    models = tuple(p.source_model for p in registry.providers())
    if not models:
        return
    union = models[0] if len(models) == 1 else Union[models]  # noqa: UP007
    Portal.model_fields["source"] = FieldInfo.from_annotation(
        Annotated[union, Field(discriminator="provider")]
    )
    Portal.model_rebuild(force=True)


def portals_dir() -> Path:
    """The folder holding the portal files (``SIS_SYNC_PORTALS_DIR`` or ``include/portals``)."""
    return Path(os.environ.get("SIS_SYNC_PORTALS_DIR") or str(DEFAULT_PORTALS_DIR))


def _field_path(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 2 and loc[0] == "source" and loc[1] in registry.names():
        loc = (loc[0], *loc[2:])  # the union's tag: the file names it as source.provider
    return ".".join(str(p) for p in loc) or "(top level)"


def _problem(err: Any) -> str:
    """One validation error as "field 'a.b': what is wrong"; the source union's own errors
    say which providers there are."""
    if err["type"] in ("union_tag_invalid", "union_tag_not_found") and err["loc"] == ("source",):
        known = ", ".join(registry.names())
        tag = err.get("ctx", {}).get("tag")
        what = f"unknown provider {tag!r}" if tag else "a provider is required"
        return f"field 'source.provider': {what} (one of: {known})"
    return f"field '{_field_path(err['loc'])}': {err['msg']}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line (PyYAML's own message spans several, with a caret)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        text = "; ".join(p for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            text += f" (line {mark.line + 1}, column {mark.column + 1})"
        return text
    return " ".join(str(exc).split())


def load_portal(path: Path) -> Portal:
    """Read and validate one portal file; errors name the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PortalConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    except OSError as exc:
        raise PortalConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PortalConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise PortalConfigError(f"{path}: expected a mapping of portal settings at the top level")
    try:
        portal = Portal.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise PortalConfigError(f"{path}: {problems}") from None
    if portal.id != path.stem:
        raise PortalConfigError(
            f"{path}: field 'id': {portal.id!r} must match the file name ({path.stem!r})"
        )
    return portal


def load_portals(folder: Path | None = None) -> tuple[list[Portal], list[PortalConfigError]]:
    """Every portal file of a folder: the valid portals, and an error per broken file."""
    folder = folder or portals_dir()
    portals: list[Portal] = []
    errors: list[PortalConfigError] = []
    seen: dict[str, Path] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            portal = load_portal(path)
        except PortalConfigError as exc:
            errors.append(exc)
            continue
        if portal.id in seen:
            # foo.yaml and foo.yml: two portals with one DAG id, one would silently win.
            errors.append(
                PortalConfigError(
                    f"{path}: field 'id': portal {portal.id!r} is already defined "
                    f"in {seen[portal.id]}"
                )
            )
            continue
        seen[portal.id] = path
        portals.append(portal)
    return portals, errors


def get_portal(portal_id: str, folder: Path | None = None) -> Portal:
    """Load one portal by id (tasks reload it at run time so a task sees the current file)."""
    folder = folder or portals_dir()
    for suffix in (".yaml", ".yml"):
        path = folder / f"{portal_id}{suffix}"
        if path.exists():
            return load_portal(path)
    raise PortalConfigError(f"{folder}: no portal file for portal {portal_id!r}")


_refresh_sources()
registry.on_change(_refresh_sources)
