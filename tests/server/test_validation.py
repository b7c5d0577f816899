"""Malformed requests are refused with INVALID_ARGUMENT naming the field, and change nothing."""

from __future__ import annotations

import grpc
import pytest

from kassa.core_ext import limits
from kassa.v1 import common_pb2, processing_pb2
from tests.server.helpers import balance, by_account, earn, line, open_account, receipt, refused, snapshot, statement
from tests.server.stream_helpers import flat_acks, purchase_request, stream_all

REQUEST_ID = "store-1/term-1/R-500"


def purchase(*lines, customer=None, request_id=REQUEST_ID) -> processing_pb2.AccrueRequest:
    return processing_pb2.AccrueRequest(
        request_id=request_id,
        customer=by_account("A-1") if customer is None else customer,
        receipt=receipt(*(lines or (line(1, 1_000),)), receipt_no="R-500"),
    )


def raw_line(line_no, qty_milli, price_minor, amount_minor) -> common_pb2.Line:
    return common_pb2.Line(
        line_no=line_no, sku="SKU", category="grocery", qty_milli=qty_milli, price_minor=price_minor,
        amount_minor=amount_minor,
    )


MALFORMED = {
    "negative line amount": (
        "Accrue", purchase(raw_line(1, 1_000, 500, -500)), "receipt.lines[0].amount_minor"),
    "negative redeem points": (
        "Redeem",
        processing_pb2.RedeemRequest(request_id=REQUEST_ID, customer=by_account("A-1"), points=-5,
                                     receipt_total_minor=1_000, mode=processing_pb2.REDEEM_MODE_IMMEDIATE),
        "points"),
    "zero quantity": (
        "Accrue", purchase(raw_line(1, 0, 500, 0)), "receipt.lines[0].qty_milli"),
    "line amount not qty x price": (
        "Accrue",
        purchase(line(1, 1_000), line(2, 2_500), raw_line(3, 2_000, 1_500, 3_001)),
        "receipt.lines[2].amount_minor"),
    "duplicate line numbers": (
        "Accrue", purchase(line(1, 1_000), line(2, 1_000), line(2, 700)), "receipt.lines[2].line_no"),
    "empty request_id": (
        "Accrue", purchase(line(1, 1_000), request_id=""), "request_id"),
    "request_id over 128 bytes": (
        "Accrue", purchase(line(1, 1_000), request_id="ä" * 65), "request_id"),  # 65 characters, 130 bytes
    "more than 1000 lines": (
        "Accrue", purchase(*(line(n, 100) for n in range(1, 1_002))), "receipt.lines"),
    "no customer identifier": (
        "Accrue", purchase(line(1, 1_000), customer=common_pb2.Customer()), "customer"),
    "empty card": (
        "Accrue", purchase(line(1, 1_000), customer=common_pb2.Customer(card="")), "customer.card"),
}


class TestMalformedInput:
    @pytest.mark.parametrize("method, request_, field", MALFORMED.values(), ids=MALFORMED.keys())
    def test_is_refused_naming_the_field_and_changes_nothing(self, kassa, method, request_, field):
        open_account(kassa, "A-1", card="C-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            getattr(kassa.processing, method)(request_)

        assert refusal.details.startswith(f"{field}:"), refusal.details
        assert snapshot(kassa, "A-1") == before

    def test_a_refused_request_leaves_its_request_id_free(self, kassa):
        open_account(kassa, "A-1")
        with refused(grpc.StatusCode.INVALID_ARGUMENT):
            kassa.processing.Accrue(purchase(raw_line(1, 1_000, 500, -500)))

        reply = kassa.processing.Accrue(purchase(line(1, 20_000)))

        assert reply.calculation.earned_points == 1_000
        assert reply.balance.active_points == 1_000


def spend_request(request_id: str, points: int, **fields) -> processing_pb2.RedeemRequest:
    return processing_pb2.RedeemRequest(
        request_id=request_id, customer=by_account("A-1"), points=points, receipt_total_minor=10**9, **fields)


class TestRedeemMode:
    """A Redeem must say whether it spends or holds: one that leaves `mode` out spends nothing."""

    def test_a_redeem_without_mode_is_refused_naming_mode_and_spends_nothing(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            kassa.processing.Redeem(spend_request("spend-1", 300))

        assert refusal.details.startswith("mode:"), refusal.details
        assert "REDEEM_MODE_IMMEDIATE" in refusal.details and "REDEEM_MODE_HOLD" in refusal.details
        assert snapshot(kassa, "A-1") == before
        # The request id stays free: the same request with a mode is a first call.
        spent = kassa.processing.Redeem(spend_request("spend-1", 300, mode=processing_pb2.REDEEM_MODE_IMMEDIATE))
        assert (spent.redeemed_points, spent.held_points) == (300, 0)
        held = kassa.processing.Redeem(spend_request("hold-1", 200, mode=processing_pb2.REDEEM_MODE_HOLD))
        assert (held.redeemed_points, held.held_points) == (0, 200)
        assert balance(kassa, "A-1").available_points == 500

    def test_in_a_batch_and_a_stream_it_is_that_items_status(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")

        (result,) = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(
            operations=[processing_pb2.Operation(redeem=spend_request("batch-spend", 300))])).results
        (ack,) = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=[
            processing_pb2.Event(event_id="stream-spend", redeem=spend_request("", 300))])]))

        assert result.code == common_pb2.CODE_INVALID_ARGUMENT
        assert result.message.startswith("operations[0].redeem.mode:"), result.message
        assert ack.code == common_pb2.CODE_INVALID_ARGUMENT
        assert ack.message.startswith("events[0].redeem.mode:"), ack.message
        assert snapshot(kassa, "A-1") == before


