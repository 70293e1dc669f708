"""A CSV portal over dated drops, synced stage by stage as the DAG's tasks would: the attack
tests break a day's drop, or a stage's process, and look at what every stage did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.sis_sync import pipeline
from include.sis_sync.config import Portal
from include.sis_sync.lms.commit import lms_snapshot
from include.sis_sync.lms.db import engine_for
from include.sis_sync.sample.generator import District, write_drop
from tests.helpers import portal_dict

DAY1, DAY2 = "2026-09-01", "2026-09-02"


@dataclass
class Outcome:
    """How one sync of a day's drop ended."""

    run_id: int
    gate: str | None
    error: BaseException | None
    report: dict[str, Any]

    def text(self) -> str:
        """Everything the sync said: its exception, the run's error, its report."""
        return f"{self.error}\n{json.dumps(self.report, default=str)}"


class Feed:
    """A CSV portal over dated drops, synced stage by stage as the DAG's tasks would."""

    def __init__(self, root: Path, lms_url: str, **portal: Any) -> None:
        self.root, self.lms_url = root, lms_url
        source = {"provider": "oneroster_csv", "path": f"{root}/drops/{{date}}"}
        self.portal = Portal.model_validate(portal_dict(source=source, **portal))
        self.runs = 0

    def folder(self, day: str) -> Path:
        return self.root / "drops" / day

    def write(self, district: District, day: str = DAY2, **options: Any) -> Path:
        return write_drop(district, self.folder(day), crlf=False, **options)

    def edit(self, day: str, stem: str, change: Callable[[str], str]) -> None:
        path = self.folder(day) / f"{stem}.csv"
        path.write_bytes(change(path.read_bytes().decode("utf-8")).encode("utf-8"))

    def context(self, day: str = DAY2, **params: Any) -> pipeline.RunContext:
        self.runs += 1
        return pipeline.RunContext(
            portal=self.portal,
            lms_url=self.lms_url,
            dag_id=f"sis_sync__{self.portal.id}",
            airflow_run_id=f"run-{self.runs}",
            run_type="manual",
            params={"drop_date": day, **params},
        )

    def sync(self, day: str = DAY2, **params: Any) -> Outcome:
        ctx = self.context(day, **params)
        run_id = pipeline.start(ctx)["run_id"]
        gate, error = None, None
        try:
            for stage in pipeline.PREPARE:
                stage(ctx, run_id)
            gate = pipeline.gate(ctx, run_id, pipeline.validate_changes(ctx, run_id)["tripped"])
            if gate == "commit":
                pipeline.commit(ctx, run_id)
        except Exception as exc:  # the outcome under test
            error = exc
        report = pipeline.finish(ctx, run_id)
        return Outcome(run_id, gate, error, report)

    def lms(self) -> dict[str, list[dict[str, Any]]]:
        return lms_snapshot(engine_for(self.lms_url), self.portal.id)

    def staged(self, run_id: int) -> int:
        with engine_for(self.lms_url).connect() as conn:
            query = "SELECT count(*) FROM sis_sync_actions WHERE run_id = :r"
            return int(conn.exec_driver_sql(query.replace(":r", str(run_id))).scalar_one())


ROOT = Path(__file__).resolve().parents[1]


def python_process(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` run by a Python process of its own (as a task's), from the project root,
    its standard output readable as text."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
