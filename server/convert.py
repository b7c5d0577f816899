"""Between the wire and the core: protobuf requests to checked core values, core outcomes to protobuf.

Every check names the field as the client wrote it (`receipt.lines[2].amount_minor`), so a POS
integrator can fix the request without reading our code. Nothing here touches the ledger.
"""

from __future__ import annotations

import hashlib
import operator
import secrets

from google.protobuf.timestamp_pb2 import Timestamp

from kassa.core_ext import limits, promo
from kassa.core_ext import model as m
from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2
from kassa.server import checks, wire

DIGEST_BYTES = wire.DIGEST_BYTES  # of the payload digest kept with each idempotency record
EVENT_ATTRIBUTES_MAX = 32  # entries in a customer event's attributes
TIMESTAMP_MS_MAX = limits.TIMESTAMP_MS_MAX


# The checks of plain values are server/checks.pyx's, shared with the C reader (server/wire.pyx).
InvalidArgument = checks.InvalidArgument
_check, _text, _request_id, _amount = checks.check, checks.text, checks.request_id, checks.amount
_promo_codes = checks.promo_codes
PROMO_CODES_PER_RECEIPT_MAX = checks.PROMO_CODES_PER_RECEIPT_MAX
# The seed of a GeneratePromoCodes draw: unguessable, and carried by the operation so that every
# replica of a cluster draws the same codes.
PROMO_SEED_BYTES = 16


def digest(request) -> bytes:
    """The payload's digest: the request as sent, less `occurred_at` (when the POS made it, not what
    it asks for), as the Accrue digest leaves it out too: a retry stamped anew is the same payload."""
    if request.DESCRIPTOR.fields_by_name.get("occurred_at") is not None and request.HasField("occurred_at"):
        request = type(request).FromString(request.SerializeToString())
        request.ClearField("occurred_at")
    return hashlib.blake2b(request.SerializeToString(deterministic=True), digest_size=DIGEST_BYTES).digest()


_CUSTOMER_KINDS = {"account_id": m.IdKind.ACCOUNT, "card": m.IdKind.CARD, "phone": m.IdKind.PHONE}


def _customer_value(message) -> m.Customer | None:
    which = message.WhichOneof("id")
    if which is None:
        return None
    return m.Customer(_CUSTOMER_KINDS[which], getattr(message, which))


def customer(message, field: str = "customer") -> m.Customer:
    return checks.customer(_customer_value(message), field)


# A line's fields in one C call, in the order of m.Line's.
_line_fields = operator.attrgetter(
    "line_no", "sku", "category", "qty_milli", "price_minor", "amount_minor", "no_earn", "no_discount", "brand"
)


def _receipt_value(message) -> m.Receipt:
    Line = m.Line
    lines = tuple([Line(*_line_fields(line)) for line in message.lines])
    store_id, terminal_id, receipt_no = message.store_id, message.terminal_id, message.receipt_no
    region, channel, payment_method, card_bin = message.region, message.channel, message.payment_method, message.card_bin
    codes = message.promo_codes
    if not (region or channel or payment_method or card_bin or codes):
        return m.Receipt(store_id, terminal_id, receipt_no, lines)
    return m.Receipt(store_id, terminal_id, receipt_no, lines, region, channel, payment_method, card_bin, tuple(codes))


def receipt(message, field: str = "receipt") -> m.Receipt:
    return checks.receipt(_receipt_value(message), field)


# ---------------------------------------------------------------------------------------------
# Requests


def calculate_query(request: processing_pb2.CalculateRequest) -> m.CalculateQuery:
    buyer, bought = _customer_value(request.customer), _receipt_value(request.receipt)
    checks.calculate(buyer, bought, request.redeem_points)
    return m.CalculateQuery(buyer, bought, request.redeem_points, request.explain)


