"""Rollback: partial returns by line and quantity, full cancels, restoring redeemed points, and
clawback of points that were already spent under the program's clawback policy."""

from __future__ import annotations

import shutil

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2
from tests.kassa_harness import REPO
from tests.server.helpers import (
    accrue, balance, earn, line, open_account, receipt, redeem, refused, rollback, snapshot, statement,
)

# Line 2 is three units of 333.33: 999.99, earning floor(5 % of it) = 4,999 points.
THREE_LINES = receipt(
    line(1, 10_000, category="grocery/bakery"),
    line(2, 33_333, qty_milli=3_000, category="grocery/bakery"),
    line(3, 20_000, category="flowers/tulips"),
    receipt_no="R-9",
)
LINE_2_EARNED = 4_999


def purchase(kassa, request_id="store-1/term-1/R-9"):
    open_account(kassa, "A-1")
    reply = accrue(kassa, "A-1", THREE_LINES, request_id=request_id)
    earned_by_line = {result.line_no: result.earned_points for result in reply.calculation.lines}
    assert earned_by_line[2] == LINE_2_EARNED
    return reply


def given_back_after(returned_qty_milli: int, bought_qty_milli: int = 3_000, earned: int = LINE_2_EARNED) -> int:
    """What a line has given back in total after `returned_qty_milli` of it came back."""
    return earned * returned_qty_milli // bought_qty_milli


class TestRollbackBeforeItsOriginal:
    def test_it_answers_its_own_kind_with_no_ids_and_a_retry_the_same(self, kassa):
        open_account(kassa, "A-1")

        pending = rollback(kassa, "cancel-early", original_request_id="store-1/term-1/R-not-yet")

        assert pending.kind == processing_pb2.ROLLBACK_KIND_PENDING_ORIGINAL
        assert (pending.transaction_id, pending.reversed_transaction_id, pending.account_id) == (0, 0, "")
        again = rollback(kassa, "cancel-early", original_request_id="store-1/term-1/R-not-yet")
        assert again.SerializeToString(deterministic=True) == pending.SerializeToString(deterministic=True)
        # A rollback of what has arrived still says what it did.
        earn(kassa, "A-1", 100, request_id="buy-1")
        assert rollback(kassa, "cancel-1", original_request_id="buy-1").kind == processing_pb2.ROLLBACK_KIND_CANCEL


class TestPartialReturn:
    def test_returning_one_of_three_units_claws_back_a_third_of_the_lines_points(self, kassa):
        bought = purchase(kassa)
        total = bought.calculation.earned_points

        reply = rollback(kassa, "return-1", transaction_id=bought.transaction_id, returns=[(2, 1_000)])

        assert reply.kind == processing_pb2.ROLLBACK_KIND_RETURN
        assert reply.reversed_transaction_id == bought.transaction_id
        assert reply.clawed_back_points == given_back_after(1_000) == 1_666
        assert (reply.restored_points, reply.debt_points) == (0, 0)
        assert balance(kassa, "A-1").active_points == total - 1_666

        newest = statement(kassa, "A-1")[0]
        assert newest.kind == accounts_pb2.TRANSACTION_KIND_ROLLBACK
        assert newest.transaction_id == reply.transaction_id
        assert newest.reverses_transaction_id == bought.transaction_id
        assert newest.clawed_back_points == 1_666

    def test_returning_all_units_in_steps_gives_back_exactly_what_the_line_earned(self, kassa):
        bought = purchase(kassa)
        total = bought.calculation.earned_points

        steps = [
            rollback(kassa, f"return-{step}", transaction_id=bought.transaction_id, returns=[(2, 1_000)])
            for step in range(3)
        ]

        clawed = [step.clawed_back_points for step in steps]
        assert clawed == [1_666, 1_666, 1_667]
        assert clawed == [given_back_after(1_000 * (n + 1)) - given_back_after(1_000 * n) for n in range(3)]
        assert sum(clawed) == LINE_2_EARNED
        assert balance(kassa, "A-1").active_points == total - LINE_2_EARNED  # lines 1 and 3 keep theirs

    def test_return_beyond_the_purchase_is_refused_and_changes_nothing(self, kassa):
        bought = purchase(kassa)
        rollback(kassa, "return-1", transaction_id=bought.transaction_id, returns=[(2, 1_000)])
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_PURCHASE"):
            rollback(kassa, "return-2", transaction_id=bought.transaction_id, returns=[(2, 2_001)])

        assert snapshot(kassa, "A-1") == before
        rest = rollback(kassa, "return-3", transaction_id=bought.transaction_id, returns=[(2, 2_000)])
        assert rest.clawed_back_points == LINE_2_EARNED - 1_666


