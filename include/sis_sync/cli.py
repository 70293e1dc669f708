"""Command line: ``python -m include.sis_sync.cli <command>``.

- ``check [FILE ...]``: validate portal files (default: every file of the portals folder).
- ``migrate [--url URL]``: bring the LMS database to the newest migration.
- ``load-settings [FILE]``: load airflow_settings.yaml (connections, pools, variables) into
  Airflow without the Astro CLI.
- ``demo-drops [--out DIR]``: write the demo district's three dated drops.
- ``report (RUN_ID | --last PORTAL) [--url URL]``: print a run's report from staging.
- ``unlock PORTAL [--by NAME] [--url URL]``: show who holds a portal's lock; with ``--by``,
  release it by hand (the sync holding it ends failed and can never be committed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from include.sis_sync.config import (
    DEFAULT_DROPS_DIR,
    PROJECT_ROOT,
    PortalConfigError,
    load_portal,
    portals_dir,
)


def check(files: list[str]) -> int:
    """Validate portal files; prints one line per file and returns 1 if any is broken."""
    paths = [Path(f) for f in files] or sorted(
        [*portals_dir().glob("*.yaml"), *portals_dir().glob("*.yml")]
    )
    if not paths:
        print(f"no portal files in {portals_dir()}")
        return 1
    broken = 0
    for path in paths:
        try:
            portal = load_portal(path)
            print(f"ok      {path}: portal {portal.id} -> DAG {portal.dag_id}")
        except PortalConfigError as exc:
            broken += 1
            print(f"BROKEN  {exc}")
    return 1 if broken else 0


def lms_url_from_env() -> str:
    """The LMS URL of the Airflow connection ``lms_db`` (secrets backends, env, metadata DB)."""
    from airflow.models.connection import Connection

    from include.sis_sync.dag_factory import LMS_CONN_ID, url_of

    return url_of(Connection.get_connection_from_secrets(LMS_CONN_ID))


def migrate(url: str | None) -> int:
    from include.sis_sync.lms.db import migrate as run_migrations

    target = url or lms_url_from_env()
    revision = run_migrations(target)
    print(f"LMS database {_safe(target)} is at migration {revision}")
    return 0


def _safe(url: str) -> str:
    """A URL fit for printing: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def settings_payloads(path: Path) -> dict[str, dict[str, Any]]:
    """Astro's airflow_settings.yaml as the JSON files Airflow's import commands read.

    ``${VAR}`` in values is expanded from the environment (e.g. the project's folder).
    """
    config = _expand((yaml.safe_load(path.read_text()) or {}).get("airflow") or {})
    connections = {}
    for c in config.get("connections") or []:
        extra = c.get("conn_extra")
        fields = {
            "conn_type": c.get("conn_type"),
            "host": c.get("conn_host"),
            "schema": c.get("conn_schema"),
            "login": c.get("conn_login"),
            "password": c.get("conn_password"),
            "port": c.get("conn_port"),
            "extra": json.dumps(extra) if isinstance(extra, dict) else extra,
        }
        connections[c["conn_id"]] = {k: v for k, v in fields.items() if v is not None}
    pools = {
        p["pool_name"]: {
            "slots": p.get("pool_slot", 1),
            "description": p.get("pool_description") or "",
            "include_deferred": False,
        }
        for p in config.get("pools") or []
    }
    variables = {v["variable_name"]: v.get("variable_value") for v in config.get("variables") or []}
    return {"connections": connections, "pools": pools, "variables": variables}


def load_settings(path: Path) -> int:
    payloads = settings_payloads(path)
    commands = {
        "connections": ["connections", "import", "--overwrite"],
        "pools": ["pools", "import"],
        "variables": ["variables", "import", "-a", "overwrite"],
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    for kind, payload in payloads.items():
        if not payload:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(payload, handle)
        try:
            subprocess.run(
                [airflow, *commands[kind], handle.name], check=True, stdout=subprocess.DEVNULL
            )
        finally:
            os.unlink(handle.name)
        print(f"loaded {len(payload)} {kind} from {path}: {', '.join(sorted(payload))}")
    return 0


def demo_drops(out: Path) -> int:
    from include.sis_sync.sample.generator import write_demo_drops

    for folder in write_demo_drops(out):
        print(f"wrote drop {folder}")
    return 0


def report(run_id: int | None, last: str | None, url: str | None) -> int:
    import sqlalchemy as sa

    from include.sis_sync.lms import schema
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.report import build_report

    engine = engine_for(url or lms_url_from_env())
    if run_id is None:
        with engine.connect() as conn:
            run_id = conn.execute(
                sa.select(sa.func.max(schema.runs.c.id)).where(schema.runs.c.portal_id == last)
            ).scalar()
        if run_id is None:
            print(f"portal {last} has no runs yet")
            return 1
    print(build_report(engine, run_id)["text"])
    return 0


def unlock(portal_id: str, by: str | None, url: str | None) -> int:
    """Show, or with ``by`` release, a portal's lock (an operator's last resort)."""
    from include.sis_sync.lms.db import engine_for
    from include.sis_sync.runs import force_unlock, lock_holder

    engine = engine_for(url or lms_url_from_env())
    holder = lock_holder(engine, portal_id)
    if holder is None:
        print(f"portal {portal_id} is not locked")
        return 0
    print(
        f"portal {portal_id} is locked by sync {holder['run_id']} since {holder['acquired_at']}:"
        f" {holder['status']} at stage {holder['stage']}, Airflow run {holder['dag_id']} "
        f"{holder['airflow_run_id']}"
    )
    if not by:
        print("pass --by <your name> to release it (that sync then ends failed)")
        return 0
    force_unlock(engine, portal_id, by)
    print(f"released by {by}: sync {holder['run_id']} can never be committed now")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sis-sync", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="validate portal files")
    check_cmd.add_argument("files", nargs="*")
    migrate_cmd = commands.add_parser("migrate", help="migrate the LMS database")
    migrate_cmd.add_argument("--url", help="database URL (default: connection lms_db)")
    settings_cmd = commands.add_parser("load-settings", help="load airflow_settings.yaml")
    settings_cmd.add_argument(
        "file", nargs="?", default=str(PROJECT_ROOT / "airflow_settings.yaml")
    )
    drops_cmd = commands.add_parser("demo-drops", help="write the demo district's drops")
    drops_cmd.add_argument("--out", default=str(DEFAULT_DROPS_DIR / "demo"))
    report_cmd = commands.add_parser("report", help="print a run's report")
    which = report_cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("run_id", type=int, nargs="?")
    which.add_argument("--last", metavar="PORTAL", help="the portal's latest run")
    report_cmd.add_argument("--url")
    unlock_cmd = commands.add_parser("unlock", help="show or release a portal's lock")
    unlock_cmd.add_argument("portal_id")
    unlock_cmd.add_argument("--by", help="your name: release the lock, recorded as yours")
    unlock_cmd.add_argument("--url")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.files)
    if args.command == "migrate":
        return migrate(args.url)
    if args.command == "load-settings":
        return load_settings(Path(args.file))
    if args.command == "demo-drops":
        return demo_drops(Path(args.out))
    if args.command == "unlock":
        return unlock(args.portal_id, args.by, args.url)
    return report(args.run_id, args.last, args.url)


if __name__ == "__main__":
    raise SystemExit(main())
