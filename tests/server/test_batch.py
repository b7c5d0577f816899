"""ProcessBatch: a store gateway sends many operations in one call and gets one result per
operation, in order; a bad or refused operation changes nothing and does not fail the others."""

from __future__ import annotations

import re

import grpc

from kassa.v1 import common_pb2, processing_pb2
from tests.server.helpers import (
    accrue, balance, by_account, earn, line, open_account, receipt, refused, snapshot,
)
from tests.server.stream_helpers import (
    earned_by, ledger_transactions, open_accounts, points_statement, purchase_request,
)

Op = processing_pb2.Operation


def buy(request_id: str, price_minor: int, account_id: str = "A-1") -> Op:
    return Op(accrue=purchase_request(request_id, account_id, price_minor))


def spend(request_id: str, points: int, account_id: str = "A-1") -> Op:
    return Op(redeem=processing_pb2.RedeemRequest(
        request_id=request_id, customer=by_account(account_id), points=points, receipt_total_minor=10**9,
        mode=processing_pb2.REDEEM_MODE_IMMEDIATE))


def cancel(request_id: str, **target) -> Op:
    return Op(rollback=processing_pb2.RollbackRequest(request_id=request_id, **target))


def negative_line_purchase(request_id: str) -> Op:
    bad = common_pb2.Line(line_no=1, sku="SKU-1", category="grocery", qty_milli=1_000, price_minor=500, amount_minor=-500)
    return Op(accrue=processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account("A-1"), receipt=receipt(bad, receipt_no="R-BAD")))


def process(server, operations) -> list[processing_pb2.OperationResult]:
    return list(server.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results)


def serialized(message) -> bytes:
    return message.SerializeToString(deterministic=True)