def accrue_op(request: processing_pb2.AccrueRequest) -> m.AccrueOp:
    holds = tuple(request.capture_hold_ids)
    buyer, bought = _customer_value(request.customer), _receipt_value(request.receipt)
    checks.accrue(request.request_id, buyer, bought, request.redeem_points, holds)
    # Hashed from the checked values, as server/wire.pyx does for the requests it decodes.
    payload_digest = wire.accrue_digest(buyer, bought, request.redeem_points, holds)
    return m.AccrueOp(request.request_id, payload_digest, buyer, bought, request.redeem_points, holds,
                      occurred_at_ms=_time_ms(request, "occurred_at"))


_REDEEM_MODES = (processing_pb2.REDEEM_MODE_IMMEDIATE, processing_pb2.REDEEM_MODE_HOLD)


def _redeem_mode(mode: int) -> int:
    # No default: a client that forgot the mode must not spend points it meant to hold.
    if mode not in _REDEEM_MODES:
        unset = mode == processing_pb2.REDEEM_MODE_UNSPECIFIED
        raise InvalidArgument(("mode: not set" if unset else f"mode: unknown redeem mode {mode}")
                              + "; set REDEEM_MODE_IMMEDIATE (spend now) or REDEEM_MODE_HOLD (reserve)")
    return mode


def redeem_op(request: processing_pb2.RedeemRequest) -> m.RedeemOp:
    _redeem_mode(request.mode)
    return m.RedeemOp(
        _request_id(request.request_id),
        digest(request),
        customer(request.customer),
        _amount(request.points, "points", limits.POINTS_MAX, least=1),
        _amount(request.receipt_total_minor, "receipt_total_minor", limits.AMOUNT_MINOR_MAX, least=1),
        request.mode == processing_pb2.REDEEM_MODE_HOLD,
        _text(request.store_id, "store_id", limits.IDENTIFIER_BYTES_MAX, required=False),
        _text(request.terminal_id, "terminal_id", limits.IDENTIFIER_BYTES_MAX, required=False),
        occurred_at_ms=_time_ms(request, "occurred_at"),
    )


def rollback_op(request: processing_pb2.RollbackRequest) -> m.RollbackOp:
    target = request.WhichOneof("target")
    _check(target is not None, "target: set transaction_id or original_request_id")
    if target == "transaction_id":
        _amount(request.transaction_id, "transaction_id", limits.TRANSACTION_ID_MAX, least=1)
    else:
        _request_id(request.original_request_id, "original_request_id")
    count = len(request.return_lines)
    _check(count <= limits.RETURN_LINES_MAX, f"return_lines: {count} lines, more than {limits.RETURN_LINES_MAX}")
    returns = []
    for index, line in enumerate(request.return_lines):
        _check(line.line_no > 0, f"return_lines[{index}].line_no: must be > 0")
        _amount(line.qty_milli, f"return_lines[{index}].qty_milli", limits.QTY_MILLI_MAX, least=1)
        returns.append(m.ReturnLine(line.line_no, line.qty_milli))
    return m.RollbackOp(
        _request_id(request.request_id),
        digest(request),
        request.transaction_id,
        request.original_request_id,
        tuple(returns),
        _text(request.store_id, "store_id", limits.IDENTIFIER_BYTES_MAX, required=False),
        _text(request.terminal_id, "terminal_id", limits.IDENTIFIER_BYTES_MAX, required=False),
        occurred_at_ms=_time_ms(request, "occurred_at"),
    )


def create_account_op(request: accounts_pb2.CreateAccountRequest) -> m.CreateAccountOp:
    return m.CreateAccountOp(
        _request_id(request.request_id),
        digest(request),
        _text(request.account_id, "account_id", limits.IDENTIFIER_BYTES_MAX, required=False),
        _text(request.phone, "phone", limits.IDENTIFIER_BYTES_MAX, required=False),
    )


def issue_card_op(request: accounts_pb2.IssueCardRequest) -> m.IssueCardOp:
    return m.IssueCardOp(
        _request_id(request.request_id),
        digest(request),
        _text(request.account_id, "account_id", limits.IDENTIFIER_BYTES_MAX),
        _text(request.card, "card", limits.IDENTIFIER_BYTES_MAX),
        _text(request.category, "category", limits.CATEGORY_BYTES_MAX, required=False),
        _text(request.replaces_card, "replaces_card", limits.IDENTIFIER_BYTES_MAX, required=False),
    )


