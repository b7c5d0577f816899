"""The journal archive against a real LMDB ledger in a temp directory: closed periods move into
gzip segments of JSON lines, statements page across the boundary, and verify proves the balances
through the checkpoints and catches a changed segment."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
import pytest

from kassa.core_ext import records as rec
from kassa.core_ext.journal_archive import (
    ArchiveReader, archive_dir_of, archive_journal, read_below, read_index, statement_page,
)
from kassa.core_ext.journal_archive import segments, state
from kassa.core_ext.compaction import (
    AGING_FROM_TXN_KEY, COMPACT_RECORDS_PER_TXN_MAX, DROPPED_TXN_KEY, FORGOTTEN_TXN_KEY,
)
from kassa.core_ext.model import CompactOp, TxnKind
from kassa.core_ext.retention import Retention
from kassa.core_ext.journal_archive.runner import archive_closed_period
from kassa.core_ext.limits import MS_PER_DAY
from kassa.core_ext.verify import check_ledger
from kassa.server.config import LedgerSection
from tests.core.archive_ledger import ACCOUNTS, BOUNDARY_MS, T0_MS, by_account, fill, open_ledger

NOW_MS = T0_MS + 6 * MS_PER_DAY
DAY_S = 86_400  # seconds
# The server's period rule over days: windows of one day, entries older than four days archived.
FOUR_DAYS_NO_COMPACTION = LedgerSection(archive_after_s=4 * DAY_S, replay_window_s=DAY_S, return_window_s=DAY_S,
                                        compaction_interval_s=0)
DAMAGED_BYTES = 4  # bytes flipped in the middle of a segment
STATEMENT_PAGE_MAX = 500  # a whole statement in one page
PAGE_SIZE = 7  # small, so that pages start on both sides of the boundary and across it


@pytest.fixture
def ledger(tmp_path):
    opened = open_ledger(tmp_path / "ledger")
    fill(opened, range(0, 6))
    yield opened
    opened.close()


def dbs_of(ledger) -> dict:
    return ledger.raw_transaction()[1]


def archived(ledger, before_ms: int = BOUNDARY_MS):
    return archive_journal(ledger.env, dbs_of(ledger), archive_dir_of(ledger.path), before_ms, now_ms=NOW_MS)


def violations(ledger, with_archive: bool = True) -> list[str]:
    with ledger.env.begin() as txn:
        return check_ledger(txn, dbs_of(ledger), NOW_MS, archive_dir_of(ledger.path) if with_archive else None)


def whole_statement(ledger, account_id: str, reader) -> list[tuple[int, int]]:
    """(txn id, points shown) of every entry, newest first, paged as ListTransactions pages."""
    dbs = dbs_of(ledger)
    shown, before_id = [], 0
    with ledger.env.begin() as txn:
        get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
        last_txn_id = rec.decode_account(get("accounts", account_id.encode())).last_txn_id
        while True:
            entries, before_id = statement_page(txn, dbs, reader, account_id, last_txn_id, PAGE_SIZE, before_id)
            shown += [(entry.txn_id, rec.statement_change(entry, account_id)) for entry in entries]
            if not before_id:
                return shown


def journal_ids(ledger) -> list[int]:
    with ledger.env.begin() as txn:
        return [int.from_bytes(key, "big") for key, _ in txn.cursor(db=dbs_of(ledger)["journal"])]


class TestStatementAcrossTheBoundary:
    def test_every_entry_once_newest_first_across_the_boundary(self, ledger):
        before = {account_id: whole_statement(ledger, account_id, None) for account_id in ACCOUNTS}

        result = archived(ledger)
        after = {account_id: whole_statement(ledger, account_id, ArchiveReader(archive_dir_of(ledger.path)))
                 for account_id in ACCOUNTS}

        assert result.entries > 0
        assert min(journal_ids(ledger)) == result.archived_below_txn_id
        assert after == before

    def test_the_statement_ends_at_the_boundary_without_the_archive(self, ledger):
        result = archived(ledger)

        with pytest.raises(Exception, match="neither the journal nor the archive"):
            whole_statement(ledger, ACCOUNTS[0], None)
        assert result.archived_below_txn_id > 1

    def test_small_blocks_and_a_small_cache_still_give_every_entry_once(self, ledger, monkeypatch):
        monkeypatch.setattr(segments, "BLOCK_ENTRIES_MAX", 10)  # many blocks from this small period
        before = {account_id: whole_statement(ledger, account_id, None) for account_id in ACCOUNTS}

        result = archived(ledger)
        reader = ArchiveReader(archive_dir_of(ledger.path), blocks_cached_max=2)
        after = {account_id: whole_statement(ledger, account_id, reader) for account_id in ACCOUNTS}

        manifest = segments.read_manifest(archive_dir_of(ledger.path), result.segments[0])
        assert len(manifest.blocks) == -(-result.entries // 10)
        assert after == before
        assert len(reader._blocks) <= 2

    def test_a_page_of_archived_entries_decompresses_one_block(self, ledger):
        archived(ledger)
        reader = ArchiveReader(archive_dir_of(ledger.path))

        whole_statement(ledger, ACCOUNTS[1], reader)
        whole_statement(ledger, ACCOUNTS[1], reader)

        assert reader.blocks_read == 1  # one block holds this small archive: read once, then cached


class TestArchivedIds:
    def test_the_reader_says_which_ids_are_archived(self, ledger):
        result = archived(ledger)
        reader = ArchiveReader(archive_dir_of(ledger.path))
        dbs = dbs_of(ledger)

        with ledger.env.begin() as txn:
            get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
            below = result.archived_below_txn_id
            answers = [reader.archived(get, txn_id) for txn_id in (1, below - 1, below, below + 1)]
            entry = reader.entry(txn, dbs, below - 1)

        assert answers == [True, True, False, False]
        assert entry.txn_id == below - 1


class TestVerifyAcrossTheBoundary:
    def test_verify_passes_after_archiving(self, ledger):
        archived(ledger)

        assert violations(ledger) == []
        assert violations(ledger, with_archive=False) == []

    def test_a_changed_byte_in_a_segment_is_caught_naming_the_segment(self, ledger):
        result = archived(ledger)
        path = archive_dir_of(ledger.path) / result.segments[0]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

        found = violations(ledger)

        assert any(result.segments[0] in line and "sha256" in line for line in found), found

    def test_a_missing_segment_is_caught(self, ledger):
        result = archived(ledger)
        (archive_dir_of(ledger.path) / result.segments[0]).unlink()

        found = violations(ledger)

        assert any(result.segments[0] in line and "missing" in line for line in found), found

    def test_a_checkpoint_that_disagrees_with_the_archived_entries_is_caught(self, ledger):
        archived(ledger)
        dbs = dbs_of(ledger)
        with ledger.env.begin(write=True) as txn:
            key = state.checkpoint_key(ACCOUNTS[3])
            checkpoint = state.decode_checkpoint(txn.get(key, db=dbs["meta"]))
            checkpoint.points += 1
            txn.put(key, state.encode_checkpoint(checkpoint), db=dbs["meta"])

        found = violations(ledger)

        assert any(f"account {ACCOUNTS[3]}: checkpoint points" in line for line in found), found
        assert any(f"account {ACCOUNTS[3]}: statement adds up to" in line for line in found), found


    def test_a_segment_rewritten_with_its_checksum_listed_anew_still_fails_the_sums(self, ledger):
        import msgspec

        result = archived(ledger)
        directory = archive_dir_of(ledger.path)
        entries = [segments.entry_of_line(line) for line in segments.segment_lines(directory / result.segments[0])]
        bought = next(index for index, entry in enumerate(entries) if entry.earned and entry.account_id == ACCOUNTS[4])
        entries[bought] = msgspec.structs.replace(entries[bought], earned=entries[bought].earned + 1)
        manifest = segments.write_segment(directory, entries)  # a forger who also lists the new sha256
        dbs = dbs_of(ledger)
        with ledger.env.begin(write=True) as txn:
            (ref,) = read_index(txn, dbs)
            txn.put(state.segment_key(ref.first_txn_id), state.encode_segment(msgspec.structs.replace(
                ref, sha256=manifest.sha256, bytes=manifest.bytes)), db=dbs["meta"])

        found = violations(ledger)

        assert any(f"account {ACCOUNTS[4]}: checkpoint points expected" in line for line in found), found
        assert any(f"archived transaction {entries[bought].txn_id}" in line and "shows" in line for line in found), found


class TestCheckpoints:
    def test_checkpoint_points_are_the_archived_entries_statement_changes_summed(self, ledger):
        result = archived(ledger)
        directory = archive_dir_of(ledger.path)
        summed: dict[str, int] = {}
        for name in result.segments:
            with gzip.open(directory / name, "rb") as file:  # as a BI tool reads it: gzip, JSON lines
                for line in file:
                    entry = segments.entry_of_line(line)
                    summed[entry.account_id] = summed.get(entry.account_id, 0) + rec.statement_change(
                        entry, entry.account_id)

        with ledger.env.begin() as txn:
            checkpoints = state.read_checkpoints(txn, dbs_of(ledger)["meta"])

        assert {account_id: checkpoint.points for account_id, checkpoint in checkpoints.items()} == summed
        assert sum(summed.values()) > 0

    def test_a_second_period_adds_to_the_checkpoints_and_verify_still_passes(self, ledger):
        first = archived(ledger)
        second = archived(ledger, T0_MS + 5 * MS_PER_DAY)

        with ledger.env.begin() as txn:
            index = read_index(txn, dbs_of(ledger))
            below = read_below(lambda name, key: txn.get(key, db=dbs_of(ledger)[name]))
        assert [ref.name for ref in index] == first.segments + second.segments
        assert below == second.archived_below_txn_id == index[-1].last_txn_id + 1
        assert violations(ledger) == []


class TestFormat:
    def test_a_segment_is_gzip_json_lines_with_field_names_and_blocks_at_the_manifest_offsets(self, ledger):
        result = archived(ledger)
        directory = archive_dir_of(ledger.path)
        name = result.segments[0]
        manifest = json.loads((directory / segments.manifest_name(name)).read_text())
        raw = (directory / name).read_bytes()

        lines = gzip.decompress(raw).splitlines()
        rows = [json.loads(line) for line in lines]
        first_block = manifest["blocks"][0]
        start = first_block["offset_bytes"]
        block = gzip.decompress(raw[start:start + first_block["length_bytes"]]).splitlines()

        assert manifest["format"] == segments.FORMAT_NAME
        assert manifest["entries"] == len(rows) == result.entries
        assert [row["txn_id"] for row in rows] == list(range(manifest["first_txn_id"], manifest["last_txn_id"] + 1))
        assert {row["schema"] for row in rows} == {segments.SCHEMA_VERSION}
        assert rows[-1]["created_at_ms"] < BOUNDARY_MS
        assert block[0] == lines[0]

    def test_an_entry_survives_the_round_trip_through_json(self, ledger):
        dbs = dbs_of(ledger)
        with ledger.env.begin() as txn:
            entries = [rec.decode_txn(value) for _, value in txn.cursor(db=dbs["journal"])]

        assert [segments.entry_of_line(segments.entry_line(entry)) for entry in entries] == entries

    def test_a_block_is_written_as_the_lines_of_its_entries(self, ledger):
        """The archiver's fast path (object-form classes lent to the records) writes each entry's
        line byte for byte, for every kind this ledger holds: purchases, redemptions, returns,
        holds and their captures."""
        dbs = dbs_of(ledger)
        with ledger.env.begin() as txn:
            values = [value for _, value in txn.cursor(db=dbs["journal"])]
        kinds = {rec.decode_txn(value).kind for value in values}
        every_field = rec.TxnRec(  # every nested record and list a layout has, filled
            10**9, 1, "r-all", "A-0", 1, lines=[rec.JournalLine(1, 1000, 500, 10, 25, 5)],
            new_lot=rec.LotRec(10**9, "A-0", 25, 25, 1, 2), extra_lots=[rec.LotRec(10**9 + 1, "A-0", 3, 3, 1, 0, 2)],
            postings=[rec.Posting(10**9, 25)], returned=[(1, 500)], counters=[(b"B:budget\x00", 25)],
            limited=[rec.LimitedUse("camp", [25], [b"B:budget\x00"])], use_keys=[b"U:x"], promo_codes=["P1"])
        values.append(msgspec.msgpack.encode(every_field))

        written = segments.block_lines([rec.decode_txn(value) for value in values])

        assert len(kinds) >= 4
        assert written == b"".join(segments.entry_line(rec.decode_txn(value)) for value in values)


def compacted(ledger, now_ms: int, ledger_config) -> None:
    """Compaction to the end at `now_ms` with the config's windows, as the server runs it."""
    windows = Retention.of_seconds(ledger_config.replay_window_s, ledger_config.return_window_s)
    op = CompactOp(windows.replay_window_ms, windows.return_window_ms, COMPACT_RECORDS_PER_TXN_MAX)
    while True:
        (outcome,) = ledger.apply([op], now_ms)
        assert outcome.code == 0, outcome
        if not outcome.body.more:
            return