ONE_LINE = receipt(line(1, 33_333, qty_milli=3_000, category="grocery/bakery"), receipt_no="R-1")


def return_line(request_id: str, transaction_id: int, line_no: int, qty_milli: int) -> processing_pb2.Operation:
    return processing_pb2.Operation(rollback=processing_pb2.RollbackRequest(
        request_id=request_id, transaction_id=transaction_id,
        return_lines=[processing_pb2.ReturnLine(line_no=line_no, qty_milli=qty_milli)]))


class TestOverReturnOneReason:
    """Returning more of a line than is left of it is RETURN_EXCEEDS_PURCHASE, whether the receipt
    had one line or several and whether the rest went back by returns or by a cancel;
    ALREADY_ROLLED_BACK answers only a cancel of what is already rolled back in full."""

    @pytest.mark.parametrize("the_receipt", [ONE_LINE, THREE_LINES], ids=["one line", "three lines"])
    def test_returning_a_returned_line_again_exceeds_the_purchase(self, kassa, the_receipt):
        open_account(kassa, "A-1")
        bought = accrue(kassa, "A-1", the_receipt, request_id="buy-1")
        for item in the_receipt.lines:  # every line back in full, one return each
            rollback(kassa, f"return-{item.line_no}", transaction_id=bought.transaction_id,
                     returns=[(item.line_no, item.qty_milli)])
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_PURCHASE") as over:
            rollback(kassa, "return-again", transaction_id=bought.transaction_id, returns=[(1, 1_000)])
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ROLLED_BACK"):
            rollback(kassa, "cancel-after", transaction_id=bought.transaction_id)

        assert "line 1 bought" in over.details
        assert snapshot(kassa, "A-1") == before

    def test_returning_a_line_of_a_cancelled_purchase_exceeds_the_purchase(self, kassa):
        open_account(kassa, "A-1")
        bought = accrue(kassa, "A-1", ONE_LINE, request_id="buy-1")
        rollback(kassa, "cancel-1", transaction_id=bought.transaction_id)

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_PURCHASE"):
            rollback(kassa, "return-1", transaction_id=bought.transaction_id, returns=[(1, 1_000)])

    def test_in_a_batch_an_over_return_of_the_only_line_exceeds_the_purchase(self, kassa):
        open_account(kassa, "A-1")
        bought = accrue(kassa, "A-1", ONE_LINE, request_id="buy-1")
        operations = [
            return_line("return-1", bought.transaction_id, 1, 2_000),   # OK
            return_line("return-2", bought.transaction_id, 1, 1_001),   # 1 unit left: over it
            return_line("return-3", bought.transaction_id, 1, 1_000),   # the rest: OK
            return_line("return-4", bought.transaction_id, 1, 1),       # nothing left
            processing_pb2.Operation(rollback=processing_pb2.RollbackRequest(
                request_id="cancel-1", transaction_id=bought.transaction_id)),  # all gone already
        ]

        results = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results

        reasons = [common_pb2.Reason.Name(result.reason) for result in results]
        assert reasons == ["REASON_NONE", "REASON_RETURN_EXCEEDS_PURCHASE", "REASON_NONE",
                           "REASON_RETURN_EXCEEDS_PURCHASE", "REASON_ALREADY_ROLLED_BACK"]
        assert results[2].rollback.kind == processing_pb2.ROLLBACK_KIND_RETURN


