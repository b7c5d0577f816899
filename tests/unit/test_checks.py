"""One request path (issue 17): the hot request's values are checked once, in server/checks.pyx,
whichever reader (the C reader in server/wire.pyx or protobuf with server/convert.py) made them."""

import re
from pathlib import Path

import pytest

from kassa.core_ext import limits
from kassa.core_ext import model as m
from kassa.server import checks, convert, wire
from kassa.v1 import processing_pb2

REPO = Path(__file__).resolve().parents[2]
CUSTOMER = m.Customer(m.IdKind.CARD, "C-1")


def line(**fields):
    values = dict(line_no=1, sku="sku", category="food", qty_milli=1000, price_minor=250, amount_minor=250)
    values.update(fields)
    return m.Line(**values)


def receipt(*lines):
    return m.Receipt("s1", "t1", "r1", tuple(lines or (line(),)))


def refusal(call, *args):
    with pytest.raises(checks.InvalidArgument) as raised:
        call(*args)
    return str(raised.value)


class TestChecksOnPlainValues:
    def test_a_good_receipt_passes(self):
        value = receipt(line(), line(line_no=2))
        assert checks.receipt(value) is value

    def test_a_bad_amount_names_the_line_and_field(self):
        message = refusal(checks.receipt, receipt(line(amount_minor=999)))
        assert message.startswith("receipt.lines[0].amount_minor: 999 is not qty_milli x price_minor / 1000")

    def test_a_repeated_line_number_names_the_second_line(self):
        message = refusal(checks.receipt, receipt(line(), line()))
        assert message == "receipt.lines[1].line_no: 1 appears twice"

    def test_too_many_lines(self):
        count = limits.LINES_PER_RECEIPT_MAX + 1
        lines = [line(line_no=number) for number in range(1, count + 1)]
        message = refusal(checks.receipt, receipt(*lines))
        assert message == f"receipt.lines: {count} lines, more than {limits.LINES_PER_RECEIPT_MAX}"

    def test_no_customer_id(self):
        assert refusal(checks.customer, None) == "customer: set one of account_id, card, phone"

    def test_the_accrue_checks_name_the_request_id_first(self):
        message = refusal(checks.accrue, "", None, receipt(), -1, ())
        assert message == "request_id: must not be empty"


class TestBothReadersMeetTheSameChecks:
    def request(self, amount_minor):
        request = processing_pb2.AccrueRequest(request_id="r-1", redeem_points=0)
        request.customer.card = "C-1"
        request.receipt.store_id = "s1"
        request.receipt.lines.add(line_no=1, sku="a", qty_milli=1000, price_minor=250, amount_minor=amount_minor)
        return request

    def test_the_c_reader_does_not_take_a_request_the_checks_refuse(self):
        assert wire.accrue_op(self.request(999).SerializeToString()) is None

    def test_protobuf_gives_the_checks_refusal(self):
        message = refusal(convert.accrue_op, self.request(999))
        assert message.startswith("receipt.lines[0].amount_minor: 999 is not")

    def test_both_readers_make_the_same_operation(self):
        request = self.request(250)
        assert wire.accrue_op(request.SerializeToString()) == convert.accrue_op(request)

    def test_the_c_reader_holds_no_limit_of_its_own(self):
        source = (REPO / "server" / "wire.pyx").read_text()
        value_limits = ("AMOUNT_MINOR_MAX", "QTY_MILLI_MAX", "POINTS_MAX", "LINES_PER_RECEIPT_MAX",
                        "IDENTIFIER_BYTES_MAX", "CATEGORY_BYTES_MAX")
        assert [name for name in value_limits if re.search(rf"\b{name}\b", source)] == []