def block_card_op(request: accounts_pb2.BlockCardRequest) -> m.BlockCardOp:
    return m.BlockCardOp(
        _request_id(request.request_id), digest(request), _text(request.card, "card", limits.IDENTIFIER_BYTES_MAX)
    )


def _labels(values, field: str) -> tuple[str, ...]:
    _check(len(values) <= limits.LABELS_PER_ACCOUNT_MAX, f"{field}: more than {limits.LABELS_PER_ACCOUNT_MAX}")
    return tuple(_text(value, f"{field}[{i}]", limits.IDENTIFIER_BYTES_MAX) for i, value in enumerate(values))


def set_attributes_op(request: accounts_pb2.SetAttributesRequest) -> m.SetAttributesOp:
    birthday = request.birthday
    if birthday:
        month, _, day = birthday.partition("-")
        valid = len(birthday) == 5 and month.isdigit() and day.isdigit() and 1 <= int(month) <= 12 and 1 <= int(day) <= 31
        _check(valid, f"birthday: '{birthday}' is not MM-DD")
    return m.SetAttributesOp(
        _request_id(request.request_id),
        digest(request),
        customer(request.customer),
        _labels(request.segments, "segments"),
        _labels(request.tags, "tags"),
        birthday,
        _labels(request.clubs, "clubs"),
    )


def adjust_op(request: accounts_pb2.AdjustRequest) -> m.AdjustOp:
    _check(request.points != 0, "points: must not be 0 (> 0 credits, < 0 debits)")
    _check(abs(request.points) <= limits.POINTS_MAX, f"points: more than {limits.POINTS_MAX} either way")
    return m.AdjustOp(
        _request_id(request.request_id),
        digest(request),
        customer(request.customer),
        request.points,
        _text(request.reason, "reason", limits.REASON_BYTES_MAX),
        _text(request.operator_id, "operator_id", limits.IDENTIFIER_BYTES_MAX),
    )


def join_group_op(request: accounts_pb2.JoinGroupRequest) -> m.JoinGroupOp:
    return m.JoinGroupOp(
        _request_id(request.request_id),
        digest(request),
        _text(request.account_id, "account_id", limits.IDENTIFIER_BYTES_MAX),
        _text(request.parent_account_id, "parent_account_id", limits.IDENTIFIER_BYTES_MAX),
    )


def leave_group_op(request: accounts_pb2.LeaveGroupRequest) -> m.LeaveGroupOp:
    return m.LeaveGroupOp(
        _request_id(request.request_id), digest(request), _text(request.account_id, "account_id", limits.IDENTIFIER_BYTES_MAX)
    )


def event_id(value: str, field: str = "event_id") -> str:
    """An event's idempotency key: a request id, with its limit."""
    return _request_id(value, field)


def event_op(event: processing_pb2.Event, field: str = "customer_event") -> m.EventOp:
    """A stream's `customer_event`; its request id is the event's `event_id`."""
    return _customer_event_op(event_id(event.event_id), event.customer_event, field)


def process_event_op(request: processing_pb2.ProcessEventRequest) -> m.EventOp:
    """ProcessEvent's event: the same operation as a streamed `customer_event` with this request id
    as its event_id, so that either path replays what the other committed."""
    _check(request.HasField("event"), "event: required")
    return _customer_event_op(_request_id(request.request_id), request.event, "event")


def _customer_event_op(request_id: str, message: processing_pb2.CustomerEvent, field: str) -> m.EventOp:
    attributes = message.attributes
    count = len(attributes)
    _check(count <= EVENT_ATTRIBUTES_MAX, f"{field}.attributes: {count} entries, more than {EVENT_ATTRIBUTES_MAX}")
    id_max = limits.IDENTIFIER_BYTES_MAX
    pairs = []
    for key in sorted(attributes):
        _text(key, f"{field}.attributes: key {key!r}", id_max)
        pairs.append((key, _text(attributes[key], f"{field}.attributes[{key!r}]", id_max, required=False)))
    related = None
    if message.HasField("related"):
        related = customer(message.related, f"{field}.related")
    return m.EventOp(
        request_id,
        digest(message),
        customer(message.customer, f"{field}.customer"),
        _text(message.type, f"{field}.type", id_max),
        tuple(pairs),
        _amount(message.amount_minor, f"{field}.amount_minor", limits.AMOUNT_MINOR_MAX),
        related,
    )


