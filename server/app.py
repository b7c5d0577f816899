"""The server: serve() reads build -> start -> wait_for_signal -> drain -> close, one function a step."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import lmdb
import msgspec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kassa.core_ext import Ledger, Program, RulesError, load_program
from kassa.core_ext.model import Code
from kassa.core_ext.partitions import PartitionedLedger, PartitionsMismatch, stored_partitions
from kassa.core_ext.retention import Retention
from kassa.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    bench_pb2,
    bench_pb2_grpc,
    processing_pb2,
)
from kassa.server.archive_task import archive_periodically
from kassa.server.clock import make_clock
from kassa.server.commit import GroupCommitter
from kassa.server.partition_commit import PartitionedCommitter
from kassa.server.relay import RELAY_INTERVAL_S, Relay
from kassa.server.interceptors.access_log import AccessLogInterceptor
from kassa.server.interceptors.auth import AuthInterceptor
from kassa.server.interceptors.decode import DecodeInterceptor
from kassa.server.interceptors.metrics import MetricsInterceptor
from kassa.server.metrics import GAUGE_REFRESH_INTERVAL_S, Metrics, serve_metrics
from kassa.server.config import ServerConfig
from kassa.server.cpus import usable_cpus
from kassa.server.logs import event
from kassa.server.servicers.accounts import AccountsServicer
from kassa.server.servicers.admin import AdminServicer, compact_ledger, compile_rules, sweep_expired, switch_rules
from kassa.server.servicers.bench import BenchServicer
from kassa.server.servicers.processing import ProcessingServicer
from kassa.server.servicers.processing import add_to_server as add_processing
from kassa.server.startup import StartupRefused, read_tls_files

if TYPE_CHECKING:  # a single node never imports the cluster (nats-py and the cluster's modules: ~0.1 s a start)
    from kassa.server.cluster.forward import ForwardInterceptor
    from kassa.server.cluster.node import ClusterNode
    from kassa.server.cluster.routing import SyncInterceptor

log = logging.getLogger("kassa.server")

RULES_REFRESH_INTERVAL_S = 1  # how often a worker looks for a ruleset another worker stored
ESCROW_RELEASE_INTERVAL_S = 1  # how often idle partitions' slack goes back to emptied banks
CLUSTER_HEALTH_INTERVAL_S = 0.2  # a cluster node looks at whether it can serve this often
# On SIGTERM the process exits at most this long after server.grace_s: the group commit running at
# the deadline ends (a drain commits groups of at most DRAIN_GROUP_OPERATIONS_MAX operations) and the
# ledger closes. Whatever still runs then ends with the process (exit status EXIT_DRAIN_OVERRAN).
DRAIN_OVERRUN_S_MAX = 2
EXIT_DRAIN_OVERRAN = 1

SERVICE_NAMES = (
    processing_pb2.DESCRIPTOR.services_by_name["Processing"].full_name,
    accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


class LedgerUnavailable(Exception):
    """The ledger cannot be opened: the server does not start, and says why in one line."""


def open_ledger(config: ServerConfig) -> Ledger:
    program = Program(load_program([Path(path) for path in config.rules.paths]))
    path = config.ledger.path
    partitions = config.ledger.partitions
    stored = stored_partitions(path)
    if stored is not None and stored != partitions:
        raise LedgerUnavailable(f"cannot open the ledger at {path}: it has {stored} partition(s), and "
                                f"ledger.partitions is {partitions}; set it back to {stored}")
    try:
        ledger = (Ledger if partitions == 1 else partial(PartitionedLedger, partitions=partitions))(
            path,
            program,
            config.ledger.map_size_bytes,
            config.processing.hold_ttl_s,
            sync=config.ledger.sync,
            readers_max=config.ledger.readers_max,
            map_size_bytes_max=config.ledger.map_size_bytes_max,
            disk_reserve_bytes=config.ledger.disk_reserve_bytes,
        )
        ledger.retention = Retention.of_seconds(config.ledger.replay_window_s, config.ledger.return_window_s)
        return ledger
    except lmdb.ReadersFullError as error:
        raise LedgerUnavailable(
            f"cannot open the ledger at {path}: every reader slot is taken ({error}): by processes reading it, "
            "or left by processes that died inside a read while another kept the ledger open; stop the other "
            "processes that have it open (backups, scripts), then start kassa again"
        ) from error
    except (OSError, lmdb.Error, PartitionsMismatch) as error:
        raise LedgerUnavailable(f"cannot open the ledger at {path}: {error}") from error


async def sweep_periodically(committer, interval_s: float, owns=None, partition: int | None = None) -> None:
    """Write the expiry journal entries of lots and holds that came due (reads never count them).
    In a cluster only the partition's owner sweeps (`owns()`); the followers apply its sweeps.
    `partition`: the one partition `committer` commits to (a cluster of several), named in the log."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        if owns is not None and not owns():
            continue
        try:
            settled, expired = await sweep_expired(committer)
        except RuntimeError:
            log.exception("expiry sweep failed; the next one retries")
            continue
        event(log, "expiry sweep", accounts_settled=settled, expired_points=expired, **_named(partition))


