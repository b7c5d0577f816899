"""The `kassa` command: serve, verify, backup, archive, rules check, init."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from kassa.server.cpus import cpu_shares, pin_to, usable_cpus

DEFAULT_CONFIG = "config/kassa.toml"
SAMPLE_FOLDER = Path(__file__).resolve().parent.parent / "config"  # the repository's config/, or kassa/config in a wheel
SAMPLE_SUFFIXES = (".toml", ".service", ".yml", ".yaml", ".json")  # what `kassa init` copies (and setup.py ships)


def main(argv: list[str] | None = None) -> int:
    from kassa.server.version import package_version

    parser = argparse.ArgumentParser(prog="kassa", description="kassa loyalty processing server")
    parser.add_argument("--version", action="version", version=f"kassa {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.add_argument("--workers", type=int, default=None, help="processes (0: one per core); overrides server.workers")
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--cpus", default="", help=argparse.SUPPRESS)  # a worker's share, e.g. "0" or "4,5,6,7"
    serve.add_argument("--claims", default="", help=argparse.SUPPRESS)  # descriptors its supervisor hands a worker

    stats = commands.add_parser("stats", help="print the server's figures from its metrics endpoint")
    stats.add_argument("--config", default=DEFAULT_CONFIG)

    verify = commands.add_parser("verify", help="check the ledger's invariants")
    verify.add_argument("--config", default=DEFAULT_CONFIG)

    backup = commands.add_parser("backup", help="write a consistent copy of the ledger while it serves")
    backup.add_argument("directory", type=Path, help="an empty or new directory")
    backup.add_argument("--config", default=DEFAULT_CONFIG)

    archive = commands.add_parser("archive", help="move closed periods of the journal into archive segments")
    archive.add_argument("--config", default=DEFAULT_CONFIG)
    period = archive.add_mutually_exclusive_group()
    period.add_argument("--before", help="archive entries created before this UTC date or time (ISO 8601)")
    period.add_argument("--older-than-days", type=int, help="archive entries older than this many days "
                        "(default: ledger.archive_after_s)")

    partitions = commands.add_parser("partitions", help="change the ledger's partitions (offline)")
    partitions_commands = partitions.add_subparsers(dest="partitions_command", required=True)
    split = partitions_commands.add_parser("split", help="move the stopped ledger to more partitions")
    split.add_argument("--config", default=DEFAULT_CONFIG)
    split.add_argument("--to", type=int, required=True, help="the partitions it will have (more than now)")

    rules = commands.add_parser("rules", help="work with loyalty program files")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate rule files without a server")
    check.add_argument("files", nargs="+", type=Path)

    cluster = commands.add_parser("cluster", help="look at a cluster of kassa nodes")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    cluster_status = cluster_commands.add_parser(
        "status", help="partitions, owners, lease ages, each node's applied log sequence and lag (JSON)")
    cluster_status.add_argument("--config", default=DEFAULT_CONFIG)

    init = commands.add_parser("init", help="write the sample config and loyalty program into a directory")
    init.add_argument("directory", type=Path, nargs="?", default=Path("."), help="where (default: here)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "backup":
        return _backup(args)
    if args.command == "archive":
        return _archive(args)
    if args.command == "stats":
        return _stats(args)
    if args.command == "init":
        return _init(args)
    if args.command == "cluster":
        return _cluster_status(args)
    if args.command == "partitions":
        return _partitions_split(args)
    return _rules_check(args)


def _load(path: str):
    from kassa.server.config import ConfigError, load_config

    if not Path(path).exists():
        print(f"kassa: no config at {path}; `kassa init DIR` writes the sample (DIR/{DEFAULT_CONFIG} and "
              f"its loyalty program in DIR/config/rules) to start from DIR, or pass --config FILE", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"kassa: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args) -> int:
    import msgspec

    from kassa.server.logs import setup_logging
    from kassa.server.startup import StartupRefused, claim, inherit, read_tls_files

    config = _load(args.config)
    workers = config.server.workers if args.workers is None else args.workers
    cpus = usable_cpus()
    workers = workers or len(cpus)
    if config.cluster.enabled:  # one process holds the partition's lease and applies its log
        workers = 1
    try:
        if config.tls.cert_file:
            read_tls_files(config.tls)  # said once by the server that starts, not by each of its workers
        # Held until this process exits: the address and the ledger are this server's alone.
        claims = inherit(config, [int(fd) for fd in args.claims.split(",")]) if args.claims else claim(config)
    except StartupRefused as error:
        print(f"kassa: {error}", file=sys.stderr)
        return 2
    config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, listen=claims.listen))
    setup_logging(config.log.level, None if workers > 1 else args.worker_index)
    if workers > 1:
        # More workers than CPUs: some would have to share one, so the kernel places them all.
        pin = config.server.pin_workers and hasattr(os, "sched_setaffinity") and workers <= len(cpus)
        shares = cpu_shares(cpus, workers) if pin else [[] for _ in range(workers)]
        return _supervise(args.config, shares, claims, config.metrics.listen)
    if args.cpus:
        pin_to([int(cpu) for cpu in args.cpus.split(",")])
    import uvloop

    from kassa.core_ext import RulesError
    from kassa.server.app import LedgerUnavailable, serve
    from kassa.server.metrics import MetricsUnavailable

    # SIGHUP reloads the rules once the server runs; until then (and in a worker starting up) it
    # must not end the process: the rules are read at start anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        uvloop.run(serve(config, args.worker_index))
    except RulesError as error:
        print(f"kassa: the loyalty program is refused:\n{error}", file=sys.stderr)
        return 2
    except (LedgerUnavailable, StartupRefused, MetricsUnavailable) as error:
        print(f"kassa: {error}", file=sys.stderr)
        return 2
    return 0


def _supervise(config_path: str, shares: list[list[int]], claims, metrics_listen: str) -> int:
    """Serve the workers' metrics, summed, on metrics.listen (prometheus_client's multiprocess
    mode, in a directory of this run's), and run the workers."""
    from kassa.server.logs import event
    from kassa.server.metrics import MetricsUnavailable, WorkersMetrics

    try:
        metrics = WorkersMetrics(metrics_listen)
    except MetricsUnavailable as error:
        print(f"kassa: {error}", file=sys.stderr)
        return 2
    with metrics:
        if metrics.endpoint is not None:
            event(logging.getLogger("kassa.metrics"), "metrics", address=metrics.endpoint.address)
        # The workers write their metrics to the directory and serve none themselves.
        return _run_workers(config_path, shares, claims, {**metrics.worker_environ, "KASSA_METRICS_LISTEN": ""})


