"""``qae report RUN --serve``: the report of a run, served live on 127.0.0.1 while its search runs.

The server binds to the loopback address only, on a free port the OS picks (or the one asked for),
and opens nothing unless asked. It renders the page in memory from the archive (read-only, as any
report does; the run folder is never written) whenever the archive changed, and answers ``/version``
so the page (``report.js``) reloads itself when the archive grows. It runs until interrupted.

Thread safety: requests are served on threads; each render opens its own read-only archive
connection, and the cached page is swapped under a lock.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, QaeError

#: Loopback only: a report holds paths and results nobody else on the network should read.
HOST = "127.0.0.1"
#: How often the page asks whether the archive changed
POLL_MS = 1500


class LiveReport:
    """The page of a run as its archive stands now, re-rendered only when the archive changed."""

    def __init__(self, run: Path, weights: dict[str, float] | None = None, interval_ms: int = POLL_MS) -> None:
        self.run = run
        self.weights = weights
        self.interval_ms = interval_ms
        self._lock = threading.Lock()
        self._cached: tuple[str, bytes] | None = None

    def version(self) -> str:
        """Changes whenever SQLite writes the archive (its main file or its write-ahead log)."""
        parts = []
        for suffix in ("", "-wal"):
            path = Path(str(self.run / "archive.sqlite") + suffix)
            try:
                st = path.stat()
                parts.append(f"{st.st_mtime_ns}:{st.st_size}")
            except FileNotFoundError:
                parts.append("-")
        return "/".join(parts)

    def page(self) -> bytes:
        from harness.report.html import render_page

        version = self.version()
        with self._lock:
            if self._cached and self._cached[0] == version:
                return self._cached[1]
        try:
            text = render_page(self.run, live={"version": version, "interval_ms": self.interval_ms},
                               weights=self.weights)
        except QaeError as exc:  # e.g. the archive is being created: say so and try again shortly
            text = (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
                    f"<link rel='icon' href='data:,'><title>qae report</title></head><body><p>{html.escape(str(exc))}"
                    "</p></body></html>")
        body = text.encode("utf-8")
        with self._lock:
            self._cached = (version, body)
        return body


def _handler(live: LiveReport) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/report.html"):
                self._send(200, "text/html; charset=utf-8", live.page())
            elif path == "/version":
                self._send(200, "text/plain; charset=utf-8", live.version().encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: this server serves / and /version\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the terminal shows the URL, not every poll

    return Handler


def make_server(run: Path, weights: dict[str, float] | None = None, port: int = 0,
                interval_ms: int = POLL_MS) -> ThreadingHTTPServer:
    """A server for ``run``'s live report on 127.0.0.1 (``port`` 0: a free one); not yet serving."""
    if not (run / "archive.sqlite").is_file():
        raise InputError(f"no archive at {run / 'archive.sqlite'}: give a run folder that `qae search` writes "
                         "(start the search first, then serve its folder)")
    try:
        server = ThreadingHTTPServer((HOST, port), _handler(LiveReport(run, weights, interval_ms)))
    except OSError as exc:
        raise InputError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}): give another --port, or 0 for "
                         "a free one") from None
    server.daemon_threads = True
    return server


def serve(run: Path, weights: dict[str, float] | None = None, port: int = 0,
          say: Callable[[str], None] = print) -> None:
    """Serve ``run``'s report on 127.0.0.1 until interrupted (Ctrl-C or SIGTERM)."""
    server = make_server(run, weights, port)
    say(f"serving the live report of {run} at http://{HOST}:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        say("stopped serving")
    finally:
        server.server_close()
