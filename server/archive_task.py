"""The server's journal archive chore: every `ledger.archive_interval_s` (0: never), archive the
journal's closed period (entries older than `ledger.archive_after_s`, never one a retry still rebuilds
its answer from: core_ext/journal_archive/runner.py) in a child process, so that neither the event loop nor the serving interpreter does the
work; the group commits go on between its bounded write transactions."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from kassa.core_ext.journal_archive import ArchiveConflict
from kassa.core_ext.journal_archive.runner import archive_ledger_at, ledger_paths
from kassa.server.logs import event

log = logging.getLogger("kassa.archive")


async def archive_periodically(ledger_config, clock) -> None:
    interval_s = ledger_config.archive_interval_s
    if interval_s <= 0:
        return
    # "spawn": a forked child would inherit this process's open LMDB environment, which LMDB forbids.
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        while True:
            await asyncio.sleep(interval_s)
            for path in ledger_paths(ledger_config):  # the ledger, or each partition
                await _archive_once(pool, path, ledger_config, clock.now_ms())
    finally:
        # Not waiting: a drain must not wait for a run (one killed at any point is safe; the next finishes it).
        pool.shutdown(wait=False, cancel_futures=True)


async def _archive_once(pool, path: str, ledger_config, now_ms: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(pool, archive_ledger_at, path, now_ms, ledger_config)
    except ArchiveConflict as error:  # `kassa archive` ran meanwhile: the next round goes on
        event(log, "journal archive skipped", reason=str(error))
        return
    except Exception:  # a full disk, an unwritable directory, a dead child: the next round retries
        log.exception("journal archive failed; the next round retries")
        return
    if result.entries or result.deleted:
        event(log, "journal archived", path=path, segments=result.segments, entries=result.entries,
              archive_bytes=result.bytes, archived_below_txn_id=result.archived_below_txn_id)
