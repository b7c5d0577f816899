"""Double spend (DESIGN §4.5): 16 clients spend the same points at the same instant.

Each client has its own connection, made before the race; a barrier releases all 16 calls at once,
so they arrive together and share group commits. Every client asks the same amount, so exactly
floor(balance / amount) of them can be served whatever the order: more would be a double spend,
fewer a lost one. The rest are refused FAILED_PRECONDITION (INSUFFICIENT_POINTS). Then the
balance is exactly what the served ones leave and `kassa verify` exits 0.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from kassa.v1 import common_pb2, processing_pb2
from tests.reliability import (
    CALL_TIMEOUT_S, Barrier, assert_verifies, fresh_channel, no_earn_purchase, processing_stub,
    purchase, spend,
)
from tests.server.helpers import REASON_KEY, balance, open_account, rollback

CLIENTS = 16
BALANCE = 1_000
ASK = 150  # 16 x 150 = 2,400 asked of 1,000: exactly 6 can be served
ROUNDS = 3


def race(server, calls) -> list:
    """Run `calls[i](stub)` in CLIENTS threads released together; each result is a reply or an RpcError."""
    results = [None] * len(calls)
    barrier = Barrier(len(calls))

    def client(index):
        with fresh_channel(server) as channel:
            stub = processing_stub(channel)
            barrier.wait()
            try:
                results[index] = calls[index](stub)
            except (grpc.RpcError, BatchRefusal) as error:
                results[index] = error

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S * 2)
        assert not thread.is_alive()
    assert all(result is not None for result in results), results
    return results


def split(results):
    served = [result for result in results if not isinstance(result, grpc.RpcError)]
    refused = [result for result in results if isinstance(result, grpc.RpcError)]
    for error in refused:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, f"{error.code().name}: {error.details()}"
        assert dict(error.trailing_metadata() or ()).get(REASON_KEY) == "INSUFFICIENT_POINTS", error.details()
    return served, refused


@pytest.fixture
def funded(kassa):
    def fund(account_id: str):
        open_account(kassa, account_id)
        kassa.processing.Accrue(purchase(account_id, f"fund/{account_id}", BALANCE), timeout=CALL_TIMEOUT_S)
        assert balance(kassa, account_id).available_points == BALANCE
        return account_id

    return fund


class TestConcurrentRedeem:
    @pytest.mark.parametrize("round_no", range(ROUNDS))
    def test_sixteen_redemptions_of_one_balance_at_once_never_overspend(self, kassa, funded, round_no):
        account_id = funded(f"DS-{round_no}")
        calls = [
            (lambda stub, n=n: stub.Redeem(spend(account_id, f"race/{round_no}/{n}", ASK), timeout=CALL_TIMEOUT_S))
            for n in range(CLIENTS)
        ]

        served, refused = split(race(kassa, calls))

        assert sum(reply.redeemed_points for reply in served) <= BALANCE
        assert len(served) == BALANCE // ASK, f"{len(served)} of {CLIENTS} served, {len(refused)} refused"
        now = balance(kassa, account_id)
        assert now.available_points == now.active_points == BALANCE - ASK * len(served)
        assert_verifies(kassa)


class TestConcurrentHolds:
    @pytest.mark.parametrize("round_no", range(ROUNDS))
    def test_sixteen_holds_on_one_balance_at_once_never_reserve_more_than_it_has(self, kassa, funded, round_no):
        account_id = funded(f"DH-{round_no}")
        calls = [
            (lambda stub, n=n: stub.Redeem(spend(account_id, f"hold/{round_no}/{n}", ASK, hold=True),
                                           timeout=CALL_TIMEOUT_S))
            for n in range(CLIENTS)
        ]

        served, refused = split(race(kassa, calls))

        assert sum(reply.held_points for reply in served) <= BALANCE
        assert len(served) == BALANCE // ASK, f"{len(served)} of {CLIENTS} held, {len(refused)} refused"
        now = balance(kassa, account_id)
        assert now.held_points == ASK * len(served)
        assert now.available_points == BALANCE - ASK * len(served)
        assert_verifies(kassa)

        # voiding every hold gives back exactly what they reserved
        for reply in served:
            rollback(kassa, f"void/{reply.transaction_id}", transaction_id=reply.transaction_id)
        assert balance(kassa, account_id).available_points == BALANCE
        assert_verifies(kassa)


class TestConcurrentMixedSpending:
    def test_redeem_hold_pay_with_points_and_batches_at_once_never_overspend(self, kassa, funded):
        account_id = funded("DM-1")
        kinds = ["redeem", "hold", "pay", "batch"]

        def call(stub, n):
            request_id = f"mixed/{n}"
            kind = kinds[n % len(kinds)]
            if kind == "redeem":
                return stub.Redeem(spend(account_id, request_id, ASK), timeout=CALL_TIMEOUT_S)
            if kind == "hold":
                return stub.Redeem(spend(account_id, request_id, ASK, hold=True), timeout=CALL_TIMEOUT_S)
            if kind == "pay":
                return stub.Accrue(no_earn_purchase(account_id, request_id, ASK), timeout=CALL_TIMEOUT_S)
            reply = stub.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=[
                processing_pb2.Operation(redeem=spend(account_id, request_id, ASK)),
            ]), timeout=CALL_TIMEOUT_S)
            result = reply.results[0]
            if result.code != common_pb2.CODE_OK:
                raise BatchRefusal(result)
            return result.redeem

        results = race(kassa, [(lambda stub, n=n: call(stub, n)) for n in range(CLIENTS)])

        served = []
        for result in results:
            if isinstance(result, BatchRefusal):
                assert result.result.code == common_pb2.CODE_FAILED_PRECONDITION, result.result
                assert result.result.reason == common_pb2.REASON_INSUFFICIENT_POINTS, result.result
            elif isinstance(result, grpc.RpcError):
                split([result])
            else:
                served.append(result)
        assert len(served) == BALANCE // ASK, f"{len(served)} of {CLIENTS} served"
        now = balance(kassa, account_id)
        assert now.available_points == BALANCE - ASK * len(served)
        assert now.active_points - now.held_points == now.available_points
        assert_verifies(kassa)


class BatchRefusal(Exception):
    def __init__(self, result):
        super().__init__(result.message)
        self.result = result
