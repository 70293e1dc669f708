"""Start and stop a real `airflow standalone` for a test, in its own Airflow home and ports.

The standalone (scheduler, dag-processor, api-server, triggerer, LocalExecutor on SQLite) runs
in a new session, with an environment built from scratch for it: nothing of the test process's
Airflow or SIS sync settings leaks in (``tests/conftest.py`` sets unit-test mode and its own
metadata database for in-process runs). Every wait is bounded, and :meth:`Standalone.stop`
leaves no process behind: SIGINT to the `standalone` process alone (it then terminates each
component once and waits for them), then SIGTERM and SIGKILL to its process group, and finally
any descendant that left the group (task processes run in process groups of their own) is
killed by its pid.

Why not SIGINT to the whole group, as a Ctrl-C in a terminal does: every component then gets
two signals (the SIGINT, then `standalone`'s own SIGTERM), and the dag-processor (often the
scheduler too) deadlocks in its signal handler: the second signal re-enters it while the first
one holds structlog's write lock. They hang until SIGKILL; SIGINT to the parent alone stops
everything cleanly in 6 to 13 s here.

Typical use::

    with start_standalone(tmp_path / "airflow", extra_env={...}) as af:
        af.wait_for_dag("sis_sync__x")
        af.patch(f"/api/v2/dags/sis_sync__x", json={"is_paused": False})
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
# The project's virtual environment (standalone starts its components as `airflow` from PATH).
VENV_BIN = ROOT / ".venv" / "bin"
if not (VENV_BIN / "airflow").exists():
    VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")

# Settings of the test process that must not reach the standalone (it gets its own).
INHERITED_PREFIXES = ("AIRFLOW", "SIS_SYNC_", "_AIRFLOW")


class StandaloneError(RuntimeError):
    """The standalone did not come up, or a wait on it ran out of time."""


def free_port() -> int:
    """A TCP port free on localhost right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 1.0,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise StandaloneError(f"timed out after {timeout:.0f} s: {what}{detail}{extra}")
        time.sleep(interval)


