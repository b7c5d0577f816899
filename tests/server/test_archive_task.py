"""The server's archive chore (server/archive_task.py) over a real ledger, with the test clock:
it archives the closed period in a thread on its interval, and does nothing when it is off."""

from __future__ import annotations

import asyncio

import msgspec

from kassa.core_ext.journal_archive import archive_dir_of
from kassa.core_ext.limits import MS_PER_DAY
from kassa.server.archive_task import archive_periodically
from kassa.server.clock import make_clock
from kassa.server.config import LedgerSection
from tests.core.archive_ledger import T0_MS, fill, open_ledger

INTERVAL_S = 0.05
RUN_S = 0.5  # ten intervals


def run_chore(ledger, clock, ledger_config) -> None:
    async def main():
        task = asyncio.create_task(archive_periodically(ledger, clock, ledger_config))
        await asyncio.sleep(RUN_S)
        task.cancel()

    asyncio.run(main())


def test_the_chore_archives_entries_older_than_archive_after_days(tmp_path):
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    (tmp_path / "clock").write_text(str(T0_MS + 6 * MS_PER_DAY))
    config = msgspec.structs.replace(LedgerSection(), archive_interval_s=INTERVAL_S, archive_after_days=3)
    try:
        run_chore(ledger, make_clock(str(tmp_path / "clock")), config)
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
        run_chore(ledger, make_clock(str(tmp_path / "clock")), LedgerSection())
        assert not archive_dir_of(ledger.path).exists()
    finally:
        ledger.close()