def _run_workers(config_path: str, shares: list[list[int]], claims, worker_environ: dict[str, str]) -> int:
    """Run one single-process server per share of CPUs on one port (SO_REUSEPORT), each pinned to
    its share (none: not pinned); pass SIGTERM, SIGINT and SIGHUP (reload the rules) on. The workers
    are handed this server's claims on its address and ledger, and the port it holds."""
    environ = dict(os.environ, KASSA_SERVER_WORKERS="1", KASSA_SERVER_LISTEN=claims.listen, **worker_environ)
    fds = claims.inherited_fds()
    command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", config_path, "--workers", "1",
               "--claims", ",".join(map(str, fds))]
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # The workers start with SIGHUP ignored (inherited) until their servers handle it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for index, cpus in enumerate(shares):
        pinned = ["--cpus", ",".join(map(str, cpus))] if cpus else []
        children.append(subprocess.Popen([*command, "--worker-index", str(index), *pinned], env=environ, pass_fds=fds))
    signal.signal(signal.SIGHUP, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


def _open_existing(command: str, path: str, map_size_bytes: int):
    import lmdb

    from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
    from kassa.core_ext.map_size import GrowingEnvironment

    if not Path(path, "data.mdb").exists():
        print(f"kassa {command}: no ledger at {path}", file=sys.stderr)
        raise SystemExit(2)
    try:
        # At the size the servers grew the map to (stored in the file), adopting later growth: it only reads.
        env = GrowingEnvironment(lmdb.open(path, max_dbs=MAX_DBS, map_size=map_size_bytes))
        return env, {name.decode(): env.open_db(name) for name in DB_NAMES}
    except lmdb.Error as error:
        print(f"kassa {command}: cannot open the ledger at {path}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _backup(args) -> int:
    """LMDB copies inside one read transaction: a consistent snapshot, taken while writers go on.
    A backup that fails leaves nothing behind: not the copy, not the directories it created."""
    import lmdb

    from kassa.core_ext.journal_archive import archive_dir_of, read_index

    config = _load(args.config)
    target = args.directory
    if target.exists() and not target.is_dir():
        print(f"kassa backup: {target} exists and is not a directory", file=sys.stderr)
        return 2
    if target.exists() and any(target.iterdir()):
        print(f"kassa backup: {target} is not empty", file=sys.stderr)
        return 2
    partitions = _partitions("backup", config.ledger.path)
    if partitions > 1:
        return _backup_partitioned(config.ledger.path, partitions, target)
    env, dbs = _open_existing("backup", config.ledger.path, config.ledger.map_size_bytes)
    created = _first_missing(target)  # the outermost directory this backup creates; None: target exists
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        env.close()
        _remove_backup(target, created)
        print(f"kassa backup: cannot create {target}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        env.copy(str(target), compact=True)
        # Read after the copy: the index then lists every segment the copy's does (segments are only
        # ever added, and a listed segment never changes).
        with env.begin() as txn:
            index = read_index(txn, dbs)
        copied = _copy_segments(archive_dir_of(config.ledger.path), archive_dir_of(target), index)
    except lmdb.Error as error:  # py-lmdb raises its own errors for a failed write (lmdb.DiskError: ENOSPC)
        _remove_backup(target, created)
        print(f"kassa backup: cannot write {target}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        _remove_backup(target, created)
        print(f"kassa backup: cannot copy the journal archive into {target}: {error.strerror or error}", file=sys.stderr)
        return 2
    finally:
        env.close()
    print(json.dumps({"ok": True, "backup": str(target), "bytes": Path(target, "data.mdb").stat().st_size,
                      "archive_segments": [ref.name for ref in index], "archive_bytes": copied}))
    return 0


def _copy_segments(source: Path, target: Path, index) -> int:
    """Copy the listed segments and their manifests (fsynced); returns the bytes copied."""
    from kassa.core_ext.journal_archive.segments import fsync_directory, manifest_name

    copied = 0
    if index:
        target.mkdir()
    for ref in index:
        for name in (ref.name, manifest_name(ref.name)):
            shutil.copyfile(source / name, target / name)
            with open(target / name, "rb") as file:
                os.fsync(file.fileno())
            copied += (target / name).stat().st_size
    if index:
        fsync_directory(target)
    return copied


def _partitions(command: str, path: str) -> int:
    """How many partitions the ledger at `path` has (1: a plain ledger); exits 2 when there is none."""
    from kassa.core_ext.partitions import stored_partitions

    partitions = stored_partitions(path)
    if partitions is None:
        print(f"kassa {command}: no ledger at {path}", file=sys.stderr)
        raise SystemExit(2)
    return partitions


def _backup_partitioned(path: str, partitions: int, target: Path) -> int:
    import lmdb

    from kassa.core_ext.partitions import backup_partitioned

    created = _first_missing(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = backup_partitioned(path, partitions, str(target))
        segments, copied = _copy_partition_segments(path, partitions, target)
    except (OSError, lmdb.Error) as error:
        _remove_backup_tree(target, created)
        print(f"kassa backup: cannot write {target}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 2
    print(json.dumps({"ok": True, "backup": str(target), "partitions": partitions, "bytes": written,
                      "archive_segments": segments, "archive_bytes": copied}))
    return 0


def _copy_partition_segments(path: str, partitions: int, target: Path) -> tuple[list[str], int]:
    """Each partition's archive segments that its copy lists (read from the copy itself: exactly
    those the snapshot needs), into the copy's partition folders."""
    import lmdb

    from kassa.core_ext.journal_archive import archive_dir_of, read_index
    from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
    from kassa.core_ext.partitions import partition_path

    names, copied = [], 0
    for index in range(partitions):
        copy = partition_path(str(target), index)
        env = lmdb.open(copy, max_dbs=MAX_DBS, readonly=True, lock=False)
        try:
            dbs = {name.decode(): env.open_db(name, create=False) for name in DB_NAMES}
            with env.begin() as txn:
                listed = read_index(txn, dbs)
        finally:
            env.close()
        copied += _copy_segments(archive_dir_of(partition_path(path, index)), archive_dir_of(copy), listed)
        names += [f"p{index}/{ref.name}" for ref in listed]
    return names, copied


def _remove_backup_tree(target: Path, created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in target.iterdir() if target.is_dir() else ():
        shutil.rmtree(child, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet."""
    missing = None
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def _remove_backup(target: Path, created: Path | None) -> None:
    """Undo a failed backup: the directories it created, or what it wrote into the empty one it was given."""
    import shutil

    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in target.iterdir() if target.is_dir() else ():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _partitions_split(args) -> int:
    """`kassa partitions split --to P2`: offline; refused while a server holds the ledger."""
    from kassa.core_ext import Program, load_program
    from kassa.core_ext.limits import PARTITIONS_MAX
    from kassa.core_ext.split import SplitRefused, split
    from kassa.server.startup import StartupRefused, _lock_ledger

    config = _load(args.config)
    if not 1 < args.to <= PARTITIONS_MAX:
        print(f"kassa: --to: must be 2 to {PARTITIONS_MAX}, got {args.to}", file=sys.stderr)
        return 2
    try:
        lock = _lock_ledger(config.ledger.path)  # held until the split is done: no server starts meanwhile
    except StartupRefused as error:
        print(f"kassa: {error}; stop it before splitting", file=sys.stderr)
        return 2
    try:
        program = Program(load_program([Path(path) for path in config.rules.paths]))
        summary = split(config.ledger.path, args.to, program)
    except SplitRefused as error:
        print(f"kassa: {error}", file=sys.stderr)
        return 2
    finally:
        os.close(lock)
    print(json.dumps(summary))
    print(f"kassa: set ledger.partitions = {args.to} in the config before the next start", file=sys.stderr)
    return 0


def _verify(args) -> int:
    from kassa.core_ext.journal_archive import archive_dir_of, read_below, read_index
    from kassa.core_ext.verify import check_ledger, ledger_summary
    from kassa.server.clock import make_clock

    config = _load(args.config)
    partitions = _partitions("verify", config.ledger.path)
    if partitions > 1:
        from kassa.core_ext.partitions import verify_partitioned

        violations, summary = verify_partitioned(config.ledger.path, partitions, make_clock(config.clock.file).now_ms())
    else:
        env, dbs = _open_existing("verify", config.ledger.path, config.ledger.map_size_bytes)
        with env.begin() as txn:
            violations = check_ledger(txn, dbs, make_clock(config.clock.file).now_ms(), archive_dir_of(config.ledger.path))
            summary = ledger_summary(txn, dbs)
            summary.update(archive_segments=len(read_index(txn, dbs)),
                           archived_below_txn_id=read_below(lambda name, key: txn.get(key, db=dbs[name])))
        env.close()
    for violation in violations:
        print(f"VIOLATION {violation}")
    print(json.dumps({"ok": not violations, "violations": len(violations), **summary}))
    return 1 if violations else 0


def _archive(args) -> int:
    """Archive the journal's closed period: entries older than the period the flags (or
    ledger.archive_after_s) name, never one a retry still rebuilds its answer from (journal_archive/runner.py).
    A partitioned ledger archives each partition's journal; its line lists them in `partitions`."""
    from kassa.core_ext.journal_archive import ArchiveConflict, ArchiveUnreadable
    from kassa.core_ext.journal_archive.runner import ledger_paths
    from kassa.server.clock import make_clock

    config = _load(args.config)
    now_ms = make_clock(config.clock.file).now_ms()
    before_ms = _archive_before_ms(args, config, now_ms)
    results = []
    for path in ledger_paths(config.ledger):
        try:
            results.append(_archive_at(path, config, before_ms, now_ms))
        except (ArchiveConflict, ArchiveUnreadable, OSError) as error:
            print(f"kassa archive: {error}", file=sys.stderr)
            return 1
    line = {"ok": True, "before_ms": before_ms, **results[0]} if len(results) == 1 else \
        {"ok": True, "before_ms": before_ms, "entries": sum(result["entries"] for result in results),
         "partitions": results}
    print(json.dumps(line))
    return 0


def _archive_at(path: str, config, before_ms: int, now_ms: int) -> dict:
    from kassa.core_ext.journal_archive import archive_dir_of, archive_journal
    from kassa.core_ext.journal_archive.runner import after_compaction, keep_after_ms

    env, dbs = _open_existing("archive", path, config.ledger.map_size_bytes)
    try:
        result = archive_journal(env, dbs, archive_dir_of(path), before_ms, keep_after_ms(now_ms, config.ledger), now_ms,
                                 after_compaction=after_compaction(config.ledger))
    finally:
        env.close()
    return {"segments": result.segments, "entries": result.entries, "bytes": result.bytes,
            "archived_below_txn_id": result.archived_below_txn_id, "deleted": result.deleted}


def _archive_before_ms(args, config, now_ms: int) -> int:
    """The period boundary the flags name, in ms since the epoch (SystemExit(2) when unreadable)."""
    import datetime as dt

    from kassa.core_ext.limits import MS_PER_DAY

    if args.before is None:
        if args.older_than_days is None:
            return now_ms - config.ledger.archive_after_s * 1000
        if args.older_than_days < 0:
            print(f"kassa archive: --older-than-days must be >= 0, got {args.older_than_days}", file=sys.stderr)
            raise SystemExit(2)
        return now_ms - args.older_than_days * MS_PER_DAY
    try:
        moment = dt.datetime.fromisoformat(args.before)
    except ValueError:
        print(f"kassa archive: --before: not an ISO 8601 date or time: {args.before!r}", file=sys.stderr)
        raise SystemExit(2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


STATS_SHOWN = (  # (sample name, label in the table, decimals)
    ("kassa_accounts", "accounts", 0),
    ("kassa_transactions", "journal entries", 0),
    ("kassa_ledger_bytes", "ledger bytes", 0),
    ("kassa_ledger_map_bytes", "map bytes", 0),
    ("kassa_ledger_map_limit_bytes", "map limit bytes", 0),
    ("kassa_streams_open", "streams open", 0),
    ("kassa_workers", "workers", 0),
    ("kassa_commit_operations_count", "commits", 0),
    ("kassa_commit_operations_sum", "operations committed", 0),
    ("kassa_commit_duration_seconds_sum", "seconds in commits", 3),
    ("grpc_server_handled_total", "calls", 0),
    ("kassa_operations_total", "batch and stream operations", 0),
)
STATS_TIMEOUT_S = 5  # seconds to wait for the metrics endpoint


def _scrape(url: str) -> str:
    """The endpoint's text; SystemExit(1) with one line saying why when there is none."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=STATS_TIMEOUT_S) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as error:
        problem = f"{url} answered {error.code} {error.reason}"
    except urllib.error.URLError as error:
        reason = error.reason
        problem = f"nothing answers at {url} ({getattr(reason, 'strerror', None) or reason})"
    except TimeoutError:
        problem = f"{url} did not answer within {STATS_TIMEOUT_S} s"
    except OSError as error:
        problem = f"cannot read {url} ({error.strerror or error})"
    print(f"kassa stats: {problem}; is kassa serving with this metrics.listen?", file=sys.stderr)
    raise SystemExit(1)


def _stats(args) -> int:
    """The figures of the whole server (every worker's, summed) from its one metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    from kassa.server.metrics import MetricsUnavailable, parse_listen

    config = _load(args.config)
    if not config.metrics.listen:
        print("kassa stats: metrics.listen is not set in the config", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(config.metrics.listen)
    except MetricsUnavailable as error:
        print(f"kassa stats: {error}", file=sys.stderr)
        return 2
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    text = _scrape(url)
    totals: dict[str, float] = {}
    lines: dict[str, float] = {}  # "service/method code" or "method kind code": count
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0) + sample.value
                labels = sample.labels
                if sample.name == "grpc_server_handled_total":
                    key = f"{labels['grpc_service']}/{labels['grpc_method']} {labels['grpc_code']}"
                elif sample.name == "kassa_operations_total":
                    key = f"{labels['grpc_method']} {labels['kind']} {labels['code']}"
                else:
                    continue
                lines[key] = lines.get(key, 0) + sample.value
    except (ValueError, KeyError) as error:
        print(f"kassa stats: {url} did not answer kassa's Prometheus text ({error})", file=sys.stderr)
        return 1
    for name, label, decimals in STATS_SHOWN:
        print(f"{label:<32} {totals.get(name, 0):>16,.{decimals}f}")
    for key in sorted(lines):
        print(f"{key:<56} {lines[key]:>12,.0f}")
    return 0


def _cluster_status(args) -> int:
    """Ask the NATS servers of the config's [cluster] (not the nodes): it answers while nodes are down."""
    import asyncio

    config = _load(args.config)
    if not config.cluster.enabled:
        print(f"kassa: {args.config} has no [cluster] section (cluster.nats_urls is empty): a single node",
              file=sys.stderr)
        return 2
    from kassa.server.cluster.status import read_cluster_status

    try:
        status = asyncio.run(read_cluster_status(config.cluster))
    except Exception as error:  # the NATS servers unreachable, a bucket missing: say which, in one line
        print(f"kassa: cannot read the cluster's status from {config.cluster.nats_urls}: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _init(args) -> int:
    """Copy the sample config/ (server config, loyalty program, systemd unit) into DIR/config, so that
    `kassa serve` started in DIR finds config/kassa.toml and the relative paths in it work."""
    target = args.directory / "config"
    samples = sorted(path for path in SAMPLE_FOLDER.rglob("*") if path.is_file() and path.suffix in SAMPLE_SUFFIXES)
    if not samples:
        print(f"kassa init: no sample config in {SAMPLE_FOLDER}; reinstall kassa", file=sys.stderr)
        return 2
    existing = [target / path.relative_to(SAMPLE_FOLDER) for path in samples]
    existing = [path for path in existing if path.exists()]
    if existing:
        print(f"kassa init: {existing[0]} exists; nothing written (move it away or choose another DIR)", file=sys.stderr)
        return 2
    for path in samples:
        copy = target / path.relative_to(SAMPLE_FOLDER)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        print(f"wrote {copy}")
    print(f"next: cd {args.directory} && kassa rules check config/rules && kassa serve")
    return 0


def _rules_check(args) -> int:
    from kassa.core_ext import Program, RulesError, load_program

    try:
        spec = load_program(args.files)
        program = Program(spec)
    except RulesError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"ok: {len(program.campaign_ids) + len(program.event_campaigns)} campaigns "
          f"({len(program.campaign_ids)} purchase, {len(program.event_campaigns)} event), "
          f"ruleset version {program.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
