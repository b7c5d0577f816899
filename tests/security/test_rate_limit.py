"""Per-key rate limits: a token bucket per API key; one terminal's burst does not slow another."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest

from kassa.v1 import accounts_pb2, accounts_pb2_grpc, processing_pb2, processing_pb2_grpc
from tests.server.helpers import by_account, line, receipt

SLOW_KEY = "k-slow-terminal-91c4"
FAST_KEY = "k-fast-terminal-3e07"
ADMIN_KEY = "k-rate-admin-55d2"
RATE_PER_S = 5
BURST = 5
CALLS = 30


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{sha256(SLOW_KEY)}"
name = "store-1/pos-slow"
stores = ["store-1"]
rate_per_s = {RATE_PER_S}
burst = {BURST}

[[auth.keys]]
key_sha256 = "{sha256(FAST_KEY)}"
name = "store-1/pos-fast"
stores = ["store-1"]

[[auth.keys]]
key_sha256 = "{sha256(ADMIN_KEY)}"
name = "ops/rate"
admin = true
"""


def get_balance(channel, key: str, account_id: str = "A-1") -> grpc.StatusCode:
    """One GetBalance call; its status code."""
    stub = accounts_pb2_grpc.AccountsStub(channel)
    try:
        stub.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account(account_id)),
                        metadata=(("x-api-key", key),), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def server(start_kassa):
    kassa = start_kassa(config_text=CONFIG)
    with grpc.insecure_channel(kassa.address) as channel:
        accounts_pb2_grpc.AccountsStub(channel).CreateAccount(
            accounts_pb2.CreateAccountRequest(request_id="create/A-1", account_id="A-1"),
            metadata=(("x-api-key", ADMIN_KEY),))
    return kassa


def test_a_burst_past_the_bucket_is_refused_and_another_key_is_unaffected(server):
    slow_codes, fast_codes = [], []
    start = threading.Barrier(2, timeout=20)

    def burst(key, codes):
        with grpc.insecure_channel(server.address) as channel:
            get_balance(channel, key)  # connect first, outside the timed burst
            start.wait()
            for _ in range(CALLS):
                codes.append(get_balance(channel, key))

    # The slow key's warm-up call takes one token from its bucket of BURST.
    began = time.monotonic()
    fast = threading.Thread(target=burst, args=(FAST_KEY, fast_codes))
    fast.start()
    burst(SLOW_KEY, slow_codes)
    fast.join(30)
    elapsed_s = time.monotonic() - began

    assert fast_codes == [grpc.StatusCode.OK] * CALLS
    assert set(slow_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    ok = slow_codes.count(grpc.StatusCode.OK)
    refilled = int(elapsed_s * RATE_PER_S) + 1
    assert BURST - 1 <= ok <= BURST - 1 + refilled, (ok, elapsed_s)
    assert slow_codes[: BURST - 1] == [grpc.StatusCode.OK] * (BURST - 1)
    assert slow_codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= CALLS - BURST - refilled


def test_the_bucket_refills_at_the_rate(server):
    with grpc.insecure_channel(server.address) as channel:
        codes = [get_balance(channel, SLOW_KEY) for _ in range(BURST + 10)]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        stub = accounts_pb2_grpc.AccountsStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account("A-1")),
                            metadata=(("x-api-key", SLOW_KEY),))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in caught.value.details()

        time.sleep(BURST / RATE_PER_S + 0.1)  # a full bucket again
        assert [get_balance(channel, SLOW_KEY) for _ in range(BURST)] == [grpc.StatusCode.OK] * BURST


def test_a_rate_limited_purchase_changes_nothing(server):
    with grpc.insecure_channel(server.address) as channel:
        processing = processing_pb2_grpc.ProcessingStub(channel)
        accounts = accounts_pb2_grpc.AccountsStub(channel)
        request = processing_pb2.AccrueRequest(
            request_id="rl/buy", customer=by_account("A-1"), receipt=receipt(line(1, 10_000), receipt_no="rl/buy"))
        while get_balance(channel, SLOW_KEY) == grpc.StatusCode.OK:  # empty the bucket
            pass
        with pytest.raises(grpc.RpcError) as caught:
            processing.Accrue(request, metadata=(("x-api-key", SLOW_KEY),))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        admin = (("x-api-key", ADMIN_KEY),)
        page = accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(customer=by_account("A-1")), metadata=admin)
        assert "rl/buy" not in {t.request_id for t in page.transactions}
        assert accounts.GetBalance(
            accounts_pb2.GetBalanceRequest(customer=by_account("A-1")), metadata=admin).balance.active_points == 0

        time.sleep(1.1 / RATE_PER_S + 0.1)  # a token back: the retry is a first call, not a replayed refusal
        reply = processing.Accrue(request, metadata=(("x-api-key", SLOW_KEY),))
        assert reply.calculation.earned_points == 500
