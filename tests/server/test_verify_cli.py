"""`kassa verify` checks the ledger's invariants: clean after real traffic, loud after tampering."""

from __future__ import annotations

import json

import grpc
import lmdb
import msgspec

from kassa.core_ext import records
from kassa.v1 import processing_pb2
from tests.server.helpers import (
    HOLD_TTL_S, LIFETIME_DAYS, accrue, balance, by_card, earn, line, open_account, receipt, redeem, refused,
    rollback,
)


def verify(kassa):
    result = kassa.run_cli("verify", "--config", str(kassa.config_path()))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return result, summary


def assert_verifies(kassa):
    result, summary = verify(kassa)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary["ok"] is True and summary["violations"] == 0
    return summary


def traffic(kassa):
    """Purchases, returns, cancels, redemptions, holds, replays and refusals on two accounts."""
    open_account(kassa, "A-1", card="C-1")
    basket = receipt(
        line(1, 10_000, qty_milli=2_000, category="grocery/dairy"),
        line(2, 33_333, qty_milli=3_000, category="grocery/bakery"),
        line(3, 20_000, category="flowers", sku="COFFEE-1KG"),
        receipt_no="R-1",
    )
    kassa.processing.Calculate(processing_pb2.CalculateRequest(customer=by_card("C-1"), receipt=basket))
    bought = accrue(kassa, "A-1", basket, request_id="buy-1")
    accrue(kassa, "A-1", basket, request_id="buy-1")  # replay
    rollback(kassa, "return-1", transaction_id=bought.transaction_id, returns=[(2, 1_000)])
    rollback(kassa, "return-2", transaction_id=bought.transaction_id, returns=[(2, 1_000), (1, 500)])
    with refused(grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_PURCHASE"):
        rollback(kassa, "return-3", transaction_id=bought.transaction_id, returns=[(2, 2_000)])
    redeem(kassa, "A-1", 500, request_id="spend-1")
    with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
        redeem(kassa, "A-1", 10**7, request_id="spend-2")
    captured = redeem(kassa, "A-1", 300, request_id="hold-1", hold=True)
    accrue(kassa, "A-1", receipt(line(1, 5_000), receipt_no="R-2"), request_id="buy-2",
           capture_hold_ids=[captured.transaction_id])
    voided = redeem(kassa, "A-1", 200, request_id="hold-2", hold=True)
    rollback(kassa, "void-1", transaction_id=voided.transaction_id)
    kassa.clock.advance(days=3)
    paid = accrue(kassa, "A-1", receipt(line(1, 4_000), receipt_no="R-3"), request_id="buy-3", redeem_points=700)
    rollback(kassa, "cancel-3", original_request_id="buy-3")
    rollback(kassa, "cancel-1", transaction_id=bought.transaction_id)
    with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ROLLED_BACK"):
        rollback(kassa, "cancel-1b", transaction_id=bought.transaction_id)
    assert paid.calculation.redeemed_points == 700

    open_account(kassa, "A-2")  # spends what it earned, then returns the purchase: debt
    spent = earn(kassa, "A-2", 1_000, request_id="a2-buy-1")
    redeem(kassa, "A-2", 1_000, request_id="a2-spend-1")
    rollback(kassa, "a2-cancel-1", transaction_id=spent.transaction_id)
    assert balance(kassa, "A-2").debt_points == 1_000


class TestVerifyAfterTraffic:
    def test_ledger_verifies_after_purchases_returns_holds_and_clawback(self, kassa):
        traffic(kassa)

        summary = assert_verifies(kassa)

        assert summary["accounts"] == 2

    def test_ledger_verifies_after_a_restart(self, kassa):
        traffic(kassa)
        kassa.restart()
        open_account(kassa, "A-3")
        earn(kassa, "A-3", 50, request_id="after-restart")

        assert_verifies(kassa)

    def test_ledger_verifies_after_a_hold_lapsed_and_its_capture_was_refused(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        hold = redeem(kassa, "A-1", 300, request_id="hold-1", hold=True)
        kassa.clock.advance(seconds=HOLD_TTL_S + 1)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED"):
            accrue(kassa, "A-1", receipt(line(1, 2_000)), request_id="buy-2", capture_hold_ids=[hold.transaction_id])

        assert_verifies(kassa)

    def test_ledger_verifies_after_points_expired_and_a_redeem_was_refused(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        kassa.clock.advance(days=LIFETIME_DAYS + 1)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1, request_id="spend-1")

        assert_verifies(kassa)


class TestVerifyFindsTampering:
    def test_a_tampered_balance_fails_verify_naming_the_account(self, kassa):
        for account_id in ("A-HONEST", "A-TAMPERED"):
            open_account(kassa, account_id)
            earn(kassa, account_id, 1_000, request_id=f"buy/{account_id}")
        assert_verifies(kassa)
        kassa.stop()

        env = lmdb.open(str(kassa.ledger_path), max_dbs=16)
        try:
            accounts = env.open_db(b"accounts")
            decode = msgspec.msgpack.Decoder(records.AccountRec).decode
            with env.begin(write=True) as txn:
                record = decode(txn.get(b"A-TAMPERED", db=accounts))
                assert record.active == 1_000
                record.active += 5_000
                txn.put(b"A-TAMPERED", msgspec.msgpack.encode(record), db=accounts)
        finally:
            env.close()

        result, summary = verify(kassa)

        assert result.returncode != 0
        assert summary["ok"] is False and summary["violations"] >= 1
        assert "A-TAMPERED" in result.stdout
        assert "A-HONEST" not in result.stdout