class TestRunner:
    def test_the_server_runner_archives_what_is_older_than_the_period(self, ledger):
        result = archive_closed_period(ledger, NOW_MS, FOUR_DAYS_NO_COMPACTION)

        with ledger.env.begin() as txn:
            cursor = txn.cursor(db=dbs_of(ledger)["journal"])
            cursor.first()
            oldest = rec.decode_txn(cursor.value())
        assert oldest.txn_id == result.archived_below_txn_id
        assert result.entries > 0
        assert oldest.created_at_ms >= NOW_MS - 4 * MS_PER_DAY
        assert Path(archive_dir_of(ledger.path), result.segments[0]).exists()


    def test_nothing_moves_before_the_return_window_has_passed(self, ledger):
        result = archive_closed_period(ledger, NOW_MS, LedgerSection(archive_after_s=DAY_S, compaction_interval_s=0))

        assert result.entries == 0

    def test_with_compaction_on_only_what_its_answers_walk_has_passed_moves(self, ledger):
        with_compaction = LedgerSection(archive_after_s=4 * DAY_S, replay_window_s=DAY_S, return_window_s=DAY_S,
                                        compaction_interval_s=600)
        before_the_walk = archive_closed_period(ledger, NOW_MS, with_compaction)
        with ledger.env.begin(write=True) as txn:  # compaction dropped the answers before transaction 5
            txn.put(AGING_FROM_TXN_KEY, bytes(8), db=dbs_of(ledger)["meta"])
            txn.put(DROPPED_TXN_KEY, (5).to_bytes(8, "big"), db=dbs_of(ledger)["meta"])
        after_the_walk = archive_closed_period(ledger, NOW_MS, with_compaction)

        assert before_the_walk.entries == 0
        assert after_the_walk.archived_below_txn_id == 5

    def test_on_a_ledger_compacted_before_the_aging_index_the_forget_walk_still_leads(self, ledger):
        with_compaction = LedgerSection(archive_after_s=4 * DAY_S, replay_window_s=DAY_S, return_window_s=DAY_S,
                                        compaction_interval_s=600)
        with ledger.env.begin(write=True) as txn:  # answers dropped up to 50, requests forgotten up to 5
            txn.put(DROPPED_TXN_KEY, (50).to_bytes(8, "big"), db=dbs_of(ledger)["meta"])
            txn.put(FORGOTTEN_TXN_KEY, (5).to_bytes(8, "big"), db=dbs_of(ledger)["meta"])
        result = archive_closed_period(ledger, NOW_MS, with_compaction)

        assert result.archived_below_txn_id == 5

    def test_with_compaction_on_entries_leave_once_the_replay_window_has_passed(self, ledger):
        """Not a return window later: a return of an archived purchase reads it from the archive."""
        long_return_window = LedgerSection(archive_after_s=0, replay_window_s=DAY_S, return_window_s=30 * DAY_S,
                                           compaction_interval_s=600)
        compacted(ledger, NOW_MS, long_return_window)

        result = archive_closed_period(ledger, NOW_MS, long_return_window)

        with ledger.env.begin() as txn:
            cursor = txn.cursor(db=dbs_of(ledger)["journal"])
            cursor.first()
            oldest = rec.decode_txn(cursor.value())
        assert result.entries > 0
        assert oldest.txn_id == result.archived_below_txn_id
        assert oldest.created_at_ms == NOW_MS - MS_PER_DAY  # days 0-4 left; day 5 is not past the window yet
        assert violations(ledger) == []

