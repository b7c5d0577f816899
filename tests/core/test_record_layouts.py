"""The stored layouts of the records a purchase writes, against a real LMDB ledger in a temp dir.

- A journal entry is stored as a format byte (`records.JOURNAL_V1`) and a packed array: a plain
  purchase's entry is far smaller than the `TxnRec` array every ledger was written with before,
  and every field of a `TxnRec` comes back equal through `encode_txn` / `decode_txn`.
- A ledger whose journal was written in the older layout (as main's code wrote it: msgpack of
  `TxnRec`) opens, replays its purchases byte for byte, rolls one back by its request id, verifies,
  and compaction walks it.
- A purchase's idempotency record (`AccrueOutcomeV2`) is smaller than the `AccrueOutcomeRec` of
  before, and a record in that format still replays byte for byte.
"""

from __future__ import annotations

import msgspec
import pytest

from kassa.core_ext import records
from kassa.core_ext.model import Code, CompactOp, RollbackOp
from kassa.server.wire import accrue_response
from tests.core.test_idempotency_records import T0_MS, Shop, purchases

# The plain two-line purchase below: 155 bytes in the older layout, 116 packed.
PLAIN_ENTRY_BYTES_MAX = 120
# Its idempotency record: 91 bytes as `AccrueOutcomeRec`, 63 as `AccrueOutcomeV2`.
PLAIN_OUTCOME_BYTES_MAX = 75
REPLAY_WINDOW_MS = 60_000
RETURN_WINDOW_MS = 600_000
COMPACT_RECORDS_MAX = 1_000


@pytest.fixture
def shop(tmp_path):
    opened = Shop(tmp_path / "ledger")
    yield opened
    opened.ledger.close()


def journal(shop: Shop) -> dict[bytes, bytes]:
    txn, dbs = shop.ledger.raw_transaction()
    with txn:
        return {bytes(key): bytes(value) for key, value in txn.cursor(db=dbs["journal"])}


def rewrite_journal_as_before(shop: Shop) -> int:
    """Every journal entry rewritten as the code before JOURNAL_V1 wrote it; how many."""
    entries = journal(shop)
    _, dbs = shop.ledger.raw_transaction()
    with shop.ledger.env.begin(write=True) as txn:
        for key, stored in entries.items():
            txn.put(key, msgspec.msgpack.encode(records.decode_txn(stored)), db=dbs["journal"])
    return len(entries)


def every_field_set() -> records.TxnRec:
    """An entry with no field at its default, the lot of another account."""
    lot = records.LotRec(7, "POOL", 90, 80, T0_MS - 5_000, T0_MS + 86_400_000, records.LotState.PENDING)
    values = {
        "txn_id": 1 << 60, "kind": 3, "request_id": "r", "account_id": "A", "created_at_ms": T0_MS,
        "store_id": "s", "terminal_id": "t", "receipt_no": "n", "total_minor": 10, "payable_minor": 9,
        "lines": [records.JournalLine(3, 1000, 5, 1, 2, 3), records.JournalLine(1, 500, 4, 0, 1, 0)],
        "earned": 2, "redeemed": 3, "held": 4, "captured": 5, "clawed": 6, "restored": 7, "expired": 8,
        "debt_delta": -9, "forgiven": 10, "new_lot": lot, "extra_lots": [lot], "postings": [records.Posting(7, -2)],
        "reverses": 11, "captured_hold_ids": [12], "returned": [(3, 500)], "hold_expires_at_ms": 13,
        "ruleset_version": "custom version", "member_id": "M", "reason": "why", "operator_id": "op",
        "adjusted": -14, "actor": "t", "prev_id": 15, "member_prev_id": 16, "counters": [(b"k", 17)],
        "limited": [records.LimitedUse("c", [1, 2], [b"k"])], "use_keys": [b"u"], "promo_codes": ["P"],
        "activity_counted": True, "spent_postings": 1,
    }
    assert set(values) == set(records.TxnRec.__struct_fields__)
    return records.TxnRec(**values)


class TestJournalLayout:
    def test_every_entry_the_ledger_writes_begins_with_its_format_and_reads_back_the_same(self, shop):
        for op in purchases(shop).values():
            shop.one(op)

        stored = journal(shop)

        assert len(stored) >= 8
        for value in stored.values():
            assert value[0] == records.JOURNAL_V1
            assert records.encode_txn(records.decode_txn(value)) == value

    def test_a_plain_purchase_entry_is_packed(self, shop):
        op = shop.accrue(("grocery", 1_990), ("home", 24_910))
        answer = shop.one(op)

        stored = journal(shop)[answer.body.transaction_id.to_bytes(8, "big")]

        assert len(stored) <= PLAIN_ENTRY_BYTES_MAX
        assert len(stored) < len(msgspec.msgpack.encode(records.decode_txn(stored)))

    @pytest.mark.parametrize("ruleset_version", ["custom version", "v-ABCDEF123456", "v-0123456789ab", ""])
    def test_every_field_comes_back_equal(self, ruleset_version):
        entry = every_field_set()
        entry.ruleset_version = ruleset_version

        assert records.decode_txn(records.encode_txn(entry)) == entry

    def test_an_entry_of_a_lot_of_its_own_account_comes_back_equal(self):
        entry = every_field_set()
        entry.new_lot.account_id = entry.account_id
        entry.lines = [records.JournalLine(1, 1000, 5, 1, 2, 3), records.JournalLine(2, 500, 4, 0, 1, 0)]

        assert records.decode_txn(records.encode_txn(entry)) == entry


