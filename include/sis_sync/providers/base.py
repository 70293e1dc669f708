"""What every SIS source implements: its portal-file settings, its extraction, its mapping.

A provider is one class (an instance of :class:`Provider`) and one pydantic model of its
``source:`` section (a subclass of :class:`SourceConfig`, whose ``provider`` field is a
``Literal`` of the provider's name). :mod:`include.sis_sync.providers.registry` names them; the
rest of the pipeline (config, extract, the DAG factory, the run context) asks the registry and
never branches on a provider's name. ``docs/providers.md`` shows how to add one.

Nothing here imports Airflow: the Airflow side of a provider (its hook) is opened lazily by
:meth:`Provider.open_client`, inside a task.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from include.sis_sync.config import Entities
    from include.sis_sync.context import RunContext


class Completeness(StrEnum):
    """How completely a read carries one entity kind.

    The values are OneRoster's manifest words, which the run data and the diff keep: a
    complete read (``bulk``) makes the LMS rows it lacks absent from the SIS (archived); a
    ``delta`` carries only what changed; an ``absent`` kind is left alone in the LMS.
    """

    COMPLETE = "bulk"
    DELTA = "delta"
    ABSENT = "absent"


class SourceConfig(BaseModel):
    """The ``source:`` section of a portal file. Each provider subclasses it with its own
    fields and ``provider: Literal["<name>"]``; the portal's ``source`` is then a union
    discriminated on ``provider``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    # Portals whose reads share one API token share one Airflow pool, sized to its rate limit.
    pool: str | None = None


@dataclass(frozen=True)
class InputWait:
    """How a scheduled run waits for input that arrives on its own (a file drop)."""

    poke_seconds: int
    wait_hours: float


class SourceRefused(RuntimeError):
    """The source offers input the run must not apply (a drop older than the newest one
    committed would roll the LMS back). The run ends ``refused``, never retried."""

    def __init__(self, message: str, *, source: str, source_date: date | None) -> None:
        super().__init__(message)
        self.source = source
        self.source_date = source_date


@dataclass(frozen=True)
class ExtractRequest:
    """What a provider's extraction needs to know about the run and the portal's history.

    ``full_reason`` is why this run must read everything, or None when a quick read may run
    (the pipeline decides it from the mode asked, the last committed sync and
    :attr:`Provider.checkpoint_max_age_days`). ``since`` is a date-time the run named.
    """

    ctx: RunContext
    run_id: int
    full_reason: str | None
    checkpoint: str | None
    since: str | None
    newest_source_date: date | None

    def client(self) -> Any:
        """The provider's API client, opened by the function the DAG layer gave the run."""
        if self.ctx.client is None:
            raise RuntimeError(
                f"a {self.ctx.portal.provider} run needs its API client (the DAG layer opens it "
                "through the provider's hook)"
            )
        return self.ctx.client()

    @property
    def asked_quick(self) -> bool:
        """Whether the run asked for a quick sync (its ``mode``, else the portal's)."""
        return (self.ctx.params.get("mode") or self.ctx.portal.scheduled_mode) == "quick"


