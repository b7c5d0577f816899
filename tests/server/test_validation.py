"""Malformed requests are refused with INVALID_ARGUMENT naming the field, and change nothing."""

from __future__ import annotations

import grpc
import pytest

from kassa.v1 import common_pb2, processing_pb2
from tests.server.helpers import by_account, earn, line, open_account, receipt, refused, snapshot

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
                                     receipt_total_minor=1_000),
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
