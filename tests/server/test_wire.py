"""server/wire.pyx, the hot path's own protobuf reader and writer, against protobuf and server/convert.py.

wire.pyx is a fast path, never a second definition. A request it takes, it builds exactly the value
convert.py builds from protobuf's parse of the same bytes; a request it does not take - one that
convert.py or protobuf refuses, or one that carries what it does not read - it leaves to them (None,
or inside a batch the operation's or event's own bytes). So every check here puts both paths side by
side on the same bytes:

- requests drawn around every limit of core_ext/limits.py, one fault at a time (so that a check the
  fast path lacks cannot hide behind another that fails first), and the plain valid ones, which it
  must take;
- bytes protobuf's encoder never writes: fields out of order, repeated, unknown, truncated, invalid
  UTF-8, stretched varints;
- whole ProcessBatch requests and event batches;
- the answers it writes for results of a real ledger, byte for byte against protobuf's;
- the hot methods of a real server.

Hypothesis prints a failing example and the seed of its run (`--hypothesis-seed=N` repeats it).
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

import grpc
import msgspec
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kassa.core_ext import Ledger, Program, limits, load_program
from kassa.core_ext.model import (
    AccrueOp, AccrueResult, AdjustOp, AppliedCampaign, Balance, Calculation, CampaignExplain, Code, CreateAccountOp,
    Customer, EventOp, EventResult, IdKind, IssueCardOp, LineResult, Outcome, PromoCodeResult, PromoCodesOp, Reason,
    RedeemOp, RedeemResult, RollbackOp, RollbackResult, rejected,
)
from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2
from kassa.server import convert, wire
from kassa.server.servicers.processing import other_result
from tests.kassa_harness import REPO, T0_MS
from tests.server import pb_responses
from tests.server.helpers import by_account, line, open_account, receipt, refused, statement

ID_BYTES_MAX = limits.IDENTIFIER_BYTES_MAX
CATEGORY_BYTES_MAX = limits.CATEGORY_BYTES_MAX
REQUEST_ID_BYTES_MAX = limits.REQUEST_ID_BYTES_MAX
AMOUNT_MAX = limits.AMOUNT_MINOR_MAX
QTY_MAX = limits.QTY_MILLI_MAX
POINTS_MAX = limits.POINTS_MAX
LINES_MAX = limits.LINES_PER_RECEIPT_MAX
LINE_NO_MAX = 2**32 - 1  # Line.line_no is a uint32
INT64_MAX = 2**63 - 1
FIELD_NUMBER_MAX = 2**29 - 1  # protobuf's largest field number

DECODING = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAULTY = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # for each fault
LEDGER = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALL_TIMEOUT_S = 30

Op = processing_pb2.Operation
Event = processing_pb2.Event
_as_stored = msgspec.msgpack.Encoder().encode  # as the ledger keeps values: a bool is not an int here


# ---------------------------------------------------------------------------------------------
# Protobuf's wire format, by hand

VARINT, I64, LEN, START_GROUP, END_GROUP, I32 = 0, 1, 2, 3, 4, 5  # wire types


def varint(value: int) -> bytes:
    """`value` as a protobuf varint; a negative one as its 64-bit two's complement (10 bytes)."""
    value &= 2**64 - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def stretched_varint(value: int, size: int) -> bytes:
    """`value` as a varint of `size` bytes: padded with continuation bytes of zero bits (not minimal)."""
    out = bytearray()
    for _ in range(size - 1):
        out.append(value & 0x7F | 0x80)
        value >>= 7
    assert value < 0x80, "too small a size for the value"
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def int_field(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def len_field(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def text_field(number: int, text: str) -> bytes:
    return len_field(number, text.encode())


def _field_items(message):
    """(field, value) for each value set in the message, a repeated field's items one by one."""
    for descriptor, value in message.ListFields():
        for item in value if descriptor.is_repeated else (value,):
            yield descriptor, item


def _encoded_field(descriptor, item, encode_message) -> bytes:
    if descriptor.message_type is not None:
        return len_field(descriptor.number, encode_message(item))
    if descriptor.type == descriptor.TYPE_STRING:
        return text_field(descriptor.number, item)
    return int_field(descriptor.number, int(item))


def encode(message) -> bytes:
    """The message's bytes, written field by field by this file (a repeated number unpacked)."""
    return b"".join(_encoded_field(descriptor, item, encode) for descriptor, item in _field_items(message))


@st.composite
def shuffled(draw, message) -> bytes:
    """The message's bytes with the fields of it and of every message in it in a random order. The
    items of a repeated field keep their order among themselves (a receipt's lines stay in order)."""
    parts = [
        (descriptor.number, _encoded_field(descriptor, item, lambda inner: draw(shuffled(inner))))
        for descriptor, item in _field_items(message)
    ]
    by_number = defaultdict(deque)
    for number, part in parts:
        by_number[number].append(part)
    order = draw(st.permutations([number for number, _ in parts]))
    return b"".join(by_number[number].popleft() for number in order)


# ---------------------------------------------------------------------------------------------
# The two paths


@dataclass(frozen=True)
class Hot:
    """A hot method's request: the fast path's decoder, protobuf's message and convert.py's builder,
    and the field numbers of what the request holds."""

    name: str
    fast: Callable
    message: type
    build: Callable
    customer: int
    receipt: int
    redeem_points: int
    request_id: int | None  # a Calculate changes nothing: it has no request_id
    unknown: int  # a field number the request does not have

    def __repr__(self) -> str:
        return self.name


ACCRUE = Hot("Accrue", wire.accrue_op, processing_pb2.AccrueRequest, convert.accrue_op, 2, 3, 4, 1, 7)  # 6: occurred_at
CALCULATE = Hot("Calculate", wire.calculate_query, processing_pb2.CalculateRequest, convert.calculate_query, 1, 2, 3, None, 5)
HOT = (ACCRUE, CALCULATE)


@dataclass
class Slow:
    """What protobuf and convert.py make of request bytes: the core value, or why there is none."""

    value: object = None
    refusal: str = ""


def decode_slowly(message_type, build, data: bytes) -> Slow:
    try:
        request = message_type.FromString(data)
    except DecodeError as error:
        return Slow(refusal=f"protobuf: {error}")
    try:
        return Slow(build(request))
    except convert.InvalidArgument as error:
        return Slow(refusal=f"convert: {error}")


def assert_built_alike_or_left(fast, slow: Slow, data: bytes) -> None:
    """The fast path's rule: what it takes it builds as convert.py does; what they refuse, it leaves."""
    if slow.value is None:
        assert fast is None, f"the fast path took bytes that {slow.refusal}\nbytes: {data!r}\nfast: {fast!r}"
        return
    if fast is not None:
        assert fast == slow.value, f"bytes: {data!r}\nfast: {fast!r}\nslow: {slow.value!r}"
        assert _as_stored(fast) == _as_stored(slow.value), f"the same values, of other types: {data!r}"


def decode_both(hot: Hot, data: bytes) -> tuple[object, Slow]:
    fast = hot.fast(data)
    slow = decode_slowly(hot.message, hot.build, data)
    assert_built_alike_or_left(fast, slow, data)
    return fast, slow


def is_plain(request) -> bool:
    """Holds nothing the fast path leaves to convert.py by design: promo codes, a card BIN, hold captures."""
    holds = getattr(request, "capture_hold_ids", ())
    return not (request.receipt.promo_codes or request.receipt.card_bin or holds)


# ---------------------------------------------------------------------------------------------
# Requests, drawn


WIDE_CHARACTERS = ("😀", "€", "é")  # 4, 3 and 2 bytes of UTF-8
CATEGORIES = ("grocery/dairy/milk", "grocery/bakery", "grocery/snacks", "household/cleaning", "pharmacy/vitamins",
              "flowers/roses", "electronics/phones", "tobacco")
SKUS = ("SKU-1", "COFFEE-1KG", "FRESH", "LATER", "Молоко-3.2%")


@st.composite
def _text_of_bytes(draw, size: int) -> str:
    characters = []
    left = size
    for character in WIDE_CHARACTERS:
        width = len(character.encode())
        count = draw(st.integers(0, left // width))
        characters += [character] * count
        left -= count * width
    characters += ["a"] * left
    draw(st.randoms(use_true_random=False)).shuffle(characters)
    return "".join(characters)


# Strategies are built once: hypothesis checks each strategy object when it is first drawn from.


@functools.cache
def text_of_bytes(size: int):
    """Text of exactly `size` bytes of UTF-8, with characters of 2, 3 and 4 bytes in it."""
    return _text_of_bytes(size)


@functools.cache
def short_text(min_size: int = 0):
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=8)


@functools.cache
def text_up_to(bytes_max: int, min_size: int = 0):
    """Text for a field of at most `bytes_max` bytes: mostly short, sometimes exactly at the limit."""
    return st.one_of(short_text(min_size), short_text(min_size), text_of_bytes(bytes_max))


@functools.cache
def maybe_text(bytes_max: int, common: tuple[str, ...]):
    """Text for an optional field: mostly empty or a common value."""
    return st.one_of(st.just(""), st.just(""), st.sampled_from(common), text_up_to(bytes_max))


QTYS = st.one_of(st.sampled_from([1, 1_000, 1_500, 3_000, QTY_MAX]), st.integers(1, QTY_MAX))
LINE_SKUS = st.one_of(st.sampled_from(SKUS), text_up_to(ID_BYTES_MAX))
LINE_CATEGORIES = st.one_of(st.sampled_from(CATEGORIES), text_up_to(CATEGORY_BYTES_MAX))
LINE_BRANDS = maybe_text(ID_BYTES_MAX, ("acme", "Пекарня №1"))
LINE_COUNTS = st.integers(1, 10)


@st.composite
def receipt_lines(draw, line_no: int, amount_max: int) -> common_pb2.Line:
    """A valid line of at most `amount_max`: qty x price / 1000, rounded down or up to a minor unit."""
    qty = draw(QTYS)
    price_max = min(AMOUNT_MAX, (amount_max - 1) * 1000 // qty)
    price = draw(st.one_of(st.integers(0, min(price_max, 200_000)), st.just(price_max), st.integers(0, price_max)))
    exact_milli = qty * price
    amount = exact_milli // 1000 + (1 if exact_milli % 1000 and draw(st.booleans()) else 0)
    return common_pb2.Line(
        line_no=line_no,
        sku=draw(LINE_SKUS),
        category=draw(LINE_CATEGORIES),
        qty_milli=qty,
        price_minor=price,
        amount_minor=amount,
        no_earn=draw(st.booleans()),
        no_discount=draw(st.booleans()),
        brand=draw(LINE_BRANDS),
    )


@st.composite
def _receipts(draw) -> common_pb2.Receipt:
    count = draw(LINE_COUNTS)
    line_nos = draw(st.one_of(
        st.just(list(range(1, count + 1))),
        st.lists(st.integers(1, LINE_NO_MAX), min_size=count, max_size=count, unique=True),
    ))
    amount_max = draw(st.sampled_from([1_000_000, AMOUNT_MAX // count]))  # a line's most: the total stays in range
    return common_pb2.Receipt(
        store_id=draw(maybe_text(ID_BYTES_MAX, ("store-7",))),
        terminal_id=draw(maybe_text(ID_BYTES_MAX, ("term-2",))),
        receipt_no=draw(maybe_text(ID_BYTES_MAX, ("R-1881",))),
        lines=[draw(receipt_lines(line_no, amount_max)) for line_no in line_nos],
        region=draw(maybe_text(ID_BYTES_MAX, ("north", "south"))),
        channel=draw(maybe_text(ID_BYTES_MAX, ("pos", "online"))),
        payment_method=draw(maybe_text(ID_BYTES_MAX, ("card", "cash", "sbp"))),
    )


RECEIPTS = _receipts()
_CUSTOMER_IDS = text_up_to(ID_BYTES_MAX, min_size=1)
CUSTOMERS = st.one_of(
    _CUSTOMER_IDS.map(lambda text: common_pb2.Customer(account_id=text)),
    _CUSTOMER_IDS.map(lambda text: common_pb2.Customer(card=text)),
    _CUSTOMER_IDS.map(lambda text: common_pb2.Customer(phone=text)),
)
REDEEM_POINTS = st.one_of(st.just(0), st.integers(0, 1_000_000), st.just(POINTS_MAX))
REQUEST_IDS = text_up_to(REQUEST_ID_BYTES_MAX, min_size=1)


@st.composite
def _requests(draw, hot: Hot):
    if hot is ACCRUE:
        return processing_pb2.AccrueRequest(
            request_id=draw(REQUEST_IDS), customer=draw(CUSTOMERS), receipt=draw(RECEIPTS),
            redeem_points=draw(REDEEM_POINTS),
        )
    return processing_pb2.CalculateRequest(
        customer=draw(CUSTOMERS), receipt=draw(RECEIPTS), redeem_points=draw(REDEEM_POINTS), explain=draw(st.booleans())
    )


@functools.cache
def requests(hot: Hot):
    """Valid requests of the method, with no promo code, card BIN or hold capture."""
    return _requests(hot)


# -- faults: one change to a valid request, at or just past one check of convert.py ---------------


@dataclass(frozen=True)
class Fault:
    """`field`: what convert.py's refusal names; None: the request stays valid (an edge) or is one
    the fast path leaves to convert.py by design."""

    name: str
    apply: Callable
    field: str | None
    accrue_only: bool = False

    def __repr__(self) -> str:
        return self.name


def _a_line(draw, request) -> common_pb2.Line:
    lines = request.receipt.lines
    return lines[draw(st.integers(0, len(lines) - 1))]


def set_line(**values):
    def apply(draw, request):
        chosen = _a_line(draw, request)
        for name, value in values.items():
            setattr(chosen, name, value)
    return apply


def round_amount(shift):
    """Set a line's amount from its exact qty x price: `shift(floor, remainder)` of a minor unit."""
    def apply(draw, request):
        chosen = _a_line(draw, request)
        floor, remainder = divmod(chosen.qty_milli * chosen.price_minor, 1000)
        chosen.amount_minor = shift(floor, remainder)
    return apply


def line_text(name: str, size: int):
    def apply(draw, request):
        setattr(_a_line(draw, request), name, draw(text_of_bytes(size)))
    return apply


def receipt_text(name: str, size: int):
    def apply(draw, request):
        setattr(request.receipt, name, draw(text_of_bytes(size)))
    return apply


def two_lines_of(total: int):
    def apply(draw, request):
        first = total // 2
        del request.receipt.lines[:]
        for line_no, amount in ((1, first), (2, total - first)):
            request.receipt.lines.add(line_no=line_no, qty_milli=1_000, price_minor=amount, amount_minor=amount)
    return apply


def line_no_twice(draw, request):
    lines = request.receipt.lines
    if len(lines) == 1:
        lines.add().CopyFrom(lines[0])
    else:
        lines[-1].line_no = lines[0].line_no


def no_lines(draw, request):
    del request.receipt.lines[:]


def no_customer(draw, request):
    request.ClearField("customer")


def customer_of_no_kind(draw, request):
    request.ClearField("customer")
    request.customer.SetInParent()


def customer_value(size: int):
    def apply(draw, request):
        kind = request.customer.WhichOneof("id")
        setattr(request.customer, kind, draw(text_of_bytes(size)))
    return apply


def set_request(**values):
    def apply(draw, request):
        for name, value in values.items():
            if isinstance(value, list):
                getattr(request, name).extend(value)
            else:
                setattr(request, name, value)
    return apply


def set_receipt(**values):
    def apply(draw, request):
        for name, value in values.items():
            if isinstance(value, list):
                getattr(request.receipt, name).extend(value)
            else:
                setattr(request.receipt, name, value)
    return apply


def request_id_of(size: int):
    def apply(draw, request):
        request.request_id = draw(text_of_bytes(size))
    return apply


# A line over the amount limit whose amount still matches qty x price: 1001 x 9990009990010 / 1000
# is 10000000000000.010, within a minor unit of AMOUNT_MAX + 1.
OVER_AMOUNT_LINE = dict(qty_milli=1_001, price_minor=9_990_009_990_010, amount_minor=AMOUNT_MAX + 1)

FAULTS = [
    Fault("line_no 0", set_line(line_no=0), "line_no"),
    Fault("line_no twice", line_no_twice, "line_no"),
    Fault("line_no the largest uint32", set_line(line_no=LINE_NO_MAX), None),
    Fault("qty 0", set_line(qty_milli=0, amount_minor=0), "qty_milli"),
    Fault("qty negative", set_line(qty_milli=-1_000, price_minor=0, amount_minor=0), "qty_milli"),
    Fault("qty one over the limit", set_line(qty_milli=QTY_MAX + 1, price_minor=0, amount_minor=0), "qty_milli"),
    Fault("qty the largest int64", set_line(qty_milli=INT64_MAX, price_minor=0, amount_minor=0), "qty_milli"),
    Fault("qty at the limit", set_line(qty_milli=QTY_MAX, price_minor=1, amount_minor=QTY_MAX // 1000), None),
    Fault("price negative", set_line(qty_milli=1, price_minor=-1, amount_minor=0), "price_minor"),
    Fault("price the smallest int64", set_line(qty_milli=1, price_minor=-INT64_MAX - 1, amount_minor=0), "price_minor"),
    Fault("price one over the limit",
          set_line(qty_milli=1, price_minor=AMOUNT_MAX + 1, amount_minor=(AMOUNT_MAX + 1) // 1000), "price_minor"),
    Fault("price at the limit", set_line(qty_milli=1, price_minor=AMOUNT_MAX, amount_minor=AMOUNT_MAX // 1000), None),
    Fault("amount negative", set_line(qty_milli=1, price_minor=0, amount_minor=-1), "amount_minor"),
    Fault("amount one over the limit", set_line(**OVER_AMOUNT_LINE), "amount_minor"),
    Fault("amount rounded down", round_amount(lambda floor, remainder: floor), None),
    Fault("amount rounded up", round_amount(lambda floor, remainder: floor + (1 if remainder else 0)), None),
    Fault("amount a minor unit under qty x price",
          round_amount(lambda floor, remainder: floor - 1), "amount_minor"),
    Fault("amount a minor unit over qty x price",
          round_amount(lambda floor, remainder: floor + (2 if remainder else 1)), "amount_minor"),
    Fault("qty x price past int64",
          set_line(qty_milli=QTY_MAX, price_minor=AMOUNT_MAX, amount_minor=AMOUNT_MAX), "amount_minor"),
    Fault("qty x price just past int64",  # 10**9 x 9223372037 > 2**63 - 1
          set_line(qty_milli=QTY_MAX, price_minor=9_223_372_037, amount_minor=AMOUNT_MAX), "amount_minor"),
    Fault("sku one byte over", line_text("sku", ID_BYTES_MAX + 1), "sku"),
    Fault("category one byte over", line_text("category", CATEGORY_BYTES_MAX + 1), "category"),
    Fault("brand one byte over", line_text("brand", ID_BYTES_MAX + 1), "brand"),
    Fault("no lines", no_lines, "receipt.lines"),
    Fault("total one over the limit", two_lines_of(AMOUNT_MAX + 1), "total"),
    Fault("total at the limit", two_lines_of(AMOUNT_MAX), None),
    *(Fault(f"{name} one byte over", receipt_text(name, ID_BYTES_MAX + 1), name)
      for name in ("store_id", "terminal_id", "receipt_no", "region", "channel", "payment_method")),
    *(Fault(f"{name} at the limit", receipt_text(name, ID_BYTES_MAX), None)
      for name in ("store_id", "region", "payment_method")),
    Fault("a card BIN", set_receipt(card_bin="220070"), None),
    Fault("a card BIN not of digits", set_receipt(card_bin="2200x"), "card_bin"),
    Fault("a promo code", set_receipt(promo_codes=["SPRING-2026"]), None),
    Fault("a promo code with a space", set_receipt(promo_codes=["SPRING 2026"]), "promo_codes[0]"),
    Fault("a promo code twice", set_receipt(promo_codes=["SPRING-2026", "SPRING-2026"]), "promo_codes[1]"),
    Fault("no customer", no_customer, "customer"),
    Fault("a customer of no kind", customer_of_no_kind, "customer"),
    Fault("an empty customer id", customer_value(0), "customer."),
    Fault("a customer id one byte over", customer_value(ID_BYTES_MAX + 1), "customer."),
    Fault("redeem_points negative", set_request(redeem_points=-1), "redeem_points"),
    Fault("redeem_points one over the limit", set_request(redeem_points=POINTS_MAX + 1), "redeem_points"),
    Fault("redeem_points at the limit", set_request(redeem_points=POINTS_MAX), None),
    Fault("no request_id", set_request(request_id=""), "request_id", accrue_only=True),
    Fault("request_id one byte over", request_id_of(REQUEST_ID_BYTES_MAX + 1), "request_id", accrue_only=True),
    Fault("request_id at the limit", request_id_of(REQUEST_ID_BYTES_MAX), None, accrue_only=True),
    Fault("a hold capture", set_request(capture_hold_ids=[7]), None, accrue_only=True),
    Fault("hold 0", set_request(capture_hold_ids=[0]), "capture_hold_ids", accrue_only=True),
    Fault("a hold twice", set_request(capture_hold_ids=[7, 7]), "capture_hold_ids", accrue_only=True),
    Fault("one hold over the limit", set_request(capture_hold_ids=list(range(1, limits.CAPTURE_HOLDS_MAX + 2))),
          "capture_hold_ids", accrue_only=True),
]


def _faults():
    return [pytest.param(hot, fault, id=f"{hot}: {fault.name}") for hot in HOT for fault in FAULTS
            if hot is ACCRUE or not fault.accrue_only]


# ---------------------------------------------------------------------------------------------
# 1. Decoding: drawn requests


@pytest.mark.parametrize("hot", HOT, ids=repr)
class TestDecoding:
    @DECODING
    @given(data=st.data())
    def test_a_plain_valid_request_is_taken_and_built_as_convert_builds_it(self, hot, data):
        request = data.draw(requests(hot))
        fast, slow = decode_both(hot, request.SerializeToString())
        assert slow.value is not None, f"the strategy drew an invalid request: {slow.refusal}"
        assert fast is not None, "the fast path left a plain valid request"

    @DECODING
    @given(data=st.data())
    def test_fields_in_any_order_are_taken_as_in_protobufs_order(self, hot, data):
        request = data.draw(requests(hot))
        assert encode(request) == request.SerializeToString()  # this file writes what protobuf writes
        reordered = data.draw(shuffled(request))
        fast, slow = decode_both(hot, reordered)
        assert fast is not None
        assert fast == hot.fast(request.SerializeToString())

    def test_a_receipt_of_the_most_lines_is_taken_and_one_more_is_left(self, hot):
        lines = [line(n, 100 + n, sku=f"SKU-{n}") for n in range(1, LINES_MAX + 2)]
        most = hot.message(customer=by_account("A-1"), receipt=receipt(*lines[:LINES_MAX]))
        too_many = hot.message(customer=by_account("A-1"), receipt=receipt(*lines))
        if hot is ACCRUE:
            most.request_id = too_many.request_id = "pos-7/R-1"

        fast, slow = decode_both(hot, most.SerializeToString())
        assert fast is not None
        assert len(fast.receipt.lines) == LINES_MAX
        fast, slow = decode_both(hot, too_many.SerializeToString())
        assert "receipt.lines" in slow.refusal

    def test_the_last_of_a_thousand_line_numbers_repeating_the_first_is_left(self, hot):
        lines = [line(n, 100, sku=f"SKU-{n}") for n in range(1, LINES_MAX)] + [line(1, 100)]
        request = hot.message(customer=by_account("A-1"), receipt=receipt(*lines))
        if hot is ACCRUE:
            request.request_id = "pos-7/R-1"
        fast, slow = decode_both(hot, request.SerializeToString())
        assert f"lines[{LINES_MAX - 1}].line_no: 1 appears twice" in slow.refusal


class TestLimits:
    @pytest.mark.parametrize("hot,fault", _faults())
    @FAULTY
    @given(data=st.data())
    def test_a_request_at_or_past_a_limit_is_built_as_convert_builds_it_or_left_to_it(self, hot, fault, data):
        request = data.draw(requests(hot))
        fault.apply(data.draw, request)
        fast, slow = decode_both(hot, request.SerializeToString())
        if fault.field is not None:
            # One fault at a time: a check the fast path lacked could not hide behind another one.
            assert fault.field in slow.refusal, f"{fault.name}: convert.py said {slow.refusal or 'nothing'}"
        if slow.value is not None and is_plain(request):
            assert fast is not None, f"the fast path left a valid request ({fault.name})"


# ---------------------------------------------------------------------------------------------
# 2. Decoding: bytes protobuf's encoder never writes

LINE_1 = [int_field(1, 1), text_field(2, "SKU-1"), text_field(3, "grocery/dairy/milk"), int_field(4, 1_500),
          int_field(5, 333), int_field(6, 499)]
LINE_2 = [int_field(1, 2), text_field(2, "Хлеб-2"), text_field(3, "grocery/bakery"), int_field(4, 1_000),
          int_field(5, 12_000), int_field(6, 12_000), int_field(7, 1), text_field(9, "Пекарня №1")]
RECEIPT_HEAD = [text_field(1, "store-7"), text_field(2, "term-2"), text_field(3, "R-1881")]
RECEIPT_TAIL = [text_field(5, "north"), text_field(6, "pos"), text_field(7, "card")]
CARD = text_field(2, "C-1")


def receipt_bytes(*lines, head=RECEIPT_HEAD, tail=RECEIPT_TAIL, reverse_lines=False, reverse=False) -> bytes:
    lines = lines or (LINE_1, LINE_2)
    parts = [*head, *(len_field(4, b"".join(reversed(fields) if reverse_lines else fields)) for fields in lines), *tail]
    return b"".join(reversed(parts) if reverse else parts)


def request_bytes(hot: Hot, *, request_id: bytes = b"pos-7/R-1881", customer: bytes = CARD, receipt: bytes = None,
                  redeem_points: int = 100, lead: bytes = b"", tail: bytes = b"", reverse: bool = False) -> bytes:
    """A request written by hand: `lead` before its fields, `tail` after them."""
    parts = [len_field(hot.request_id, request_id)] if hot.request_id else []
    parts += [len_field(hot.customer, customer), len_field(hot.receipt, receipt_bytes() if receipt is None else receipt)]
    parts.append(int_field(hot.redeem_points, redeem_points))
    return lead + b"".join(reversed(parts) if reverse else parts) + tail


def plain_message(hot: Hot):
    message = hot.message.FromString(request_bytes(hot))
    assert message.SerializeToString() == request_bytes(hot)  # the bytes by hand are protobuf's own
    return message


TAKEN, PROTOBUF_REFUSES, EITHER = "taken", "protobuf refuses", "either"


@dataclass(frozen=True)
class Irregular:
    """Request bytes protobuf's encoder does not write, and what must come of them."""

    name: str
    build: Callable  # Hot -> bytes
    expect: str  # TAKEN: both paths take it; PROTOBUF_REFUSES: not a message; EITHER: only the rule
    accrue_only: bool = False


def in_line(*fields, before=False):
    """A receipt whose first line has `fields` after (or before) its own."""
    first = [*fields, *LINE_1] if before else [*LINE_1, *fields]
    return lambda hot: request_bytes(hot, receipt=receipt_bytes(first, LINE_2))


def in_receipt(*fields):
    """A receipt with `fields` after its own."""
    return lambda hot: request_bytes(hot, receipt=receipt_bytes(tail=[*RECEIPT_TAIL, *fields]))


def after(build_tail):
    return lambda hot: request_bytes(hot, tail=build_tail(hot))


def before(build_lead):
    return lambda hot: request_bytes(hot, lead=build_lead(hot))


def a_redeem_varint(encoded: bytes):
    """The request with redeem_points written as the varint bytes `encoded`."""
    return lambda hot: request_bytes(hot)[:-2] + tag(hot.redeem_points, VARINT) + encoded


def stretched_tag(size: int):
    """The request's customer field with its tag stretched to `size` bytes."""
    def build(hot):
        customer = stretched_varint(hot.customer << 3 | LEN, size) + varint(len(CARD)) + CARD
        return request_bytes(hot).replace(len_field(hot.customer, CARD), customer)
    return build


def stretched_length(size: int):
    """The request's customer field with its length stretched to `size` bytes."""
    def build(hot):
        customer = tag(hot.customer, LEN) + stretched_varint(len(CARD), size) + CARD
        return request_bytes(hot).replace(len_field(hot.customer, CARD), customer)
    return build


UNKNOWN_VALUES = {  # a field the message does not have, of each wire type
    "varint": lambda number: int_field(number, 7),
    "fixed64": lambda number: tag(number, I64) + bytes(range(8)),
    "fixed32": lambda number: tag(number, I32) + b"\xff\xff\xff\xff",
    "bytes that are not UTF-8": lambda number: len_field(number, b"\xff\xfe"),
    "a message": lambda number: len_field(number, int_field(1, 5) + text_field(2, "é")),
}

IRREGULAR = [
    # Unknown fields: protobuf keeps them aside; the value is the same without them.
    *(Irregular(f"an unknown {kind} in the request", after(lambda hot, value=value: value(hot.unknown)), TAKEN)
      for kind, value in UNKNOWN_VALUES.items()),
    Irregular("an unknown field first", before(lambda hot: UNKNOWN_VALUES["a message"](hot.unknown)), TAKEN),
    Irregular("the largest field number", after(lambda hot: int_field(FIELD_NUMBER_MAX, 1)), TAKEN),
    Irregular("an unknown field in the customer", lambda hot: request_bytes(hot, customer=CARD + int_field(4, 1)), TAKEN),
    *(Irregular(f"an unknown {kind} in the receipt", in_receipt(value(10)), TAKEN) for kind, value in UNKNOWN_VALUES.items()),
    *(Irregular(f"an unknown {kind} in a line", in_line(value(10)), TAKEN) for kind, value in UNKNOWN_VALUES.items()),
    Irregular("an unknown field in a line, number 1000", in_line(len_field(1_000, b"\xff")), TAKEN),
    Irregular("an unknown group", after(lambda hot: tag(hot.unknown, START_GROUP) + int_field(1, 5)
                                        + tag(hot.unknown, END_GROUP)), EITHER),
    Irregular("an unknown group in a line", in_line(tag(10, START_GROUP), tag(10, END_GROUP)), EITHER),
    Irregular("field number 0", after(lambda hot: int_field(0, 1)), EITHER),
    Irregular("wire type 6", after(lambda hot: tag(hot.unknown, 6) + b"\x00"), EITHER),
    Irregular("wire type 7", after(lambda hot: tag(hot.unknown, 7) + b"\x00"), EITHER),
    # Order: protobuf takes the fields of a message in any order.
    Irregular("the request's fields reversed", lambda hot: request_bytes(hot, reverse=True), TAKEN),
    Irregular("the receipt's fields reversed", lambda hot: request_bytes(hot, receipt=receipt_bytes(reverse=True)), TAKEN),
    Irregular("each line's fields reversed",
              lambda hot: request_bytes(hot, receipt=receipt_bytes(reverse_lines=True)), TAKEN),
    # A field again: the last of a scalar wins; a message is merged into the one before it.
    Irregular("request_id again, empty", after(lambda hot: text_field(1, "")), EITHER, accrue_only=True),
    Irregular("request_id empty, then again", before(lambda hot: text_field(1, "")), EITHER, accrue_only=True),
    Irregular("request_id again, one byte over",
              after(lambda hot: text_field(1, "é" * 64 + "a")), EITHER, accrue_only=True),
    Irregular("redeem_points again, negative", after(lambda hot: int_field(hot.redeem_points, -1)), EITHER),
    Irregular("redeem_points negative, then again", before(lambda hot: int_field(hot.redeem_points, -1)), EITHER),
    Irregular("qty again, 0", in_line(int_field(4, 0)), EITHER),
    Irregular("qty 0, then again", in_line(int_field(4, 0), before=True), EITHER),
    Irregular("amount again, a minor unit over", in_line(int_field(6, 501)), EITHER),
    Irregular("sku again, one byte over", in_line(text_field(2, "x" * (ID_BYTES_MAX + 1))), EITHER),
    Irregular("sku one byte over, then again", in_line(text_field(2, "x" * (ID_BYTES_MAX + 1)), before=True), EITHER),
    Irregular("store_id again, one byte over", in_receipt(text_field(1, "é" * 33)), EITHER),
    Irregular("region again, empty", in_receipt(text_field(5, "")), EITHER),
    Irregular("card_bin, empty", in_receipt(text_field(8, "")), EITHER),
    Irregular("the customer's card again", lambda hot: request_bytes(hot, customer=CARD + text_field(2, "C-2")), EITHER),
    Irregular("a customer with an account and a card",
              lambda hot: request_bytes(hot, customer=text_field(1, "A-1") + CARD), EITHER),
    Irregular("the customer again, an account",
              after(lambda hot: len_field(hot.customer, text_field(1, "A-1"))), EITHER),
    Irregular("the customer empty, then again", before(lambda hot: len_field(hot.customer, b"")), EITHER),
    Irregular("the receipt in two parts",
              lambda hot: request_bytes(hot, receipt=receipt_bytes(LINE_1, tail=()))
              + len_field(hot.receipt, receipt_bytes(LINE_2, head=())), EITHER),
    Irregular("the receipt again, with a line of the same line_no",
              after(lambda hot: len_field(hot.receipt, receipt_bytes(LINE_1, head=(), tail=()))), EITHER),
    Irregular("the receipt again, past the total limit",
              after(lambda hot: len_field(hot.receipt, receipt_bytes(
                  [int_field(1, 3), int_field(4, 1_000), int_field(5, AMOUNT_MAX), int_field(6, AMOUNT_MAX)],
                  head=(), tail=()))), EITHER),
    Irregular("a receipt of no bytes", lambda hot: request_bytes(hot, receipt=b""), EITHER),
    Irregular("a customer of no bytes", lambda hot: request_bytes(hot, customer=b""), EITHER),
    # occurred_at (AccrueRequest field 6, a Timestamp): read by both paths, or left to protobuf.
    Irregular("occurred_at", after(lambda hot: len_field(6, int_field(1, 1_780_300_800) + int_field(2, 5_000_000))),
              TAKEN, accrue_only=True),
    Irregular("occurred_at of no bytes (1970)", after(lambda hot: len_field(6, b"")), EITHER, accrue_only=True),
    Irregular("occurred_at nanos negative",
              after(lambda hot: len_field(6, int_field(1, 1_780_300_800) + int_field(2, -1))), EITHER, accrue_only=True),
    Irregular("occurred_at past year 9999", after(lambda hot: len_field(6, int_field(1, 253_402_300_800))), EITHER,
              accrue_only=True),
    Irregular("occurred_at seconds negative", after(lambda hot: len_field(6, int_field(1, -5))), EITHER,
              accrue_only=True),
    Irregular("occurred_at twice", after(lambda hot: len_field(6, int_field(1, 5)) + len_field(6, int_field(2, 7))),
              EITHER, accrue_only=True),
    Irregular("occurred_at as a varint", after(lambda hot: int_field(6, 5)), EITHER, accrue_only=True),
    # Varints.
    Irregular("a varint of 11 bytes", a_redeem_varint(b"\xff" * 10 + b"\x00"), PROTOBUF_REFUSES),
    Irregular("a tag of 11 bytes", before(lambda hot: b"\x88" + b"\x80" * 9 + b"\x00" + b"\x01"), PROTOBUF_REFUSES),
    *(Irregular(f"a value stretched to {size} bytes", a_redeem_varint(stretched_varint(100, size)), EITHER)
      for size in (2, 5, 9, 10)),
    Irregular("a 10-byte varint whose last byte is past 64 bits", a_redeem_varint(b"\xe4" + b"\x80" * 8 + b"\x02"), EITHER),
    Irregular("redeem_points the smallest int64", a_redeem_varint(varint(-(2**63))), EITHER),
    *(Irregular(f"a tag stretched to {size} bytes", stretched_tag(size), EITHER) for size in (2, 5)),
    *(Irregular(f"a tag stretched to {size} bytes", stretched_tag(size), PROTOBUF_REFUSES) for size in (6, 10)),
    *(Irregular(f"a length stretched to {size} bytes", stretched_length(size), EITHER) for size in (2, 5)),
    *(Irregular(f"a length stretched to {size} bytes", stretched_length(size), PROTOBUF_REFUSES) for size in (6, 10)),
    Irregular("line_no past uint32 (protobuf keeps the low 32 bits)", in_line(int_field(1, 2**32 + 1)), EITHER),
    Irregular("line_no 2**32 (its low 32 bits are 0)", in_line(int_field(1, 2**32)), EITHER),
    Irregular("no_earn 2", in_line(int_field(7, 2)), EITHER),
    Irregular("no_discount 2**40", in_line(int_field(8, 2**40)), EITHER),
    Irregular("a length past the end", lambda hot: request_bytes(hot) + tag(hot.unknown, LEN) + b"\x05ab", PROTOBUF_REFUSES),
    # A known field of another wire type: protobuf keeps it aside as an unknown field.
    Irregular("request_id as a varint", after(lambda hot: int_field(1, 5)), EITHER, accrue_only=True),
    Irregular("the customer as a varint", after(lambda hot: int_field(hot.customer, 5)), EITHER),
    Irregular("redeem_points as bytes", after(lambda hot: len_field(hot.redeem_points, b"\x05")), EITHER),
    Irregular("redeem_points as fixed64", after(lambda hot: tag(hot.redeem_points, I64) + bytes(8)), EITHER),
    Irregular("a line as a varint", in_receipt(int_field(4, 5)), EITHER),
    Irregular("line_no as bytes", in_line(len_field(1, b"\x01")), EITHER),
    Irregular("sku as a varint", in_line(int_field(2, 5)), EITHER),
    Irregular("a customer id as a varint", lambda hot: request_bytes(hot, customer=CARD + int_field(1, 5)), EITHER),
]

BAD_UTF8 = {
    "byte 0xff": b"\xff",
    "a lone continuation byte": b"a\x80b",
    "an overlong '/'": b"\xc0\xaf",
    "a surrogate": b"\xed\xa0\x80",
    "past U+10FFFF": b"\xf4\x90\x80\x80",
    "cut inside a character": "café".encode()[:-1],
}


CUSTOMER_ID_NUMBERS = {"account_id": 1, "card": 2, "phone": 3}
RECEIPT_TEXT_NUMBERS = {"store_id": 1, "terminal_id": 2, "receipt_no": 3, "region": 5, "channel": 6, "payment_method": 7}
LINE_TEXT_NUMBERS = {"sku": 2, "category": 3, "brand": 9}


def with_text(hot: Hot, where: str, *payloads: bytes) -> bytes:
    """The plain request with the string field `where` written once for each of `payloads`, after
    its own value where it has one: the last of them is the field's value."""
    if where == "request_id":
        first, *rest = payloads
        return request_bytes(hot, request_id=first, tail=b"".join(len_field(hot.request_id, value) for value in rest))
    if where in CUSTOMER_ID_NUMBERS:
        return request_bytes(hot, customer=b"".join(len_field(CUSTOMER_ID_NUMBERS[where], value) for value in payloads))
    if where in RECEIPT_TEXT_NUMBERS:
        fields = [len_field(RECEIPT_TEXT_NUMBERS[where], value) for value in payloads]
        return request_bytes(hot, receipt=receipt_bytes(tail=[*RECEIPT_TAIL, *fields]))
    fields = [len_field(LINE_TEXT_NUMBERS[where], value) for value in payloads]
    return request_bytes(hot, receipt=receipt_bytes([*LINE_1, *fields], LINE_2))


STRING_FIELDS = ("request_id", "account_id", "card", "phone", "store_id", "terminal_id", "receipt_no", "region",
                 "channel", "payment_method", "sku", "category", "brand")


def _cases(table):
    return [pytest.param(hot, case, id=f"{hot}: {case.name}") for hot in HOT for case in table
            if hot is ACCRUE or not case.accrue_only]


def _string_fields():
    return [pytest.param(hot, where, id=f"{hot}: {where}") for hot in HOT for where in STRING_FIELDS
            if hot is ACCRUE or where != "request_id"]


class TestIrregularBytes:
    def test_the_bytes_written_by_hand_are_protobufs_and_taken(self):
        for hot in HOT:
            fast, slow = decode_both(hot, plain_message(hot).SerializeToString())
            assert fast is not None

    @pytest.mark.parametrize("hot,case", _cases(IRREGULAR))
    def test_irregular_bytes_are_built_as_convert_builds_them_or_left(self, hot, case):
        data = case.build(hot)
        fast, slow = decode_both(hot, data)
        if case.expect == TAKEN:
            assert slow.value is not None, slow.refusal
            assert fast is not None, "the fast path left bytes it reads"
        elif case.expect == PROTOBUF_REFUSES:
            assert slow.refusal.startswith("protobuf"), slow.refusal or slow.value

    @pytest.mark.parametrize("hot,where", _string_fields())
    def test_a_string_that_is_not_utf8_is_left_to_protobuf_which_refuses_it(self, hot, where):
        for name, payload in BAD_UTF8.items():
            fast, slow = decode_both(hot, with_text(hot, where, payload))
            assert slow.refusal.startswith("protobuf"), (name, slow.refusal or slow.value)
        fast, slow = decode_both(hot, with_text(hot, where, "Молоко 😀".encode()))
        assert fast is not None  # the same field, valid: taken

    @pytest.mark.parametrize("hot,where", _string_fields())
    def test_a_string_not_utf8_and_then_again_valid_is_left_to_protobuf_which_refuses_it(self, hot, where):
        # Protobuf checks every occurrence of a string field, also one that a later one replaces.
        fast, slow = decode_both(hot, with_text(hot, where, b"\xff", b"ok"))
        assert slow.refusal.startswith("protobuf"), slow.refusal or slow.value

    def test_every_prefix_of_a_request_is_built_as_convert_builds_it_or_left(self):
        for hot in HOT:
            data = request_bytes(hot)
            refused_by_protobuf = 0
            for size in range(len(data)):
                fast, slow = decode_both(hot, data[:size])
                refused_by_protobuf += slow.refusal.startswith("protobuf")
            assert refused_by_protobuf > len(data) // 2  # most cuts fall inside a field

    def test_a_request_cut_inside_its_receipt_is_not_a_message_and_left(self):
        for hot in HOT:
            data = request_bytes(hot)
            cut = data[: data.index("Хлеб".encode()) + 3]
            fast, slow = decode_both(hot, cut)
            assert slow.refusal.startswith("protobuf")
            assert fast is None


# ---------------------------------------------------------------------------------------------
# 3. Batches: each operation or event its own


def redeem_requests():
    return st.builds(
        processing_pb2.RedeemRequest,
        request_id=REQUEST_IDS, customer=CUSTOMERS, points=st.integers(-1, 10_000),
        receipt_total_minor=st.integers(0, 10**6), mode=st.sampled_from([0, 1, 2, 3]), store_id=short_text(),
    )


def rollback_requests():
    returns = st.lists(st.builds(processing_pb2.ReturnLine, line_no=st.integers(0, 3), qty_milli=st.integers(0, 2_000)),
                       max_size=2)
    return st.one_of(
        st.builds(processing_pb2.RollbackRequest, request_id=REQUEST_IDS, transaction_id=st.integers(0, 10**6),
                  return_lines=returns),
        st.builds(processing_pb2.RollbackRequest, request_id=REQUEST_IDS, original_request_id=REQUEST_IDS),
    )


@st.composite
def _faulty_accrues(draw):
    request = draw(requests(ACCRUE))
    draw(st.sampled_from(FAULTS)).apply(draw, request)
    return request


OPERATIONS = st.one_of(
    requests(ACCRUE).map(lambda request: Op(accrue=request)),
    _faulty_accrues().map(lambda request: Op(accrue=request)),
    redeem_requests().map(lambda request: Op(redeem=request)),
    rollback_requests().map(lambda request: Op(rollback=request)),
    st.builds(Op),
)


def is_plain_valid_accrue(request) -> bool:
    try:
        convert.accrue_op(request)
    except convert.InvalidArgument:
        return False
    return is_plain(request)


def assert_operation_item(operation, item) -> None:
    """An item of wire.batch_operations: the operation's AccrueOp as convert.py builds it, or its own bytes."""
    if type(item) is AccrueOp:
        assert operation.WhichOneof("op") == "accrue"
        assert item == convert.accrue_op(operation.accrue)
        return
    assert item == operation.SerializeToString()
    if operation.WhichOneof("op") == "accrue":
        assert not is_plain_valid_accrue(operation.accrue), "the fast path left a plain valid accrue"


def purchase_default(event) -> processing_pb2.AccrueRequest:
    """The purchase of an event as the server commits it: with no request_id of its own, the event's id."""
    purchase = processing_pb2.AccrueRequest()
    purchase.CopyFrom(event.purchase)
    if not purchase.request_id:
        purchase.request_id = event.event_id
    return purchase


def assert_event_item(event, item) -> None:
    """An item of wire.event_batch: (event_id, the purchase's AccrueOp as convert.py builds it), or the event's bytes."""
    if type(item) is tuple:
        event_id, op = item
        assert event.WhichOneof("payload") == "purchase"
        assert event_id == event.event_id
        assert event.event_id != ""
        assert op == convert.accrue_op(purchase_default(event))
        return
    assert item == event.SerializeToString()
    if event.WhichOneof("payload") == "purchase" and has_valid_event_id(event):
        assert not is_plain_valid_accrue(purchase_default(event)), "the fast path left a plain valid purchase"


def has_valid_event_id(event) -> bool:
    try:
        convert.event_id(event.event_id)
    except convert.InvalidArgument:
        return False
    return True


EVENT_IDS = st.one_of(REQUEST_IDS, REQUEST_IDS, st.just(""), text_of_bytes(REQUEST_ID_BYTES_MAX + 1))
TIMESTAMPS = st.builds(Timestamp, seconds=st.integers(0, 2**40), nanos=st.integers(0, 999_999_999))


def _purchase_event(event_id, request, own_request_id, occurred_at):
    if not own_request_id:
        request.request_id = ""
    event = Event(event_id=event_id, purchase=request)
    if occurred_at is not None:
        event.occurred_at.CopyFrom(occurred_at)
    return event


CUSTOMER_EVENTS = st.builds(
    processing_pb2.CustomerEvent, customer=CUSTOMERS, type=st.sampled_from(["registration", "top_up"]),
    attributes=st.dictionaries(short_text(1), short_text(), max_size=2), amount_minor=st.integers(0, 10**6),
)
EVENTS = st.one_of(
    st.builds(_purchase_event, EVENT_IDS, requests(ACCRUE), st.booleans(), st.none() | TIMESTAMPS),
    st.builds(_purchase_event, EVENT_IDS, _faulty_accrues(), st.booleans(), st.none() | TIMESTAMPS),
    st.builds(lambda event_id, request: Event(event_id=event_id, redeem=request), EVENT_IDS, redeem_requests()),
    st.builds(lambda event_id, request: Event(event_id=event_id, rollback=request), EVENT_IDS, rollback_requests()),
    st.builds(lambda event_id, message: Event(event_id=event_id, customer_event=message), EVENT_IDS, CUSTOMER_EVENTS),
    st.builds(Event, event_id=EVENT_IDS),
)


class TestBatchOperations:
    @DECODING
    @given(operations=st.lists(OPERATIONS, max_size=6))
    def test_each_operation_is_its_accrue_op_or_its_own_bytes_in_order(self, operations):
        # The request written operation by operation, so that each one's bytes are known.
        items = wire.batch_operations(b"".join(len_field(1, operation.SerializeToString()) for operation in operations))
        assert len(items) == len(operations)
        for operation, item in zip(operations, items):
            assert_operation_item(operation, item)

    def test_an_operation_that_is_not_a_message_comes_back_as_its_bytes(self):
        good = Op(accrue=plain_message(ACCRUE))
        broken = len_field(1, request_bytes(ACCRUE)[:-3])  # an accrue cut short
        data = len_field(1, good.SerializeToString()) + len_field(1, broken) + len_field(1, b"\xff")
        items = wire.batch_operations(data)
        assert len(items) == 3
        assert items[0] == convert.accrue_op(good.accrue)
        assert items[1:] == [broken, b"\xff"]

    def test_an_operation_with_a_second_payload_comes_back_as_its_bytes(self):
        accrue = len_field(1, request_bytes(ACCRUE))
        for operation in (accrue + accrue, accrue + len_field(2, b""), len_field(3, b"") + accrue, accrue + int_field(2, 1)):
            assert wire.batch_operations(len_field(1, operation)) == [operation]
            assert processing_pb2.Operation.FromString(operation).WhichOneof("op") is not None  # for protobuf to decide

    def test_an_unknown_field_of_the_request_and_of_an_operation_is_passed_over(self):
        operation = len_field(1, request_bytes(ACCRUE)) + int_field(9, 1)
        items = wire.batch_operations(int_field(2, 5) + len_field(1, operation) + len_field(7, b"x"))
        assert items == [convert.accrue_op(plain_message(ACCRUE))]

    def test_a_request_that_is_not_plain_protobuf_is_none(self):
        data = processing_pb2.ProcessBatchRequest(operations=[Op(accrue=plain_message(ACCRUE))] * 2).SerializeToString()
        for size in range(1, len(data)):
            if size == len(data) // 2:
                continue  # the cut between the two operations: a batch of the first
            assert wire.batch_operations(data[:size]) is None, size
            with pytest.raises(DecodeError):
                processing_pb2.ProcessBatchRequest.FromString(data[:size])
        assert wire.batch_operations(data[: len(data) // 2]) == [convert.accrue_op(plain_message(ACCRUE))]
        assert wire.batch_operations(int_field(1, 5)) is None  # operations as a varint
        assert wire.batch_operations(b"") == []


class TestEventBatch:
    @DECODING
    @given(events=st.lists(EVENTS, max_size=6))
    def test_each_event_is_its_purchase_or_its_own_bytes_in_order(self, events):
        # The batch written event by event: protobuf writes a map's entries in no fixed order.
        items = wire.event_batch(b"".join(len_field(1, event.SerializeToString()) for event in events))
        assert len(items) == len(events)
        for event, item in zip(events, items):
            assert_event_item(event, item)

    def test_a_purchase_without_a_request_id_takes_the_event_id(self):
        purchase = plain_message(ACCRUE)
        purchase.request_id = ""
        event = Event(event_id="billing/ev-1", occurred_at=Timestamp(seconds=1_780_300_800, nanos=5), purchase=purchase)
        ((event_id, op),) = wire.event_batch(processing_pb2.EventBatch(events=[event]).SerializeToString())
        assert event_id == "billing/ev-1"
        assert op.request_id == "billing/ev-1"
        assert op == convert.accrue_op(purchase_default(event))

    def test_a_purchase_with_its_own_request_id_keeps_it_and_the_event_id_its_limit(self):
        at_limit = "é" * (REQUEST_ID_BYTES_MAX // 2)
        event = Event(event_id=at_limit, purchase=plain_message(ACCRUE))
        ((event_id, op),) = wire.event_batch(processing_pb2.EventBatch(events=[event]).SerializeToString())
        assert (event_id, op.request_id) == (at_limit, "pos-7/R-1881")
        assert op == convert.accrue_op(purchase_default(event))
        # One byte more: left to protobuf and the servicer, which refuse the event by its event_id.
        event.event_id = at_limit + "x"
        assert wire.event_batch(processing_pb2.EventBatch(events=[event]).SerializeToString()) == \
            [event.SerializeToString()]

    def test_an_event_left_to_protobuf_comes_back_as_its_bytes(self):
        purchase = plain_message(ACCRUE)
        anonymous = processing_pb2.AccrueRequest()
        anonymous.CopyFrom(purchase)
        anonymous.request_id = ""
        left = [
            Event(purchase=purchase),  # no event_id
            Event(event_id="e" * (REQUEST_ID_BYTES_MAX + 1), purchase=anonymous),  # the id it would take is too long
            Event(event_id="ev-2", redeem=processing_pb2.RedeemRequest(request_id="r", points=5)),
            Event(event_id="ev-3", rollback=processing_pb2.RollbackRequest(request_id="r", transaction_id=5)),
            Event(event_id="ev-4", customer_event=processing_pb2.CustomerEvent(type="registration")),
            Event(event_id="ev-5"),
        ]
        items = wire.event_batch(processing_pb2.EventBatch(events=left).SerializeToString())
        assert items == [event.SerializeToString() for event in left]

    def test_an_occurred_at_that_is_not_a_message_leaves_the_event(self):
        event = text_field(1, "ev-1") + len_field(2, b"\x08") + len_field(3, request_bytes(ACCRUE))
        assert wire.event_batch(len_field(1, event)) == [event]
        with pytest.raises(DecodeError):
            Event.FromString(event)

    def test_an_event_id_not_utf8_and_then_again_valid_is_left_to_protobuf_which_refuses_it(self):
        event = text_field(1, "") + len_field(1, b"\xff") + text_field(1, "ev-1") + len_field(3, request_bytes(ACCRUE))
        with pytest.raises(DecodeError):
            Event.FromString(event)
        assert wire.event_batch(len_field(1, event)) == [event]

    def test_a_batch_that_is_not_plain_protobuf_is_none(self):
        data = processing_pb2.EventBatch(events=[Event(event_id="ev-1", purchase=plain_message(ACCRUE))]).SerializeToString()
        for size in range(1, len(data)):
            assert wire.event_batch(data[:size]) is None, size
        assert wire.event_batch(int_field(1, 1)) is None


# ---------------------------------------------------------------------------------------------
# 4. Answers: written as protobuf writes what convert.py fills

OWN_LOTS_TOML = """
[[campaigns]]
id = "fresh-week"
name = "Fresh produce: 50.00 (5000) in points that last a week"
when = { skus = ["FRESH"] }
effect = { kind = "earn_fixed", points = 5000, points_lifetime_days = 7 }

[[campaigns]]
id = "after-the-return-window"
name = "0.40 (40) in points that activate after a 3-day return window"
when = { skus = ["LATER"] }
effect = { kind = "earn_fixed", points = 40, activation_delay_days = 3 }
"""
MAP_SIZE_BYTES = 256 * 1024**2
HOLD_TTL_S = 900
NOW_MS = T0_MS
PROMO_CODE = "SPRING-2026"  # of the sample program's campaign promo-500-off
BY_CARD = common_pb2.Customer(card="C-1")


class Books:
    """A real ledger over the sample program and two campaigns whose points form lots of their own,
    with account A-1 (card C-1, 10,000.00 in points) to buy for and account A-2 for events."""

    def __init__(self, directory):
        extra_rules = directory / "own-lots.toml"
        extra_rules.write_text(OWN_LOTS_TOML)
        program = Program(load_program([REPO / "config" / "rules", extra_rules]))
        self.ledger = Ledger(str(directory / "ledger"), program, MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
        self._numbers = itertools.count(1)
        for outcome in self.commit(
            CreateAccountOp("open-A-1", b"d", "A-1"),
            CreateAccountOp("open-A-2", b"d", "A-2"),
            IssueCardOp("card-C-1", b"d", "A-1", "C-1"),
            AdjustOp("fund-A-1", b"d", Customer(IdKind.ACCOUNT, "A-1"), 1_000_000, "goodwill", "op-7"),
            PromoCodesOp("codes", b"d", "promo-500-off", codes=(PROMO_CODE,)),
        ):
            assert outcome.code == Code.OK, outcome.message

    def request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._numbers)}"

    def commit(self, *ops) -> list[Outcome]:
        return self.ledger.apply(list(ops), NOW_MS)

    def accrue(self, *lines, redeem_points: int = 0, promo_codes=()) -> Outcome:
        request = processing_pb2.AccrueRequest(
            request_id=self.request_id("buy"), customer=BY_CARD, redeem_points=redeem_points,
            receipt=common_pb2.Receipt(store_id="store-7", receipt_no="R-1", lines=lines, promo_codes=promo_codes),
        )
        (outcome,) = self.commit(convert.accrue_op(request))
        return outcome


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    books = Books(tmp_path_factory.mktemp("wire"))
    yield books
    books.ledger.close()


def assert_written_as(expected_message, written: bytes) -> None:
    """The fast path's bytes are protobuf's own for the message convert.py fills."""
    assert type(expected_message).FromString(written) == expected_message
    assert written == expected_message.SerializeToString()


def thousand_lines() -> list[common_pb2.Line]:
    """The most lines, of 100,000,000.00 each: an answer's calculation of more than 16 KiB."""
    return [line(n, 10**10, category="grocery/dairy/milk" if n % 2 else "household/soap") for n in range(1, LINES_MAX + 1)]


class TestAnswers:
    @LEDGER
    @given(request=requests(ACCRUE), card_bin=st.sampled_from(["", "220070"]), promo=st.booleans())
    def test_an_accrue_answer_is_the_bytes_protobuf_writes(self, books, request, card_bin, promo):
        request.request_id = books.request_id("drawn")
        request.customer.CopyFrom(BY_CARD)
        request.redeem_points = 0
        request.receipt.card_bin = card_bin
        if promo:
            request.receipt.promo_codes.append(PROMO_CODE)
        (outcome,) = books.commit(convert.accrue_op(request))
        assert outcome.code == Code.OK, outcome.message
        assert_written_as(pb_responses.accrue_response(outcome.body), wire.accrue_response(outcome.body))

    @LEDGER
    @given(request=requests(CALCULATE), promo=st.booleans())
    def test_a_calculate_answer_is_the_bytes_protobuf_writes(self, books, request, promo):
        request.customer.CopyFrom(BY_CARD)
        request.redeem_points = 0
        if promo:
            request.receipt.promo_codes.append(PROMO_CODE)
        outcome = books.ledger.calculate(convert.calculate_query(request), NOW_MS)
        assert outcome.code == Code.OK, outcome.message
        assert_written_as(pb_responses.calculate_response(outcome.body), wire.calculate_response(outcome.body))

    def test_an_answer_with_redeemed_points_and_lots_of_their_own(self, books):
        outcome = books.accrue(line(1, 50_000, sku="FRESH"), line(2, 1_000, sku="LATER"),
                               line(3, 20_000, category="grocery/dairy/milk"), redeem_points=10_000)
        assert outcome.code == Code.OK, outcome.message
        calculation = outcome.body.calculation
        assert len(calculation.lots) == 2
        assert all(line_result.redeemed_points for line_result in calculation.lines)
        assert calculation.discount_minor > 0
        assert_written_as(pb_responses.accrue_response(outcome.body), wire.accrue_response(outcome.body))

    def test_an_answer_with_captured_holds_and_money_due(self, books):
        held = books.commit(convert.redeem_op(processing_pb2.RedeemRequest(
            request_id=books.request_id("hold"), customer=BY_CARD, points=3_000, receipt_total_minor=10**9,
            mode=processing_pb2.REDEEM_MODE_HOLD)))[0]
        assert held.code == Code.OK, held.message
        request = processing_pb2.AccrueRequest(
            request_id=books.request_id("buy"), customer=BY_CARD, redeem_points=1_000,
            capture_hold_ids=[held.body.transaction_id],
            receipt=common_pb2.Receipt(store_id="store-7", receipt_no="R-1", lines=[line(1, 7_001), line(2, 5_000)]))
        (outcome,) = books.commit(convert.accrue_op(request))
        assert outcome.code == Code.OK, outcome.message
        calculation = outcome.body.calculation
        assert calculation.captured_points == 3_000
        assert all(line_result.captured_points for line_result in calculation.lines)
        assert calculation.due_minor > 0
        assert_written_as(pb_responses.accrue_response(outcome.body), wire.accrue_response(outcome.body))

    def test_a_calculation_explained_with_a_promo_code(self, books):
        request = processing_pb2.CalculateRequest(
            customer=BY_CARD, explain=True, redeem_points=5_000,
            receipt=common_pb2.Receipt(lines=[line(1, 250_000), line(2, 9_000, sku="FRESH")], promo_codes=[PROMO_CODE]),
        )
        outcome = books.ledger.calculate(convert.calculate_query(request), NOW_MS)
        assert outcome.code == Code.OK, outcome.message
        calculation = outcome.body.calculation
        assert [code.code for code in calculation.promo_codes] == [PROMO_CODE]
        assert len(calculation.explain) > 5
        assert calculation.lots
        assert_written_as(pb_responses.calculate_response(outcome.body), wire.calculate_response(outcome.body))

    def test_an_answer_of_the_most_lines(self, books):
        outcome = books.accrue(*thousand_lines())
        assert outcome.code == Code.OK, outcome.message
        expected = pb_responses.accrue_response(outcome.body)
        assert expected.calculation.ByteSize() >= 2**14  # its length takes three bytes
        assert_written_as(expected, wire.accrue_response(outcome.body))
        query = convert.calculate_query(processing_pb2.CalculateRequest(
            customer=BY_CARD, receipt=common_pb2.Receipt(lines=thousand_lines()), explain=True))
        calculated = books.ledger.calculate(query, NOW_MS)
        assert_written_as(pb_responses.calculate_response(calculated.body), wire.calculate_response(calculated.body))

    def test_an_answer_of_values_no_purchase_gives(self):
        # Negative balances, times inside a second and before it, text of every width: values the
        # sample program does not give, written all the same.
        calculation = Calculation(
            lines=(LineResult(LINE_NO_MAX, AMOUNT_MAX, 1, -5, 2**40, 2**41),), total_minor=AMOUNT_MAX, discount_minor=-1,
            payable_minor=0, earned_points=-(2**62), redeemable_points=1, redeemed_points=0,
            campaigns=(AppliedCampaign("Скидка 😀", "discount_percent", 0, 3), AppliedCampaign("", "", 0, 0)),
            ruleset_version="v" * 200, activate_at_ms=1, expire_at_ms=999,
            promo_codes=(PromoCodeResult("CODE-1", False, "unknown"), PromoCodeResult("", True)),
            explain=(CampaignExplain("base", True, "é" * 100), CampaignExplain("x", False, "")),
            lots=((1_500, 0, 5), (0, 2_000_000_001, -7)), captured_points=2**41, no_points_reason="card_blocked",
        )
        balance = Balance(active=-10, pending=0, held=3, available=-13, debt=10, next_expiry_at_ms=1_780_300_800_123,
                          next_expiry_points=2**63 - 1)
        result = AccrueResult(limits.TRANSACTION_ID_MAX, "счёт-1", calculation, balance, -3)
        assert_written_as(pb_responses.accrue_response(result), wire.accrue_response(result))
        empty = AccrueResult(0, "", Calculation((), 0, 0, 0, 0, 0, 0, (), "", 0, 0), Balance(), 0)
        assert_written_as(pb_responses.accrue_response(empty), wire.accrue_response(empty))


def expected_batch_response(outcomes) -> processing_pb2.ProcessBatchResponse:
    """The answer as the server filled it with protobuf and convert.py before wire.pyx."""
    response = processing_pb2.ProcessBatchResponse()
    for outcome in outcomes:
        result = response.results.add(code=outcome.code, reason=outcome.reason, message=outcome.message)
        body = outcome.body
        if type(body) is AccrueResult:
            pb_responses.fill_accrue_response(result.accrue, body)
        elif type(body) is RedeemResult:
            result.redeem.CopyFrom(convert.redeem_response(body))
        elif type(body) is RollbackResult:
            result.rollback.CopyFrom(convert.rollback_response(body))
    return response


ACK_POINTS = {  # kassa.v1.EventAck.points of a committed event, by its body
    AccrueResult: lambda body: body.calculation.earned_points,
    RedeemResult: lambda body: body.redeemed_points or body.held_points,
    RollbackResult: lambda body: body.clawed_back_points,
    EventResult: lambda body: body.points,
}


def expected_acks(event_ids, outcomes) -> processing_pb2.AckBatch:
    """The acks as the server filled them with protobuf before wire.pyx."""
    batch = processing_pb2.AckBatch()
    for event_id, outcome in zip(event_ids, outcomes, strict=True):
        body = outcome.body
        if outcome.code:
            batch.acks.add(event_id=event_id, code=outcome.code, reason=outcome.reason, message=outcome.message)
        else:
            points = ACK_POINTS[type(body)](body) if body is not None else 0
            batch.acks.add(event_id=event_id, transaction_id=getattr(body, "transaction_id", 0), points=points)
    return batch


@pytest.fixture(scope="module")
def outcomes(books) -> list[Outcome]:
    """An outcome of each kind a batch or a stream answers: committed and refused, with and without a body."""
    bought = convert.accrue_op(processing_pb2.AccrueRequest(
        request_id=books.request_id("buy"), customer=BY_CARD,
        receipt=common_pb2.Receipt(lines=[line(1, 40_000), line(2, 30_000, sku="FRESH")])))
    account = Customer(IdKind.ACCOUNT, "A-1")
    ops = [
        bought,
        RedeemOp(books.request_id("spend"), b"d", account, 300, 10**9),
        RedeemOp(books.request_id("hold"), b"d", account, 200, 10**9, hold=True),
        RedeemOp(books.request_id("spend"), b"d", account, POINTS_MAX, AMOUNT_MAX),
        RollbackOp(books.request_id("cancel"), b"d", original_request_id=bought.request_id),
        msgspec.structs.replace(bought, request_id=books.request_id("buy"), customer=Customer(IdKind.CARD, "C-404")),
        EventOp(books.request_id("event"), b"d", Customer(IdKind.ACCOUNT, "A-2"), "registration"),
    ]
    committed = books.commit(*ops)
    assert [outcome.code for outcome in committed] == [Code.OK] * 3 + [Code.FAILED_PRECONDITION] + [Code.OK] \
        + [Code.NOT_FOUND, Code.OK], [outcome.message for outcome in committed]
    assert committed[2].body.held_points == 200
    assert committed[3].reason == Reason.INSUFFICIENT_POINTS
    assert committed[4].body.clawed_back_points > 0
    assert committed[6].body.points == 20_000  # the welcome bonus
    return [
        *committed,
        books.accrue(*thousand_lines()),
        rejected(Code.INVALID_ARGUMENT, "operations[3].accrue.receipt.lines[0].qty_milli: must be >= 1, got 0"),
        Outcome(Code.PERMISSION_DENIED, message="store 'магазин-7' is not one of this key's stores 😀"),
        rejected(Code.ABORTED, "a message whose length takes two bytes: " + "x" * 200),
        Outcome(Code.OK),
    ]


class TestBatchAnswers:
    @LEDGER
    @given(data=st.data())
    def test_a_batch_answer_is_the_bytes_protobuf_writes(self, outcomes, data):
        in_batches = [outcome for outcome in outcomes if type(outcome.body) is not EventResult]
        chosen = data.draw(st.lists(st.sampled_from(in_batches), max_size=8))
        assert_written_as(expected_batch_response(chosen), wire.batch_response(chosen, other_result))

    def test_a_batch_answer_of_every_outcome(self, outcomes):
        in_batches = [outcome for outcome in outcomes if type(outcome.body) is not EventResult]
        assert_written_as(expected_batch_response(in_batches), wire.batch_response(in_batches, other_result))
        assert wire.batch_response([], other_result) == b""

    @LEDGER
    @given(data=st.data())
    def test_an_ack_batch_is_the_bytes_protobuf_writes(self, outcomes, data):
        chosen = data.draw(st.lists(st.sampled_from(outcomes), max_size=8))
        event_ids = data.draw(st.lists(EVENT_IDS, min_size=len(chosen), max_size=len(chosen)))
        assert_written_as(expected_acks(event_ids, chosen), wire.ack_batch(event_ids, chosen))

    def test_an_ack_batch_of_every_outcome(self, outcomes):
        event_ids = [f"ev-{index}-é" for index in range(len(outcomes))]
        acks = processing_pb2.AckBatch.FromString(wire.ack_batch(event_ids, outcomes))
        assert acks == expected_acks(event_ids, outcomes)
        assert [ack.points for ack in acks.acks[:3]] == [
            outcomes[0].body.calculation.earned_points, 300, 200]  # earned, redeemed, held
        assert acks.acks[3].message == outcomes[3].message
        assert wire.ack_batch([], []) == b""


# ---------------------------------------------------------------------------------------------
# 5. The digest an Accrue is kept with


class TestDigest:
    def test_both_paths_put_the_digest_of_the_checked_values(self):
        request = plain_message(ACCRUE)
        fast = wire.accrue_op(request.SerializeToString())
        slow = convert.accrue_op(request)
        digest = wire.accrue_digest(slow.customer, slow.receipt, slow.redeem_points, slow.capture_hold_ids)
        assert len(digest) == wire.DIGEST_BYTES
        assert fast.digest == digest
        assert slow.digest == digest

    def test_the_same_request_written_otherwise_has_the_same_digest(self):
        digest = wire.accrue_op(request_bytes(ACCRUE)).digest
        reordered = request_bytes(ACCRUE, reverse=True, receipt=receipt_bytes(reverse_lines=True))
        assert wire.accrue_op(reordered).digest == digest
        assert wire.accrue_op(request_bytes(ACCRUE, tail=int_field(99, 1))).digest == digest
        merged = request_bytes(ACCRUE, lead=len_field(ACCRUE.customer, b""))  # the customer in two parts
        assert wire.accrue_op(merged) is None
        assert convert.accrue_op(processing_pb2.AccrueRequest.FromString(merged)).digest == digest

    def test_another_amount_on_one_line_gives_another_digest(self):
        # 1.5 x 3.33 = 4.995: 4.99 and 5.00 are both the line's amount, and two requests.
        rounded_up = request_bytes(ACCRUE, receipt=receipt_bytes([*LINE_1, int_field(6, 500)], LINE_2))
        down, up = wire.accrue_op(request_bytes(ACCRUE)), wire.accrue_op(rounded_up)
        assert up.receipt.lines[0].amount_minor == 500
        assert up.digest != down.digest

    def test_the_request_id_is_not_in_the_digest_and_what_is_asked_is(self):
        digest = convert.accrue_op(plain_message(ACCRUE)).digest
        assert wire.accrue_op(request_bytes(ACCRUE, request_id=b"pos-7/R-1882")).digest == digest
        assert wire.accrue_op(request_bytes(ACCRUE, redeem_points=101)).digest != digest
        assert wire.accrue_op(request_bytes(ACCRUE, customer=text_field(1, "C-1"))).digest != digest  # an account
        with_hold = plain_message(ACCRUE)
        with_hold.capture_hold_ids.append(7)
        assert convert.accrue_op(with_hold).digest != digest


# ---------------------------------------------------------------------------------------------
# 6. A real server

PROCESSING = "/kassa.v1.Processing"
ALREADY_USED = "request_id '{}' was used before with a different payload"


def _as_is(data: bytes) -> bytes:
    return data


def raw_call(kassa, method: str, data: bytes) -> bytes:
    call = kassa.channel().unary_unary(f"{PROCESSING}/{method}", request_serializer=_as_is, response_deserializer=_as_is)
    return call(data, timeout=CALL_TIMEOUT_S)


def stream_events(kassa, *batches: processing_pb2.EventBatch) -> list[processing_pb2.EventAck]:
    replies = kassa.processing.StreamEvents(iter(batches), timeout=CALL_TIMEOUT_S)
    return [ack for reply in replies for ack in reply.acks]


def purchase(request_id: str, *lines, account_id: str = "A-1", **receipt_fields) -> processing_pb2.AccrueRequest:
    return processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account_id),
        receipt=common_pb2.Receipt(store_id="store-1", receipt_no=request_id, lines=lines, **receipt_fields),
    )


def accrues(kassa, account_id: str) -> list[str]:
    """The request ids of the account's purchases, oldest first."""
    return [entry.request_id for entry in reversed(statement(kassa, account_id))
            if entry.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE]


class TestServer:
    def test_bytes_that_are_no_message_are_invalid_argument_naming_the_method(self, kassa):
        for method in ("Accrue", "Calculate", "ProcessBatch"):
            with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
                raw_call(kassa, method, b"\xff\xff")
            assert refusal.details.startswith(f"request: not a valid message for {PROCESSING}/{method}"), refusal.details
        stream = kassa.channel().stream_stream(f"{PROCESSING}/StreamEvents", request_serializer=_as_is,
                                               response_deserializer=_as_is)
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            list(stream(iter([b"\xff\xff"]), timeout=CALL_TIMEOUT_S))
        assert refusal.details.startswith(f"request: not a valid message for {PROCESSING}/StreamEvents"), refusal.details

    def test_a_batch_with_one_operation_that_is_no_message_is_refused_whole(self, kassa):
        open_account(kassa, "A-1")
        taken = Op(accrue=purchase("nm-0", line(1, 10_000))).SerializeToString()
        assert wire.batch_operations(len_field(1, taken)) != [taken]  # the fast path takes it
        not_utf8 = len_field(2, text_field(1, "nm-1") + len_field(6, b"\xff"))  # a redeem's store_id
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            raw_call(kassa, "ProcessBatch", len_field(1, taken) + len_field(1, not_utf8))
        assert refusal.details.startswith(f"request: not a valid message for {PROCESSING}/ProcessBatch"), refusal.details
        assert accrues(kassa, "A-1") == []  # the operation before it was not committed

    def test_a_batch_of_fast_and_left_operations_answers_each_in_order(self, kassa):
        open_account(kassa, "A-1")
        kassa.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
            request_id="codes-1", campaign_id="promo-500-off", codes=[PROMO_CODE]))
        seed = kassa.processing.Accrue(purchase("seed", line(1, 20_000)))
        assert seed.calculation.earned_points == 1_000
        operations = [
            Op(accrue=purchase("mb-0", line(1, 10_000))),
            Op(accrue=purchase("mb-1", line(1, 250_000), promo_codes=[PROMO_CODE])),
            Op(accrue=purchase("mb-2", line(1, 1_000), line(2, 500, qty_milli=0))),
            Op(redeem=processing_pb2.RedeemRequest(
                request_id="mb-3", customer=by_account("A-1"), points=300, receipt_total_minor=10**9,
                mode=processing_pb2.REDEEM_MODE_IMMEDIATE)),
            Op(rollback=processing_pb2.RollbackRequest(request_id="mb-4", original_request_id="mb-0")),
            Op(accrue=purchase("mb-5", line(1, 6_000))),
        ]
        fast = [wire.accrue_op(operation.accrue.SerializeToString()) is not None for operation in operations]
        assert fast == [True, False, False, False, False, True]  # 1: a promo code; 2: an invalid line

        results = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results

        assert [common_pb2.Code.Name(result.code) for result in results] == [
            "CODE_OK", "CODE_OK", "CODE_INVALID_ARGUMENT", "CODE_OK", "CODE_OK", "CODE_OK"]
        assert results[0].accrue.calculation.earned_points == 500
        assert [(code.code, code.accepted) for code in results[1].accrue.calculation.promo_codes] == [(PROMO_CODE, True)]
        assert results[1].accrue.calculation.discount_minor == 50_000
        assert results[1].accrue.calculation.earned_points == 10_000  # 5 % of 2,000.00 after the discount
        assert results[2].message.startswith("operations[2].accrue.receipt.lines[1].qty_milli:"), results[2].message
        assert results[2].WhichOneof("result") is None
        assert results[3].redeem.redeemed_points == 300
        assert results[4].rollback.reversed_transaction_id == results[0].accrue.transaction_id
        assert results[4].rollback.clawed_back_points == 500
        assert results[5].accrue.calculation.earned_points == 300
        assert results[5].accrue.balance.active_points == 1_000 + 500 + 10_000 - 300 - 500 + 300
        assert accrues(kassa, "A-1") == ["seed", "mb-0", "mb-1", "mb-5"]

    def test_an_accrue_is_replayed_whichever_call_and_path_bring_it_again(self, kassa):
        open_account(kassa, "A-1")
        request = purchase("pos-7/R-1881", line(1, 333, qty_milli=1_500), line(2, 12_000))  # 4.99 and 120.00
        assert wire.accrue_op(request.SerializeToString()) is not None
        # The customer in two parts, which protobuf merges: the same request, left to protobuf and convert.py.
        left = len_field(ACCRUE.customer, b"") + request.SerializeToString()
        assert processing_pb2.AccrueRequest.FromString(left) == request
        assert wire.accrue_op(left) is None

        first = kassa.processing.Accrue(request)
        unary_left = processing_pb2.AccrueResponse.FromString(raw_call(kassa, "Accrue", left))
        batch = processing_pb2.ProcessBatchResponse.FromString(raw_call(
            kassa, "ProcessBatch", len_field(1, len_field(1, request.SerializeToString())) + len_field(1, len_field(1, left))))
        anonymous = processing_pb2.AccrueRequest()
        anonymous.CopyFrom(request)
        anonymous.request_id = ""
        acks = stream_events(kassa, processing_pb2.EventBatch(events=[
            Event(event_id="billing/ev-1", purchase=request),
            Event(event_id="pos-7/R-1881", purchase=anonymous),  # its request_id is the event's id
        ]))

        assert unary_left == first
        assert [result.code for result in batch.results] == [common_pb2.CODE_OK] * 2
        assert [result.accrue for result in batch.results] == [first, first]
        assert [(ack.code, ack.transaction_id, ack.points) for ack in acks] == \
            [(common_pb2.CODE_OK, first.transaction_id, first.calculation.earned_points)] * 2
        assert accrues(kassa, "A-1") == ["pos-7/R-1881"]

        changed = processing_pb2.AccrueRequest()
        changed.CopyFrom(request)
        changed.receipt.lines[0].amount_minor = 500  # 1.5 x 3.33 = 4.995: rounded up, still a valid line
        assert wire.accrue_op(changed.SerializeToString()) is not None
        reused = ALREADY_USED.format("pos-7/R-1881")
        with refused(grpc.StatusCode.ALREADY_EXISTS) as refusal:
            kassa.processing.Accrue(changed)
        assert refusal.details == reused
        (result,) = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=[Op(accrue=changed)])).results
        assert (result.code, result.message) == (common_pb2.CODE_ALREADY_EXISTS, reused)
        (ack,) = stream_events(kassa, processing_pb2.EventBatch(events=[Event(event_id="billing/ev-2", purchase=changed)]))
        assert (ack.code, ack.message, ack.transaction_id) == (common_pb2.CODE_ALREADY_EXISTS, reused, 0)
        assert accrues(kassa, "A-1") == ["pos-7/R-1881"]