class TestMixedBatch:
    def test_one_result_per_operation_in_order_and_failures_change_nothing(self, kassa):
        open_account(kassa, "A-1")
        seed = earn(kassa, "A-1", 1_000, request_id="seed-buy")  # a purchase of 200.00
        to_cancel = accrue(kassa, "A-1", receipt(line(1, 4_000), receipt_no="R-K"), request_id="seed-to-cancel")
        assert to_cancel.calculation.earned_points == 200
        seed_request = processing_pb2.AccrueRequest(
            request_id="seed-buy", customer=by_account("A-1"), receipt=receipt(line(1, 20_000), receipt_no="seed-buy"))
        operations = [
            buy("b-buy-1", 10_000),                                   # 0  OK, 500 points
            spend("b-spend-1", 300),                                  # 1  OK
            spend("b-spend-2", 100_000),                              # 2  refused: not enough points
            negative_line_purchase("b-buy-bad"),                      # 3  invalid
            buy("b-buy-nobody", 1_000, account_id="A-NOBODY"),        # 4  unknown account
            buy("b-buy-1", 10_000),                                   # 5  duplicate of 0: its result again
            buy("b-buy-1", 10_001),                                   # 6  0's request_id, another payload
            Op(accrue=seed_request),                                  # 7  duplicate of an earlier call
            buy("seed-buy", 20_001),                                  # 8  its request_id, another payload
            cancel("b-cancel-1", original_request_id="seed-to-cancel"),  # 9  OK, claws back 200
            Op(),                                                     # 10 invalid: no operation
            spend("", 10),                                            # 11 invalid: no request_id
            cancel("b-cancel-2", transaction_id=999_999),             # 12 unknown transaction
            cancel("b-cancel-3", original_request_id="seed-to-cancel"),  # 13 refused: rolled back by 9
            buy("b-buy-2", 6_000),                                    # 14 OK, 300 points
        ]

        results = process(kassa, operations)

        codes = [common_pb2.Code.Name(result.code) for result in results]
        assert codes == [
            "CODE_OK", "CODE_OK", "CODE_FAILED_PRECONDITION", "CODE_INVALID_ARGUMENT", "CODE_NOT_FOUND",
            "CODE_OK", "CODE_ALREADY_EXISTS", "CODE_OK", "CODE_ALREADY_EXISTS", "CODE_OK",
            "CODE_INVALID_ARGUMENT", "CODE_INVALID_ARGUMENT", "CODE_NOT_FOUND", "CODE_FAILED_PRECONDITION", "CODE_OK",
        ]
        # Each result answers its own operation, and each sees the ones before it.
        assert results[0].accrue.calculation.earned_points == 500
        assert results[0].accrue.balance.active_points == 1_200 + 500
        assert results[1].redeem.redeemed_points == 300
        assert results[1].redeem.balance.available_points == 1_200 + 500 - 300
        assert results[2].reason == common_pb2.REASON_INSUFFICIENT_POINTS
        assert serialized(results[5]) == serialized(results[0])
        assert "b-buy-1" in results[6].message
        assert serialized(results[7].accrue) == serialized(seed)
        assert "seed-buy" in results[8].message
        assert results[9].rollback.kind == processing_pb2.ROLLBACK_KIND_CANCEL
        assert results[9].rollback.reversed_transaction_id == to_cancel.transaction_id
        assert results[9].rollback.clawed_back_points == 200
        assert results[13].reason == common_pb2.REASON_ALREADY_ROLLED_BACK
        assert results[14].accrue.calculation.earned_points == 300
        assert results[14].accrue.balance.active_points == 1_200 + 500 - 300 - 200 + 300
        for index in (2, 3, 4, 6, 8, 10, 11, 12, 13):
            assert results[index].WhichOneof("result") is None, index
            assert results[index].message, index
        assert "receipt.lines[0].amount_minor" in results[3].message, results[3].message
        assert results[10].message.startswith("operations[10]:"), results[10].message
        assert results[11].message.startswith("operations[11].redeem.request_id:"), results[11].message
        assert "A-NOBODY" in results[4].message

        entries = points_statement(kassa, "A-1")
        assert sorted(t.request_id for t in entries) == sorted(
            ["seed-buy", "seed-to-cancel", "b-buy-1", "b-spend-1", "b-cancel-1", "b-buy-2"])
        by_request = {t.request_id: t.transaction_id for t in entries}
        assert by_request["b-buy-1"] == results[0].accrue.transaction_id
        assert by_request["b-spend-1"] == results[1].redeem.transaction_id
        assert by_request["b-cancel-1"] == results[9].rollback.transaction_id
        assert by_request["b-buy-2"] == results[14].accrue.transaction_id
        assert balance(kassa, "A-1").active_points == 1_500

    def test_a_malformed_operation_is_named_by_its_position_and_field(self, kassa):
        open_account(kassa, "A-1")
        operations = [
            buy("n-0", 2_000),
            negative_line_purchase("n-1"),
            Op(redeem=processing_pb2.RedeemRequest(
                request_id="n-2", customer=by_account("A-1"), points=-5, receipt_total_minor=1_000,
                mode=processing_pb2.REDEEM_MODE_IMMEDIATE)),
            cancel("n-3"),  # no target
            Op(accrue=processing_pb2.AccrueRequest(
                request_id="n-4", customer=common_pb2.Customer(), receipt=receipt(line(1, 1_000)))),
            buy("", 2_000),
        ]

        results = process(kassa, operations)

        assert [result.code for result in results] == [common_pb2.CODE_OK] + [common_pb2.CODE_INVALID_ARGUMENT] * 5
        fields = [result.message.split(":")[0] for result in results[1:]]
        assert fields == [
            "operations[1].accrue.receipt.lines[0].amount_minor",
            "operations[2].redeem.points",
            "operations[3].rollback.target",
            "operations[4].accrue.customer",
            "operations[5].accrue.request_id",
        ], [result.message for result in results[1:]]
        assert [t.request_id for t in points_statement(kassa, "A-1")] == ["n-0"]
        assert balance(kassa, "A-1").active_points == 100

    def test_a_retried_batch_returns_the_same_results_and_changes_nothing(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="seed-buy")
        operations = [
            buy("b-buy-1", 10_000), spend("b-spend-1", 300), spend("b-spend-2", 100_000),
            negative_line_purchase("b-buy-bad"), buy("b-buy-nobody", 1_000, account_id="A-NOBODY"),
            cancel("b-cancel-1", original_request_id="b-buy-1"), buy("b-buy-2", 6_000),
        ]
        first = process(kassa, operations)
        before = snapshot(kassa, "A-1")

        again = process(kassa, operations)

        assert [serialized(result) for result in again] == [serialized(result) for result in first]
        assert snapshot(kassa, "A-1") == before
        # The malformed operation left its request_id free for a corrected one.
        fixed = process(kassa, [buy("b-buy-bad", 2_000)])
        assert fixed[0].code == common_pb2.CODE_OK and fixed[0].accrue.calculation.earned_points == 100

    def test_results_follow_the_operations_order_across_accounts(self, kassa):
        accounts = [f"A-{n}" for n in range(8)]
        open_accounts(kassa, accounts)
        prices = [1_000 + 37 * n for n in range(400)]
        owners = [accounts[(n * 5) % len(accounts)] for n in range(400)]

        results = process(kassa, [buy(f"g-{n}", price, owner) for n, (price, owner) in enumerate(zip(prices, owners))])

        assert len(results) == 400
        running = dict.fromkeys(accounts, 0)
        for n, (result, price, owner) in enumerate(zip(results, prices, owners)):
            assert result.code == common_pb2.CODE_OK, (n, result.message)
            assert (result.accrue.account_id, result.accrue.calculation.earned_points) == (owner, earned_by(price)), n
            running[owner] += earned_by(price)
            assert result.accrue.balance.active_points == running[owner], n
        assert [r.accrue.transaction_id for r in results] == sorted(r.accrue.transaction_id for r in results)
        for account_id in accounts:
            assert balance(kassa, account_id).active_points == running[account_id]


