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


# 10.00 in two lines: the sample program's max_redeem_share_bps = 5000 lets points pay at most 500 of it.
TEN_IN_TWO_LINES = receipt(line(1, 600), line(2, 400), receipt_no="R-3")
SHARE_OF_TEN = 500


class TestCaptureWithinTheRedeemShare:
    """Captured holds pay for the receipt as redeemed points do: both together stay within the
    receipt's redeemable share, and the calculation shows them per line and in total."""

    def test_a_capture_over_the_share_is_refused_as_a_redemption_over_it_is(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 5_000, request_id="buy-1")
        hold = redeem(kassa, "A-1", 3_000, request_id="hold-1", hold=True)  # made for a big receipt
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "REDEEM_SHARE_EXCEEDED") as capture:
            accrue(kassa, "A-1", TEN_IN_TWO_LINES, request_id="buy-2", capture_hold_ids=[hold.transaction_id])
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "REDEEM_SHARE_EXCEEDED") as redemption:
            accrue(kassa, "A-1", TEN_IN_TWO_LINES, request_id="buy-3", redeem_points=SHARE_OF_TEN + 1)

        assert f"at most {SHARE_OF_TEN} points" in capture.details
        assert f"at most {SHARE_OF_TEN} points" in redemption.details
        assert snapshot(kassa, "A-1") == before
        assert balance(kassa, "A-1").held_points == 3_000  # the hold is still live

    def test_redeemed_and_captured_points_together_are_held_to_the_share(self, kassa):
        hold = account_with_hold(kassa, points=1_000, held=300)
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "REDEEM_SHARE_EXCEEDED") as both:
            accrue(kassa, "A-1", TEN_IN_TWO_LINES, request_id="buy-2", redeem_points=201,
                   capture_hold_ids=[hold.transaction_id])

        assert "asked 501" in both.details
        assert snapshot(kassa, "A-1") == before

    def test_calculation_shows_captured_points_per_line_and_in_total(self, kassa):
        hold = account_with_hold(kassa, points=1_000, held=300)

        reply = accrue(kassa, "A-1", TEN_IN_TWO_LINES, request_id="buy-2", redeem_points=200,
                       capture_hold_ids=[hold.transaction_id])

        calculation = reply.calculation
        assert (calculation.redeemed_points, calculation.captured_points) == (200, 300)
        assert reply.captured_points == 300
        assert calculation.redeemable_points == SHARE_OF_TEN  # redeemed and captured together
        # 200 redeemed by what each line pays (600 : 400), then 300 captured by what is left (480 : 320)
        assert [line.redeemed_points for line in calculation.lines] == [120, 80]
        assert [line.captured_points for line in calculation.lines] == [180, 120]
        assert [line.due_minor for line in calculation.lines] == [300, 200]
        assert calculation.due_minor == 1_000 - 200 - 300
        assert balance(kassa, "A-1").active_points == 1_000 - 500 + calculation.earned_points

    def test_returning_a_line_gives_back_the_points_it_shows(self, kassa):
        hold = account_with_hold(kassa, points=1_000, held=300)
        bought = accrue(kassa, "A-1", TEN_IN_TWO_LINES, request_id="buy-2", redeem_points=200,
                        capture_hold_ids=[hold.transaction_id])

        back = rollback(kassa, "return-1", transaction_id=bought.transaction_id, returns=[(1, 1_000)])

        first = bought.calculation.lines[0]
        assert back.restored_points == first.redeemed_points + first.captured_points
        assert back.clawed_back_points == first.earned_points


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
