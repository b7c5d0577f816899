"""Processing.ProcessEvent: one customer event (registration, referral, check-in, ...) in a unary call,
for a CRM or a web backend that sends them one at a time. It is the operation a streamed
`customer_event` makes, through the same commit: the same request id replays on either path."""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request

import grpc
import pytest

from kassa.core_ext import limits
from kassa.v1 import accounts_pb2, common_pb2, processing_pb2, processing_pb2_grpc
from tests.server.helpers import balance, by_account, open_account, refused, snapshot, statement
from tests.server.stream_helpers import ledger_transactions

METHOD = "/kassa.v1.Processing/ProcessEvent"
WELCOME_POINTS = 20_000  # config/rules/events.toml: welcome-bonus
FRIEND_POINTS, REFERRER_POINTS = 5_000, 10_000  # referral-bonus: the friend (the customer), the referrer (related)


def customer_event(account_id: str, kind: str, **fields) -> processing_pb2.CustomerEvent:
    return processing_pb2.CustomerEvent(customer=by_account(account_id), type=kind, **fields)


def process_event(kassa, request_id: str, event: processing_pb2.CustomerEvent, **options):
    request = processing_pb2.ProcessEventRequest(request_id=request_id, event=event)
    return kassa.processing.ProcessEvent(request, **options)


def raw_call(kassa, request: processing_pb2.ProcessEventRequest) -> bytes:
    """The answer's bytes as the server wrote them."""
    call = kassa.channel().unary_unary(METHOD, request_serializer=lambda r: r.SerializeToString())
    return call(request, timeout=30)


class TestProcessEvent:
    def test_a_registration_gives_its_points_and_is_journaled(self, kassa):
        open_account(kassa, "A-1")

        reply = process_event(kassa, "crm/reg/A-1", customer_event("A-1", "registration"))

        assert reply.account_id == "A-1"
        assert reply.points == WELCOME_POINTS
        assert reply.transaction_id > 0
        assert [c.campaign_id for c in reply.campaigns] == ["welcome-bonus"]
        assert reply.balance.active_points == WELCOME_POINTS
        assert balance(kassa, "A-1").active_points == WELCOME_POINTS
        (entry,) = [t for t in statement(kassa, "A-1") if t.request_id == "crm/reg/A-1"]
        assert entry.kind == accounts_pb2.TRANSACTION_KIND_EVENT
        assert entry.transaction_id == reply.transaction_id

    def test_a_referral_answers_the_points_of_both_sides(self, kassa):
        open_account(kassa, "FRIEND")
        open_account(kassa, "REFERRER")

        reply = process_event(kassa, "crm/ref/1", customer_event("FRIEND", "referral", related=by_account("REFERRER")))

        assert (reply.account_id, reply.points) == ("FRIEND", FRIEND_POINTS)
        assert (reply.related_account_id, reply.related_points) == ("REFERRER", REFERRER_POINTS)
        assert reply.related_transaction_id > 0
        assert reply.related_transaction_id != reply.transaction_id
        assert balance(kassa, "FRIEND").active_points == FRIEND_POINTS
        assert balance(kassa, "REFERRER").active_points == REFERRER_POINTS

    def test_an_event_no_campaign_takes_is_answered_with_no_points(self, kassa):
        open_account(kassa, "A-1")
        reply = process_event(kassa, "crm/check-in/1", customer_event("A-1", "check_in"))
        assert (reply.transaction_id, reply.points, reply.related_points) == (0, 0, 0)
        assert reply.account_id == "A-1"

    def test_a_retry_is_the_same_bytes_and_another_payload_is_already_exists(self, kassa):
        open_account(kassa, "A-1")
        request = processing_pb2.ProcessEventRequest(request_id="crm/top-up/1",
                                                     event=customer_event("A-1", "top_up", amount_minor=150_000))
        first = raw_call(kassa, request)
        before, transactions = snapshot(kassa, "A-1"), ledger_transactions(kassa)

        assert raw_call(kassa, request) == first
        assert processing_pb2.ProcessEventResponse.FromString(first).points == 1_500  # 1 % back

        with refused(grpc.StatusCode.ALREADY_EXISTS) as refusal:
            process_event(kassa, "crm/top-up/1", customer_event("A-1", "top_up", amount_minor=150_001))
        assert "crm/top-up/1" in refusal.details
        assert snapshot(kassa, "A-1") == before
        assert ledger_transactions(kassa) == transactions

    def test_the_same_id_replays_across_the_stream_and_the_unary_call(self, kassa):
        open_account(kassa, "A-1")
        open_account(kassa, "A-2")
        streamed = processing_pb2.Event(event_id="bill/ev-1", customer_event=customer_event("A-1", "registration"))
        (acks,) = kassa.processing.StreamEvents(iter([processing_pb2.EventBatch(events=[streamed])]), timeout=30)
        (ack,) = acks.acks
        assert (ack.code, ack.points) == (0, WELCOME_POINTS)

        replayed = process_event(kassa, "bill/ev-1", customer_event("A-1", "registration"))
        assert (replayed.transaction_id, replayed.points) == (ack.transaction_id, ack.points)

        unary = process_event(kassa, "crm/reg/A-2", customer_event("A-2", "registration"))
        again = processing_pb2.Event(event_id="crm/reg/A-2", customer_event=customer_event("A-2", "registration"))
        (acks,) = kassa.processing.StreamEvents(iter([processing_pb2.EventBatch(events=[again])]), timeout=30)
        assert (acks.acks[0].transaction_id, acks.acks[0].points) == (unary.transaction_id, unary.points)
        assert balance(kassa, "A-1").active_points == WELCOME_POINTS
        assert balance(kassa, "A-2").active_points == WELCOME_POINTS

    @pytest.mark.parametrize("request_id, event, field", [
        ("", customer_event("A-1", "registration"), "request_id:"),
        ("r" * (limits.REQUEST_ID_BYTES_MAX + 1), customer_event("A-1", "registration"), "request_id:"),
        ("crm/1", None, "event:"),
        ("crm/1", customer_event("A-1", ""), "event.type:"),
        ("crm/1", processing_pb2.CustomerEvent(type="registration"), "event.customer:"),
        ("crm/1", customer_event("A-1", "referral", related=common_pb2.Customer()), "event.related:"),
        ("crm/1", customer_event("A-1", "registration", amount_minor=-1), "event.amount_minor:"),
        ("crm/1", customer_event("A-1", "registration", attributes={f"k{n}": "v" for n in range(33)}),
         "event.attributes:"),
    ])
    def test_a_malformed_event_is_invalid_argument_naming_the_field(self, kassa, request_id, event, field):
        open_account(kassa, "A-1")
        before = snapshot(kassa, "A-1")
        request = processing_pb2.ProcessEventRequest(request_id=request_id)
        if event is not None:
            request.event.CopyFrom(event)
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            kassa.processing.ProcessEvent(request)
        assert refusal.details.startswith(field), refusal.details
        assert snapshot(kassa, "A-1") == before

    def test_an_unknown_customer_is_not_found(self, kassa):
        with refused(grpc.StatusCode.NOT_FOUND):
            process_event(kassa, "crm/reg/nobody", customer_event("NOBODY", "registration"))