async def compact_periodically(committer, retention: Retention, interval_s: float, owns=None,
                               partition: int | None = None) -> None:
    """Compaction (core_ext/compaction.py) in steps through the committer, between purchases; in a
    cluster only by the partition's owner (`owns()`), through the log."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        if owns is not None and not owns():
            continue
        try:
            done = await compact_ledger(committer, retention)
        except RuntimeError:
            log.exception("compaction failed; the next one retries")
            continue
        event(log, "compaction", answers_dropped=done.answers_dropped, requests_forgotten=done.requests_forgotten,
              lots_removed=done.lots_removed, holds_removed=done.holds_removed, codes_removed=done.codes_removed,
              counters_removed=done.counters_removed, **_named(partition))


def _named(partition: int | None) -> dict:
    return {} if partition is None else {"partition": partition}


def sweeps_and_compactions(parts: Parts) -> list:
    """The expiry sweep's and compaction's loops. In a cluster of one partition its owner runs them;
    of several, each partition's owner runs them for the partitions it owns, each through that
    partition's log (`committer.committers[n]`: local while this node owns partition n)."""
    config, committer, cluster = parts.config, parts.committer, parts.cluster
    sweep_s, compact_s = config.processing.expiry_sweep_interval_s, config.ledger.compaction_interval_s
    retention = parts.ledger.retention
    if cluster is None or cluster.partitions == 1:
        owns = None if cluster is None else cluster.serves_here
        return [sweep_periodically(committer, sweep_s, owns), compact_periodically(committer, retention, compact_s, owns)]
    loops = []
    for partition, routed in enumerate(committer.committers):
        owns = cluster.owners[partition].serving
        loops += [sweep_periodically(routed, sweep_s, owns, partition),
                  compact_periodically(routed, retention, compact_s, owns, partition)]
    return loops


def refresh_rules(ledger) -> None:
    """Switch to a newer ruleset stored in the ledger (by ReloadRules or SIGHUP in any worker)."""
    if ledger.refresh_program():
        event(log, "ruleset switched", ruleset_version=ledger.program.version)