def _time_ms(message, name: str) -> int:
    """A Timestamp field in ms since the epoch; 0 when unset."""
    if not message.HasField(name):
        return 0
    value = getattr(message, name)
    _check(0 <= value.nanos < 1_000_000_000, f"{name}.nanos: must be 0..999999999, got {value.nanos}")
    ms = value.seconds * 1000 + value.nanos // 1_000_000
    _check(ms > 0, f"{name}: must be after 1970-01-01T00:00:00Z")
    _check(ms <= TIMESTAMP_MS_MAX, f"{name}: must be before 10000-01-01T00:00:00Z")
    return ms


def _promo_terms(request) -> tuple[str, int, int]:
    """The campaign and validity window shared by GeneratePromoCodes and ImportPromoCodes."""
    campaign_id = _text(request.campaign_id, "campaign_id", limits.IDENTIFIER_BYTES_MAX)
    valid_from, valid_to = _time_ms(request, "valid_from"), _time_ms(request, "valid_to")
    if valid_from and valid_to:
        _check(valid_to > valid_from, "valid_to: must be after valid_from")
    return campaign_id, valid_from, valid_to


def generate_promo_codes_op(request: admin_pb2.GeneratePromoCodesRequest) -> m.PromoCodesOp:
    """The pattern and charset are checked by the ledger (it knows which codes exist already)."""
    campaign_id, valid_from, valid_to = _promo_terms(request)
    _check(bool(request.pattern), "pattern: must not be empty (e.g. \"SPRING-########\")")
    return m.PromoCodesOp(
        _request_id(request.request_id),
        digest(request),
        campaign_id,
        pattern=request.pattern,
        charset=request.charset,
        count=_amount(request.count, "count", promo.PROMO_CODES_PER_REQUEST_MAX, least=1),
        valid_from_ms=valid_from,
        valid_to_ms=valid_to,
        uses_total=request.uses_total,
        uses_per_account=request.uses_per_account,
        seed=secrets.token_bytes(PROMO_SEED_BYTES),
    )


def import_promo_codes_op(request: admin_pb2.ImportPromoCodesRequest) -> m.PromoCodesOp:
    campaign_id, valid_from, valid_to = _promo_terms(request)
    _check(len(request.codes) > 0, "codes: give at least one code")
    return m.PromoCodesOp(
        _request_id(request.request_id),
        digest(request),
        campaign_id,
        codes=_promo_codes(request.codes, "codes", promo.PROMO_CODES_PER_REQUEST_MAX),
        valid_from_ms=valid_from,
        valid_to_ms=valid_to,
        uses_total=request.uses_total,
        uses_per_account=request.uses_per_account,
    )


# ---------------------------------------------------------------------------------------------
# Responses


def timestamp(ms: int) -> Timestamp | None:
    if not ms:
        return None
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


# Responses are filled in place: a sub-message built apart and passed in would be copied.


def _set_time(field: Timestamp, ms: int) -> None:
    if ms:
        field.seconds, field.nanos = ms // 1000, (ms % 1000) * 1_000_000


def fill_balance(target: common_pb2.Balance, value: m.Balance) -> common_pb2.Balance:
    target.active_points = value.active
    target.pending_points = value.pending
    target.held_points = value.held
    target.available_points = value.available
    target.debt_points = value.debt
    target.next_expiry_points = value.next_expiry_points
    _set_time(target.next_expiry_at, value.next_expiry_at_ms)
    return target


def balance(value: m.Balance) -> common_pb2.Balance:
    return fill_balance(common_pb2.Balance(), value)


def redeem_response(value: m.RedeemResult) -> processing_pb2.RedeemResponse:
    return processing_pb2.RedeemResponse(
        transaction_id=value.transaction_id,
        account_id=value.account_id,
        redeemed_points=value.redeemed_points,
        held_points=value.held_points,
        hold_expires_at=timestamp(value.hold_expires_at_ms),
        balance=balance(value.balance),
    )


