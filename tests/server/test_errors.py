"""Refusals in the gRPC richer error model: a google.rpc.Status in `grpc-status-details-bin`, read
the way a client does, with grpcio-status. ErrorInfo names the reason in the kassa.v1 domain,
BadRequest the field of an INVALID_ARGUMENT, RetryInfo how long to wait where a retry helps; the
business reason stays in the `kassa-reason` trailer for the clients that read it there."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2, processing_pb2_grpc
from tests.server.helpers import REASON_KEY, accrue, by_account, earn, line, open_account, receipt, redeem

DOMAIN = "kassa.v1"
IN_FLIGHT_RETRY_DELAY_MS = 100  # server/errors.py
STREAMS_RETRY_DELAY_MS = 1_000  # server/errors.py
COMMIT_WAIT_US = 500_000  # long enough that a copy sent 100 ms after a request finds it in flight


class Refusal:
    """A refused call as a client sees it: the status and its details, unpacked."""

    def __init__(self, error: grpc.RpcError):
        self.code = error.code()
        self.details = error.details()
        self.trailers = dict(error.trailing_metadata() or ())
        status = rpc_status.from_call(error)  # raises if its code or message differ from the call's
        assert status is not None, f"no grpc-status-details-bin: {self.code.name} {self.details}"
        self.found = {}
        for detail in status.details:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                if detail.Is(kind.DESCRIPTOR):
                    message = kind()
                    detail.Unpack(message)
                    self.found[kind] = message

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo:
        return self.found[error_details_pb2.ErrorInfo]

    @property
    def bad_request(self) -> error_details_pb2.BadRequest | None:
        return self.found.get(error_details_pb2.BadRequest)

    @property
    def retry_delay_ms(self) -> int | None:
        info = self.found.get(error_details_pb2.RetryInfo)
        return None if info is None else info.retry_delay.ToMilliseconds()


def refusal_of(call, *args, **kwargs) -> Refusal:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    return Refusal(caught.value)


def code_of(call, request, **kwargs) -> grpc.StatusCode:
    try:
        call(request, timeout=10, **kwargs)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def negative_amount_purchase(request_id: str) -> processing_pb2.AccrueRequest:
    bad_line = common_pb2.Line(line_no=1, sku="SKU", category="grocery", qty_milli=1_000, price_minor=500,
                               amount_minor=-500)
    return processing_pb2.AccrueRequest(request_id=request_id, customer=by_account("A-1"), receipt=receipt(bad_line))


class TestFieldsAndReasons:
    def test_an_invalid_field_is_named_in_bad_request(self, kassa):
        open_account(kassa, "A-1")
        refusal = refusal_of(kassa.processing.Accrue, negative_amount_purchase("bad/1"))

        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (refusal.error_info.reason, refusal.error_info.domain) == ("INVALID_FIELD", DOMAIN)
        (violation,) = refusal.bad_request.field_violations
        assert violation.field == "receipt.lines[0].amount_minor"
        assert refusal.details == f"{violation.field}: {violation.description}"
        assert refusal.retry_delay_ms is None  # the same request fails the same way
        assert REASON_KEY not in refusal.trailers  # no business reason, as before

    def test_a_business_refusal_names_its_reason_in_error_info_and_the_trailer(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 100, request_id="buy/1")
        refusal = refusal_of(redeem, kassa, "A-1", 500, request_id="spend/1")

        assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal.error_info.reason == "INSUFFICIENT_POINTS"
        assert refusal.error_info.domain == DOMAIN
        assert refusal.trailers[REASON_KEY] == "INSUFFICIENT_POINTS"  # existing clients read it here
        assert refusal.bad_request is None
        assert refusal.retry_delay_ms is None

    def test_refusals_without_a_business_reason_name_their_situation(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 100, request_id="buy/1")
        reused = refusal_of(accrue, kassa, "A-1", receipt(line(1, 4_000)), "buy/1")  # same id, other payload
        missing = refusal_of(kassa.accounts.GetBalance, accounts_pb2.GetBalanceRequest(customer=by_account("A-9")))
        raw_redeem = kassa.channel().unary_unary("/kassa.v1.Processing/Redeem")
        undecodable = refusal_of(raw_redeem, b"\xff\xff\xff")
        too_many = refusal_of(kassa.admin.GeneratePromoCodes, admin_pb2.GeneratePromoCodesRequest(
            request_id="codes/1", campaign_id="x", pattern="X" * 64, count=1_000_000))

        assert (reused.code, reused.error_info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
        assert (missing.code, missing.error_info.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
        assert (undecodable.code, undecodable.error_info.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert undecodable.bad_request is None  # bytes that are no message have no field to name
        assert too_many.error_info.reason == "RESPONSE_TOO_LARGE"
        assert [v.field for v in too_many.bad_request.field_violations] == ["count"]
        assert {r.error_info.domain for r in (reused, missing, undecodable, too_many)} == {DOMAIN}

    def test_a_refused_ruleset_lists_each_problem_against_source_toml(self, kassa):
        broken = '[program]\nid = "x"\n\n[[campaign]]\nid = "c"\nkind = "no-such-kind"\n'
        refusal = refusal_of(kassa.admin.ReloadRules, admin_pb2.ReloadRulesRequest(source_toml=broken))

        assert refusal.error_info.reason == "RULESET_REFUSED"
        violations = refusal.bad_request.field_violations
        assert violations, refusal.details
        assert {v.field for v in violations} == {"source_toml"}


class TestRetryInfo:
    def test_a_copy_of_a_request_in_flight_is_aborted_with_a_retry_delay(self, start_kassa):
        server = start_kassa(env={"KASSA_COMMIT_WAIT_US_MAX": str(COMMIT_WAIT_US)})
        open_account(server, "A-1")
        request = processing_pb2.AccrueRequest(
            request_id="buy/twice", customer=by_account("A-1"), receipt=receipt(line(1, 2_000)))
        first = server.processing.Accrue.future(request, timeout=30)
        time.sleep(0.1)  # the first is waiting for its group commit
        refusal = refusal_of(server.processing.Accrue, request, timeout=30)

        assert refusal.code == grpc.StatusCode.ABORTED
        assert refusal.error_info.reason == "REQUEST_IN_FLIGHT"
        assert refusal.retry_delay_ms == IN_FLIGHT_RETRY_DELAY_MS
        assert first.result().calculation.earned_points == 100
        assert server.processing.Accrue(request, timeout=30) == first.result()  # the retry replays it

    def test_a_stream_past_streams_max_is_told_when_to_retry(self, start_kassa):
        server = start_kassa(env={"KASSA_PROCESSING_STREAMS_MAX": "1"})
        method = server.channel().stream_stream("/kassa.v1.Processing/StreamEvents")  # bytes in and out
        release = threading.Event()

        def held_open():
            yield b""  # an empty EventBatch: acked at once, so the stream is known to be open
            release.wait(30)

        held = method(held_open(), timeout=30)
        try:
            next(held)
            refusal = refusal_of(method, iter([b""]), timeout=10)
        finally:
            release.set()
            held.cancel()

        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.details
        assert refusal.error_info.reason == "STREAMS_EXHAUSTED"
        assert refusal.retry_delay_ms == STREAMS_RETRY_DELAY_MS


SLOW_KEY = "k-errors-slow-5d1e"
TERMINAL_KEY = "k-errors-terminal-0b7a"
RATE_PER_S = 2  # the slow key: a token every 500 ms, one at a time


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{sha256(SLOW_KEY)}"
name = "store-1/pos-slow"
rate_per_s = {RATE_PER_S}
burst = 1

[[auth.keys]]
key_sha256 = "{sha256(TERMINAL_KEY)}"
name = "store-1/pos-1"
stores = ["store-1"]
"""


