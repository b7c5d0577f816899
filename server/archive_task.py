"""The server's journal archive chore: every `ledger.archive_interval_s` (0: never), archive the
journal's closed period (entries older than `ledger.archive_after_days`) in a thread, off the event
loop; the group commits go on between its bounded write transactions.

Hook (server/app.py, `wait_for_signal`'s chores, in worker 0 only):
    loop.create_task(archive_periodically(ledger, parts.clock, config.ledger))
"""

from __future__ import annotations

import asyncio
import logging

from kassa.core_ext.journal_archive import ArchiveConflict
from kassa.core_ext.journal_archive.runner import archive_closed_period
from kassa.server.logs import event

log = logging.getLogger("kassa.archive")


async def archive_periodically(ledger, clock, ledger_config) -> None:
    interval_s = ledger_config.archive_interval_s
    if interval_s <= 0:
        return
    # The return window (the retention work's key) is never archived, whatever archive_after_days says.
    return_window_days = getattr(ledger_config, "return_window_days", 0)
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = await asyncio.to_thread(archive_closed_period, ledger, clock.now_ms(),
                                             ledger_config.archive_after_days, return_window_days)
        except ArchiveConflict as error:  # `kassa archive` ran meanwhile: the next round goes on
            event(log, "journal archive skipped", reason=str(error))
            continue
        except Exception:  # a full disk, an unwritable directory: keep serving, retry next round
            log.exception("journal archive failed; the next round retries")
            continue
        if result.entries or result.deleted:
            event(log, "journal archived", segments=result.segments, entries=result.entries,
                  archive_bytes=result.bytes, archived_below_txn_id=result.archived_below_txn_id)