class TestWhatStays:
    def test_a_hold_still_capturable_stays_with_everything_after_it(self, tmp_path):
        from kassa.core_ext.model import CreateAccountOp, RedeemOp
        from tests.core.archive_ledger import applied, by_account, purchase

        ledger = open_ledger(tmp_path / "ledger")
        fill(ledger, range(0, 2))
        held_at_ms = T0_MS + 2 * MS_PER_DAY
        applied(ledger, [CreateAccountOp("create/holder", b"d", "HOLDER"), purchase("buy/holder", "HOLDER", 10_000)],
                held_at_ms)
        hold = applied(ledger, [RedeemOp("hold/live", b"d", by_account("HOLDER"), 10, 1_000, hold=True)],
                       held_at_ms)[0].body.transaction_id  # its account is not touched again: it stays LIVE
        fill(ledger, range(2, 4))
        try:
            result = archive_journal(ledger.env, dbs_of(ledger), archive_dir_of(ledger.path), T0_MS + 4 * MS_PER_DAY,
                                     now_ms=held_at_ms + 1_000)
            assert result.archived_below_txn_id == hold
            assert violations(ledger) == []
        finally:
            ledger.close()

    def test_nothing_at_or_after_keep_after_ms_moves(self, ledger):
        result = archive_journal(ledger.env, dbs_of(ledger), archive_dir_of(ledger.path), NOW_MS,
                                 keep_after_ms=BOUNDARY_MS, now_ms=NOW_MS)

        with ledger.env.begin() as txn:
            first = rec.decode_txn(txn.get(result.archived_below_txn_id.to_bytes(8, "big"), db=dbs_of(ledger)["journal"]))
        assert first.created_at_ms >= BOUNDARY_MS
        assert result.entries > 0


