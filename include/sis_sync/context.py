"""What every stage of a run knows: the run's context, free of Airflow types, and its timer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from include.sis_sync.config import Portal
from include.sis_sync.lms.db import engine_for
from include.sis_sync.rundata import RunData
from include.sis_sync.runs import AirflowRunAlive, get_run, update_run

log = logging.getLogger("sis_sync")


@dataclass(frozen=True)
class RunContext:
    """What every stage needs to know about the run, free of Airflow types."""

    portal: Portal
    lms_url: str
    dag_id: str
    airflow_run_id: str
    run_type: str  # scheduled | manual | backfill
    logical_date: datetime | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    triggered_by: str | None = None
    # Opens the provider's API client; the DAG layer makes it with the provider's hook.
    client: Callable[[], Any] | None = None
    # Whether another Airflow run still runs: a portal lock held by one that does not is
    # taken over. The DAG layer asks Airflow; None trusts every lock until its run ends.
    airflow_run_alive: AirflowRunAlive | None = None

    @property
    def provider(self) -> str:
        """The namespace of the SIS ids in the LMS (the provider's ``key_space``)."""
        return self.portal.source_provider().key_space

    @property
    def engine(self) -> Any:
        return engine_for(self.lms_url)

    @property
    def schools(self) -> list[str] | None:
        return list(self.params.get("schools") or []) or None

    def data(self, run_id: int) -> RunData:
        return RunData.for_run(self.portal.id, run_id, get_run(self.engine, run_id).get("data_key"))


@contextmanager
def timed(ctx: RunContext, run_id: int, stage: str) -> Iterator[dict[str, Any]]:
    """Time a stage, log its summary and keep the timing on the run's row."""
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    yield summary
    seconds = round(time.perf_counter() - started, 3)
    summary["seconds"] = seconds
    run = get_run(ctx.engine, run_id)
    timings = json.loads(run["timings"]) if run.get("timings") else {}
    timings[stage] = seconds
    update_run(ctx.engine, run_id, timings=timings)
    log.info("%s: %s", stage, summary)
