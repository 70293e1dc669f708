"""What the local SIS servers share: an HTTP server in a daemon thread, answering JSON.

A server subclasses :class:`LocalServer` and implements ``handle(Request) -> Answer``; this
module does the sockets: keep-alive connections (as real APIs allow), a silent request log,
and a ``stop()`` that closes every open connection so tests never leave one behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit


@dataclass
class Request:
    """One request as a server sees it; header names lower-cased."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Answer:
    """One answer: a status, a JSON-able payload (None: empty body) and headers."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class LocalServer(ABC):
    """Serves ``handle`` from a daemon thread on ``host``:``port`` (0: a free port)."""

    server_version = "LocalSIS/1.0"
    thread_name = "local-sis"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.base_url = ""
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @abstractmethod
    def handle(self, request: Request) -> Answer:
        """The server's answer to one request (each simulator's API)."""

    def start(self) -> str:
        """Serve in a daemon thread; returns ``base_url`` (``http://127.0.0.1:<port>``)."""
        with self._lock:
            if self._server is not None:
                return self.base_url
            server = _Server((self.host, self.port), _Handler)
            server.simulator = self
            host, port = server.server_address[:2]
            self.base_url = f"http://{host}:{port}"
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self.thread_name}-{port}",
                daemon=True,
            )
            self._thread.start()
            return self.base_url

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            connections = list(self._connections)
        if server is None:
            return
        server.shutdown()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: LocalServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections, as with real APIs
    sys_version = ""
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall between
    server: _Server

    @property
    def server_version(self) -> str:  # type: ignore[override]
        return self.server.simulator.server_version

    def setup(self) -> None:
        super().setup()
        self.server.simulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.simulator._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: each server keeps its own request log, never with credentials."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command,
            parts.path,
            parts.query,
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        answer = self.server.simulator.handle(request)
        data = b""
        if answer.payload is not None:
            data = json.dumps(answer.payload, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_response(answer.status)
        if answer.payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


def district_parser(module: str, description: str, port: int) -> argparse.ArgumentParser:
    """The options every simulator's command line shares: the preset, host and port."""
    from include.sis_sync.sample import generator

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--preset", choices=sorted(generator.PRESETS), default="demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="0 picks a free port")
    return parser


def serve_until_stopped(
    server: Any,
    district: Any,
    to_data: Callable[[Any], Any],
    name: str,
    banner: Callable[[], str],
) -> int:
    """Serve a generated district until SIGINT or SIGTERM (the simulators' command lines).

    SIGUSR1 moves the district on a day (about 3 % adds, updates and leavers, from the
    generator's ``next_day``) and applies it to ``server``, which emits what the real API
    would (events, ``dateLastModified``, ``tobedeleted`` rows).
    """
    import signal

    from include.sis_sync.sample import generator

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    days = [district]

    def next_day(*_: Any) -> None:
        days.append(
            generator.next_day(days[-1], seed=len(days), add=0.03, update=0.03, archive=0.03)
        )
        print(f"{name}: day {len(days)}: {server.apply(to_data(days[-1]))}", flush=True)

    signal.signal(signal.SIGUSR1, next_day)
    server.start()
    print(f"{name}: {banner()}; SIGUSR1 moves it on a day; stop with Ctrl-C", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print(f"{name} stopped", flush=True)
    return 0