class TestRollbackOfArchived:
    def test_a_rollback_of_an_archived_purchase_reads_it_from_the_archive_and_verify_passes(self, ledger):
        from kassa.core_ext.model import Code, RollbackOp

        result = archived(ledger)
        target = next(entry for entry in map(segments.entry_of_line, archived_entries(ledger, result))
                      if entry.kind == TxnKind.ACCRUE and entry.earned and not entry.captured_hold_ids)

        (outcome,) = ledger.apply([RollbackOp("undo/archived", b"u", transaction_id=target.txn_id)], NOW_MS)

        assert outcome.code == Code.OK, outcome
        assert outcome.body.reversed_transaction_id == target.txn_id
        assert violations(ledger) == []

    def test_a_rollback_is_refused_when_the_segment_holding_its_target_cannot_be_read(self, tmp_path):
        from kassa.core_ext.model import Code, Reason, RollbackOp

        ledger = open_ledger(tmp_path / "ledger")  # a fresh reader: nothing of the segment cached
        fill(ledger, range(0, 6))
        result = archived(ledger)
        ledger.close()
        for path in archive_dir_of(tmp_path / "ledger").iterdir():
            path.unlink()
        ledger = open_ledger(tmp_path / "ledger")
        try:
            (outcome,) = ledger.apply([RollbackOp("undo/lost", b"u", transaction_id=result.archived_below_txn_id - 1)],
                                      NOW_MS)
        finally:
            ledger.close()

        assert outcome.code == Code.FAILED_PRECONDITION
        assert outcome.reason == Reason.NOT_REVERSIBLE
        assert "segment cannot be read" in outcome.message


