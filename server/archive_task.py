"""The server's journal archive chore: every `ledger.archive_interval_s` (0: never), archive the
journal's closed period (entries older than `ledger.archive_after_s`, never one a retry still rebuilds
its answer from: core_ext/journal_archive/runner.py) in a child process, so that neither the event loop nor the serving interpreter does the
work; the group commits go on between its bounded write transactions.

A run writes at most SEGMENTS_PER_RUN_MAX segments. One that stops there (the archive is behind:
more than one run's work was closed) is followed at once by the next, without waiting for the
interval, until a run finds less than its bound; with partitions, each behind ledger gets one run
a round."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing

from kassa.core_ext.journal_archive import ArchiveConflict
from kassa.core_ext.journal_archive.archiving import SEGMENT_ENTRIES_MAX, ArchiveResult
from kassa.core_ext.journal_archive.runner import SEGMENTS_PER_RUN_MAX, archive_ledger_at, ledger_paths
from kassa.server.logs import event

log = logging.getLogger("kassa.archive")


async def archive_periodically(ledger_config, clock, segment_entries_max: int = SEGMENT_ENTRIES_MAX,
                               segments_per_run_max: int = SEGMENTS_PER_RUN_MAX) -> None:
    interval_s = ledger_config.archive_interval_s
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        await archive_until_caught_up(ledger_config, clock, segment_entries_max, segments_per_run_max)


async def archive_until_caught_up(ledger_config, clock, segment_entries_max: int = SEGMENT_ENTRIES_MAX,
                                  segments_per_run_max: int = SEGMENTS_PER_RUN_MAX) -> list[ArchiveResult]:
    """Rounds of runs, one per ledger (or partition) a round, while a run stopped at its bound;
    what each run did, in order."""
    # "spawn": a forked child would inherit this process's open LMDB environment, which LMDB forbids.
    context = multiprocessing.get_context("spawn")
    bounds = (segment_entries_max, segments_per_run_max)
    done: list[ArchiveResult] = []
    behind = ledger_paths(ledger_config)  # the ledger, or each partition
    while behind:
        results = [await _archive_once(context, path, ledger_config, clock.now_ms(), bounds) for path in behind]
        done.extend(result for result in results if result is not None)
        behind = [path for path, result in zip(behind, results) if result is not None and result.more]
    return done


async def _archive_once(context, path: str, ledger_config, now_ms: int, bounds: tuple[int, int]) -> ArchiveResult | None:
    """One run in a child process; its result (None: it failed or met a concurrent run). Cancelled
    (the server drains), the child is killed rather than waited for: a run killed at any point is
    safe, and the next one finishes what it left."""
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_archive_in_child, args=(send, path, now_ms, ledger_config, bounds), daemon=True)
    child.start()
    send.close()
    try:
        kind, result = await asyncio.get_running_loop().run_in_executor(None, _outcome_of, receive, child)
    except asyncio.CancelledError:
        child.kill()
        raise
    finally:
        receive.close()
    if kind == "conflict":  # `kassa archive` ran meanwhile: the next round goes on
        event(log, "journal archive skipped", reason=result)
        return None
    if kind == "failed":  # a full disk, an unwritable directory, a dead child: the next round retries
        log.error("journal archive failed; the next round retries", extra={"fields": {"error": result}})
        return None
    if result.entries or result.deleted:
        event(log, "journal archived", path=path, segments=result.segments, entries=result.entries,
              archive_bytes=result.bytes, archived_below_txn_id=result.archived_below_txn_id, more=result.more)
    return result


def _archive_in_child(send, path: str, now_ms: int, ledger_config, bounds: tuple[int, int]) -> None:
    try:
        send.send(("ok", archive_ledger_at(path, now_ms, ledger_config, *bounds)))
    except ArchiveConflict as error:
        send.send(("conflict", str(error)))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the server's log
        send.send(("failed", f"{type(error).__name__}: {error}"))


def _outcome_of(receive, child) -> tuple[str, object]:
    """(kind, result) the child sent; a child that died (killed, out of memory) sent nothing."""
    try:
        return receive.recv()
    except (EOFError, OSError):
        child.join()
        return "failed", f"the archive process ended with exit status {child.exitcode} before answering"
    finally:
        child.join()