@dataclass(frozen=True)
class ExtractResult:
    """A provider's read: raw tables, and per canonical entity how complete the read is.

    ``checkpoint`` is what the next quick sync starts from once this run commits (an event id,
    a date-time). ``complete_per_parent`` names delta kinds that are nevertheless complete for
    each parent they carry (``enrollments -> (section_key, sections)``). ``details`` are counts
    and facts for the task log and the run summary: never personal data.
    """

    tables: dict[str, pa.Table]
    modes: dict[str, Completeness]
    ran_as: str  # full | quick
    source: str  # what was read, for the history ("clever district 5f...", a drop path)
    checkpoint: str | None = None
    source_date: date | None = None
    fallback: str | None = None
    complete_per_parent: dict[str, tuple[str, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> ExtractRecord:
        """What later stages need of this read (the tables go to the run's data folder)."""
        return ExtractRecord(
            modes=dict(self.modes),
            ran_as=self.ran_as,
            checkpoint=self.checkpoint,
            fallback=self.fallback,
            complete_per_parent=dict(self.complete_per_parent),
        )


@dataclass(frozen=True)
class ExtractRecord:
    """The typed record of a read that the run's data folder keeps as ``extract.json``.

    ``sent_none`` lists the optional kinds a complete read came back without: they are then
    read as absent (the LMS keeps its rows of them) and the report says the SIS sent none.
    """

    modes: dict[str, Completeness]
    ran_as: str
    checkpoint: str | None = None
    fallback: str | None = None
    complete_per_parent: dict[str, tuple[str, str]] = field(default_factory=dict)
    sent_none: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "modes": {k: str(v) for k, v in self.modes.items()},
            "ran_as": self.ran_as,
            "checkpoint": self.checkpoint,
            "fallback": self.fallback,
            "complete_per_parent": {k: list(v) for k, v in self.complete_per_parent.items()},
            "sent_none": list(self.sent_none),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExtractRecord:
        return cls(
            modes={k: Completeness(v) for k, v in data["modes"].items()},
            ran_as=data["ran_as"],
            checkpoint=data["checkpoint"],
            fallback=data["fallback"],
            complete_per_parent={k: (v[0], v[1]) for k, v in data["complete_per_parent"].items()},
            sent_none=tuple(data["sent_none"]),
        )

    @property
    def delta(self) -> bool:
        return Completeness.DELTA in self.modes.values()


class Provider(ABC):
    """One SIS source. Subclasses set the class attributes and implement the methods.

    - ``name``: the ``provider:`` value of the portal file; ``label``: how pages call it.
    - ``source_model``: the pydantic model of the ``source:`` section.
    - ``key_space``: the namespace of the SIS ids in the LMS; two providers reading one SIS
      (OneRoster CSV and REST) share it, so a portal moving between them keeps its rows.
    - ``optional_entities``: canonical kinds a real feed may leave empty (Clever shares terms
      and courses only if the district does). Empty in a complete read, they count as absent.
    - ``off_by_default``: entity switches (``Entities`` fields) off unless the file turns them
      on.
    - ``supports_since``: whether a run may name the date-time its quick read starts from.
    - ``checkpoint_max_age_days``: how old a checkpoint may be before a quick read runs in full
      (Clever keeps 30 days of events); None: no limit.
    - ``permanent_errors``: errors a retry cannot fix (bad credentials, bad input).
    - ``row_wise_tables``: raw tables each of whose rows maps to canonical rows on its own (no
      other table or row needed): the transform maps them part by part, so a large one is
      never held whole. ``to_canonical`` is then also called with one part of one of them.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    source_model: ClassVar[type[SourceConfig]]
    key_space: ClassVar[str]
    optional_entities: ClassVar[frozenset[str]] = frozenset()
    off_by_default: ClassVar[frozenset[str]] = frozenset()
    supports_since: ClassVar[bool] = False
    checkpoint_max_age_days: ClassVar[int | None] = None
    permanent_errors: ClassVar[tuple[type[Exception], ...]] = ()
    row_wise_tables: ClassVar[frozenset[str]] = frozenset()
    # "module:Class" of the Airflow hook whose ``client(limit=...)`` opens the API client from
    # the source's ``connection_id`` (its ``page_limit`` the page size); None: no API.
    hook: ClassVar[str | None] = None

    @abstractmethod
    def extract(self, request: ExtractRequest) -> ExtractResult:
        """Read the SIS into raw tables."""

    @abstractmethod
    def to_canonical(
        self, raw: Mapping[str, pd.DataFrame], entities: Entities, record: ExtractRecord
    ) -> dict[str, pd.DataFrame]:
        """Map the raw tables to the canonical frames of :mod:`include.sis_sync.model`."""

    def open_client(self, source: SourceConfig) -> Callable[[], Any] | None:
        """A function that opens the source's API client inside a task (through its Airflow
        hook, imported only then), or None for sources read without one."""
        if self.hook is None:
            return None
        module, _, name = self.hook.partition(":")
        settings: Any = source

        def open_client() -> Any:
            hook = getattr(importlib.import_module(module), name)
            return hook(settings.connection_id).client(limit=settings.page_limit)

        return open_client

    def input_wait(self, source: SourceConfig) -> InputWait | None:
        """How scheduled runs wait for their input, or None when they never wait."""
        return None

    def input_ready(self, ctx: RunContext, run_id: int) -> bool | str:
        """Whether the run's input is there: True, or a text naming what is still missing."""
        return True

    def describe(self, source: SourceConfig) -> str:
        """One line on where the portal reads (DAG docs, ``sis-sync check``)."""
        return self.label
