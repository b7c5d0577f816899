"""Archiving a serving ledger's closed period, as the server's interval task does it.

`archive_closed_period` is plain blocking work (file writes, fsyncs, a few bounded write
transactions): the server runs it in a thread (`asyncio.to_thread`), off the event loop and the
commit path, in one worker only (worker index 0; another worker's run would stop with
ArchiveConflict, harmlessly).
"""

from __future__ import annotations

from kassa.core_ext.journal_archive.archiving import ArchiveResult, archive_dir_of, archive_journal
from kassa.core_ext.limits import MS_PER_DAY


def closed_before_ms(now_ms: int, archive_after_days: int, return_window_days: int = 0) -> int:
    """The period rule: entries older than `archive_after_days`, and never inside the return window."""
    return now_ms - max(archive_after_days, return_window_days) * MS_PER_DAY


def archive_closed_period(ledger, now_ms: int, archive_after_days: int, return_window_days: int = 0) -> ArchiveResult:
    """Archive `ledger`'s journal entries older than the period rule says, into `<ledger.path>/archive`."""
    _, dbs = ledger.raw_transaction()  # the databases only: the transaction is never begun
    before_ms = closed_before_ms(now_ms, archive_after_days, return_window_days)
    return archive_journal(ledger.env, dbs, archive_dir_of(ledger.path), before_ms, before_ms, now_ms)
