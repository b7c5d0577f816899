"""Every mutating call is idempotent by request_id: the same payload replays, another is refused."""

from __future__ import annotations

import grpc

from kassa.v1 import processing_pb2
from tests.server.helpers import (
    accrue, balance, by_account, earn, line, open_account, receipt, redeem, refused, rollback, snapshot,
)

PURCHASE = receipt(
    line(1, 12_345, qty_milli=3_000, category="grocery/bakery"),
    line(2, 50_000, category="flowers/roses"),
    receipt_no="R-77",
)


def wire(message) -> bytes:
    return message.SerializeToString(deterministic=True)


class TestReplayAfterRestart:
    def test_accrue_replayed_after_a_restart_is_byte_identical_with_no_new_effect(self, kassa):
        open_account(kassa, "A-1")
        first = accrue(kassa, "A-1", PURCHASE, request_id="store-1/term-1/R-77")
        assert first.calculation.earned_points > 0
        before = snapshot(kassa, "A-1")

        kassa.restart()
        kassa.clock.advance(seconds=60)  # a re-evaluation now would stamp other times
        again = accrue(kassa, "A-1", PURCHASE, request_id="store-1/term-1/R-77")

        assert wire(again) == wire(first)
        assert snapshot(kassa, "A-1") == before

    def test_partial_return_replayed_after_a_restart_claws_back_only_once(self, kassa):
        open_account(kassa, "A-1")
        purchase = accrue(kassa, "A-1", PURCHASE, request_id="buy-1")
        first = rollback(kassa, "return-1", transaction_id=purchase.transaction_id, returns=[(1, 1_000)])
        assert first.clawed_back_points > 0
        before = snapshot(kassa, "A-1")

        kassa.restart()
        again = rollback(kassa, "return-1", transaction_id=purchase.transaction_id, returns=[(1, 1_000)])

        assert wire(again) == wire(first)
        assert snapshot(kassa, "A-1") == before

    def test_refusal_replays_the_same_status_after_a_restart_even_once_points_arrived(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 100, request_id="buy-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS") as original:
            redeem(kassa, "A-1", 500, request_id="spend-1")

        earn(kassa, "A-1", 1_000, request_id="buy-2")  # now 500 would be covered
        kassa.restart()
        before = snapshot(kassa, "A-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS") as replay:
            redeem(kassa, "A-1", 500, request_id="spend-1")

        assert replay.details == original.details
        assert snapshot(kassa, "A-1") == before
        assert balance(kassa, "A-1").available_points == 1_100


class TestRequestIdReuse:
    def test_same_request_id_with_another_payload_is_already_exists_and_changes_nothing(self, kassa):
        open_account(kassa, "A-1")
        first = accrue(kassa, "A-1", PURCHASE, request_id="store-1/term-1/R-77")
        before = snapshot(kassa, "A-1")

        other = receipt(line(1, 99_900, category="pharmacy"), receipt_no="R-78")
        with refused(grpc.StatusCode.ALREADY_EXISTS) as refusal:
            accrue(kassa, "A-1", other, request_id="store-1/term-1/R-77")
        assert "store-1/term-1/R-77" in refusal.details

        assert snapshot(kassa, "A-1") == before
        assert wire(accrue(kassa, "A-1", PURCHASE, request_id="store-1/term-1/R-77")) == wire(first)

    def test_redeem_with_a_reused_request_id_and_other_points_is_already_exists(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        redeem(kassa, "A-1", 100, request_id="spend-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.ALREADY_EXISTS):
            kassa.processing.Redeem(
                processing_pb2.RedeemRequest(
                    request_id="spend-1", customer=by_account("A-1"), points=200, receipt_total_minor=10**9,
                    mode=processing_pb2.REDEEM_MODE_IMMEDIATE,
                )
            )

        assert snapshot(kassa, "A-1") == before
        assert balance(kassa, "A-1").available_points == 900