def rollback_response(value: m.RollbackResult) -> processing_pb2.RollbackResponse:
    return processing_pb2.RollbackResponse(
        transaction_id=value.transaction_id,
        account_id=value.account_id,
        kind=value.kind,
        reversed_transaction_id=value.reversed_transaction_id,
        clawed_back_points=value.clawed_back_points,
        restored_points=value.restored_points,
        debt_points=value.debt_points,
        balance=balance(value.balance),
        taken_points=value.taken_points,
        written_off_points=value.written_off_points,
    )


def process_event_response(value: m.EventResult) -> processing_pb2.ProcessEventResponse:
    response = processing_pb2.ProcessEventResponse(
        transaction_id=value.transaction_id,
        account_id=value.account_id,
        points=value.points,
        related_transaction_id=value.related_transaction_id,
        related_account_id=value.related_account_id,
        related_points=value.related_points,
    )
    add_campaign = response.campaigns.add
    for c in value.campaigns:
        add_campaign(campaign_id=c.campaign_id, effect=c.effect, points=c.points, discount_minor=c.discount_minor)
    fill_balance(response.balance, value.balance)
    return response


def promo_codes_response(value: m.PromoCodesResult) -> admin_pb2.GeneratePromoCodesResponse:
    return admin_pb2.GeneratePromoCodesResponse(codes=value.codes, campaign_id=value.campaign_id)


def card(value: m.CardInfo) -> accounts_pb2.Card:
    return accounts_pb2.Card(card=value.card, category=value.category, blocked=value.blocked)


def account(value: m.AccountView) -> accounts_pb2.Account:
    return accounts_pb2.Account(
        account_id=value.account_id,
        phone=value.phone,
        cards=[card(c) for c in value.cards],
        balance=balance(value.balance),
        created_at=timestamp(value.created_at_ms),
        lifetime_spend_minor=value.lifetime_spend_minor,
        lifetime_earned_points=value.lifetime_earned_points,
        parent_account_id=value.parent_account_id,
        member_account_ids=value.member_account_ids,
        segments=value.segments,
        tags=value.tags,
        birthday=value.birthday,
        clubs=value.clubs,
        last_activity_at=timestamp(value.last_activity_at_ms),
        tier=value.tier,
        next_tier=value.next_tier,
        next_tier_missing=value.next_tier_missing,
        purchases=value.purchases,
    )


def statement(value: m.Statement) -> accounts_pb2.ListTransactionsResponse:
    return accounts_pb2.ListTransactionsResponse(
        account_id=value.account_id,
        transactions=[
            accounts_pb2.Transaction(
                transaction_id=t.transaction_id,
                request_id=t.request_id,
                kind=t.kind,
                created_at=timestamp(t.created_at_ms),
                earned_points=t.earned_points,
                redeemed_points=t.redeemed_points,
                held_points=t.held_points,
                clawed_back_points=t.clawed_back_points,
                restored_points=t.restored_points,
                expired_points=t.expired_points,
                reverses_transaction_id=t.reverses_transaction_id,
                store_id=t.store_id,
                receipt_no=t.receipt_no,
                total_minor=t.total_minor,
                member_account_id=t.member_account_id,
                reason=t.reason,
                operator_id=t.operator_id,
                adjusted_points=t.adjusted_points,
                actor=t.actor,
                written_off_points=t.written_off_points,
                balance_change_points=t.balance_change_points,
            )
            for t in value.transactions
        ],
        next_page_token=str(value.next_before_id) if value.next_before_id else "",
    )


def page_token(token: str) -> int:
    if not token:
        return 0
    _check(token.isdigit() and 0 < len(token) <= 19, "page_token: not a token from next_page_token")
    return _amount(int(token), "page_token", limits.TRANSACTION_ID_MAX, least=1)


def page_size(size: int) -> int:
    """0: the default; more than the most: the most (a page is a hint, not a contract)."""
    return min(size, limits.STATEMENT_PAGE_SIZE_MAX)
