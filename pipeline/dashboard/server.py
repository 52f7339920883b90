"""The live status page: a read-only HTTP server over Redis and the processes' ``/metrics``.

:class:`Dashboard` reads its sources every ``refresh`` seconds on a thread of its own
(:mod:`pipeline.dashboard.state` for Redis, :mod:`pipeline.dashboard.scrape` for the
metrics) and serves, with the standard library's HTTP server:

===========================  ==============================================================
``GET /``                    the page (``static/index.html``); it polls the snapshot
``GET /static/<file>``       the page's script and style, and the vendored charting
                             library (uPlot, MIT, ``static/vendor/``): nothing is loaded
                             from elsewhere, so the page works offline
``GET /api/snapshot``        JSON: models over their versions, the stream's series, the
                             workers, and the state of each source
``GET /api/receipts``        ``?request=<id>`` or ``?subject=<token>`` (SHA-256 token of
                             the subject id, computed by the page): the receipts
===========================  ==============================================================

Only ``GET`` and ``HEAD`` are answered: the page changes nothing. It listens on loopback
unless told otherwise (``UNLEARN_DASHBOARD_ADDR``, like ``UNLEARN_METRICS_ADDR``); on
loopback it also refuses requests whose ``Host`` is not a loopback name, so that a web
page elsewhere cannot read it through DNS rebinding. A Content-Security-Policy of
``'self'`` keeps the browser from sending any request off the machine.

When a source is down the snapshot says which and why, keeps the last values it read
(with their time), and the page shows both.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
import time
from collections import deque
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import redis

from pipeline.dashboard.scrape import Scrape, StreamWindow, scrape
from pipeline.dashboard.state import (
    HISTORY_LIMIT,
    models_state,
    receipts_of_request,
    receipts_of_subject,
    workers_state,
)
from pipeline.errors import InvalidInput, PipelineError

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.store import Store

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_LOOPBACK_ADDRS = {"127.0.0.1", "::1", "localhost"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` by its path, read once (the page never changes)."""
    files = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            files[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), kind)
    return files


