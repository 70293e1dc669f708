"""A production-shaped Airflow deployment on this machine: `start`, `status`, `stop`.

Each piece runs as it would on machines of its own, sharing nothing but the network:

- PostgreSQL (scripts/postgres.sh): Airflow's metadata database ``airflow`` and the LMS ``lms``;
- Redis (Debian's redis-server): the Celery broker;
- an S3-compatible object store (moto's server mode): run data, CSV drops and task logs;
- a control machine (its own folder and copy of the code): API server, scheduler, DAG
  processor, triggerer;
- N Celery workers, each in its own folder with its own copy of the code, its own host name
  (``SIS_SYNC_HOSTNAME``) and log-server port. Task logs go to the object store, so the UI
  shows every task's log whichever worker ran it.

Everything lives under ``--root`` (default ``.data/cluster``); ``<root>/cluster.json`` records
ports and process ids, and ``stop`` reads it. Ports are free ones unless given. Waits are
bounded: a piece that does not come up stops the start with the tail of its log.

    .venv/bin/python scripts/cluster.py start --portals include/portals
    .venv/bin/python scripts/cluster.py stop
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CODE_PARTS = ("dags", "include", "plugins")
BUCKET = "sis-sync"
S3_KEY = "sis-sync-cluster"
CONTROL = ("api-server", "scheduler", "dag-processor", "triggerer")


# --------------------------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------------------------


def start(args: argparse.Namespace) -> dict[str, Any]:
    root = args.root.resolve()
    if (root / "cluster.json").exists() and _any_alive(_read_state(root)):
        raise SystemExit(f"{root}: a deployment is already running there (stop it first)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    state: dict[str, Any] = {
        "root": str(root),
        "ports": {
            "postgres": args.pg_port or _free_port(),
            "redis": args.redis_port or _free_port(),
            "s3": args.s3_port or _free_port(),
            "api": args.api_port or _free_port(),
        },
        "workers": [f"worker-{n}" for n in range(1, args.workers + 1)],
        "processes": {},
        "secrets": {"jwt": secrets.token_urlsafe(64), "api": secrets.token_urlsafe(32)},
        "s3": {"key": S3_KEY, "secret": secrets.token_hex(8)},
    }
    _write_state(root, state)
    try:
        _start_postgres(root, state)
        _start_redis(root, state)
        _start_object_store(root, state)
        control = _deploy(root / "control", args.portals)
        _prepare_airflow(root, state, control, args.settings)
        for component in CONTROL:
            _spawn(root, state, component, ["airflow", component], _env(state, control))
        for index, name in enumerate(state["workers"]):
            code = _deploy(root / name, args.portals)
            env = _env(state, code, worker=name, worker_index=index)
            command = ["airflow", "celery", "worker", "--concurrency", str(args.concurrency)]
            command += ["--celery-hostname", f"{name}@%h"]
            _spawn(root, state, name, command, env)
        _wait_ready(root, state, timeout=args.timeout)
    except BaseException:
        stop_state(root, state)
        raise
    print(json.dumps(_summary(root, state), indent=1))
    return state


def _start_postgres(root: Path, state: dict[str, Any]) -> None:
    url = subprocess.run(
        [str(ROOT / "scripts" / "postgres.sh"), "start"],
        env=_postgres_env(state),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    state["postgres_url"] = url.rsplit("/", 1)[0]
    _write_state(root, state)
    for database in ("airflow", "lms"):
        _create_database(state, database)


def _postgres_env(state: dict[str, Any]) -> dict[str, str]:
    """scripts/postgres.sh's settings: its data lives in /tmp (the postgres user reads it)."""
    return {**os.environ, "SIS_SYNC_PG_PORT": str(state["ports"]["postgres"])}


