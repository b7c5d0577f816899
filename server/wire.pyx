# cython: language_level=3
"""The hot path's protobuf wire format in C: purchases in, their answers out.

`server/convert.py` turns protobuf messages into core values field by field through Python
attribute access, about 11 us for a five-line receipt; a batch answer filled the same way costs as
much again. Here the same messages are read straight from the request bytes and the answers written
straight to bytes, so the common case of every hot call costs a few microseconds.

It only reads: it turns the bytes of a plain request into the core values `convert.py` builds from
the same request, and both pass them to the one set of checks, `server/checks.pyx`. Anything it does
not take - a request that fails a check, a field it does not read (promo codes, hold captures, a
bank card BIN), a field repeated where protobuf would merge it, bytes that are not plain protobuf -
comes back as "not mine" (None, or the operation's own bytes) and the caller decodes it with
protobuf and `convert.py`, whose values meet the same checks, which name the field.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

import hashlib

import msgspec

from kassa.core_ext import limits
from kassa.server import checks
from kassa.core_ext.model import (
    AccrueOp, AccrueResult, CalculateQuery, Customer, EventResult, IdKind, Line, Receipt, RedeemResult,
    RollbackResult,
)

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)

DIGEST_BYTES = 16  # of the payload digest kept with each idempotency record
RESULT_MESSAGE_BYTES_MAX = 256  # of an OperationResult's message: longer ones are cut (server/answer_bound.py)

cdef enum:
    WIRE_VARINT = 0
    WIRE_I64 = 1
    WIRE_LEN = 2
    WIRE_I32 = 5
    FIELD_NUMBER_MAX = 536870911  # 2**29 - 1
    ACCRUE_OCCURRED_AT_FIELD = 6  # AccrueRequest.occurred_at
    NANOS_PER_SECOND = 1_000_000_000
    NANOS_PER_MS = 1_000_000

cdef Py_ssize_t REQUEST_ID_BYTES_MAX = limits.REQUEST_ID_BYTES_MAX
cdef int64_t TIMESTAMP_MS_MAX = limits.TIMESTAMP_MS_MAX
cdef Py_ssize_t MESSAGE_BYTES_MAX = RESULT_MESSAGE_BYTES_MAX
cdef tuple CUSTOMER_KINDS = (None, IdKind.ACCOUNT, IdKind.CARD, IdKind.PHONE)  # by field number

_msgpack = msgspec.msgpack.Encoder()
_blake2b = hashlib.blake2b


def accrue_digest(customer, receipt, long long redeem_points, tuple capture_hold_ids) -> bytes:
    """What an Accrue asks for, hashed from its checked values: the same request gives the same
    digest whichever path decoded it and however its bytes were ordered."""
    payload = _msgpack.encode((customer, receipt, redeem_points, capture_hold_ids))
    return _blake2b(payload, digest_size=DIGEST_BYTES).digest()


# ---------------------------------------------------------------------------------------------
# Reading


cdef struct Field:
    uint32_t number
    int wire
    uint64_t value  # a varint's value
    const uint8_t* data  # a length-delimited field's bytes
    Py_ssize_t size


cdef inline int _varint(const uint8_t** cursor, const uint8_t* end, uint64_t* out, int bytes_max=10) noexcept:
    """A varint of at most `bytes_max` bytes (protobuf reads tags and lengths in at most 5)."""
    cdef const uint8_t* p = cursor[0]
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef uint8_t byte
    while p < end and shift < 7 * bytes_max:
        byte = p[0]
        p += 1
        value |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            if shift == 63 and byte > 1:
                return -1
            cursor[0] = p
            out[0] = value
            return 0
        shift += 7
    return -1


cdef int _next(const uint8_t** cursor, const uint8_t* end, Field* field) noexcept:
    """1: a field read into `field`; 0: the end; -1: not plain protobuf (groups included)."""
    cdef uint64_t key, size
    if cursor[0] >= end:
        return 0
    if _varint(cursor, end, &key, 5) < 0:
        return -1
    field.number = <uint32_t>(key >> 3)
    field.wire = <int>(key & 7)
    if key >> 3 == 0 or key >> 3 > FIELD_NUMBER_MAX:
        return -1
    if field.wire == WIRE_VARINT:
        return 1 if _varint(cursor, end, &field.value) == 0 else -1
    if field.wire == WIRE_LEN:
        if _varint(cursor, end, &size, 5) < 0 or size > <uint64_t>(end - cursor[0]):
            return -1
        field.data = cursor[0]
        field.size = <Py_ssize_t>size
        cursor[0] += size
        return 1
    if field.wire == WIRE_I64:
        if end - cursor[0] < 8:
            return -1
        cursor[0] += 8
        return 1
    if field.wire == WIRE_I32:
        if end - cursor[0] < 4:
            return -1
        cursor[0] += 4
        return 1
    return -1


cdef bint _well_formed(const uint8_t* p, const uint8_t* end) noexcept:
    """A message we do not read into values (a Timestamp) is still one protobuf would parse."""
    cdef Field field
    cdef int got
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            return True
        if got < 0:
            return False


cdef struct Text:
    const uint8_t* data
    Py_ssize_t size


cdef object _str(Text text):
    """The UTF-8 text as str; None when it is not valid UTF-8 (protobuf refuses such a string)."""
    if text.size == 0:
        return ""
    try:
        return PyUnicode_DecodeUTF8(<const char*>text.data, text.size, NULL)
    except UnicodeDecodeError:
        return None


cdef object _customer(const uint8_t* p, const uint8_t* end):
    cdef Field field
    cdef int got, kind = 0
    cdef Text text
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0:
            return None
        if 1 <= field.number <= 3:
            if field.wire != WIRE_LEN or kind:
                return None  # not a string, or two ids: protobuf's rules for a oneof decide
            kind = field.number
            text.data, text.size = field.data, field.size
    if not kind:
        return None
    value = _str(text)
    if value is None:
        return None
    return Customer(CUSTOMER_KINDS[kind], value)


cdef object _line(const uint8_t* p, const uint8_t* end):
    cdef Field field
    cdef int got
    cdef uint64_t line_no = 0
    cdef int64_t qty = 0, price = 0, amount = 0
    cdef bint no_earn = False, no_discount = False
    cdef Text text
    sku_text = category_text = brand_text = ""
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0:
            return None
        if field.number > 9:
            continue
        if field.number in (2, 3, 9):
            if field.wire != WIRE_LEN:
                return None
            text.data, text.size = field.data, field.size
            value = _str(text)  # every copy: protobuf refuses bad UTF-8 even in one a later copy replaces
            if value is None:
                return None
            if field.number == 2:
                sku_text = value
            elif field.number == 3:
                category_text = value
            else:
                brand_text = value
            continue
        if field.wire != WIRE_VARINT:
            return None
        if field.number == 1:
            line_no = field.value
        elif field.number == 4:
            qty = <int64_t>field.value
        elif field.number == 5:
            price = <int64_t>field.value
        elif field.number == 6:
            amount = <int64_t>field.value
        elif field.number == 7:
            no_earn = field.value != 0
        else:
            no_discount = field.value != 0
    if line_no > 0xFFFFFFFF:
        return None  # protobuf keeps the low 32 bits of a uint32: its rules decide
    return Line(<long long>line_no, sku_text, category_text, qty, price, amount, no_earn, no_discount, brand_text)


cdef object _receipt(const uint8_t* p, const uint8_t* end):
    cdef Field field
    cdef int got
    cdef Text text
    texts = ["", "", "", "", "", "", ""]
    lines = []
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0:
            return None
        if field.number > 9:
            continue
        if field.wire != WIRE_LEN or field.number >= 8:
            return None  # card_bin and promo codes are convert.py's (and rare on the hot path)
        if field.number == 4:
            line = _line(field.data, field.data + field.size)
            if line is None:
                return None
            lines.append(line)
        else:
            text.data, text.size = field.data, field.size
            value = _str(text)  # every copy, as in _line
            if value is None:
                return None
            texts[field.number - 1] = value
    store_id, terminal_id, receipt_no, _, region, channel, payment_method = texts
    if not (region or channel or payment_method):
        return Receipt(store_id, terminal_id, receipt_no, tuple(lines))
    return Receipt(store_id, terminal_id, receipt_no, tuple(lines), region, channel, payment_method)


cdef object _customer_receipt(const uint8_t* customer_data, Py_ssize_t customer_size,
                              const uint8_t* receipt_data, Py_ssize_t receipt_size):
    """(Customer, Receipt) of an Accrue's or a Calculate's two sub-messages, or None."""
    customer = _customer(customer_data, customer_data + customer_size)
    if customer is None:
        return None
    receipt = _receipt(receipt_data, receipt_data + receipt_size)
    if receipt is None:
        return None
    return customer, receipt


cdef int64_t _timestamp_ms(const uint8_t* p, const uint8_t* end) noexcept:
    """A google.protobuf.Timestamp's bytes in ms since the epoch, as convert.py's `_time_ms` takes
    them; -1 for any it would refuse or that is not plain (protobuf and convert.py say why)."""
    cdef Field field
    cdef int got
    cdef int64_t seconds = 0, nanos = 0
    cdef bint seen_seconds = False, seen_nanos = False
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0 or field.wire != WIRE_VARINT or field.number > 2:
            return -1
        if field.number == 1:
            if seen_seconds:
                return -1
            seconds, seen_seconds = <int64_t>field.value, True
        else:
            if seen_nanos:
                return -1
            nanos, seen_nanos = <int64_t>field.value, True
    if nanos < 0 or nanos >= NANOS_PER_SECOND or seconds < 0 or seconds > TIMESTAMP_MS_MAX // 1000:
        return -1
    cdef int64_t ms = seconds * 1000 + nanos // NANOS_PER_MS
    return ms if 0 < ms <= TIMESTAMP_MS_MAX else -1


cdef object _accrue(const uint8_t* p, const uint8_t* end, default_request_id):
    """An AccrueRequest's bytes as an AccrueOp, or None; an empty request_id is `default_request_id`
    (a stream's purchase takes its event_id), checked by the caller against the request id limit."""
    cdef Field field
    cdef int got
    cdef int64_t redeem = 0
    cdef Text text
    cdef const uint8_t* customer_data = NULL
    cdef const uint8_t* receipt_data = NULL
    cdef Py_ssize_t customer_size = 0, receipt_size = 0
    cdef int64_t occurred_at_ms = 0
    request_id = ""
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0:
            return None
        if field.number == ACCRUE_OCCURRED_AT_FIELD:
            if field.wire != WIRE_LEN or occurred_at_ms:
                return None  # protobuf merges a repeated message field
            occurred_at_ms = _timestamp_ms(field.data, field.data + field.size)
            if occurred_at_ms < 0:
                return None
            continue
        if field.number > 5:
            continue
        if field.number == 4:
            if field.wire != WIRE_VARINT:
                return None
            redeem = <int64_t>field.value
        elif field.wire != WIRE_LEN or field.number == 5:
            return None  # hold captures are convert.py's
        elif field.number == 1:
            text.data, text.size = field.data, field.size
            request_id = _str(text)  # every copy, as in _line
            if request_id is None:
                return None
        elif field.number == 2:
            if customer_data != NULL:
                return None  # protobuf merges a repeated message field
            customer_data, customer_size = field.data, field.size
        else:
            if receipt_data != NULL:
                return None
            receipt_data, receipt_size = field.data, field.size
    if customer_data == NULL or receipt_data == NULL:
        return None
    rid = request_id if request_id or default_request_id is None else default_request_id
    bought = _customer_receipt(customer_data, customer_size, receipt_data, receipt_size)
    if bought is None:
        return None
    customer, receipt = bought
    try:
        checks.accrue(rid, customer, receipt, redeem, ())
    except checks.InvalidArgument:
        return None  # protobuf and convert.py check it again, to say why
    return AccrueOp(rid, accrue_digest(customer, receipt, redeem, ()), customer, receipt, redeem,
                    occurred_at_ms=occurred_at_ms)


def accrue_op(bytes data):
    """AccrueRequest bytes as an AccrueOp; None: decode with protobuf and `convert.accrue_op`."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    return _accrue(p, p + PyBytes_GET_SIZE(data), None)


def calculate_query(bytes data):
    """CalculateRequest bytes as a CalculateQuery; None: decode with protobuf and `convert`."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef const uint8_t* end = p + PyBytes_GET_SIZE(data)
    cdef Field field
    cdef int got
    cdef int64_t redeem = 0
    cdef bint explain = False
    cdef const uint8_t* customer_data = NULL
    cdef const uint8_t* receipt_data = NULL
    cdef Py_ssize_t customer_size = 0, receipt_size = 0
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            break
        if got < 0:
            return None
        if field.number > 4:
            continue
        if field.number >= 3:
            if field.wire != WIRE_VARINT:
                return None
            if field.number == 3:
                redeem = <int64_t>field.value
            else:
                explain = field.value != 0
        elif field.wire != WIRE_LEN:
            return None
        elif field.number == 1:
            if customer_data != NULL:
                return None
            customer_data, customer_size = field.data, field.size
        else:
            if receipt_data != NULL:
                return None
            receipt_data, receipt_size = field.data, field.size
    if customer_data == NULL or receipt_data == NULL:
        return None
    bought = _customer_receipt(customer_data, customer_size, receipt_data, receipt_size)
    if bought is None:
        return None
    customer, receipt = bought
    try:
        checks.calculate(customer, receipt, redeem)
    except checks.InvalidArgument:
        return None  # protobuf and convert.py check it again, to say why
    return CalculateQuery(customer, receipt, redeem, explain)


cdef bytes _slice(const uint8_t* data, Py_ssize_t size):
    return PyBytes_FromStringAndSize(<const char*>data, size)


ctypedef object (*ElementDecoder)(const uint8_t* p, const uint8_t* end)


cdef object _repeated(bytes data, ElementDecoder decode):
    """A message of one repeated message field (number 1) as one item per element, in order: what
    `decode` makes of the element, or, where it gives None, the element's own bytes for protobuf
    and `convert` to decode. None: the message itself is not plain protobuf (protobuf decides
    whether it is a message at all)."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef const uint8_t* end = p + PyBytes_GET_SIZE(data)
    cdef Field field
    cdef int got
    items = []
    while True:
        got = _next(&p, end, &field)
        if got == 0:
            return items
        if got < 0:
            return None
        if field.number != 1:
            continue
        if field.wire != WIRE_LEN:
            return None
        item = decode(field.data, field.data + field.size)
        items.append(item if item is not None else _slice(field.data, field.size))


cdef object _operation(const uint8_t* q, const uint8_t* op_end):
    """An Operation holding only an accrue, as its AccrueOp; None otherwise."""
    cdef Field inner
    cdef int got
    cdef const uint8_t* accrue_data = NULL
    cdef Py_ssize_t accrue_size = 0
    while True:
        got = _next(&q, op_end, &inner)
        if got == 0:
            break
        if got < 0 or (inner.number <= 3 and (inner.number != 1 or accrue_data != NULL or inner.wire != WIRE_LEN)):
            return None
        if inner.number == 1:
            accrue_data, accrue_size = inner.data, inner.size
    if accrue_data == NULL:
        return None
    return _accrue(accrue_data, accrue_data + accrue_size, None)


cdef object _purchase_event(const uint8_t* q, const uint8_t* event_end):
    """An Event holding a purchase, as (event_id, AccrueOp); None otherwise."""
    cdef Field inner
    cdef int got
    cdef Text event_id
    cdef const uint8_t* purchase_data = NULL
    cdef Py_ssize_t purchase_size = 0
    event_id.size = 0
    event_id_text = None
    while True:
        got = _next(&q, event_end, &inner)
        if got == 0:
            break
        if got < 0 or (inner.number <= 6 and inner.wire != WIRE_LEN):
            return None
        if inner.number == 1:
            event_id.data, event_id.size = inner.data, inner.size
            event_id_text = _str(event_id)  # every copy, as in _line
            if event_id_text is None:
                return None
        elif inner.number == 2:
            if not _well_formed(inner.data, inner.data + inner.size):  # occurred_at: not read
                return None
        elif inner.number == 3 and purchase_data == NULL:
            purchase_data, purchase_size = inner.data, inner.size
        elif inner.number <= 6:
            return None  # another payload, or the purchase twice
    if purchase_data == NULL or not event_id.size or event_id.size > REQUEST_ID_BYTES_MAX:
        return None  # an event_id is a request id, with its limit, whoever takes it
    op = _accrue(purchase_data, purchase_data + purchase_size, event_id_text)
    return None if op is None else (event_id_text, op)


def batch_operations(bytes data):
    """ProcessBatchRequest bytes as one item per operation, in order: an AccrueOp, or the
    Operation's own bytes; None: not plain protobuf (see `_repeated`)."""
    return _repeated(data, _operation)


def event_batch(bytes data):
    """EventBatch bytes as one item per event, in order: (event_id, AccrueOp) for a purchase, or
    the Event's own bytes; None: not plain protobuf (see `_repeated`)."""
    return _repeated(data, _purchase_event)


def request_id(bytes data) -> str:
    """Field 1 of a request as text (every mutating request keeps its request_id there): for logs."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef const uint8_t* end = p + PyBytes_GET_SIZE(data)
    cdef Field field
    cdef Text text
    text.size = 0
    while _next(&p, end, &field) == 1:
        if field.number == 1 and field.wire == WIRE_LEN:
            text.data, text.size = field.data, field.size
    value = _str(text)
    return "" if value is None else value


# ---------------------------------------------------------------------------------------------
# Writing. Fields go out in field-number order, scalars only when not zero, as protobuf writes them.


cdef struct Out:
    char* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _room(Out* out, Py_ssize_t more) except -1:
    cdef Py_ssize_t capacity
    cdef char* grown
    if out.size + more <= out.capacity:
        return 0
    capacity = max(out.capacity * 2, out.size + more, 256)
    grown = <char*>realloc(out.data, capacity)
    if grown == NULL:
        raise MemoryError()
    out.data, out.capacity = grown, capacity
    return 0


cdef inline void _put_varint(Out* out, uint64_t value) noexcept:
    while value >= 0x80:
        out.data[out.size] = <char>((value & 0x7F) | 0x80)
        out.size += 1
        value >>= 7
    out.data[out.size] = <char>value
    out.size += 1


cdef int _int(Out* out, int number, int64_t value) except -1:
    if value:
        _room(out, 16)
        _put_varint(out, <uint64_t>(number << 3 | WIRE_VARINT))
        _put_varint(out, <uint64_t>value)
    return 0


cdef int _text(Out* out, int number, str value) except -1:
    cdef Py_ssize_t size
    cdef const char* data
    if value:
        data = PyUnicode_AsUTF8AndSize(value, &size)
        _room(out, size + 16)
        _put_varint(out, <uint64_t>(number << 3 | WIRE_LEN))
        _put_varint(out, <uint64_t>size)
        memcpy(out.data + out.size, data, size)
        out.size += size
    return 0


cdef int _text_cut(Out* out, int number, str value, Py_ssize_t bytes_max) except -1:
    """A string field of at most `bytes_max` bytes: a longer text is cut where a character starts."""
    cdef Py_ssize_t size
    cdef const char* data
    if value:
        data = PyUnicode_AsUTF8AndSize(value, &size)
        if size > bytes_max:
            size = bytes_max
            while size > 0 and (<uint8_t>data[size] & 0xC0) == 0x80:  # data[size] continues a character
                size -= 1
        _room(out, size + 16)
        _put_varint(out, <uint64_t>(number << 3 | WIRE_LEN))
        _put_varint(out, <uint64_t>size)
        memcpy(out.data + out.size, data, size)
        out.size += size
    return 0


cdef int _raw(Out* out, int number, bytes value) except -1:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    _room(out, size + 16)
    _put_varint(out, <uint64_t>(number << 3 | WIRE_LEN))
    _put_varint(out, <uint64_t>size)
    memcpy(out.data + out.size, PyBytes_AS_STRING(value), size)
    out.size += size
    return 0


cdef Py_ssize_t _open(Out* out, int number) except -1:
    """Start a sub-message: its tag and one byte for its length; `_close` moves the body if the
    length needs more."""
    _room(out, 16)
    _put_varint(out, <uint64_t>(number << 3 | WIRE_LEN))
    out.size += 1
    return out.size


cdef int _close(Out* out, Py_ssize_t start) except -1:
    cdef uint64_t size = out.size - start
    cdef int extra = 0
    cdef uint64_t rest = size >> 7
    while rest:
        extra += 1
        rest >>= 7
    if extra:
        _room(out, extra)
        memmove(out.data + start + extra, out.data + start, size)
    out.size = start - 1
    _put_varint(out, size)
    out.size = start + extra + size
    return 0


cdef int _time(Out* out, int number, int64_t ms) except -1:
    cdef Py_ssize_t start
    if ms:
        start = _open(out, number)
        _int(out, 1, ms // 1000)
        _int(out, 2, (ms % 1000) * 1_000_000)
        _close(out, start)
    return 0


cdef int _balance(Out* out, int number, value) except -1:
    cdef Py_ssize_t start = _open(out, number)
    _int(out, 1, value.active)
    _int(out, 2, value.pending)
    _int(out, 3, value.held)
    _int(out, 4, value.available)
    _int(out, 5, value.debt)
    _time(out, 6, value.next_expiry_at_ms)
    _int(out, 7, value.next_expiry_points)
    return _close(out, start)


cdef int _named_verdict(Out* out, int number, str name, bint yes, str reason) except -1:
    """A (string 1, bool 2, string 3) message: PromoCodeResult, CampaignExplanation."""
    cdef Py_ssize_t start = _open(out, number)
    _text(out, 1, name)
    _int(out, 2, yes)
    _text(out, 3, reason)
    return _close(out, start)


cdef int _calculation(Out* out, int number, value) except -1:
    cdef Py_ssize_t start = _open(out, number), inner
    cdef int64_t amount, discount, redeemed, captured, payable
    for line in value.lines:
        inner = _open(out, 1)
        amount, discount = line.amount_minor, line.discount_minor
        redeemed, captured = line.redeemed_points, line.captured_points
        _int(out, 1, line.line_no)
        _int(out, 2, amount)
        _int(out, 3, discount)
        _int(out, 4, line.earned_points)
        _int(out, 5, redeemed)
        _int(out, 6, captured)
        _int(out, 7, amount - discount - redeemed - captured)  # LineResult.due_minor, without its call
        _close(out, inner)
    payable, redeemed, captured = value.payable_minor, value.redeemed_points, value.captured_points
    _int(out, 2, value.total_minor)
    _int(out, 3, value.discount_minor)
    _int(out, 4, payable)
    _int(out, 5, value.earned_points)
    _int(out, 6, value.redeemable_points)
    _int(out, 7, redeemed)
    for campaign in value.campaigns:
        inner = _open(out, 8)
        _text(out, 1, campaign.campaign_id)
        _text(out, 2, campaign.effect)
        _int(out, 3, campaign.points)
        _int(out, 4, campaign.discount_minor)
        _close(out, inner)
    _text(out, 9, value.ruleset_version)
    _time(out, 10, value.activate_at_ms)
    _time(out, 11, value.expire_at_ms)
    for code in value.promo_codes:
        _named_verdict(out, 12, code.code, code.accepted, code.reason)
    for explanation in value.explain:
        _named_verdict(out, 13, explanation.campaign_id, explanation.applied, explanation.reason)
    for activate_at_ms, expire_at_ms, points in value.lots:
        inner = _open(out, 14)
        _time(out, 1, activate_at_ms)
        _time(out, 2, expire_at_ms)
        _int(out, 3, points)
        _close(out, inner)
    _int(out, 15, captured)
    _int(out, 16, payable - redeemed - captured)  # Calculation.due_minor
    _text(out, 17, value.no_points_reason)
    return _close(out, start)


cdef int _accrue_result(Out* out, value) except -1:
    _int(out, 1, value.transaction_id)
    _text(out, 2, value.account_id)
    _calculation(out, 3, value.calculation)
    _balance(out, 4, value.balance)
    _int(out, 5, value.captured_points)
    return 0


cdef bytes _done(Out* out):
    try:
        return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        free(out.data)


def accrue_response(value) -> bytes:
    """AccrueResponse bytes of an AccrueResult."""
    cdef Out out = Out(NULL, 0, 0)
    try:
        _accrue_result(&out, value)
    except BaseException:
        free(out.data)
        raise
    return _done(&out)


def calculate_response(value) -> bytes:
    """CalculateResponse bytes of a CalculateResult."""
    cdef Out out = Out(NULL, 0, 0)
    try:
        _text(&out, 1, value.account_id)
        _calculation(&out, 2, value.calculation)
        _balance(&out, 3, value.balance)
    except BaseException:
        free(out.data)
        raise
    return _done(&out)


def batch_response(list outcomes, render) -> bytes:
    """ProcessBatchResponse bytes: one OperationResult per outcome, in order. An accrue's answer is
    written here; any other body as `render(body)` gives it: (field number, message bytes). A message
    is cut to RESULT_MESSAGE_BYTES_MAX, so that the answer's size is known before the commit."""
    cdef Out out = Out(NULL, 0, 0)
    cdef Py_ssize_t start, inner
    try:
        for outcome in outcomes:
            start = _open(&out, 1)
            _int(&out, 1, outcome.code)
            _int(&out, 2, outcome.reason)
            _text_cut(&out, 3, outcome.message, MESSAGE_BYTES_MAX)
            body = outcome.body
            if type(body) is AccrueResult:
                inner = _open(&out, 4)
                _accrue_result(&out, body)
                _close(&out, inner)
            elif body is not None:
                number, message = render(body)
                _raw(&out, number, message)
            _close(&out, start)
    except BaseException:
        free(out.data)
        raise
    return _done(&out)


cdef int64_t _points(body) except? -1:
    kind = type(body)
    if kind is AccrueResult:
        return body.calculation.earned_points
    if kind is RedeemResult:
        return body.redeemed_points or body.held_points
    if kind is RollbackResult:
        return body.clawed_back_points
    if kind is EventResult:
        return body.points
    return 0


def ack_batch(list event_ids, list outcomes) -> bytes:
    """AckBatch bytes: one EventAck per event, in order. A refused event carries its code, reason
    and message; a committed one its transaction and points."""
    cdef Out out = Out(NULL, 0, 0)
    cdef Py_ssize_t start, index
    try:
        for index in range(len(outcomes)):
            outcome = outcomes[index]
            start = _open(&out, 1)
            _text(&out, 1, event_ids[index])
            if outcome.code:
                _int(&out, 2, outcome.code)
                _int(&out, 3, outcome.reason)
                _text(&out, 4, outcome.message)
            else:
                body = outcome.body
                _int(&out, 5, getattr(body, "transaction_id", 0))
                _int(&out, 6, _points(body))
            _close(&out, start)
    except BaseException:
        free(out.data)
        raise
    return _done(&out)
