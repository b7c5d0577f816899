# cython: language_level=3
"""The checks of a request's values: one place for both readers of the hot requests.

A request arrives as bytes; server/wire.pyx (C) turns the plain ones into core values and hands the
rest to protobuf, which server/convert.py turns into the same values. Both then call the checks
here, so a request is checked once, on plain values, and every refusal names the field as the
client wrote it (`receipt.lines[2].amount_minor`). Each check tests first and builds its message
only for a field that fails: they run for every field of every request, so the receipt's line
loop is C (compiled by Cython like wire.pyx); the rest is plain Python.
"""

from libc.stdint cimport int64_t

from kassa.core_ext import limits, promo
from kassa.core_ext import model as m

PROMO_CODES_PER_RECEIPT_MAX = 16  # promo codes presented with one receipt


class InvalidArgument(Exception):
    """The request is malformed; the message names the field."""


cpdef check(condition, message):
    if not condition:
        raise InvalidArgument(message)


cpdef too_long(value, bytes_max):
    # A character is at most 4 bytes of UTF-8: encode only when the length could be over.
    return len(value) * 4 > bytes_max and len(value.encode()) > bytes_max


cpdef text(value, field, bytes_max, required=True):
    if required and not value:
        raise InvalidArgument(f"{field}: must not be empty")
    if too_long(value, bytes_max):
        raise InvalidArgument(f"{field}: longer than {bytes_max} bytes")
    return value


cpdef request_id(value, field="request_id"):
    return text(value, field, limits.REQUEST_ID_BYTES_MAX)


cpdef amount(value, field, most, least=0):
    if value < least:
        raise InvalidArgument(f"{field}: must be >= {least}, got {value}")
    if value > most:
        raise InvalidArgument(f"{field}: must be <= {most}, got {value}")
    return value


cdef int64_t QTY_MAX = limits.QTY_MILLI_MAX
cdef int64_t AMOUNT_MAX = limits.AMOUNT_MINOR_MAX
cdef Py_ssize_t ID_BYTES_MAX = limits.IDENTIFIER_BYTES_MAX
cdef Py_ssize_t CATEGORY_BYTES_MAX = limits.CATEGORY_BYTES_MAX
# Strings of at most a quarter of a byte limit fit it whatever they hold (UTF-8: <= 4 bytes a
# character): only longer ones are measured in bytes.
cdef Py_ssize_t ID_CHARS_SAFE = ID_BYTES_MAX // 4
cdef Py_ssize_t CATEGORY_CHARS_SAFE = CATEGORY_BYTES_MAX // 4

CUSTOMER_FIELDS = {m.IdKind.ACCOUNT: "account_id", m.IdKind.CARD: "card", m.IdKind.PHONE: "phone"}


cpdef customer(value, field="customer"):
    """None: the request set none of the customer's ids."""
    if value is None:
        raise InvalidArgument(f"{field}: set one of account_id, card, phone")
    text(value.value, f"{field}.{CUSTOMER_FIELDS[value.kind]}", limits.IDENTIFIER_BYTES_MAX)
    return value


cdef int64_t _line_amount(line, set seen) except -2:
    """The line's amount_minor, its number added to `seen`, when the line passes the combined test;
    -1 when it fails it (`_explain_line` then says why)."""
    cdef int64_t line_no, qty, price, amount
    number = line.line_no
    try:
        line_no, qty, price, amount = number, line.qty_milli, line.price_minor, line.amount_minor
    except OverflowError:  # beyond 64 bits: `_explain_line` names the field with Python's integers
        return -1
    if line_no <= 0 or number in seen:
        return -1
    if not (0 < qty <= QTY_MAX and 0 <= price <= AMOUNT_MAX and 0 <= amount <= AMOUNT_MAX):
        return -1
    # |amount * 1000 - qty * price| < 1000, without overflow: qty * price <= amount * 1000 + 999 first.
    if price and qty > (amount * 1000 + 999) // price:
        return -1
    if not -1000 < amount * 1000 - qty * price < 1000:
        return -1
    cdef str sku = line.sku, category = line.category, brand = line.brand
    if (
        (len(sku) > ID_CHARS_SAFE and too_long(sku, ID_BYTES_MAX))
        or (len(category) > CATEGORY_CHARS_SAFE and too_long(category, CATEGORY_BYTES_MAX))
        or (len(brand) > ID_CHARS_SAFE and too_long(brand, ID_BYTES_MAX))
    ):
        return -1
    seen.add(number)
    return amount