def _create_database(state: dict[str, Any], name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"{state['postgres_url']}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()


def _start_redis(root: Path, state: dict[str, Any]) -> None:
    binary = shutil.which("redis-server") or _apt_install("redis-server", "/usr/bin/redis-server")
    folder = root / "redis"
    folder.mkdir()
    port = state["ports"]["redis"]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no"]
    _spawn(root, state, "redis", command, dict(os.environ))
    _wait(f"Redis on port {port}", lambda: _port_open(port), 30, root, "redis")


def _apt_install(package: str, binary: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, check=True)
    return binary


def _start_object_store(root: Path, state: dict[str, Any]) -> None:
    port = state["ports"]["s3"]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    _spawn(root, state, "object-store", command, dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    _wait("the object store", lambda: _http_ok(f"{url}/moto-api/"), 30, root, "object-store")
    state["s3"]["url"] = url
    import boto3

    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=state["s3"]["key"],
        aws_secret_access_key=state["s3"]["secret"],
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    _write_state(root, state)


def _deploy(machine: Path, portals: Path) -> Path:
    """A machine's own copy of the project's code and portal files (as a deploy would put
    on each machine): nothing of it is shared with another machine."""
    code = machine / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in CODE_PARTS:
        shutil.copytree(ROOT / part, code / part, ignore=ignore)
    shutil.copytree(portals, code / "portals", ignore=ignore)
    (machine / "home").mkdir(parents=True, exist_ok=True)
    return code


def _env(
    state: dict[str, Any], code: Path, worker: str | None = None, worker_index: int = 0
) -> dict[str, str]:
    """The settings of one machine: the shared ones, its code, home and host name."""
    machine = code.parent
    pg = state["postgres_url"]
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SIS_SYNC_CHROMIUM")
    env = {k: v for k, v in os.environ.items() if k in keep}
    api = f"http://127.0.0.1:{state['ports']['api']}"
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(code),
            "AIRFLOW_HOME": str(machine / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(code / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(code / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "include.sis_sync.machine.hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{pg}/airflow",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"{pg}/airflow",  # psycopg is async too
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{state['ports']['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{pg}/airflow",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(state["ports"]["api"]),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__SECRET_KEY": state["secrets"]["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": state["secrets"]["jwt"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{BUCKET}/logs",
            "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "sis_sync_store",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(8793 + 10 * worker_index),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "SIS_SYNC_PORTALS_DIR": str(code / "portals"),
            "SIS_SYNC_DATA_URL": f"s3://{BUCKET}/runs",
            "SIS_SYNC_DATA_CONN_ID": "sis_sync_store",
            "SIS_SYNC_HOSTNAME": worker or "control",
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    return env


def _prepare_airflow(
    root: Path, state: dict[str, Any], control: Path, extra_settings: list[Path]
) -> None:
    """Migrate Airflow's metadata and the LMS, and load the shared connections and pools."""
    env = _env(state, control)
    env.update(
        {
            "SIS_SYNC_CLUSTER_PG_PORT": str(state["ports"]["postgres"]),
            "SIS_SYNC_CLUSTER_S3_KEY": state["s3"]["key"],
            "SIS_SYNC_CLUSTER_S3_SECRET": state["s3"]["secret"],
            "SIS_SYNC_CLUSTER_S3_URL": state["s3"]["url"],
        }
    )
    _run(root, "db-migrate", ["airflow", "db", "migrate"], env)
    for settings in [ROOT / "scripts" / "cluster_settings.yaml", *extra_settings]:
        command = [sys.executable, "-m", "include.sis_sync.cli", "load-settings", str(settings)]
        _run(root, "load-settings", command, env)
    command = [sys.executable, "-m", "include.sis_sync.cli", "migrate"]
    _run(root, "lms-migrate", command, env)


def _run(root: Path, name: str, command: list[str], env: dict[str, str]) -> None:
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        done = subprocess.run(command, env=env, cwd=env["AIRFLOW_HOME"], stdout=out, stderr=out)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{_tail(log)}")


def _spawn(
    root: Path, state: dict[str, Any], name: str, command: list[str], env: dict[str, str]
) -> None:
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=env.get("AIRFLOW_HOME", str(root)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state["processes"][name] = process.pid
    _write_state(root, state)


def _wait_ready(root: Path, state: dict[str, Any], timeout: float) -> None:
    """The API server healthy with a live scheduler, DAG processor and triggerer, and every
    worker connected to the broker."""
    url = f"http://127.0.0.1:{state['ports']['api']}/api/v2/monitor/health"

    def healthy() -> bool:
        _check_alive(root, state)
        with urllib.request.urlopen(url, timeout=5) as response:
            health = json.load(response)
        parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
        return all(health.get(p, {}).get("status") == "healthy" for p in parts)

    _wait("the API server, scheduler, DAG processor and triggerer", healthy, timeout, root)
    for name in state["workers"]:
        log = root / "logs" / f"{name}.log"
        _wait(f"{name}", lambda log=log: b" ready." in log.read_bytes(), timeout, root, name)


def _summary(root: Path, state: dict[str, Any]) -> dict[str, Any]:
    home = root / "control" / "home"
    return {
        "ui": f"http://127.0.0.1:{state['ports']['api']}",
        "admin_password_file": str(home / "simple_auth_manager_passwords.json.generated"),
        "postgres": state["postgres_url"],
        "object_store": state["s3"]["url"],
        "workers": state["workers"],
        "logs": str(root / "logs"),
        "state": str(root / "cluster.json"),
    }


# --------------------------------------------------------------------------------------------
# stop and status
# --------------------------------------------------------------------------------------------


def stop(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    if not (root / "cluster.json").exists():
        print(f"{root}: no deployment recorded there")
        return
    stop_state(root, _read_state(root))


def stop_state(root: Path, state: dict[str, Any]) -> None:
    """Workers first (a warm shutdown finishes running tasks), then the control machine, then
    the shared services; each gets SIGTERM, and SIGKILL with its group after a grace period."""
    processes: dict[str, int] = state.get("processes", {})
    order = [*state.get("workers", []), *CONTROL, "object-store", "redis"]
    for name in order:
        if name in processes:
            _terminate(processes[name], grace=60 if name.startswith("worker") else 30)
    if state.get("postgres_url"):
        script = str(ROOT / "scripts" / "postgres.sh")
        subprocess.run([script, "stop"], env=_postgres_env(state), check=False)
    state["processes"] = {}
    state["stopped"] = True
    _write_state(root, state)
    print(f"stopped the deployment in {root}")


def _terminate(pid: int, grace: float) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # the process and whatever it left in its group
    _reap(pid)


def status(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    state = _read_state(root)
    for name, pid in state.get("processes", {}).items():
        print(f"{name:15} pid {pid:7} {'running' if _alive(pid) else 'NOT RUNNING'}")


def _any_alive(state: dict[str, Any]) -> bool:
    return any(_alive(pid) for pid in state.get("processes", {}).values())


def _check_alive(root: Path, state: dict[str, Any]) -> None:
    for name, pid in state["processes"].items():
        if not _alive(pid):
            raise SystemExit(
                f"{name} exited during start-up:\n{_tail(root / 'logs' / f'{name}.log')}"
            )


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait(
    what: str, probe: Callable[[], bool], timeout: float, root: Path, log: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except (OSError, ValueError):
            pass
        time.sleep(1)
    tail = _tail(root / "logs" / f"{log}.log") if log else ""
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _read_state(root: Path) -> dict[str, Any]:
    return json.loads((root / "cluster.json").read_text())


def _write_state(root: Path, state: dict[str, Any]) -> None:
    """The deployment's record; it holds the JWT and store secrets, so only its owner reads it."""
    path = root / "cluster.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(state, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=ROOT / ".data" / "cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start every piece and wait until it is ready")
    begin.add_argument("--portals", type=Path, default=ROOT / "include" / "portals")
    begin.add_argument(
        "--settings",
        type=Path,
        action="append",
        default=[],
        help="more Astro-format settings to load (connections, pools)",
    )
    begin.add_argument("--workers", type=int, default=2)
    begin.add_argument("--concurrency", type=int, default=4, help="task slots per worker")
    for port in ("pg", "redis", "s3", "api"):
        begin.add_argument(f"--{port}-port", type=int, default=0, help="default: a free port")
    begin.add_argument("--timeout", type=float, default=300, help="seconds to come up")
    commands.add_parser("stop", help="stop every piece and delete the PostgreSQL data")
    commands.add_parser("status", help="which pieces are running")
    args = parser.parse_args(argv)
    {"start": start, "stop": stop, "status": status}[args.command](args)


if __name__ == "__main__":
    main()
