"""Archiving a serving ledger's closed period, as the server's interval chore does it.

The work is plain and blocking (encoding, compression, fsyncs, a few bounded write transactions),
about one core for 12,000 entries a second: the server runs `archive_ledger_at` in a child process
(server/archive_task.py), so that it takes no time from the serving process's interpreter; the
child opens the ledger as `kassa archive` does (LMDB allows many processes, and one environment per
process). `archive_closed_period` is the same work on a ledger open in this process.
"""

from __future__ import annotations

from pathlib import Path

from kassa.core_ext.journal_archive.archiving import SEGMENT_ENTRIES_MAX, ArchiveResult, archive_dir_of, archive_journal
from kassa.core_ext.retention import Retention

SECOND_MS = 1000  # milliseconds
# Segments one run in the server writes before it reports back (1M entries, about 25 s of a core at
# bench.archive_bytes' 40,000 entries a CPU second): a run is bounded, and the chore starts the next
# one at once while a run stops at this bound (server/archive_task.py).
SEGMENTS_PER_RUN_MAX = 10


def closed_before_ms(now_ms: int, ledger_config) -> int:
    """The period rule: entries older than `ledger.archive_after_s`; never one whose answer a
    retry may still rebuild from it (`keep_after_ms`)."""
    return min(now_ms - ledger_config.archive_after_s * SECOND_MS, keep_after_ms(now_ms, ledger_config))


def keep_after_ms(now_ms: int, ledger_config) -> int:
    """Entries made after this stay in the journal whatever the period. With compaction on: the
    replay window, inside which a retry of a purchase rebuilds its answer from its entry (past
    it compaction drops the answer; the archive waits for that too, `after_compaction`). A
    return or rollback of an older entry reads it from the archive. With compaction off, answers
    are never dropped: the return window, as the ledger remembers requests that long."""
    retention = Retention.of_seconds(ledger_config.replay_window_s, ledger_config.return_window_s)
    if after_compaction(ledger_config):
        return now_ms - retention.replay_window_ms
    return retention.forget_before_ms(now_ms)


def after_compaction(ledger_config) -> bool:
    """Whether the archive must wait for compaction's walk: when compaction runs, it drops the
    answers of the entries it walks and indexes their records in `aging` (so that it forgets them
    without the journal), and an entry archived before that would leave its record behind."""
    return ledger_config.compaction_interval_s > 0


def ledger_paths(ledger_config) -> list[str]:
    """The LMDB environments that keep a journal: the ledger, or each of its partitions."""
    from kassa.core_ext.partitions import partition_path

    if ledger_config.partitions == 1:
        return [str(ledger_config.path)]
    return [partition_path(str(ledger_config.path), index) for index in range(ledger_config.partitions)]


def archive_closed_period(ledger, now_ms: int, ledger_config) -> ArchiveResult:
    """Archive `ledger`'s journal entries older than the period rule says, into `<ledger.path>/archive`."""
    _, dbs = ledger.raw_transaction()  # the databases only: the transaction is never begun
    before_ms = closed_before_ms(now_ms, ledger_config)
    return archive_journal(ledger.env, dbs, archive_dir_of(ledger.path), before_ms, before_ms, now_ms,
                           after_compaction=after_compaction(ledger_config))


def archive_ledger_at(path: str, now_ms: int, ledger_config, segment_entries_max: int = SEGMENT_ENTRIES_MAX,
                      segments_max: int = SEGMENTS_PER_RUN_MAX) -> ArchiveResult:
    """The same for the ledger at `path`, opened here (in the server's archive process), at most
    `segments_max` segments of `segment_entries_max` entries."""
    import lmdb

    from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
    from kassa.core_ext.map_size import GrowingEnvironment

    # At the size the servers grew the map to (the file's), adopting their later growth.
    env = GrowingEnvironment(lmdb.open(str(path), max_dbs=MAX_DBS, map_size=1024**2, readahead=False))
    try:
        dbs = {name.decode(): env.open_db(name) for name in DB_NAMES}
        before_ms = closed_before_ms(now_ms, ledger_config)
        return archive_journal(env, dbs, archive_dir_of(Path(path)), before_ms, before_ms, now_ms,
                               segment_entries_max, after_compaction=after_compaction(ledger_config),
                               segments_max=segments_max)
    finally:
        env.close()
