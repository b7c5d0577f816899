"""Two-phase redemption: a hold reserves points, a later Accrue captures it, Rollback voids it,
and it expires by itself after hold_ttl_s."""

from __future__ import annotations

import grpc

from kassa.v1 import processing_pb2
from tests.server.helpers import (
    HOLD_TTL_S, accrue, balance, earn, line, open_account, receipt, redeem, refused, rollback, snapshot,
)

CHECKOUT = receipt(line(1, 2_000, category="grocery/bakery"), receipt_no="R-2")  # 20.00, earns 100


def account_with_hold(kassa, points=1_000, held=300):
    """An account with `points` and a live hold of `held` of them; returns the hold's reply."""
    open_account(kassa, "A-1")
    earn(kassa, "A-1", points, request_id="buy-1")
    return redeem(kassa, "A-1", held, request_id="hold-1", receipt_total_minor=1_000, hold=True)


class TestHoldReserves:
    def test_hold_moves_points_from_available_to_held(self, kassa):
        hold = account_with_hold(kassa)

        assert (hold.held_points, hold.redeemed_points) == (300, 0)
        assert hold.hold_expires_at.ToMilliseconds() == kassa.clock.now_ms + HOLD_TTL_S * 1000
        now = balance(kassa, "A-1")
        assert (now.active_points, now.held_points, now.available_points) == (1_000, 300, 700)

    def test_held_points_cannot_be_redeemed_again(self, kassa):
        account_with_hold(kassa)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 701, request_id="spend-1")


class TestCapture:
    def test_accrue_captures_the_hold(self, kassa):
        hold = account_with_hold(kassa)

        reply = accrue(kassa, "A-1", CHECKOUT, request_id="buy-2", capture_hold_ids=[hold.transaction_id])

        assert reply.captured_points == 300
        earned = reply.calculation.earned_points
        assert earned == 100
        after = balance(kassa, "A-1")
        assert after.held_points == 0
        assert after.active_points == 1_000 - 300 + earned
        assert after.available_points == after.active_points

    def test_a_captured_hold_cannot_be_captured_twice(self, kassa):
        hold = account_with_hold(kassa)
        accrue(kassa, "A-1", CHECKOUT, request_id="buy-2", capture_hold_ids=[hold.transaction_id])
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_ACTIVE"):
            accrue(kassa, "A-1", CHECKOUT, request_id="buy-3", capture_hold_ids=[hold.transaction_id])
        assert snapshot(kassa, "A-1") == before


class TestVoid:
    def test_rollback_of_the_hold_voids_it_and_restores_available(self, kassa):
        hold = account_with_hold(kassa)

        reply = rollback(kassa, "void-1", transaction_id=hold.transaction_id)

        assert reply.kind == processing_pb2.ROLLBACK_KIND_VOID_HOLD
        assert reply.reversed_transaction_id == hold.transaction_id
        assert reply.restored_points == 300
        assert reply.clawed_back_points == 0
        after = balance(kassa, "A-1")
        assert (after.active_points, after.held_points, after.available_points) == (1_000, 0, 1_000)

    def test_a_voided_hold_cannot_be_captured(self, kassa):
        hold = account_with_hold(kassa)
        rollback(kassa, "void-1", transaction_id=hold.transaction_id)

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_ACTIVE"):
            accrue(kassa, "A-1", CHECKOUT, request_id="buy-2", capture_hold_ids=[hold.transaction_id])
        assert balance(kassa, "A-1").available_points == 1_000


class TestExpiry:
    def test_hold_lapses_after_its_ttl_without_any_sweep(self, kassa):
        account_with_hold(kassa)

        kassa.clock.advance(seconds=HOLD_TTL_S - 1)
        assert balance(kassa, "A-1").held_points == 300

        kassa.clock.advance(seconds=2)
        after = balance(kassa, "A-1")
        assert (after.active_points, after.held_points, after.available_points) == (1_000, 0, 1_000)

    def test_capturing_an_expired_hold_is_refused_and_changes_nothing(self, kassa):
        hold = account_with_hold(kassa)
        kassa.clock.advance(seconds=HOLD_TTL_S + 1)
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED"):
            accrue(kassa, "A-1", CHECKOUT, request_id="buy-2", capture_hold_ids=[hold.transaction_id])

        assert snapshot(kassa, "A-1") == before
        after = balance(kassa, "A-1")
        assert (after.active_points, after.held_points, after.available_points) == (1_000, 0, 1_000)
