"""The idempotency record of a purchase, against a real LMDB ledger in a temp directory.

An accepted purchase's record keeps only what its journal entry does not (a format byte, then
`AccrueOutcomeRec`); a retry's answer is rebuilt from both. These tests pin:

- a retried purchase, after the ledger is closed and opened again, is answered byte for byte as the
  first time (the AccrueResponse bytes), for a plain purchase, one with a promo code, one limited
  by a budget, one that redeems points and one that captures a hold (each fills other fields);
- the record of a plain purchase is smaller than the answer it replays, and begins with its format;
- a record in the format every ledger was written in before (the whole answer in an
  `IdempotencyRec`) still replays byte for byte, and `Ledger.verify` reads both formats.
"""

from __future__ import annotations

import msgspec
import pytest

from kassa.core_ext import Ledger, Program
from kassa.core_ext import records
from kassa.core_ext.model import (
    AccrueOp, AdjustOp, Code, CreateAccountOp, Customer, IdKind, Line, PromoCodesOp, Receipt, RedeemOp,
)
from kassa.server.wire import accrue_response
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
UNIT = 1000  # qty_milli of one item
# A plain purchase's record: 1 format byte, the 16-byte digest, ids, balance, one campaign, dates.
PLAIN_RECORD_BYTES_MAX = 120

CAMPAIGNS = """
[[campaigns]]
id = "base"
when = {}
effect = { kind = "earn_percent", percent_bps = 500 }

[[campaigns]]
id = "promo"
promo_code = true
when = { category_prefixes = ["p/"] }
effect = { kind = "earn_fixed", points = 40 }

[[campaigns]]
id = "budget"
when = { category_prefixes = ["b/"] }
effect = { kind = "earn_percent", percent_bps = 1000 }
limits = { budget_points = 100 }
"""

ACCOUNT = "A1"


class Shop:
    """A ledger over the test program with one rich account, reopened at will."""

    def __init__(self, path):
        self.path = str(path)
        self.ledger = self._open()
        self.serial = 0
        self.one(CreateAccountOp("create", b"d:create", ACCOUNT))
        self.one(AdjustOp("adjust", b"d:adjust", self.customer(), 5_000, "welcome", "op-1"))
        self.one(PromoCodesOp("codes", b"d:codes", "promo", codes=("SPRING",)))

    def _open(self) -> Ledger:
        return Ledger(self.path, Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S)

    def reopen(self):
        self.ledger.close()
        self.ledger = self._open()

    @staticmethod
    def customer() -> Customer:
        return Customer(IdKind.ACCOUNT, ACCOUNT)

    def one(self, op):
        outcome = self.ledger.apply([op], T0_MS)[0]
        assert outcome.code == Code.OK, outcome
        return outcome

    def accrue(self, *lines: tuple, codes=(), redeem_points=0, capture_hold_ids=()) -> AccrueOp:
        """`lines`: (category, amount_minor) each, one item."""
        self.serial += 1
        request_id = f"buy-{self.serial}"
        built = tuple(Line(i + 1, f"SKU-{i + 1}", category, UNIT, amount, amount)
                      for i, (category, amount) in enumerate(lines))
        receipt = Receipt("store-1", "term-1", request_id, built, promo_codes=codes)
        digest = f"digest-of-{request_id}".encode().ljust(16, b".")[:16]
        return AccrueOp(request_id, digest, self.customer(), receipt, redeem_points, capture_hold_ids)

    def record(self, request_id: str) -> bytes:
        txn, dbs = self.ledger.raw_transaction()
        with txn:
            return txn.get(request_id.encode(), db=dbs["idempotency"])

    def write_record(self, request_id: str, stored: bytes):
        """Behind the ledger's back, as another build of kassa would have written it."""
        _, dbs = self.ledger.raw_transaction()  # the databases; its read transaction is begun only in `with`
        with self.ledger.env.begin(write=True) as txn:
            txn.put(request_id.encode(), stored, db=dbs["idempotency"])


@pytest.fixture
def shop(tmp_path):
    opened = Shop(tmp_path / "ledger")
    yield opened
    opened.ledger.close()