class Dashboard:
    """The status page of one key namespace: reads on a thread, serves over HTTP.

    Parameters
    ----------
    store : Store
        Redis state to read (any user that may read what the page shows; see
        ``docs/dashboard.md`` for the reader role's limits).
    settings : Settings
        ``dashboard_addr``, ``dashboard_port``, ``dashboard_refresh`` and the legal
        deadline.
    metrics_urls : iterable of str
        ``/metrics`` URLs scraped besides the workers' (found through their status keys,
        on this machine): a retrainer's, or workers elsewhere.
    title : str
        Shown at the top of the page.

    Examples
    --------
    >>> with Dashboard(store, settings) as page:  # doctest: +SKIP
    ...     print(page.url)
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        metrics_urls: Iterable[str] = (),
        title: str = "unlearn",
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics_urls = list(metrics_urls)
        self.title = title
        self.refresh_s = settings.dashboard_refresh
        self.window = StreamWindow(span=max(600.0, 120 * self.refresh_s))
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._snapshot: dict[str, Any] = {}
        self._models: list[dict[str, Any]] = []
        self._seen: dict[str, dict[int, dict[str, Any]]] = {}
        self._workers: list[dict[str, Any]] = []
        self._redis: dict[str, Any] = {"ok": False, "error": "not read yet", "as_of": None}
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- reading ----------------------------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        """Read every source once and build the snapshot the page polls; return it."""
        at = time.time()
        deadline_s = self.settings.legal_deadline.total_seconds()
        try:
            self._models = self._remember(models_state(self.store, deadline_s))
            self._workers = workers_state(self.store)
            self._redis = {"ok": True, "error": None, "as_of": at}
        except (redis.RedisError, PipelineError, OSError) as exc:
            self._redis = {"ok": False, "error": _one_line(exc), "as_of": self._redis["as_of"]}
        targets = [
            f"http://127.0.0.1:{w['metrics_port']}/metrics"
            for w in self._workers
            if w.get("metrics_port")
        ] + self.metrics_urls
        scrapes: dict[str, Scrape] = {}
        sources = []
        for url in dict.fromkeys(targets):
            try:
                scrapes[url] = scrape(url, timeout=min(2.0, self.refresh_s))
                sources.append({"url": url, "ok": True, "error": None})
            except (OSError, ValueError) as exc:
                sources.append({"url": url, "ok": False, "error": _one_line(exc)})
        point = self.window.add(at, scrapes)
        if self._redis["ok"]:
            point["pending"] = {m["model_id"]: m["pending"] for m in self._models}
            point["oldest_pending_share"] = {
                m["model_id"]: (m["oldest_pending_age_s"] or 0.0) / deadline_s for m in self._models
            }
        snapshot = {
            "title": self.title,
            "namespace": self.store.keys.namespace,
            "generated_at": at,
            "refresh_s": self.refresh_s,
            "legal_deadline_s": deadline_s,
            "sources": {"redis": dict(self._redis), "metrics": sources},
            "models": self._models,
            "workers": self._workers,
            "stream": {"points": self.window.points(), "totals": self.window.totals()},
        }
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def _remember(self, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep every version seen while the page runs, with those Redis still holds.

        A version whose data a later erasure removed is retired from Redis at once
        (``UNLEARN_ERASED_VERSIONS_GRACE_S``), so Redis alone holds little history; the
        page keeps the metadata of each version it read (no coefficients, no records).
        Versions published and retired between two refreshes are not seen.
        """
        for m in models:
            seen = self._seen.setdefault(m["model_id"], {})
            if seen and min(seen) > m["current"]["version"]:  # the model was recreated
                seen.clear()
            for row in m["versions"]:
                seen[row["version"]] = row
            for old in sorted(seen)[:-HISTORY_LIMIT]:
                del seen[old]
            m["versions"] = [seen[v] for v in sorted(seen)]
        return models

    def snapshot(self) -> dict[str, Any]:
        """The last snapshot built by :meth:`refresh`."""
        with self._lock:
            return self._snapshot

    def receipts(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """The answer to ``/api/receipts``: by ``request`` id or by ``subject`` token."""
        if "request" in query:
            request_id = query["request"][0].strip()
            if not request_id:
                msg = "give a request id"
                raise InvalidInput(msg)
            return {
                "request_id": request_id,
                "receipts": receipts_of_request(self.store, request_id),
            }
        if "subject" in query:
            token = query["subject"][0].strip()
            return {"subject_token": token, "receipts": receipts_of_subject(self.store, token)}
        msg = "ask with ?request=<request id> or ?subject=<subject token>"
        raise InvalidInput(msg)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # never let the page freeze on one bad read
                log.exception("the status page could not refresh")
            self._stop.wait(self.refresh_s)

    # -- serving ----------------------------------------------------------------------

    @property
    def loopback(self) -> bool:
        return self.settings.dashboard_addr in _LOOPBACK_ADDRS

    @property
    def url(self) -> str:
        """Where the page is (after :meth:`start`)."""
        if self._server is None:
            msg = "the status page is not started: call start() first"
            raise PipelineError(msg)
        host = self.settings.dashboard_addr
        host = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._server.server_address[1]}/"

    def start(self) -> Dashboard:
        """Read once, then serve and refresh on daemon threads."""
        self.refresh()
        handler = type("Handler", (_Handler,), {"dashboard": self, "files": _static_files()})
        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {"daemon_threads": True, "address_family": _family(self.settings.dashboard_addr)},
        )
        self._server = server_class(
            (self.settings.dashboard_addr, self.settings.dashboard_port), handler
        )
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True),
            threading.Thread(target=self._loop, name="dashboard-refresh", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and refreshing (idempotent)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _family(addr: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class _Handler(BaseHTTPRequestHandler):
    """Routes of the page; ``dashboard`` and ``files`` are set per server."""

    dashboard: Dashboard
    files: dict[str, tuple[bytes, str]]
    server_version = "unlearn-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("dashboard: " + format, *args)  # request lines carry request ids: debug only

    def _host_ok(self) -> bool:
        if not self.dashboard.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in _LOOPBACK_HOSTS

    def _send(self, status: int, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, allow_nan=False, default=_finite).encode()
        self._send(status, body, "application/json")

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._host_ok():
            self._json(HTTPStatus.MISDIRECTED_REQUEST, {"error": "use a loopback host name"})
            return
        parts = urlsplit(self.path)
        path = parts.path
        if path in ("/", "/index.html"):
            body, kind = self.files["index.html"]
            self._send(HTTPStatus.OK, body, kind)
        elif path.startswith("/static/") and path[len("/static/") :] in self.files:
            body, kind = self.files[path[len("/static/") :]]
            self._send(HTTPStatus.OK, body, kind, cache=True)
        elif path == "/api/snapshot":
            self._json(HTTPStatus.OK, _clean(self.dashboard.snapshot()))
        elif path == "/api/receipts":
            self._receipts(parse_qs(parts.query))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path[:100]!r}"})

    do_HEAD = do_GET  # noqa: N815

    def _receipts(self, query: dict[str, list[str]]) -> None:
        try:
            self._json(HTTPStatus.OK, _clean(self.dashboard.receipts(query)))
        except InvalidInput as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except (redis.RedisError, PipelineError, OSError) as exc:
            self._json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"Redis cannot answer: {_one_line(exc)}"}
            )

    def _read_only(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_PATCH = do_DELETE = _read_only  # noqa: N815


def _finite(value: Any) -> Any:
    msg = f"not JSON: {type(value).__name__}"
    raise TypeError(msg)


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (the page shows them as gaps)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