async def refresh_rules_periodically(ledger, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            refresh_rules(ledger)
        except Exception:  # a bug or an unreadable ledger: keep serving the ruleset we have
            log.exception("ruleset refresh failed; the next one retries")


async def reload_rules_files(ledger, committer, rule_paths: list[Path]) -> None:
    """SIGHUP: read the configured rule files again and, when they are valid, switch every worker
    to them. A broken program is logged and the old ruleset keeps serving."""
    try:
        spec = compile_rules(rule_paths)
    except RulesError as error:
        log.error(
            "ruleset refused, the old one keeps serving",
            extra={"fields": {"problems": error.problems, "ruleset_version": ledger.program.version}},
        )
        return
    outcome = await switch_rules(ledger, committer, spec)
    if outcome.code != Code.OK:
        log.error(
            "ruleset not stored, the old one keeps serving",
            extra={"fields": {"code": Code(outcome.code).name, "error": outcome.message}},
        )
        return
    event(log, "ruleset reloaded", ruleset_version=ledger.program.version)


def add_port(server, config: ServerConfig) -> int:
    """Plaintext, TLS, or mutual TLS when tls.client_ca_file is set. The address was claimed before
    (server/startup.py): gRPC failing to bind it now means another process took it in between."""
    tls = config.tls
    try:
        if not tls.cert_file:
            return server.add_insecure_port(config.server.listen)
        key, certificate, client_ca = read_tls_files(tls)
        credentials = grpc.ssl_server_credentials(
            [(key, certificate)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        return server.add_secure_port(config.server.listen, credentials)
    except RuntimeError:  # grpc: "Failed to bind to address"
        raise StartupRefused(f"{config.server.listen} is in use by another process") from None


async def check_readers_periodically(ledger, interval_s: float) -> None:
    """A reader process killed mid-read leaves its LMDB slot taken; reclaim such slots."""
    while True:
        await asyncio.sleep(interval_s)
        freed = ledger.reader_check()
        if freed:
            event(log, "stale ledger readers freed", readers=freed)


async def release_escrow_periodically(ledger, interval_s: float) -> None:
    """Partitions: the slack of partitions that see no spends goes back to emptied banks, so the
    last units of a budget or a code's uses are granted wherever the next purchase is."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        for writer in ledger.writers:
            try:
                await loop.run_in_executor(None, writer.release_slack)
            except lmdb.Error:
                log.exception("escrow release failed; the next one retries")


def exit_when_overrun(after_s: float) -> None:
    """The drain's last resort: past `after_s`, the process ends whatever still runs. A commit cut
    short is rolled back by LMDB, as after kill -9, and was acknowledged to nobody."""

    def overrun() -> None:
        log.error("drain overran its bound; exiting now", extra={"fields": {"after_s": after_s}})
        os._exit(EXIT_DRAIN_OVERRAN)

    timer = threading.Timer(after_s, overrun)
    timer.daemon = True
    timer.start()


async def drain(server, health_servicer, processing, committer, reloads: set, grace_s: float) -> None:
    """SIGTERM: take no new calls and read no more stream messages; answer and commit what is in
    flight for up to `grace_s`. Past it nothing more is committed, and what was not is answered
    UNAVAILABLE or not at all (never acked): the client sends it again. The process exits at most
    DRAIN_OVERRUN_S_MAX after `grace_s`."""
    deadline_s = time.monotonic() + grace_s
    exit_when_overrun(grace_s + DRAIN_OVERRUN_S_MAX)
    processing.stop_reading_streams()
    committer.drain(deadline_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(max(0.0, deadline_s - time.monotonic()))
    if reloads:  # a reload that reached the committer is answered before it stops
        await asyncio.gather(*reloads, return_exceptions=True)
    await committer.stop()


@dataclass(frozen=True)
class Parts:
    """What build() makes and the later steps use: one worker's server, ledger and helpers."""

    config: ServerConfig
    metrics: Metrics
    metrics_endpoint: object  # None when config.metrics.listen is empty
    clock: object
    ledger: Ledger
    committer: GroupCommitter
    server: grpc.aio.Server
    processing: ProcessingServicer
    health: health.aio.HealthServicer
    rule_paths: list[Path]
    port: int
    cluster: ClusterNode | None = None  # None: the single node of today
    forward: ForwardInterceptor | SyncInterceptor | None = None  # a cluster node's, with its channels to the others


def open_ledger_serving(config: ServerConfig, clock) -> Ledger:
    """The ledger, serving the rule files' ruleset when they were edited since the ledger last saw
    them; otherwise the ruleset stored by the last ReloadRules or SIGHUP keeps serving across restarts."""
    ledger = open_ledger(config)
    files_version = ledger.program.version
    if ledger.adopt_rule_files(clock.now_ms()):
        event(log, "serving the rule files' ruleset", ruleset_version=files_version)
    elif ledger.refresh_program():
        event(log, "serving the stored ruleset; the rule files are unchanged since it replaced them",
              ruleset_version=ledger.program.version, files_ruleset_version=files_version)
    return ledger


def grpc_server(config: ServerConfig, metrics: Metrics, forward=None) -> grpc.aio.Server:
    message_bytes_max = config.server.message_bytes_max
    return grpc.aio.server(
        interceptors=[
            MetricsInterceptor(metrics),
            AccessLogInterceptor(),  # outside auth: its refusals are logged with their request id
            *([AuthInterceptor(config.auth)] if config.auth.enabled else []),
            *([forward] if forward is not None else []),  # a cluster node: calls for another owner go there
            DecodeInterceptor(),
        ],
        options=[
            ("grpc.max_receive_message_length", message_bytes_max),
            ("grpc.max_send_message_length", message_bytes_max),
            ("grpc.so_reuseport", 1),
            # Pings find peers that vanished without closing (a POS powered off mid-stream).
            ("grpc.keepalive_time_ms", int(config.server.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.server.keepalive_timeout_s * 1000)),
            # grpc waits for a ping's answer for grpc.http2.ping_timeout_ms (a minute unless set),
            # not keepalive_timeout_ms: without it a frozen client kept its streams for a minute.
            ("grpc.http2.ping_timeout_ms", int(config.server.keepalive_timeout_s * 1000)),
            # A fixed flow-control window per call, so a stream the server stops reading holds at
            # most that much in grpc's buffers (BDP probing grows it to several MiB a stream).
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", config.server.stream_window_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )


def add_services(server, config: ServerConfig, ledger, committer, clock, metrics, rule_paths):
    """The servicers, health and reflection; returns (processing servicer, health servicer)."""
    message_bytes_max = config.server.message_bytes_max
    processing = ProcessingServicer(ledger, committer, clock, config.processing, message_bytes_max, metrics)
    add_processing(processing, server)
    metrics.watch(ledger, lambda: processing.streams_open)
    accounts_pb2_grpc.add_AccountsServicer_to_server(AccountsServicer(ledger, committer, clock), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(ledger, committer, rule_paths, message_bytes_max), server)
    services = SERVICE_NAMES
    if config.server.bench_noop:
        bench_pb2_grpc.add_BenchServicer_to_server(BenchServicer(), server)
        services = (*services, bench_pb2.DESCRIPTOR.services_by_name["Bench"].full_name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return processing, health_servicer


def build(config: ServerConfig, cluster: ClusterNode | None = None) -> Parts:
    """Open everything a worker serves with, listening but not yet serving. A cluster node commits
    through its partitions' logs, and sends what a partition it does not own commits to its owner."""
    metrics = Metrics()
    # First: a metrics address in use stops the start before anything else is opened.
    metrics_endpoint = serve_metrics(metrics, config.metrics.listen)
    forward, handlers = None, ()
    if cluster is None:
        clock = make_clock(config.clock.file)
        ledger = open_ledger_serving(config, clock)
        committing = (PartitionedCommitter if isinstance(ledger, PartitionedLedger) else GroupCommitter)
        committer = committing(ledger, clock, config.commit.batch_max, config.commit.wait_us_max, metrics)
    else:  # a cluster node commits through its partitions' replicated logs
        clock, ledger = cluster.clock, cluster.ledger
        committer, forward, handlers = cluster_commit(config, cluster, metrics)
    committer.start()
    server = grpc_server(config, metrics, forward)
    server.add_generic_rpc_handlers(handlers)
    rule_paths = [Path(path) for path in config.rules.paths]
    processing, health_servicer = add_services(server, config, ledger, committer, clock, metrics, rule_paths)
    port = add_port(server, config)
    if port == 0:
        raise StartupRefused(f"cannot listen on {config.server.listen}")
    return Parts(config, metrics, metrics_endpoint, clock, ledger, committer, server, processing,
                 health_servicer, rule_paths, port, cluster, forward)


def cluster_commit(config: ServerConfig, cluster: ClusterNode, metrics: Metrics):
    """(committer, the interceptor before the servicers, gRPC handlers between nodes). One partition:
    whole calls are forwarded to its owner. More: every node routes each operation to its
    partition's owner (server/cluster/routing.py) and reads from its copies, synced first."""
    from kassa.server.cluster.forward import ForwardInterceptor
    from kassa.server.cluster.routing import Channels, SyncInterceptor, commit_handler, routed_committer

    batch_max, wait_us_max = config.commit.batch_max, config.commit.wait_us_max
    if cluster.partitions == 1:
        committer = GroupCommitter(cluster.logged_ledger(), cluster.clock, batch_max, wait_us_max, metrics)
        return committer, ForwardInterceptor(cluster, config.server.message_bytes_max), ()
    internal_key = config.cluster.internal_key
    channels = Channels(config.server.message_bytes_max, internal_key)
    committer, local_committers = routed_committer(cluster, cluster.ledger, cluster.clock, batch_max, wait_us_max,
                                                   metrics, channels)
    return committer, SyncInterceptor(cluster, channels), (commit_handler(cluster, local_committers, internal_key),)


async def join_cluster(config: ServerConfig) -> ClusterNode:
    """A cluster node's ledger is its partition's replica: every change to it comes through the log,
    the ruleset too (every node starts with the same rule files; ReloadRules is logged)."""
    from kassa.server.cluster.node import ClusterNode, ClusterRefused

    if config.tls.cert_file:
        raise StartupRefused("tls.cert_file with [cluster]: nodes forward calls to each other in plaintext "
                             "today; serve the cluster behind a TLS-terminating proxy, or leave tls out")
    settings = config.cluster
    if config.ledger.partitions not in (1, settings.partitions):
        raise StartupRefused(f"ledger.partitions = {config.ledger.partitions} with [cluster]: a cluster's ledger "
                             f"has cluster.partitions ({settings.partitions}); set ledger.partitions = "
                             f"{settings.partitions} (kassa verify and backup read it)")
    if config.auth.enabled and settings.partitions > 1 and not settings.internal_key:
        raise StartupRefused("auth.enabled with cluster.partitions > 1: nodes commit for each other through an "
                             "internal method that takes no API key; set cluster.internal_key to a secret, the "
                             "same on every node")
    config = msgspec.structs.replace(config, ledger=msgspec.structs.replace(config.ledger,
                                                                            partitions=settings.partitions))
    host, _, port = settings.advertise.rpartition(":")
    if port == "0":  # the port server.listen bound (itself 0 there: the one the kernel chose)
        settings = msgspec.structs.replace(settings, advertise=f"{host}:{config.server.listen.rpartition(':')[2]}")
    try:
        return await ClusterNode.connect(settings, config.ledger.path, lambda: open_ledger(config),
                                         make_clock(config.clock.file))
    except ClusterRefused as error:
        raise StartupRefused(str(error)) from None


async def report_cluster_health(parts: Parts) -> None:
    """NOT_SERVING while the node can serve nothing: no owner known for its partition, or no NATS."""
    shown = None
    while True:
        serving = parts.cluster.can_serve()
        if serving != shown:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                await parts.health.set(name, status)
            shown = serving
        await asyncio.sleep(CLUSTER_HEALTH_INTERVAL_S)


async def start(parts: Parts, worker_index: int) -> None:
    """Take calls, and say so: health SERVING and the "serving" log line."""
    config = parts.config
    await parts.server.start()
    serving = health_pb2.HealthCheckResponse.SERVING if parts.cluster is None else \
        health_pb2.HealthCheckResponse.NOT_SERVING  # until report_cluster_health finds an owner
    for name in ("", *SERVICE_NAMES):
        await parts.health.set(name, serving)
    if parts.metrics_endpoint is not None:
        event(log, "metrics", address=parts.metrics_endpoint.address)
    host = config.server.listen.rsplit(":", 1)[0]
    event(log, "serving", address=f"{host}:{parts.port}", pid=os.getpid(), worker=worker_index,
          cpus=usable_cpus(), ruleset_version=parts.ledger.program.version)


async def wait_for_signal(parts: Parts, worker_index: int = 0) -> set[asyncio.Task]:
    """Serve, with the periodic chores and SIGHUP reloads, until SIGTERM or SIGINT. Returns the
    reloads still running, which the drain lets finish."""
    config, ledger, committer = parts.config, parts.ledger, parts.committer
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task] = set()

    def on_sighup() -> None:
        if stop.is_set():  # draining: the committer is about to stop
            return
        task = loop.create_task(reload_rules_files(ledger, committer, parts.rule_paths))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    chores = [loop.create_task(chore) for chore in sweeps_and_compactions(parts)]  # in a cluster, owners only
    chores += [
        loop.create_task(check_readers_periodically(ledger, config.ledger.reader_check_interval_s)),
        loop.create_task(refresh_rules_periodically(ledger, RULES_REFRESH_INTERVAL_S)),
        loop.create_task(parts.metrics.refresh_periodically(GAUGE_REFRESH_INTERVAL_S)),
    ]
    # The archive rewrites the ledger outside the group commit: in a cluster it would make the
    # replicas differ, so there it waits until it goes through the log (docs/cluster.md).
    if worker_index == 0 and parts.cluster is None:  # one archiver a ledger
        chores.append(loop.create_task(archive_periodically(config.ledger, parts.clock)))
    if isinstance(ledger, PartitionedLedger) and parts.cluster is None:  # a cluster's bank is in JetStream
        chores.append(loop.create_task(release_escrow_periodically(ledger, ESCROW_RELEASE_INTERVAL_S)))
    elif isinstance(ledger, PartitionedLedger):  # moves shared counters' units between the slices it owns
        from kassa.server.cluster.escrow_bank import BALANCE_INTERVAL_S, Balancer

        balancer = Balancer(parts.cluster, committer.committers)
        chores.append(loop.create_task(balancer.run_periodically(BALANCE_INTERVAL_S)))
    if isinstance(ledger, PartitionedLedger):
        owns_partition = None if parts.cluster is None else (lambda index: parts.cluster.owners[index].serving())
        relay = Relay(ledger, committer, owns_partition)  # events whose related customer is in another partition
        committer.on_outbox = relay.kick
        chores.append(loop.create_task(relay.run_periodically(RELAY_INTERVAL_S)))
    if parts.cluster is not None:
        parts.cluster.start(parts.processing.process_events)  # runs until the cluster closes, after the drain
        chores.append(loop.create_task(report_cluster_health(parts)))
    await stop.wait()
    for chore in chores:
        chore.cancel()
    return reloads


def close(parts: Parts) -> None:
    if parts.metrics_endpoint is not None:
        parts.metrics_endpoint.close()
    parts.ledger.close()
    event(log, "stopped", groups_committed=parts.committer.groups_committed,
          ops_committed=parts.committer.ops_committed)


async def serve(config: ServerConfig, worker_index: int = 0) -> None:
    cluster = await join_cluster(config) if config.cluster.enabled else None
    parts = build(config, cluster)
    await start(parts, worker_index)
    reloads = await wait_for_signal(parts, worker_index)
    event(log, "draining", grace_s=config.server.grace_s)
    if cluster is not None:
        cluster.stop_reading_events()
    await drain(parts.server, parts.health, parts.processing, parts.committer, reloads, config.server.grace_s)
    if cluster is not None:  # after the drain: what this node committed is in the log; the lease goes
        await parts.forward.close()
        await cluster.close()
    close(parts)