class TestBatchSizeLimit:
    def test_a_batch_over_the_limit_is_refused_whole_and_one_at_the_limit_is_served(self, start_kassa):
        server = start_kassa(env={"KASSA_PROCESSING_BATCH_OPERATIONS_MAX": "4"})
        open_account(server, "A-1")
        before = snapshot(server, "A-1")

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            process(server, [buy(f"over-{n}", 2_000) for n in range(5)])

        assert refusal.details.startswith("operations:") and "4" in refusal.details, refusal.details
        assert snapshot(server, "A-1") == before
        results = process(server, [buy(f"over-{n}", 2_000) for n in range(4)])  # the same request_ids are free
        assert [result.code for result in results] == [common_pb2.CODE_OK] * 4
        assert balance(server, "A-1").active_points == 4 * 100


SMALL_MESSAGE_BYTES = 32 * 1024  # server.message_bytes_max of the answer-size tests
FIT = re.compile(r"the first (\d+) fit")


def small_purchases(prefix: str, count: int) -> list[Op]:
    """Purchases of a small request (one bare line) and a larger answer (a calculation and a balance)."""
    return [
        Op(accrue=processing_pb2.AccrueRequest(
            request_id=f"{prefix}-{n:03d}", customer=by_account("A-1"),
            receipt=common_pb2.Receipt(lines=[common_pb2.Line(
                line_no=1, qty_milli=1_000, price_minor=2_000 + n, amount_minor=2_000 + n)])))
        for n in range(count)
    ]


class TestAnswerSize:
    def test_a_batch_whose_answer_could_overflow_is_refused_before_anything_is_committed(self, start_kassa):
        server = start_kassa(env={"KASSA_SERVER_MESSAGE_BYTES_MAX": str(SMALL_MESSAGE_BYTES)})
        open_account(server, "A-1")
        operations = small_purchases("ovf", 400)
        request = processing_pb2.ProcessBatchRequest(operations=operations)
        assert request.ByteSize() < SMALL_MESSAGE_BYTES // 2  # the request itself is taken, its answer is not
        before, transactions_before = snapshot(server, "A-1"), ledger_transactions(server)

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            server.processing.ProcessBatch(request)
        assert refusal.details.startswith("operations:"), refusal.details
        assert "server.message_bytes_max" in refusal.details, refusal.details
        assert "Nothing was committed" in refusal.details, refusal.details
        assert snapshot(server, "A-1") == before
        assert ledger_transactions(server) == transactions_before

        # A retry gets the same refusal, never a commit.
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as again:
            server.processing.ProcessBatch(request)
        assert again.details == refusal.details
        assert snapshot(server, "A-1") == before

        # As many as the refusal says fit are served; the rest in further batches of that size.
        fit = int(FIT.search(refusal.details).group(1))
        assert 0 < fit < len(operations)
        results = []
        for start in range(0, len(operations), fit):
            results += process(server, operations[start:start + fit])
        assert [result.code for result in results] == [common_pb2.CODE_OK] * len(operations)
        assert balance(server, "A-1").active_points == sum(earned_by(2_000 + n) for n in range(len(operations)))

    def test_a_batch_whose_answer_fits_is_served_as_before(self, start_kassa):
        server = start_kassa(env={"KASSA_SERVER_MESSAGE_BYTES_MAX": str(SMALL_MESSAGE_BYTES)})
        open_account(server, "A-1")
        earn(server, "A-1", 1_000, request_id="seed")
        operations = [
            *small_purchases("fits", 5), spend("fits-spend", 100), cancel("fits-cancel", original_request_id="seed"),
        ]

        results = process(server, operations)

        assert [result.code for result in results] == [common_pb2.CODE_OK] * len(operations)
        assert balance(server, "A-1").active_points == sum(earned_by(2_000 + n) for n in range(5)) - 100