TERMINAL_KEY = "k-event-terminal-41a0"
CRM_KEY = "k-event-crm-9b7c"
BURST = 3
METRICS_WAIT_S = 5  # for a refused call to be counted


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{sha256(TERMINAL_KEY)}"
name = "store-1/pos-1"
stores = ["store-1"]

[[auth.keys]]
key_sha256 = "{sha256(CRM_KEY)}"
name = "crm"
rate_per_s = 0.001
burst = {BURST}
"""


class TestAsTheOtherUnaryCalls:
    def test_it_needs_a_key_takes_a_store_key_as_streams_do_and_is_rate_limited(self, start_kassa):
        server = start_kassa(config_text=AUTH_CONFIG)
        stub = processing_pb2_grpc.ProcessingStub(server.channel())
        server.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(request_id="c/A-1", account_id="A-1"),
                                      metadata=(("x-api-key", TERMINAL_KEY),))

        def send(request_id: str, key: str | None):
            metadata = (("x-api-key", key),) if key else ()
            request = processing_pb2.ProcessEventRequest(request_id=request_id, event=customer_event("A-1", "check_in"))
            return stub.ProcessEvent(request, metadata=metadata, timeout=30)

        with refused(grpc.StatusCode.UNAUTHENTICATED):
            send("e/no-key", None)
        # An event belongs to no store: a store's key may send it, as it may on StreamEvents.
        assert send("e/terminal", TERMINAL_KEY).account_id == "A-1"
        for n in range(BURST):
            send(f"e/crm-{n}", CRM_KEY)
        with refused(grpc.StatusCode.RESOURCE_EXHAUSTED) as refusal:
            send("e/crm-over", CRM_KEY)
        assert "rate limit" in refusal.details

    def test_its_calls_are_counted_by_code_in_the_metrics(self, start_kassa):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics_address = f"127.0.0.1:{probe.getsockname()[1]}"
        server = start_kassa(env={"KASSA_METRICS_LISTEN": metrics_address})
        open_account(server, "A-1")
        process_event(server, "m/1", customer_event("A-1", "check_in"))
        process_event(server, "m/2", customer_event("A-1", "check_in"))
        with refused(grpc.StatusCode.INVALID_ARGUMENT):
            process_event(server, "m/3", customer_event("A-1", ""))

        # A refused call is counted just after its status goes out: read until it is there.
        deadline = time.monotonic() + METRICS_WAIT_S
        while True:
            counted = process_event_calls(metrics_address)
            if counted == {"OK": 2, "INVALID_ARGUMENT": 1} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert counted == {"OK": 2, "INVALID_ARGUMENT": 1}


def process_event_calls(metrics_address: str) -> dict[str, float]:
    """Code -> count of ProcessEvent calls in the metrics, whatever the other labels."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counted = {}
    for sample in text.splitlines():
        if sample.startswith("grpc_server_handled_total") and 'grpc_method="ProcessEvent"' in sample:
            name, _, value = sample.rpartition(" ")
            code = "OK" if '"OK"' in name else "INVALID_ARGUMENT" if '"INVALID_ARGUMENT"' in name else name
            counted[code] = float(value)
    return counted
