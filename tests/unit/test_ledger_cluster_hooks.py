"""The ledger's hooks for the cluster: pairs written in a group's own transaction (a replica's
applied log position), and promo codes drawn from a seed the operation carries."""

from __future__ import annotations

from kassa.core_ext import Ledger, Program
from kassa.core_ext.model import Code, CreateAccountOp, PromoCodesOp
from tests.core.programs import program

T0_MS = 1_780_300_800_000
MAP_SIZE_BYTES = 32 * 1024**2
HOLD_TTL_S = 900
CAMPAIGNS = """
[[campaigns]]
id = "spring"
promo_code = true
when = {}
effect = { kind = "earn_percent", percent_bps = 100 }
"""


def open_ledger(path) -> Ledger:
    return Ledger(str(path), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)


def stored_meta(ledger, key: bytes) -> bytes | None:
    with ledger.env.begin() as txn:
        return txn.get(key, db=ledger.env.env.open_db(b"meta", create=False))


class TestMetaPairs:
    def test_the_pairs_are_written_with_the_group(self, tmp_path):
        ledger = open_ledger(tmp_path / "a")
        (outcome,) = ledger.apply([CreateAccountOp("c1", b"d", "A1")], T0_MS, meta=((b"cluster.test", b"7"),))
        assert outcome.code == Code.OK
        assert stored_meta(ledger, b"cluster.test") == b"7"

    def test_an_empty_group_still_writes_the_pairs(self, tmp_path):
        ledger = open_ledger(tmp_path / "a")
        assert ledger.apply([], T0_MS, meta=((b"cluster.test", b"1"),)) == []
        assert stored_meta(ledger, b"cluster.test") == b"1"


class TestSeededPromoCodes:
    def op(self, seed: bytes) -> PromoCodesOp:
        return PromoCodesOp("codes-1", b"d", "spring", pattern="SPRING-########", count=50, seed=seed)

    def test_the_same_seed_draws_the_same_codes_on_two_ledgers(self, tmp_path):
        first = open_ledger(tmp_path / "a").apply([self.op(b"s" * 16)], T0_MS)[0]
        second = open_ledger(tmp_path / "b").apply([self.op(b"s" * 16)], T0_MS)[0]
        assert first.code == Code.OK, first.message
        assert first.body.codes == second.body.codes

    def test_another_seed_draws_other_codes(self, tmp_path):
        first = open_ledger(tmp_path / "a").apply([self.op(b"s" * 16)], T0_MS)[0]
        second = open_ledger(tmp_path / "b").apply([self.op(b"t" * 16)], T0_MS)[0]
        assert first.body.codes != second.body.codes