def purchases(shop: Shop) -> dict[str, AccrueOp]:
    hold = shop.one(RedeemOp("hold", b"d:hold", shop.customer(), 300, 10_000, True, "store-1", "term-1"))
    return {
        "plain": shop.accrue(("grocery", 1_990), ("home", 24_910)),
        "promo code": shop.accrue(("p/sweets", 5_000), codes=("SPRING", "NOSUCH")),
        "budget": shop.accrue(("b/tv", 2_000_00)),
        "redeem": shop.accrue(("grocery", 8_000), ("home", 4_000), redeem_points=500),
        "capture": shop.accrue(("grocery", 6_000), ("home", 3_000), capture_hold_ids=(hold.body.transaction_id,)),
    }


class TestReplay:
    @pytest.mark.parametrize("kind", ["plain", "promo code", "budget", "redeem", "capture"])
    def test_a_retried_purchase_is_answered_byte_for_byte_after_a_restart(self, shop, kind):
        op = purchases(shop)[kind]
        first = shop.one(op)
        shop.reopen()

        again = shop.one(op)

        assert accrue_response(again.body) == accrue_response(first.body)
        assert msgspec.msgpack.encode(again) == msgspec.msgpack.encode(first)

    def test_a_retry_in_the_same_write_transaction_is_answered_the_same(self, shop):
        op = shop.accrue(("grocery", 1_990), ("home", 24_910))

        first, again = shop.ledger.apply([op, op], T0_MS)

        assert again == first

    def test_the_fields_a_plain_purchase_leaves_empty_are_filled_where_they_are_not(self, shop):
        ops = purchases(shop)
        answers = {kind: shop.one(op).body.calculation for kind, op in ops.items()}

        assert answers["promo code"].promo_codes
        assert answers["budget"].limited
        assert answers["capture"].captured_points > 0
        assert answers["capture"].lines[0].captured_points > 0


class TestRecord:
    def test_a_purchase_record_begins_with_its_format(self, shop):
        op = shop.accrue(("grocery", 1_990), ("home", 24_910))
        shop.one(op)

        assert shop.record(op.request_id)[0] == records.IDEMPOTENCY_ACCRUE_V2

    def test_a_plain_purchase_record_is_smaller_than_its_answer(self, shop):
        op = shop.accrue(("grocery", 1_990), ("home", 24_910))
        answer = shop.one(op)

        stored = shop.record(op.request_id)

        assert len(stored) <= PLAIN_RECORD_BYTES_MAX
        assert len(stored) < len(msgspec.msgpack.encode(answer))


class TestOlderRecords:
    @pytest.mark.parametrize("kind", ["plain", "promo code", "capture"])
    def test_a_record_holding_the_whole_answer_replays_byte_for_byte(self, shop, kind):
        op = purchases(shop)[kind]
        first = shop.one(op)
        # What every ledger was written with before formats: the whole answer, msgpack in msgpack.
        older = records.IdempotencyRec(op.digest, first.body.transaction_id, msgspec.msgpack.encode(first))
        shop.write_record(op.request_id, msgspec.msgpack.encode(older))
        shop.reopen()

        again = shop.one(op)

        assert shop.record(op.request_id)[0] != records.IDEMPOTENCY_ACCRUE_V1
        assert accrue_response(again.body) == accrue_response(first.body)

    def test_verify_reads_both_formats(self, shop):
        ops = list(purchases(shop).values())
        answers = [shop.one(op) for op in ops]
        older = records.IdempotencyRec(ops[0].digest, answers[0].body.transaction_id, msgspec.msgpack.encode(answers[0]))
        shop.write_record(ops[0].request_id, msgspec.msgpack.encode(older))

        assert shop.ledger.verify(T0_MS) == []

    def test_verify_finds_a_compact_record_pointing_at_another_request(self, shop):
        first, second = shop.accrue(("grocery", 1_000)), shop.accrue(("grocery", 2_000))
        shop.one(first)
        shop.one(second)
        shop.write_record(first.request_id, shop.record(second.request_id))

        violations = shop.ledger.verify(T0_MS)

        assert any("claimed by request ids" in violation for violation in violations)
