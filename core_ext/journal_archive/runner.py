"""Archiving a serving ledger's closed period, as the server's interval chore does it.

The work is plain and blocking (encoding, compression, fsyncs, a few bounded write transactions),
about one core for 12,000 entries a second: the server runs `archive_ledger_at` in a child process
(server/archive_task.py), so that it takes no time from the serving process's interpreter; the
child opens the ledger as `kassa archive` does (LMDB allows many processes, and one environment per
process). `archive_closed_period` is the same work on a ledger open in this process.
"""

from __future__ import annotations

from pathlib import Path

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


def archive_ledger_at(path: str, now_ms: int, archive_after_days: int, return_window_days: int = 0) -> ArchiveResult:
    """The same for the ledger at `path`, opened here (in the server's archive process)."""
    import lmdb

    from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
    from kassa.core_ext.map_size import GrowingEnvironment

    # At the size the servers grew the map to (the file's), adopting their later growth.
    env = GrowingEnvironment(lmdb.open(str(path), max_dbs=MAX_DBS, map_size=1024**2, readahead=False))
    try:
        dbs = {name.decode(): env.open_db(name) for name in DB_NAMES}
        before_ms = closed_before_ms(now_ms, archive_after_days, return_window_days)
        return archive_journal(env, dbs, archive_dir_of(Path(path)), before_ms, before_ms, now_ms)
    finally:
        env.close()