class TestCallerRefusals:
    def test_a_rate_limited_call_is_told_when_a_token_is_there(self, start_kassa):
        server = start_kassa(config_text=AUTH_CONFIG)
        stub = processing_pb2_grpc.ProcessingStub(server.channel())
        metadata = (("x-api-key", SLOW_KEY),)
        calculate = processing_pb2.CalculateRequest(customer=by_account("A-1"), receipt=receipt(line(1, 2_000)))
        assert code_of(stub.Calculate, calculate, metadata=metadata) != grpc.StatusCode.RESOURCE_EXHAUSTED  # takes the token
        refusal = refusal_of(stub.Calculate, calculate, metadata=metadata, timeout=10)

        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal.error_info.reason == "RATE_LIMITED"
        assert 0 < refusal.retry_delay_ms <= 1000 // RATE_PER_S
        time.sleep(refusal.retry_delay_ms / 1000)
        # Waiting as told is enough.
        assert code_of(stub.Calculate, calculate, metadata=metadata) != grpc.StatusCode.RESOURCE_EXHAUSTED

    def test_key_and_scope_refusals_name_their_situation(self, start_kassa):
        server = start_kassa(config_text=AUTH_CONFIG)
        stub = processing_pb2_grpc.ProcessingStub(server.channel())
        calculate = processing_pb2.CalculateRequest(
            customer=by_account("A-1"), receipt=receipt(line(1, 2_000), store_id="store-2"))
        terminal = (("x-api-key", TERMINAL_KEY),)
        no_key = refusal_of(stub.Calculate, calculate, timeout=10)
        wrong_key = refusal_of(stub.Calculate, calculate, metadata=(("x-api-key", "k-nobody"),), timeout=10)
        foreign_store = refusal_of(stub.Calculate, calculate, metadata=terminal, timeout=10)
        not_admin = refusal_of(server.admin.GetStats, admin_pb2.GetStatsRequest(), metadata=terminal, timeout=10)

        assert (no_key.code, no_key.error_info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
        assert wrong_key.error_info.reason == "API_KEY_INVALID"
        assert (foreign_store.code, foreign_store.error_info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")
        assert (not_admin.code, not_admin.error_info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_KEY_REQUIRED")
        assert {r.retry_delay_ms for r in (no_key, wrong_key, foreign_store, not_admin)} == {None}
