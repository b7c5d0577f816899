"""The server's archive chore (server/archive_task.py) over a real ledger, with the test clock:
it archives the closed period in a child process on its interval while this process keeps the
ledger open, and does nothing when it is off."""

from __future__ import annotations

import asyncio

import msgspec

from kassa.core_ext.journal_archive import archive_dir_of, read_below
from kassa.core_ext.limits import MS_PER_DAY
from kassa.core_ext.journal_archive.runner import archive_closed_period
from kassa.server.archive_task import archive_periodically, archive_until_caught_up
from kassa.server.clock import make_clock
from kassa.server.config import LedgerSection
from tests.core.archive_ledger import T0_MS, fill, open_ledger

INTERVAL_S = 0.05
DAY_S = 86_400  # seconds
WAIT_S_MAX = 30.0  # the child process starts (imports kassa) in about a second on the shared machine
POLL_S = 0.05
OFF_WAIT_S = 0.5  # ten intervals


def run_chore(ledger_config, clock, done, wait_s: float) -> None:
    """Run the chore until `done()` or `wait_s` passed, then cancel it."""
    async def main():
        task = asyncio.create_task(archive_periodically(ledger_config, clock))
        deadline = asyncio.get_running_loop().time() + wait_s
        while not done() and asyncio.get_running_loop().time() < deadline and not task.done():
            await asyncio.sleep(POLL_S)
        task.cancel()

    asyncio.run(main())


def ledger_reader(ledger):
    """`get(db_name, key)` over a fresh read transaction per call."""
    dbs = ledger.raw_transaction()[1]

    def get(name, key):
        with ledger.env.begin() as txn:
            return txn.get(key, db=dbs[name])
    return get


def test_the_chore_archives_entries_older_than_archive_after_s(tmp_path):
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    (tmp_path / "clock").write_text(str(T0_MS + 6 * MS_PER_DAY))
    config = msgspec.structs.replace(LedgerSection(), path=ledger.path, archive_interval_s=INTERVAL_S,
                                     archive_after_s=3 * DAY_S, replay_window_s=DAY_S, return_window_s=DAY_S,
                                     compaction_interval_s=0)
    try:
        listed = lambda: read_below(ledger_reader(ledger)) > 0  # noqa: E731
        run_chore(config, make_clock(str(tmp_path / "clock")), listed, WAIT_S_MAX)
        segments = sorted(archive_dir_of(ledger.path).glob("*.jsonl.gz"))
        assert len(segments) == 1
        assert ledger.verify(T0_MS + 6 * MS_PER_DAY) == []
    finally:
        ledger.close()


def test_the_chore_is_off_at_interval_zero(tmp_path):
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    (tmp_path / "clock").write_text(str(T0_MS + 6 * MS_PER_DAY))
    try:
        run_chore(msgspec.structs.replace(LedgerSection(), path=ledger.path), make_clock(str(tmp_path / "clock")),
                  lambda: False, OFF_WAIT_S)
        assert not archive_dir_of(ledger.path).exists()
    finally:
        ledger.close()


BEHIND_SEGMENT_ENTRIES = 50  # the first period holds about 135 entries: three segments' worth


def test_an_archive_behind_runs_again_at_once_in_bounded_runs_until_caught_up(tmp_path):
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    now_ms = T0_MS + 6 * MS_PER_DAY
    (tmp_path / "clock").write_text(str(now_ms))
    config = msgspec.structs.replace(LedgerSection(), path=ledger.path, archive_interval_s=DAY_S,
                                     archive_after_s=3 * DAY_S, replay_window_s=DAY_S, return_window_s=DAY_S,
                                     compaction_interval_s=0)
    try:
        runs = asyncio.run(archive_until_caught_up(config, make_clock(str(tmp_path / "clock")),
                                                   BEHIND_SEGMENT_ENTRIES, segments_per_run_max=1))
        assert len(runs) >= 3
        assert [len(run.segments) for run in runs if run.segments] == [1] * len([run for run in runs if run.segments])
        assert [run.more for run in runs[:-1]] == [True] * (len(runs) - 1)
        assert runs[-1].more is False
        assert archive_closed_period(ledger, now_ms, config).entries == 0  # nothing closed was left behind
        assert ledger.verify(now_ms) == []
    finally:
        ledger.close()