cpdef receipt(value, str field="receipt"):
    """The receipt's lines and texts. The loop is the hot path of every purchase: one combined test
    per line, and the field-by-field explanation only for a line that fails it."""
    lines = value.lines
    cdef Py_ssize_t count = len(lines), index
    cdef int64_t total = 0  # at most LINES_PER_RECEIPT_MAX lines of at most AMOUNT_MINOR_MAX each
    if not 0 < count <= limits.LINES_PER_RECEIPT_MAX:
        check(count > 0, f"{field}.lines: a receipt needs at least one line")
        raise InvalidArgument(f"{field}.lines: {count} lines, more than {limits.LINES_PER_RECEIPT_MAX}")
    cdef set seen = set()
    cdef int64_t line_amount
    for index in range(count):
        line = lines[index]
        line_amount = _line_amount(line, seen)
        if line_amount < 0:
            _explain_line(f"{field}.lines[{index}]", line, seen)
        total += line_amount
    if total > AMOUNT_MAX:
        raise InvalidArgument(f"{field}: total {total} is more than {AMOUNT_MAX}")
    _receipt_texts(value, field)
    return value


cpdef _receipt_texts(value, field):
    id_max = limits.IDENTIFIER_BYTES_MAX
    store_id, terminal_id, receipt_no = value.store_id, value.terminal_id, value.receipt_no
    if too_long(store_id, id_max) or too_long(terminal_id, id_max) or too_long(receipt_no, id_max):
        text(store_id, f"{field}.store_id", id_max, required=False)
        text(terminal_id, f"{field}.terminal_id", id_max, required=False)
        text(receipt_no, f"{field}.receipt_no", id_max, required=False)
    region, channel, payment_method, card_bin = value.region, value.channel, value.payment_method, value.card_bin
    codes = value.promo_codes
    if not (region or channel or payment_method or card_bin or codes):
        return
    text(region, f"{field}.region", id_max, required=False)
    text(channel, f"{field}.channel", id_max, required=False)
    text(payment_method, f"{field}.payment_method", id_max, required=False)
    _card_bin(card_bin, f"{field}.card_bin")
    if codes:
        promo_codes(codes, f"{field}.promo_codes")


def _card_bin(value, field):
    text(value, field, limits.IDENTIFIER_BYTES_MAX, required=False)
    check(value.isascii() and (value.isdigit() or not value), f"{field}: digits only (the bank card's leading digits)")
    return value


def promo_code(code, field):
    try:
        promo.check_code(code, field)
    except promo.PatternError as error:
        raise InvalidArgument(str(error)) from None
    return code


def promo_codes(codes, field, most=PROMO_CODES_PER_RECEIPT_MAX):
    count = len(codes)
    check(count <= most, f"{field}: {count} codes, more than {most}")
    seen: set[str] = set()
    for index, code in enumerate(codes):
        promo_code(code, f"{field}[{index}]")
        check(code not in seen, f"{field}[{index}]: {code!r} appears twice")
        seen.add(code)
    return tuple(codes)


def _explain_line(where, line, set seen):
    """Raise the error naming the first bad field of a line that failed the combined test."""
    check(line.line_no > 0, f"{where}.line_no: must be > 0")
    check(line.line_no not in seen, f"{where}.line_no: {line.line_no} appears twice")
    amount(line.qty_milli, f"{where}.qty_milli", limits.QTY_MILLI_MAX, least=1)
    amount(line.price_minor, f"{where}.price_minor", limits.AMOUNT_MINOR_MAX)
    amount(line.amount_minor, f"{where}.amount_minor", limits.AMOUNT_MINOR_MAX)
    exact = line.qty_milli * line.price_minor
    check(
        abs(line.amount_minor * 1000 - exact) < 1000,
        f"{where}.amount_minor: {line.amount_minor} is not qty_milli x price_minor / 1000 "
        f"({line.qty_milli} x {line.price_minor} / 1000 = {exact // 1000}.{exact % 1000:03d})",
    )
    text(line.sku, f"{where}.sku", limits.IDENTIFIER_BYTES_MAX, required=False)
    text(line.category, f"{where}.category", limits.CATEGORY_BYTES_MAX, required=False)
    text(line.brand, f"{where}.brand", limits.IDENTIFIER_BYTES_MAX, required=False)
    raise AssertionError(f"{where}: failed the line check, but no field is wrong")


# ---------------------------------------------------------------------------------------------
# The hot requests, field by field in the order a refusal names the first bad one


cpdef capture_holds(tuple holds):
    if holds:
        check(len(holds) <= limits.CAPTURE_HOLDS_MAX, f"capture_hold_ids: more than {limits.CAPTURE_HOLDS_MAX}")
        for hold in holds:
            check(0 < hold <= limits.TRANSACTION_ID_MAX, f"capture_hold_ids: a transaction id is 1..{limits.TRANSACTION_ID_MAX}")
        check(len(set(holds)) == len(holds), "capture_hold_ids: a hold is named twice")


cpdef accrue(str request_id_value, buyer, bought, redeem_points,
           tuple holds):
    capture_holds(holds)
    request_id(request_id_value)
    customer(buyer)
    receipt(bought)
    amount(redeem_points, "redeem_points", limits.POINTS_MAX)


cpdef calculate(buyer, bought, redeem_points):
    customer(buyer)
    receipt(bought)
    amount(redeem_points, "redeem_points", limits.POINTS_MAX)