class TestADamagedSegment:
    """Bytes changed inside a compressed block: what reads the archive answers a clear refusal naming
    the segment, never an internal error."""

    @pytest.fixture
    def damaged(self, tmp_path):
        ledger = open_ledger(tmp_path / "ledger")
        fill(ledger, range(0, 6))
        result = archived(ledger)
        ledger.close()
        segment = archive_dir_of(tmp_path / "ledger") / result.segments[0]
        data = bytearray(segment.read_bytes())
        middle = len(data) // 2
        data[middle:middle + DAMAGED_BYTES] = bytes(byte ^ 0xFF for byte in data[middle:middle + DAMAGED_BYTES])
        segment.write_bytes(bytes(data))
        ledger = open_ledger(tmp_path / "ledger")  # a fresh reader: nothing of the segment cached
        yield ledger, result
        ledger.close()

    def test_a_rollback_of_an_entry_in_it_is_refused_naming_the_segment(self, damaged):
        from kassa.core_ext.model import Code, RollbackOp

        ledger, result = damaged
        refusals = [ledger.apply([RollbackOp(f"undo/{txn_id}", b"u", transaction_id=txn_id)], NOW_MS)[0]
                    for txn_id in range(1, result.archived_below_txn_id)]

        assert {outcome.code for outcome in refusals} <= {Code.OK, Code.FAILED_PRECONDITION, Code.NOT_FOUND}
        assert any("archive segment" in outcome.message for outcome in refusals if outcome.code != Code.OK)

    def test_a_statement_through_it_is_refused_naming_the_segment(self, damaged):
        from kassa.core_ext.model import Code

        ledger, _ = damaged
        outcomes = [ledger.statement(by_account(account), STATEMENT_PAGE_MAX, 0) for account in ACCOUNTS]

        assert {outcome.code for outcome in outcomes} <= {Code.OK, Code.FAILED_PRECONDITION}
        assert any("archive segment" in outcome.message for outcome in outcomes if outcome.code != Code.OK)

def archived_entries(ledger, result) -> list[bytes]:
    """The JSON lines of the archive's first segment."""
    return list(segments.segment_lines(archive_dir_of(ledger.path) / result.segments[0]))