class TestCancel:
    def test_cancel_takes_back_every_earned_point(self, kassa):
        bought = purchase(kassa)

        reply = rollback(kassa, "cancel-1", transaction_id=bought.transaction_id)

        assert reply.kind == processing_pb2.ROLLBACK_KIND_CANCEL
        assert reply.clawed_back_points == bought.calculation.earned_points
        assert balance(kassa, "A-1").active_points == 0

    def test_second_cancel_is_refused_as_already_rolled_back(self, kassa):
        bought = purchase(kassa)
        rollback(kassa, "cancel-1", transaction_id=bought.transaction_id)
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ROLLED_BACK"):
            rollback(kassa, "cancel-2", transaction_id=bought.transaction_id)

        assert snapshot(kassa, "A-1") == before

    def test_cancel_by_original_request_id(self, kassa):
        bought = purchase(kassa, request_id="store-1/term-1/R-9")

        reply = rollback(kassa, "cancel-1", original_request_id="store-1/term-1/R-9")

        assert reply.reversed_transaction_id == bought.transaction_id
        assert reply.clawed_back_points == bought.calculation.earned_points
        assert balance(kassa, "A-1").active_points == 0

    def test_cancel_gives_redeemed_points_back_with_their_original_expiry(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        kassa.clock.advance(days=10)
        before = balance(kassa, "A-1")
        assert before.next_expiry_points == 1_000

        paid = accrue(kassa, "A-1", receipt(line(1, 2_000), receipt_no="R-2"), request_id="buy-2", redeem_points=400)
        assert paid.calculation.redeemed_points == 400
        assert balance(kassa, "A-1").next_expiry_points == 600  # the older lot paid

        reply = rollback(kassa, "cancel-2", transaction_id=paid.transaction_id)

        assert reply.restored_points == 400
        assert reply.clawed_back_points == paid.calculation.earned_points
        after = balance(kassa, "A-1")
        assert after.next_expiry_at == before.next_expiry_at
        assert after == before


def spend_everything_then_cancel(server):
    """Earn 1,000, spend all of it, then cancel the purchase that earned it."""
    open_account(server, "A-1")
    bought = earn(server, "A-1", 1_000, request_id="buy-1")
    redeem(server, "A-1", 1_000, request_id="spend-1")
    return rollback(server, "cancel-1", transaction_id=bought.transaction_id)


@pytest.fixture
def clamp_rules(tmp_path):
    rules = tmp_path / "rules-clamp"
    shutil.copytree(REPO / "config" / "rules", rules)
    program = rules / "program.toml"
    text = program.read_text()
    assert 'clawback = "negative"' in text
    program.write_text(text.replace('clawback = "negative"', 'clawback = "clamp"'))
    return rules


class TestClawbackOfSpentPoints:
    def test_default_policy_leaves_the_balance_negative(self, kassa):
        reply = spend_everything_then_cancel(kassa)

        assert reply.clawed_back_points == 1_000
        assert reply.debt_points == 1_000
        after = balance(kassa, "A-1")
        assert after.debt_points == 1_000
        assert after.active_points == -1_000
        assert after.available_points < 0

    def test_customer_in_debt_still_earns_and_the_new_points_pay_the_debt_down(self, kassa):
        spend_everything_then_cancel(kassa)

        reply = accrue(kassa, "A-1", receipt(line(1, 8_000), receipt_no="R-2"), request_id="buy-2")

        assert reply.calculation.earned_points == 400
        after = balance(kassa, "A-1")
        assert (after.active_points, after.available_points) == (-600, -600)

    def test_clamp_policy_stops_at_zero(self, start_kassa, clamp_rules):
        server = start_kassa(rules=clamp_rules)

        reply = spend_everything_then_cancel(server)

        assert reply.debt_points == 0
        after = balance(server, "A-1")
        assert (after.active_points, after.available_points, after.debt_points) == (0, 0, 0)
