"""How many LMDB reads and writes an operation makes, against a real LMDB ledger in a temp directory.

`Ledger.last_group_calls` counts the gets and puts the last committed group's operations made.
These tests pin that a customer named by card costs one read more than one named by account id
(the card's record, read once: it both finds the account and says whether the card is blocked),
for a purchase, a redemption and an event.
"""

from __future__ import annotations

import pytest

from kassa.core_ext import Ledger, Program
from kassa.core_ext.model import (
    AccrueOp, Code, CreateAccountOp, Customer, EventOp, IdKind, IssueCardOp, Line, Receipt, RedeemOp,
)
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
UNIT = 1000  # qty_milli of one item

CAMPAIGNS = """
[[campaigns]]
id = "base"
when = {}
effect = { kind = "earn_percent", percent_bps = 500 }

[[campaigns]]
id = "signup"
trigger = "event"
when = { event_types = ["signup"] }
effect = { kind = "earn_fixed", points = 100 }
"""


@pytest.fixture
def ledger(tmp_path):
    opened = Ledger(str(tmp_path / "ledger"), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S)
    for name in ("by-id", "by-card"):
        ops = [CreateAccountOp(f"create/{name}", b"d", name), IssueCardOp(f"card/{name}", b"d", name, f"C-{name}")]
        assert [outcome.code for outcome in opened.apply(ops, T0_MS)] == [Code.OK, Code.OK]
    yield opened
    opened.close()


def customers() -> tuple[Customer, Customer]:
    return Customer(IdKind.ACCOUNT, "by-id"), Customer(IdKind.CARD, "C-by-card")


def purchase(customer: Customer, request_id: str, redeem_points: int = 0) -> AccrueOp:
    receipt = Receipt("store-1", "term-1", request_id, (Line(1, "SKU-1", "grocery", UNIT, 10_000, 10_000),))
    return AccrueOp(request_id, b"d:" + request_id.encode(), customer, receipt, redeem_points)


def reads_of(ledger: Ledger, op) -> int:
    (outcome,) = ledger.apply([op], T0_MS)
    assert outcome.code == Code.OK, outcome
    return ledger.last_group_calls[0]


class TestCardReadOnce:
    def test_a_purchase_by_card_reads_one_record_more_than_by_account_id(self, ledger):
        by_id, by_card = customers()

        reads_by_id = reads_of(ledger, purchase(by_id, "buy/id"))
        reads_by_card = reads_of(ledger, purchase(by_card, "buy/card"))

        assert reads_by_card - reads_by_id == 1

    def test_a_redemption_by_card_reads_one_record_more_than_by_account_id(self, ledger):
        by_id, by_card = customers()
        reads_of(ledger, purchase(by_id, "buy/id"))
        reads_of(ledger, purchase(by_card, "buy/card"))

        reads_by_id = reads_of(ledger, RedeemOp("redeem/id", b"d", by_id, 100, 10_000))
        reads_by_card = reads_of(ledger, RedeemOp("redeem/card", b"d", by_card, 100, 10_000))

        assert reads_by_card - reads_by_id == 1

    def test_an_event_by_card_reads_one_record_more_than_by_account_id(self, ledger):
        by_id, by_card = customers()

        reads_by_id = reads_of(ledger, EventOp("event/id", b"d", by_id, "signup"))
        reads_by_card = reads_of(ledger, EventOp("event/card", b"d", by_card, "signup"))

        assert reads_by_card - reads_by_id == 1


class TestCallsCounted:
    def test_a_purchase_writes_its_account_journal_entry_lot_and_idempotency_record(self, ledger):
        by_id, _ = customers()

        reads_of(ledger, purchase(by_id, "buy/id"))

        assert ledger.last_group_calls[1] == 4


class TestNoRecordReadTwice:
    """A purchase reads each record it needs once: the lot it earns into is not read back for the
    next expiry its answer shows, and a purchase that spends nothing builds no balance to check."""

    def test_the_first_purchase_reads_its_idempotency_key_and_account_only(self, ledger):
        by_id, _ = customers()

        reads = reads_of(ledger, purchase(by_id, "buy/first"))

        assert reads == 3  # its request key in `idempotency`, then in `retained`; the account

    def test_a_later_purchase_of_the_day_reads_the_days_lot_once(self, ledger):
        by_id, _ = customers()
        reads_of(ledger, purchase(by_id, "buy/first"))

        reads = reads_of(ledger, purchase(by_id, "buy/second"))

        assert reads == 4  # its request key (in both databases), the account, the day's lot

    def test_the_answer_shows_the_lot_as_written(self, ledger):
        by_id, _ = customers()
        reads_of(ledger, purchase(by_id, "buy/first"))

        (outcome,) = ledger.apply([purchase(by_id, "buy/second")], T0_MS)

        assert outcome.body.balance.next_expiry_points == 1000
        assert outcome.body.balance.next_expiry_at_ms > T0_MS