class TestIdLimits:
    """Every client-chosen idempotency key, an event's event_id included, has one limit:
    limits.REQUEST_ID_BYTES_MAX bytes of UTF-8."""

    def test_an_event_id_over_the_limit_is_refused_in_its_ack_whatever_its_payload(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")
        too_long = "é" * (limits.REQUEST_ID_BYTES_MAX // 2) + "x"  # one byte over
        events = [
            processing_pb2.Event(event_id=too_long, purchase=purchase_request("own-id-1", "A-1", 2_000)),
            processing_pb2.Event(event_id="e" * 100_000, purchase=purchase_request("own-id-2", "A-1", 2_000)),
            processing_pb2.Event(event_id=too_long, redeem=spend_request(
                "own-id-3", 100, mode=processing_pb2.REDEEM_MODE_IMMEDIATE)),
            processing_pb2.Event(event_id=too_long, purchase=purchase_request("", "A-1", 2_000)),
            processing_pb2.Event(event_id=too_long, customer_event=processing_pb2.CustomerEvent(
                customer=by_account("A-1"), type="check_in")),
        ]

        acks = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=events)]))

        assert [ack.code for ack in acks] == [common_pb2.CODE_INVALID_ARGUMENT] * len(events)
        for index, ack in enumerate(acks):
            assert ack.message == f"events[{index}].event_id: longer than {limits.REQUEST_ID_BYTES_MAX} bytes"
            assert ack.event_id == events[index].event_id  # each ack names its event, as it came
        assert snapshot(kassa, "A-1") == before
        assert not [t for t in statement(kassa, "A-1") if t.request_id.startswith("own-id")]

    def test_an_event_id_at_the_limit_is_taken(self, kassa):
        open_account(kassa, "A-1")
        at_limit = "é" * (limits.REQUEST_ID_BYTES_MAX // 2)
        events = [
            processing_pb2.Event(event_id=at_limit, purchase=purchase_request("", "A-1", 2_000)),
            processing_pb2.Event(event_id="x" + at_limit[1:], purchase=purchase_request("own-id", "A-1", 2_000)),
        ]
        acks = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=events)]))
        assert [ack.code for ack in acks] == [common_pb2.CODE_OK] * 2
        assert [ack.event_id for ack in acks] == [event.event_id for event in events]

    @pytest.mark.parametrize("operation, field", [
        (lambda too_long: processing_pb2.Operation(accrue=purchase_request(too_long, "A-1", 2_000)),
         "operations[0].accrue.request_id:"),
        (lambda too_long: processing_pb2.Operation(redeem=spend_request(
            too_long, 1, mode=processing_pb2.REDEEM_MODE_IMMEDIATE)), "operations[0].redeem.request_id:"),
        (lambda too_long: processing_pb2.Operation(rollback=processing_pb2.RollbackRequest(
            request_id="r-1", original_request_id=too_long)), "operations[0].rollback.original_request_id:"),
    ])
    def test_a_request_id_over_the_limit_is_that_operations_status_in_a_batch(self, kassa, operation, field):
        open_account(kassa, "A-1")
        before = snapshot(kassa, "A-1")
        too_long = "r" * (limits.REQUEST_ID_BYTES_MAX + 1)
        (result,) = kassa.processing.ProcessBatch(
            processing_pb2.ProcessBatchRequest(operations=[operation(too_long)])).results
        assert result.code == common_pb2.CODE_INVALID_ARGUMENT
        assert result.message == f"{field} longer than {limits.REQUEST_ID_BYTES_MAX} bytes"
        assert snapshot(kassa, "A-1") == before