def standalone_env(home: Path, api_port: int, extra_env: Mapping[str, str] | None = None) -> dict:
    """The environment of a standalone in ``home``: the project's settings for a small machine,
    its own ports and JWT secret, no login (every request is an admin), and ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            # The api-server's port, and where task workers reach its execution API: without
            # base_url they would call http://localhost:8080, someone else's Airflow maybe.
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    env.update(extra_env or {})
    return env


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


class Standalone:
    """A running `airflow standalone` and a small REST client for it."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str],
        api_port: int,
        command: tuple[str, ...] = ("standalone",),
    ) -> None:
        self.home = home
        self.command = command
        self.env = env
        self.api_port = api_port
        self.base_url = f"http://127.0.0.1:{api_port}"
        self.log_path = home / "standalone.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self._seen: dict[int, psutil.Process] = {}
        self.stopped_by: str | None = None
        self.started_at = time.monotonic()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *self.command],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _remember_descendants(self) -> None:
        """Note every descendant now alive: task processes leave the process group."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(self.process.pid)
            for proc in [parent, *parent.children(recursive=True)]:
                self._seen.setdefault(proc.pid, proc)

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def _group_alive(self) -> bool:
        """Whether the parent or any live (non-zombie) member of its process group is left."""
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Zombies left in the group are reaped by init once their parent is gone.
        return any(_alive(p) and _pgid(p) == self.process.pid for p in self._seen.values())

    def _wait_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._remember_descendants()
            if self.process is not None:
                self.process.poll()
            if not self._group_alive():
                return True
            time.sleep(0.25)
        return not self._group_alive()

    def stop(self) -> None:
        """SIGINT to the parent, then SIGTERM and SIGKILL to the group; then kill by pid any
        descendant still alive."""
        if self.process is None:
            return
        self._remember_descendants()
        began = time.monotonic()
        for sig, grace in ((signal.SIGINT, 45), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if sig == signal.SIGINT:
                # The parent alone: it stops its components (LocalExecutor waits for
                # running tasks to finish, hence the long grace).
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
            else:
                self._signal_group(sig)
            self.stopped_by = sig.name
            if self._wait_gone(grace):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        stragglers = []
        for proc in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if _alive(proc):
                    stragglers.append(proc.pid)
                    proc.kill()
        self.client.close()
        self.note(
            f"stopped by {self.stopped_by} in {time.monotonic() - began:.1f} s"
            + (f"; killed stragglers {stragglers}" if stragglers else "")
        )

    def note(self, message: str) -> None:
        """A progress line on stderr (seen with ``pytest -s``), timed from the start."""
        elapsed = time.monotonic() - self.started_at
        print(f"[standalone +{elapsed:6.1f}s] {message}", file=sys.stderr)

    # -- waiting -------------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StandaloneError(
                f"airflow standalone exited with {self.process.returncode}\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the api-server answers its health check with a healthy scheduler."""

        def healthy() -> bool:
            self._check_alive()
            self._remember_descendants()
            response = self.client.get("/api/v2/monitor/health", timeout=5)
            if response.status_code != 200:
                return False
            if self.command != ("standalone",):
                return True  # an api-server alone: no scheduler to wait for
            body = response.json()
            return body.get("scheduler", {}).get("status") == "healthy"

        wait_until(
            "the api-server's health check", healthy, timeout=timeout, on_timeout=self.log_tail
        )
        self.note(f"healthy on port {self.api_port}")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """Until the dag-processor has parsed ``dag_id`` (its DAG shows in the REST API)."""

        def known() -> dict[str, Any] | None:
            self._check_alive()
            self._remember_descendants()
            response = self.client.get(f"/api/v2/dags/{dag_id}", timeout=5)
            return response.json() if response.status_code == 200 else None

        dag = wait_until(
            f"DAG {dag_id} to be parsed",
            known,
            timeout=timeout,
            interval=2,
            on_timeout=lambda: f"import errors: {self.import_errors()}\n{self.log_tail()}",
        )
        self.note(f"DAG {dag_id} parsed")
        return dag

    def wait_for_runs(
        self,
        dag_id: str,
        done: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 600,
        interval: float = 3,
    ) -> list[dict[str, Any]]:
        """Poll the DAG's runs until ``done(runs)``; returns the runs then."""

        def finished() -> list[dict[str, Any]] | None:
            self._check_alive()
            self._remember_descendants()
            runs = self.dag_runs(dag_id)
            return runs if done(runs) else None

        runs = wait_until(
            f"the runs of {dag_id}",
            finished,
            timeout=timeout,
            interval=interval,
            on_timeout=lambda: json.dumps(self.dag_runs(dag_id), indent=1) + "\n" + self.log_tail(),
        )
        self.note(f"runs of {dag_id}: {[(r['dag_run_id'], r['state']) for r in runs]}")
        return runs

    # -- REST ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def request_retrying(
        self, method: str, path: str, timeout: float = 60, **kwargs: Any
    ) -> httpx.Response:
        """A write request, asked again while SQLite answers "database is locked".

        On SQLite, a request that reads and then writes fails at once (no busy wait) when
        another component wrote in between; nothing was written then.
        """

        def attempt() -> httpx.Response | None:
            response = self.request(method, path, **kwargs)
            if response.status_code >= 500 and "locked" in response.text.lower():
                self.note(f"{method} {path}: {response.status_code} {response.text}; retrying")
                return None
            return response

        return wait_until(f"{method} {path}", attempt, timeout=timeout, interval=2)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def create_backfill(self, body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
        """``POST /api/v2/backfills``, retried while SQLite is locked (503).

        On SQLite the api-server answers 503 "Database is locked" when the scheduler or the
        dag-processor holds the write lock for longer than the busy timeout; the creation was
        rolled back then, so it is safe to ask again (a backfill that did get created is found
        and returned instead).
        """

        def attempt() -> dict[str, Any] | None:
            self._check_alive()
            response = self.post("/api/v2/backfills", json=body)
            if response.status_code == 200:
                return response.json()
            if response.status_code != 503:
                raise StandaloneError(
                    f"backfill not created: {response.status_code} {response.text}"
                )
            self.note(f"backfill creation: {response.status_code} {response.text}; retrying")
            existing = self.get("/api/v2/backfills", params={"dag_id": body["dag_id"]})
            if existing.status_code == 200:
                for backfill in existing.json().get("backfills", []):
                    if backfill.get("completed_at") is None:
                        return backfill
            return None

        return wait_until("the backfill to be created", attempt, timeout=timeout, interval=3)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run (as the UI's trigger form does); returns its run id."""
        response = self.request_retrying(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
        )
        if response.status_code != 200:
            raise StandaloneError(f"trigger {dag_id}: {response.status_code} {response.text}")
        return str(response.json()["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
        response.raise_for_status()
        return response.json()

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        states: tuple[str, ...] = ("success", "failed"),
        timeout: float = 300,
    ) -> dict[str, Any]:
        """Until the DAG run is in one of ``states``; returns it."""

        def settled() -> dict[str, Any] | None:
            self._check_alive()
            self._remember_descendants()
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in states else None

        what = f"run {run_id} of {dag_id} to be {' or '.join(states)}"
        run = self._wait_on_run(what, dag_id, run_id, settled, timeout)
        self.note(f"{dag_id} {run_id}: {run['state']}")
        return run

    def _wait_on_run(
        self, what: str, dag_id: str, run_id: str, probe: Callable[[], T | None], timeout: float
    ) -> T:
        """``wait_until`` about one DAG run: on time-out, its failed tasks' logs say why."""
        return wait_until(
            what,
            probe,
            timeout=timeout,
            interval=2,
            on_timeout=lambda: self.failed_task_logs(dag_id, run_id) + "\n" + self.log_tail(40),
        )

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        for ti in self.task_instances(dag_id, run_id):
            if ti["task_id"] == task_id:
                return ti.get("state")
        return None

    def wait_for_task(
        self, dag_id: str, run_id: str, task_id: str, states: tuple[str, ...], timeout: float = 300
    ) -> str:
        def reached() -> str | None:
            self._check_alive()
            state = self.task_state(dag_id, run_id, task_id)
            return state if state in states else None

        what = f"{task_id} of {run_id} to be {' or '.join(states)}"
        return self._wait_on_run(what, dag_id, run_id, reached, timeout)

    def pending_approval(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """Until the run's approval step waits for an answer; returns its request. Requests
        of earlier tries that nobody answered (their run was marked failed, then cleared)
        stay listed as pending: only the try now awaiting input counts.

        It returns only once the scheduler has read the executor's report of the pause:
        Airflow 3.3 marks the task failed ("state changed externally") when an answer
        re-queues it before that report is read, and the worker's report may come several
        seconds after the task shows ``awaiting_input`` (5.7 s seen on a busy SQLite
        standalone). A person takes longer; a test answers at once."""

        def pending() -> dict[str, Any] | None:
            self._check_alive()
            response = self.get(
                f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/hitlDetails",
                params={"response_received": False},
            )
            if response.status_code != 200:
                return None
            details = [
                d
                for d in response.json().get("hitl_details", [])
                if d["task_instance"]["state"] == "awaiting_input"
            ]
            return details[0] if details else None

        request = self._wait_on_run(
            f"the approval request of {run_id}", dag_id, run_id, pending, timeout
        )
        self._wait_pause_reported(dag_id, run_id, request["task_instance"]["try_number"])
        return request

    def _wait_pause_reported(self, dag_id: str, run_id: str, try_number: int) -> None:
        """Until the scheduler's log shows it read the executor's event for this try of the
        approval step (the pause); then a moment for the scheduler to finish that loop."""
        key = (
            f"Received executor event with state success for task instance TaskInstanceKey("
            f"dag_id='{dag_id}', task_id='await_approval', run_id='{run_id}', "
            f"try_number={try_number},"
        )

        def reported() -> bool:
            self._check_alive()
            return key in self.log_path.read_text(errors="replace")

        wait_until(
            f"the scheduler to read the pause of {run_id} try {try_number}",
            reported,
            timeout=120,
            interval=0.5,
            on_timeout=self.log_tail,
        )
        time.sleep(1)

    def answer(self, dag_id: str, run_id: str, option: str) -> dict[str, Any]:
        """Answer the run's waiting approval step with Approve or Reject."""
        response = self.request_retrying(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            "await_approval/-1/hitlDetails",
            json={"chosen_options": [option], "params_input": {}},
        )
        if response.status_code != 200:
            raise StandaloneError(f"answer {option}: {response.status_code} {response.text}")
        return response.json()

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """Clear tasks and their downstream, as a task's Clear button in the UI does."""
        response = self.request_retrying(
            "POST",
            f"/api/v2/dags/{dag_id}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "include_downstream": True,
                "reset_dag_runs": True,
            },
        )
        if response.status_code != 200:
            raise StandaloneError(f"clear {task_ids}: {response.status_code} {response.text}")

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        """Mark a whole DAG run (as the UI's "Mark run as" does)."""
        response = self.request_retrying(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}",
            json={"state": state},
        )
        if response.status_code != 200:
            raise StandaloneError(f"mark {run_id} {state}: {response.status_code} {response.text}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "logical_date"}
        )
        response.raise_for_status()
        return response.json()["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return response.json()["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """One try's log as text lines (the API serves structured NDJSON events)."""
        response = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/x-ndjson"},
        )
        if response.status_code != 200:
            return f"(log: {response.status_code} {response.text})"
        lines = []
        for raw in response.text.splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                lines.append(raw)
                continue
            text = " ".join(
                str(event[k]) for k in ("timestamp", "level", "event") if event.get(k) is not None
            )
            for error in event.get("error_detail") or []:
                if not isinstance(error, dict):
                    continue
                frames = error.get("frames") or []
                where = [f"{f.get('filename')}:{f.get('lineno')} {f.get('name')}" for f in frames]
                text += "\n  " + "\n  ".join(
                    [*where[-4:], f"{error.get('exc_type')}: {error.get('exc_value')}"]
                )
            lines.append(text)
        return "\n".join(lines)

    # -- users (when the standalone signs users in) ---------------------------------------------

    def password(self, username: str) -> str:
        """The password the simple auth manager generated for ``username``."""
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        return str(json.loads(generated.read_text())[username])

    def token(self, username: str) -> str:
        """A JWT for ``username`` (``POST /auth/token``), as the login page gets one."""
        response = self.client.post(
            "/auth/token",
            json={"username": username, "password": self.password(username)},
            headers={"Authorization": ""},
        )
        if response.status_code not in (200, 201):
            raise StandaloneError(f"sign-in of {username}: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    def client_as(self, username: str | None) -> httpx.Client:
        """A client signed in as ``username`` with the UI's cookie (None: anonymous)."""
        cookies = {"_token": self.token(username)} if username else {}
        return httpx.Client(base_url=self.base_url, timeout=60, cookies=cookies)

    def import_errors(self) -> Any:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return self.get("/api/v2/importErrors").json()
        return None

    # -- diagnostics ---------------------------------------------------------------------------

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no standalone log)"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def failed_task_logs(self, dag_id: str, run_id: str, max_chars: int = 6000) -> str:
        """The logs of the run's tasks that did not succeed, for a failure message."""
        parts = []
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            for ti in self.task_instances(dag_id, run_id):
                if ti.get("state") in ("success", "skipped", "upstream_failed"):
                    continue
                parts.append(f"--- {run_id} {ti['task_id']} state={ti.get('state')}")
                tries = max(int(ti.get("try_number") or 0), 1)
                log = self.task_log(dag_id, run_id, ti["task_id"], tries)
                parts.append(log[-max_chars:])
        return "\n".join(parts)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """An `airflow` CLI command against this standalone's home (bounded)."""
        return subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def sync_env(root: Path, **extra: str) -> dict[str, str]:
    """The settings of a standalone that syncs portals: portal files in ``root/portals``,
    drops in ``root/drops``, run data in ``root/runs`` and the LMS in ``root/lms.db`` (which
    the caller migrates), and ``extra``."""
    return {
        "SIS_SYNC_PORTALS_DIR": str(root / "portals"),
        "SIS_SYNC_DATA_URL": str(root / "runs"),
        "SIS_SYNC_DROPS_DIR": str(root / "drops"),
        "AIRFLOW_CONN_LMS_DB": json.dumps({"conn_type": "sqlite", "host": str(root / "lms.db")}),
        **extra,
    }


def signed_in_users(users: str) -> dict[str, str]:
    """Settings for a standalone whose simple auth manager signs in ``users``
    ("name:role,..."; passwords are generated) instead of letting everyone in as admin."""
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
    }


def ready_to_sync(af: Standalone, dag_ids: list[str], pool: str) -> None:
    """The commit pool made, each portal's DAG parsed and unpaused."""
    made = af.cli("pools", "set", pool, "1", "LMS writes")
    assert made.returncode == 0, made.stderr
    for dag_id in dag_ids:
        af.wait_for_dag(dag_id, timeout=180)
        af.request_retrying("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})


@contextlib.contextmanager
def start_api_server(
    home: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    prepare: Callable[[Standalone], None] | None = None,
    ready_timeout: float = 180,
) -> Iterator[Standalone]:
    """Only Airflow's API server (and so the admin pages), on a metadata database migrated
    first (then ``prepare``d: users, roles), for tests of pages that need no scheduler: it
    starts in seconds, not a minute."""
    port = free_port()
    server = Standalone(home, standalone_env(home, port, extra_env), port, ("api-server",))
    home.mkdir(parents=True, exist_ok=True)
    migrated = server.cli("db", "migrate", timeout=300)
    if migrated.returncode != 0:
        raise StandaloneError(f"airflow db migrate: {migrated.stderr[-3000:]}")
    if prepare is not None:
        prepare(server)
    try:
        server.start()
        server.wait_ready(ready_timeout)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def start_standalone(
    home: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    ready_timeout: float = 180,
) -> Iterator[Standalone]:
    """A standalone in ``home``, healthy on a free port; stopped on exit, whatever happens."""
    port = free_port()
    standalone = Standalone(home, standalone_env(home, port, extra_env), port)
    try:
        standalone.start()
        standalone.wait_ready(ready_timeout)
        if standalone.env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS") == "False":
            # users sign in: the helper's own REST calls are the admin's
            admin = standalone.token("admin")
            standalone.client.headers["Authorization"] = f"Bearer {admin}"
        yield standalone
    finally:
        standalone.stop()