class TestOlderJournal:
    @pytest.mark.parametrize("kind", ["plain", "promo code", "budget", "redeem", "capture"])
    def test_a_purchase_of_an_older_journal_replays_byte_for_byte(self, shop, kind):
        op = purchases(shop)[kind]
        first = shop.one(op)
        assert rewrite_journal_as_before(shop) >= 4
        shop.reopen()

        again = shop.one(op)

        assert journal(shop)[first.body.transaction_id.to_bytes(8, "big")][0] != records.JOURNAL_V1
        assert accrue_response(again.body) == accrue_response(first.body)

    def test_an_older_journal_rolls_back_by_request_id_and_verifies(self, shop):
        ops = purchases(shop)
        for op in ops.values():
            shop.one(op)
        rewrite_journal_as_before(shop)
        shop.reopen()

        returned = shop.one(RollbackOp("return-1", b"d:return-1", original_request_id=ops["plain"].request_id))

        assert returned.body.transaction_id > 0
        assert shop.ledger.verify(T0_MS) == []

    def test_compaction_walks_an_older_journal(self, shop):
        op = purchases(shop)["plain"]
        shop.one(op)
        rewrite_journal_as_before(shop)
        shop.reopen()
        later_ms = T0_MS + REPLAY_WINDOW_MS + 1

        (compacted,) = shop.ledger.apply([CompactOp(REPLAY_WINDOW_MS, RETURN_WINDOW_MS, COMPACT_RECORDS_MAX)], later_ms)
        (again,) = shop.ledger.apply([op], later_ms)

        assert compacted.body.answers_dropped >= 1
        assert again.code == Code.FAILED_PRECONDITION


def as_accrue_outcome_v1(shop: Shop, request_id: str) -> bytes:
    """The purchase's record as the code before IDEMPOTENCY_ACCRUE_V2 wrote it (`AccrueOutcomeRec`)."""
    stored = shop.record(request_id)
    record = records.decode_idempotency(stored)
    entry = records.decode_txn(journal(shop)[record.txn_id.to_bytes(8, "big")])
    campaigns, activate_at_ms, expire_at_ms = records.accrue_outcome_fields(record, entry.created_at_ms)
    older = records.AccrueOutcomeRec(record.digest, record.txn_id, record.balance, campaigns, record.discount_minor,
                                     record.redeemable_points, record.redeemed_points, activate_at_ms, expire_at_ms,
                                     record.rare)
    return bytes([records.IDEMPOTENCY_ACCRUE_V1]) + msgspec.msgpack.encode(older)


class TestAccrueOutcomeLayout:
    def test_a_plain_purchase_record_is_smaller_than_in_the_format_before(self, shop):
        op = shop.accrue(("grocery", 1_990), ("home", 24_910))
        shop.one(op)

        stored = shop.record(op.request_id)

        assert stored[0] == records.IDEMPOTENCY_ACCRUE_V2
        assert len(stored) <= PLAIN_OUTCOME_BYTES_MAX
        assert len(stored) < len(as_accrue_outcome_v1(shop, op.request_id))

    @pytest.mark.parametrize("kind", ["plain", "promo code", "budget", "redeem", "capture"])
    def test_a_record_in_the_format_before_replays_byte_for_byte(self, shop, kind):
        op = purchases(shop)[kind]
        first = shop.one(op)
        shop.write_record(op.request_id, as_accrue_outcome_v1(shop, op.request_id))
        shop.reopen()

        again = shop.one(op)

        assert shop.record(op.request_id)[0] == records.IDEMPOTENCY_ACCRUE_V1
        assert accrue_response(again.body) == accrue_response(first.body)
        assert shop.ledger.verify(T0_MS) == []

    def test_an_effect_not_in_the_stored_table_comes_back_by_name(self):
        record = records.AccrueOutcomeV2(b"d" * 16, 5, records.Balance(next_expiry_at_ms=T0_MS),
                                         (("c", "some_new_effect", 3, 0), ("d", 1, 4, 0)), 0, 0, 0, 0, 0)

        campaigns, _, _ = records.accrue_outcome_fields(record, T0_MS)

        assert [campaign.effect for campaign in campaigns] == ["some_new_effect", "earn_fixed"]
