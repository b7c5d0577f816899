"""Prometheus metrics by prometheus_client, served on their own port (metrics.listen).

One scrape of metrics.listen gives the whole server. With one worker, that worker serves its own
registry. With several, the supervisor makes a fresh directory for prometheus_client's
multiprocess mode and hands it to the workers in PROMETHEUS_MULTIPROC_DIR: each worker's values
go to files there, and the supervisor serves them summed (gauges as their multiprocess_mode says),
with process_* summed over the supervisor and its workers. The workers serve nothing themselves.

Call metrics follow go-grpc-prometheus and py-grpc-prometheus (grpc_server_started_total,
grpc_server_handled_total, grpc_server_handling_seconds; labels grpc_type, grpc_service,
grpc_method, grpc_code); kassa's own figures are kassa_*.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from kassa.core_ext.model import Code
from kassa.server.config import split_listen
from kassa.server.version import package_version

log = logging.getLogger("kassa.metrics")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GROUP_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
GAUGE_REFRESH_INTERVAL_S = 1  # how often a worker writes its gauges (ledger size, streams open)
SHUTDOWN_POLL_S = 0.1  # how soon the endpoint's thread sees that it is to stop
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it at import
METRICS_PATH = "/metrics"
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
UNKNOWN = "unknown"  # all three labels of a call to a method no service has: callers choose its name
CODE_NAMES = {int(code): code.name for code in Code}


class MetricsUnavailable(Exception):
    """The metrics endpoint cannot be served: the server does not start, and says why in one line."""


def parse_listen(listen: str) -> tuple[str, int]:
    """metrics.listen as (host, port); brackets around an IPv6 host are dropped."""
    address = split_listen(listen)  # the one reading of host:port, server.listen's too
    if address is None:
        raise MetricsUnavailable(f'metrics.listen = "{listen}" is not host:port (e.g. 127.0.0.1:9464)')
    return address


# -- a worker's metrics ---------------------------------------------------------------------------


class MethodMetrics:
    """One method's labelled children, made once: a call then costs no label look-up."""

    def __init__(self, metrics: "Metrics", labels: tuple[str, str, str]):
        self._labels = labels
        self._handled_family = metrics.handled
        self._started = metrics.started.labels(*labels)
        self._seconds = metrics.handling_seconds.labels(*labels)
        self._handled: dict[str, object] = {}

    def started(self) -> None:
        self._started.inc()

    def handled(self, code: str, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        child.inc()
        self._seconds.observe(seconds)


class Metrics:
    """A worker's metrics. Its `registry` is served when the worker is the whole server; under a
    supervisor the values reach the supervisor through the multiprocess directory instead."""

    def __init__(self):
        disable_created_metrics()  # the multiprocess mode has no *_created series: neither has one worker
        self.registry = registry = CollectorRegistry()
        ServerProcesses(registry)
        PlatformCollector(registry)
        self.started = Counter("grpc_server_started", "RPCs started on the server.", GRPC_LABELS, registry=registry)
        self.handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code (unknown methods: all labels unknown).",
            (*GRPC_LABELS, "grpc_code"), registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds", "Time from an RPC's start to its status, in seconds (a stream: its life).",
            GRPC_LABELS, buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.operations = Counter(
            "kassa_operations", "Operations of ProcessBatch and events of StreamEvents, by kind and outcome code.",
            ("grpc_method", "kind", "code"), registry=registry,
        )
        self.commit_operations = Histogram(
            "kassa_commit_operations", "Operations per group commit (one LMDB write transaction and sync).",
            buckets=GROUP_SIZE_BUCKETS, registry=registry,
        )
        self.commit_seconds = Histogram(
            "kassa_commit_duration_seconds", "Time of a group commit, from waiting for the writer lock to the sync.",
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self._make_gauges(registry)
        self._methods: dict[str, MethodMetrics] = {}
        self._operations: dict[tuple[str, str, int], object] = {}
        self._ledger = None
        self._streams_open: Callable[[], int] = lambda: 0
        self._ruleset_version = ""

    def _make_gauges(self, registry: CollectorRegistry) -> None:
        """Every worker writes what it sees; multiprocess_mode says how the supervisor joins them:
        the ledger is shared, so the worker that read it last is right; streams are each worker's."""
        def gauge(name, help_text, mode, labels=()):
            return Gauge(name, help_text, labels, registry=registry, multiprocess_mode=mode)

        self.streams_open = gauge("kassa_streams_open", "StreamEvents calls open.", "livesum")
        self.ledger_bytes = gauge("kassa_ledger_bytes", "Bytes of the LMDB map in use.", "livemostrecent")
        self.map_bytes = gauge("kassa_ledger_map_bytes", "The LMDB map size now; it grows by itself.", "livemostrecent")
        self.map_limit_bytes = gauge(
            "kassa_ledger_map_limit_bytes",
            "The most the LMDB map can grow to now: ledger.map_size_bytes_max, or the disk's free space less "
            "ledger.disk_reserve_bytes.", "livemostrecent")
        self.accounts = gauge("kassa_accounts", "Accounts in the ledger.", "livemostrecent")
        self.transactions = gauge("kassa_transactions", "Journal entries in the ledger.", "livemostrecent")
        self.ruleset = gauge("kassa_ruleset_info", "1 for the ruleset version a worker serves.", "livemax",
                             ("ruleset_version",))
        self.build = gauge("kassa_build_info", "1, labelled with the kassa version serving.", "livemax", ("version",))
        self.build.labels(package_version()).set(1)  # what kassa --version says

    def method(self, full_method: str, grpc_type: str) -> MethodMetrics:
        found = self._methods.get(full_method)
        if found is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            found = self._methods[full_method] = MethodMetrics(self, (grpc_type, service, name))
        return found

    def unknown_method(self) -> None:
        """A call to a method no service has: counted, but its name is no label (a caller could
        make up any number of them)."""
        self.started.labels(UNKNOWN, UNKNOWN, UNKNOWN).inc()
        self.handled.labels(UNKNOWN, UNKNOWN, UNKNOWN, "UNIMPLEMENTED").inc()

    def count_operations(self, grpc_method: str, kind: str, code: int, count: int) -> None:
        key = (grpc_method, kind, code)
        child = self._operations.get(key)
        if child is None:
            child = self._operations[key] = self.operations.labels(grpc_method, kind, CODE_NAMES.get(code, str(code)))
        child.inc(count)

    def observe_commit(self, ops: int, seconds: float) -> None:
        self.commit_operations.observe(ops)
        self.commit_seconds.observe(seconds)

    def watch(self, ledger, streams_open: Callable[[], int]) -> None:
        """Where the gauges come from; written now and by `refresh_periodically`."""
        self._ledger = ledger
        self._streams_open = streams_open
        self.refresh()

    def refresh(self) -> None:
        self.streams_open.set(self._streams_open())
        stats = self._ledger.stats()
        self.ledger_bytes.set(stats["ledger_bytes"])
        self.map_bytes.set(stats["map_bytes"])
        self.map_limit_bytes.set(stats["map_limit_bytes"])
        self.accounts.set(stats["accounts"])
        self.transactions.set(stats["transactions"])
        version = self._ledger.program.version
        if version != self._ruleset_version:
            if self._ruleset_version:
                # set to 0 first: under a supervisor, remove() leaves the value in the worker's file
                self.ruleset.labels(self._ruleset_version).set(0)
                self.ruleset.remove(self._ruleset_version)
            self.ruleset.labels(version).set(1)
            self._ruleset_version = version

    async def refresh_periodically(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.refresh()
            except Exception:  # a bug or an unreadable ledger: keep serving; the next one retries
                log.exception("metrics gauges refresh failed; the next one retries")


# -- process figures of the whole server ----------------------------------------------------------


SUMMED_PROCESS_SAMPLES = frozenset((
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
))


def _parent_pid(pid: int) -> int | None:
    """The parent of a live process `pid`; None when it is gone or a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state, parent = stat.read().rsplit(b")", 1)[1].split()[:2]  # after the name: state, ppid
    except (OSError, ValueError):
        return None
    return None if state == b"Z" else int(parent)


class ServerProcesses:
    """process_* for the whole server: this process's, plus, under a supervisor, those of its
    workers (the processes that wrote to the multiprocess directory and are still its children):
    CPU, memory and open files summed, start time and the file limit this process's. Also
    kassa_workers. The live gauges of workers that are gone are dropped here."""

    def __init__(self, registry: CollectorRegistry, directory: str | None = None):
        self._directory = directory
        registry.register(self)

    def workers(self) -> list[int]:
        pids = {int(name.rsplit("_", 1)[1][:-3]) for name in os.listdir(self._directory) if name.endswith(".db")}
        alive = []
        for pid in pids:
            if _parent_pid(pid) == os.getpid():
                alive.append(pid)
            else:
                mark_process_dead(pid, self._directory)
        return alive

    def collect(self):
        workers = self.workers() if self._directory else []
        summed = dict.fromkeys(SUMMED_PROCESS_SAMPLES, 0.0)
        for pid in workers:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                for sample in family.samples:
                    if sample.name in summed:
                        summed[sample.name] += sample.value
        for family in ProcessCollector(registry=None).collect():
            family.samples = [
                sample._replace(value=sample.value + summed[sample.name]) if sample.name in summed else sample
                for sample in family.samples
            ]
            yield family
        yield GaugeMetricFamily(
            "kassa_workers", "Worker processes serving (1: a server without a supervisor).",
            value=len(workers) if self._directory else 1,
        )


# -- the endpoint -------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a scrape is no news; the access log is for gRPC calls
        pass


def _only_metrics(app):
    def serve_path(environ, start_response):
        if environ["PATH_INFO"] == METRICS_PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"not found; try {METRICS_PATH}\n".encode()]

    return serve_path


class Endpoint:
    """`registry` at http://<listen>/metrics, served by a thread. Bound at once, without
    SO_REUSEPORT: an address another process holds is refused before anything else starts."""

    def __init__(self, registry: CollectorRegistry, listen: str):
        host, port = parse_listen(listen)
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, address = found[0]
        except socket.gaierror as error:
            raise MetricsUnavailable(f'metrics.listen = "{listen}": no such host ({error.strerror})') from None
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        try:
            self._server = make_server(address[0], port, _only_metrics(make_wsgi_app(registry)), server_class,
                                       handler_class=_QuietHandler)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise MetricsUnavailable(f"{listen} is in use by another process") from None
            raise MetricsUnavailable(f'metrics.listen = "{listen}": cannot listen ({error.strerror})') from None
        bound_port = self._server.server_address[1]
        self.address = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), name="kassa-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(metrics: Metrics, listen: str) -> Endpoint | None:
    """One worker is the whole server: it serves its own metrics (None: metrics.listen is off)."""
    return Endpoint(metrics.registry, listen) if listen else None


class WorkersMetrics:
    """The supervisor's side: a fresh multiprocess directory for the workers (`worker_environ`),
    and one endpoint on metrics.listen for all of them. A context manager: the directory goes
    when the supervisor ends."""

    def __init__(self, listen: str):
        self.worker_environ: dict[str, str] = {}
        self.endpoint: Endpoint | None = None
        self._directory: tempfile.TemporaryDirectory | None = None
        if not listen:
            return
        parse_listen(listen)  # a bad address is refused before a directory is made
        self._directory = tempfile.TemporaryDirectory(prefix="kassa-metrics-")
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._directory.name)
            ServerProcesses(registry, self._directory.name)
            PlatformCollector(registry)
            self.endpoint = Endpoint(registry, listen)
        except BaseException:
            self._directory.cleanup()
            raise
        self.worker_environ = {MULTIPROCESS_DIR_VARIABLE: self._directory.name}

    def __enter__(self) -> "WorkersMetrics":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self._directory is not None:
            self._directory.cleanup()
