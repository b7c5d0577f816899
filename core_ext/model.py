"""The plain values that cross the core's boundary: operations in, outcomes out.

The server turns protobuf messages into these and back; the core never sees protobuf. Outcomes are
stored encoded (msgpack) as the idempotency record, so a replay renders the very same response.
Points and money are int minor units, quantities int thousandths, times int ms since the epoch (UTC).
"""

from __future__ import annotations

import enum

import msgspec


class Code(enum.IntEnum):
    """Per-operation result; the numbers are gRPC's status codes and kassa.v1.Code's."""

    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14


class Reason(enum.IntEnum):
    """Why a business rule refused; the numbers are kassa.v1.Reason's."""

    NONE = 0
    INSUFFICIENT_POINTS = 1
    HOLD_EXPIRED = 2
    HOLD_NOT_ACTIVE = 3
    ALREADY_ROLLED_BACK = 4
    RETURN_EXCEEDS_PURCHASE = 5
    REDEEM_SHARE_EXCEEDED = 6
    NEGATIVE_BALANCE = 7
    ACCOUNT_BLOCKED = 8
    CARD_BLOCKED = 9
    NOT_REVERSIBLE = 10
    ROLLED_BACK_BEFORE_ARRIVAL = 11
    HOLD_OTHER_ACCOUNT = 12
    ACCOUNT_NOT_EMPTY = 13
    ALREADY_IN_GROUP = 14
    NOT_IN_GROUP = 15
    UNKNOWN_CAMPAIGN = 16
    ANSWER_NOT_KEPT = 17  # a retry past the replay window: its answer was dropped (core_ext/retention.py)
    REQUEST_TOO_OLD = 18  # occurred_at is older than the return window: the ledger may have forgotten it


class TxnKind(enum.IntEnum):
    """Journal entry kinds; the numbers are kassa.v1.TransactionKind's."""

    ACCRUE = 1
    REDEEM = 2
    HOLD = 3
    ROLLBACK = 4
    ADJUST = 5
    EXPIRE = 6
    CREATE_ACCOUNT = 7
    ISSUE_CARD = 8
    BLOCK_CARD = 9
    SET_ATTRIBUTES = 10
    JOIN_GROUP = 11
    LEAVE_GROUP = 12
    DEBT_REPAID = 13
    EVENT = 14
    WRITE_OFF = 15  # clawback that policy "clamp" dropped: it follows the rollback it completes


class RollbackKind(enum.IntEnum):
    UNSPECIFIED = 0
    VOID_HOLD = 1
    CANCEL = 2
    RETURN = 3
    PENDING_ORIGINAL = 4  # recorded before its original arrived (a tombstone)


class IdKind(enum.IntEnum):
    ACCOUNT = 1
    CARD = 2
    PHONE = 3


# ---------------------------------------------------------------------------------------------
# Inputs


class Customer(msgspec.Struct, array_like=True, gc=False, frozen=True):
    kind: int  # IdKind
    value: str


class Line(msgspec.Struct, array_like=True, gc=False, frozen=True):
    line_no: int
    sku: str
    category: str
    qty_milli: int
    price_minor: int
    amount_minor: int
    no_earn: bool = False
    no_discount: bool = False
    brand: str = ""


class Receipt(msgspec.Struct, array_like=True, gc=False, frozen=True):
    store_id: str
    terminal_id: str
    receipt_no: str
    lines: tuple[Line, ...]
    region: str = ""
    channel: str = ""
    payment_method: str = ""
    card_bin: str = ""  # leading digits of the bank card paid with
    promo_codes: tuple[str, ...] = ()


class Shopper(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """What the rules may ask about the customer, read from the ledger before a purchase."""

    card_category: str = ""
    tier: str = ""
    segments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    clubs: tuple[str, ...] = ()
    created_at_ms: int = 0
    birthday: str = ""  # "MM-DD"
    purchases: int = 0  # purchases before this one
    lifetime_spend_minor: int = 0
    window_spend_minor: int = 0  # spend over the tier window before this purchase
    card_blocked: bool = False  # the presented card is blocked (see blocked_card_earns)


NO_SHOPPER = Shopper()


class CalculateQuery(msgspec.Struct, array_like=True, gc=False, frozen=True):
    customer: Customer
    receipt: Receipt
    redeem_points: int = 0
    explain: bool = False  # say why each campaign applied or not (off on the hot path)


class AccrueOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=1):
    request_id: str
    digest: bytes
    customer: Customer
    receipt: Receipt
    redeem_points: int = 0
    capture_hold_ids: tuple[int, ...] = ()
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal
    stores: tuple[str, ...] = ()  # the caller's stores: what it may roll back or capture; (): any
    occurred_at_ms: int = 0  # when the POS made it (0: not sent); see core_ext/retention.py


class RedeemOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=2):
    request_id: str
    digest: bytes
    customer: Customer
    points: int
    receipt_total_minor: int
    hold: bool = False
    store_id: str = ""
    terminal_id: str = ""
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal
    occurred_at_ms: int = 0  # when the POS made it (0: not sent); see core_ext/retention.py


class ReturnLine(msgspec.Struct, array_like=True, gc=False, frozen=True):
    line_no: int
    qty_milli: int


class RollbackOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=3):
    request_id: str
    digest: bytes
    transaction_id: int = 0  # either this
    original_request_id: str = ""  # or this
    return_lines: tuple[ReturnLine, ...] = ()  # empty: the whole transaction
    store_id: str = ""
    terminal_id: str = ""
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal
    stores: tuple[str, ...] = ()  # the caller's stores: what it may roll back or capture; (): any
    occurred_at_ms: int = 0  # when the POS made it (0: not sent); see core_ext/retention.py


def store_of(op) -> str | None:
    """The store an operation was made for; None for one that belongs to no store."""
    kind = type(op)
    if kind is AccrueOp:
        return op.receipt.store_id
    if kind is RedeemOp or kind is RollbackOp:
        return op.store_id
    return None


class CreateAccountOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=4):
    request_id: str
    digest: bytes
    account_id: str = ""
    phone: str = ""
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class IssueCardOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=5):
    request_id: str
    digest: bytes
    account_id: str
    card: str
    category: str = ""
    replaces_card: str = ""
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class BlockCardOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=6):
    request_id: str
    digest: bytes
    card: str
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class SetAttributesOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=7):
    request_id: str
    digest: bytes
    customer: Customer
    segments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    birthday: str = ""
    clubs: tuple[str, ...] = ()
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class AdjustOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=8):
    request_id: str
    digest: bytes
    customer: Customer
    points: int  # > 0 credit, < 0 debit
    reason: str
    operator_id: str
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class JoinGroupOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=9):
    request_id: str
    digest: bytes
    account_id: str
    parent_account_id: str
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class LeaveGroupOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=10):
    request_id: str
    digest: bytes
    account_id: str
    actor: str = ""  # who asks: the API key's terminal or operator, for the journal


class EventOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=12):
    """A non-purchase event (registration, referral, birthday, check-in, top-up, bill paid, ...)."""

    request_id: str
    digest: bytes
    customer: Customer
    event_type: str
    attributes: tuple[tuple[str, str], ...] = ()
    amount_minor: int = 0  # top-up or bill amount, for percent campaigns
    related: Customer | None = None  # e.g. the referred friend, for `related_points`
    actor: str = ""
    # Partitions: `related` (then an account id) is in another partition; its share goes to this
    # partition's outbox and a relay credits it there (server/relay.py).
    related_elsewhere: bool = False


class RelatedCreditOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=16):
    """Partitions: the related customer's share of an event made in another partition, relayed
    from that partition's outbox under a request id derived from the event's (server/relay.py)."""

    request_id: str
    digest: bytes
    account_id: str
    points: int
    event_type: str
    ruleset_version: str = ""
    activate_at_ms: int = 0
    expire_at_ms: int = 0
    actor: str = ""


class MoveOutOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=17):
    """Partitions: take an empty member out of its partition, to join a group in `partition`;
    what moves (`MoveInOp`) waits in the outbox (core_ext/ledger/moves.pxi)."""

    request_id: str  # the join's and MOVE_OUT_SUFFIX
    digest: bytes
    join: JoinGroupOp
    partition: int
    actor: str = ""


class MoveInOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=18):
    """Partitions: a member's account record, identifiers, journal entries (oldest first) and their
    requests' idempotency records, taken out of another partition; then the join (`join`)."""

    request_id: str  # the join's: its retry replays here
    digest: bytes
    join: JoinGroupOp
    account: bytes
    idents: tuple[tuple[bytes, bytes], ...] = ()
    entries: tuple[bytes, ...] = ()
    requests: tuple[tuple[bytes, bytes], ...] = ()
    actor: str = ""


class PromoCodesOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=13):
    """Create promo codes bound to a campaign: generated from `pattern`, or the `codes` given."""

    request_id: str
    digest: bytes
    campaign_id: str
    pattern: str = ""
    charset: str = ""
    count: int = 0
    codes: tuple[str, ...] = ()  # imported external codes (then no pattern)
    valid_from_ms: int = 0  # 0: open
    valid_to_ms: int = 0  # 0: open
    uses_total: int = 0  # 0: unlimited
    uses_per_account: int = 0  # 0: unlimited
    actor: str = ""
    seed: bytes = b""  # codes drawn from a pattern come from random.Random(seed): the same on every replica


class SetRulesOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=14):
    """Switch every worker to this (already validated) ruleset. Not idempotent by request id."""

    sources: tuple[tuple[str, str], ...]
    version: str
    request_id: str = ""
    files: bool = False  # the configured rule files, adopted at a start


class SweepOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=11):
    """Settle up to `accounts_max` accounts whose lots or holds came due (the expiry sweep).
    Not idempotent by request id: a sweep only writes what time has already decided."""

    accounts_max: int
    request_id: str = ""


class CompactOp(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=15):
    """One bounded step of compaction (core_ext/compaction.py): drop stored answers past the
    replay window, forget requests past the return window, remove ended lots and holds, promo
    codes past validity and counters of closed periods. Not
    idempotent by request id: like a sweep, it only removes what time has already decided."""

    replay_window_ms: int
    return_window_ms: int
    records_max: int  # records examined by this step (one write transaction)
    request_id: str = ""


Operation = (
    AccrueOp | RedeemOp | RollbackOp | CreateAccountOp | IssueCardOp | BlockCardOp | SetAttributesOp | AdjustOp
    | JoinGroupOp | LeaveGroupOp | SweepOp | EventOp | PromoCodesOp | SetRulesOp | CompactOp
)


# ---------------------------------------------------------------------------------------------
# Results


class Balance(msgspec.Struct, array_like=True, gc=False, frozen=True):
    active: int = 0
    pending: int = 0
    held: int = 0
    available: int = 0
    debt: int = 0
    next_expiry_at_ms: int = 0
    next_expiry_points: int = 0


class LineResult(msgspec.Struct, array_like=True, gc=False, frozen=True):
    line_no: int
    amount_minor: int
    discount_minor: int
    earned_points: int
    redeemed_points: int
    captured_points: int = 0  # share of the captured holds' points carried by this line

    @property
    def due_minor(self) -> int:
        """What is left to pay for the line in money: a point pays one minor unit."""
        return self.amount_minor - self.discount_minor - self.redeemed_points - self.captured_points


class AppliedCampaign(msgspec.Struct, array_like=True, gc=False, frozen=True):
    campaign_id: str
    effect: str
    points: int
    discount_minor: int


class PromoCodeResult(msgspec.Struct, array_like=True, gc=False, frozen=True):
    code: str
    accepted: bool
    reason: str = ""  # unknown | not_yet_valid | expired | exhausted | limit_per_account | not_applicable


class CampaignExplain(msgspec.Struct, array_like=True, gc=False, frozen=True):
    campaign_id: str
    applied: bool
    reason: str  # why it did not apply, or what it gave


class Calculation(msgspec.Struct, array_like=True, gc=False, frozen=True, omit_defaults=True):
    lines: tuple[LineResult, ...]
    total_minor: int
    discount_minor: int
    payable_minor: int
    earned_points: int
    redeemable_points: int
    redeemed_points: int
    campaigns: tuple[AppliedCampaign, ...]
    ruleset_version: str
    activate_at_ms: int
    expire_at_ms: int
    promo_codes: tuple[PromoCodeResult, ...] = ()
    explain: tuple[CampaignExplain, ...] = ()
    # per campaign with limits: what it gave on each line (points or minor), for the ledger's counters
    limited: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # points of campaigns with their own activation or lifetime: (activate_at_ms, expire_at_ms, points),
    # not in the receipt's main lot (activate_at_ms / expire_at_ms); earned_points counts them too
    lots: tuple[tuple[int, int, int], ...] = ()
    captured_points: int = 0  # of the holds an Accrue captures; with redeemed_points, within redeemable_points
    # why the purchase earns nothing whatever the campaigns say: "card_blocked" (a blocked card
    # under blocked_card_earns = false); "" otherwise
    no_points_reason: str = ""

    @property
    def due_minor(self) -> int:
        """What is left to pay in money after the points: a point pays one minor unit."""
        return self.payable_minor - self.redeemed_points - self.captured_points


class EventCalculation(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """What the event campaigns give for one non-purchase event."""

    points: int  # for the event's customer
    related_points: int  # for the related customer (a referrer)
    campaigns: tuple[AppliedCampaign, ...]
    limited: tuple[tuple[str, tuple[int, ...]], ...]  # per campaign with limits: (customer's, related's)
    ruleset_version: str
    activate_at_ms: int
    expire_at_ms: int


class CardInfo(msgspec.Struct, array_like=True, gc=False, frozen=True):
    card: str
    category: str
    blocked: bool


class AccountView(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=10):
    account_id: str
    phone: str
    cards: tuple[CardInfo, ...]
    balance: Balance  # of the group's pool for a group member
    created_at_ms: int
    lifetime_spend_minor: int
    lifetime_earned_points: int
    parent_account_id: str = ""
    member_account_ids: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    birthday: str = ""
    clubs: tuple[str, ...] = ()
    last_activity_at_ms: int = 0
    tier: str = ""
    next_tier: str = ""
    next_tier_missing: int = 0  # in the next tier's metric: minor units of spend, or points
    purchases: int = 0


class CalculateResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=11):
    account_id: str
    calculation: Calculation
    balance: Balance


class AccrueResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=12):
    transaction_id: int
    account_id: str
    calculation: Calculation
    balance: Balance
    captured_points: int


class RedeemResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=13):
    transaction_id: int
    account_id: str
    redeemed_points: int
    held_points: int
    hold_expires_at_ms: int
    balance: Balance


class RollbackResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=14):
    transaction_id: int
    account_id: str
    kind: int  # RollbackKind
    reversed_transaction_id: int
    clawed_back_points: int  # = taken_points + debt_points + written_off_points
    restored_points: int
    debt_points: int
    balance: Balance
    taken_points: int = 0  # of the clawback, what the account's points covered
    written_off_points: int = 0  # of the clawback, what policy "clamp" dropped (a WRITE_OFF entry)


class TransactionView(msgspec.Struct, array_like=True, gc=False, frozen=True):
    transaction_id: int
    request_id: str
    kind: int
    created_at_ms: int
    earned_points: int
    redeemed_points: int
    held_points: int
    clawed_back_points: int
    restored_points: int
    expired_points: int
    reverses_transaction_id: int
    store_id: str
    receipt_no: str
    total_minor: int
    member_account_id: str = ""
    reason: str = ""
    operator_id: str = ""
    adjusted_points: int = 0
    actor: str = ""
    written_off_points: int = 0  # clawback dropped under policy "clamp"
    balance_change_points: int = 0  # what it changed the statement's account's points by (records.statement_change)


class Statement(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=15):
    account_id: str
    transactions: tuple[TransactionView, ...]
    next_before_id: int  # 0 on the last page


class AdjustResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=16):
    transaction_id: int
    account_id: str
    balance: Balance


class CardResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=17):
    card: CardInfo


class EventResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=19):
    transaction_id: int  # 0 when no campaign gave anything
    account_id: str
    points: int
    related_transaction_id: int
    related_account_id: str
    related_points: int
    campaigns: tuple[AppliedCampaign, ...]
    balance: Balance


class PromoCodesResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=20):
    campaign_id: str
    codes: tuple[str, ...]


class SweepResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=18):
    accounts_settled: int
    expired_points: int
    more: bool  # accounts were left for the next sweep


class CompactResult(msgspec.Struct, array_like=True, gc=False, frozen=True, tag=21):
    answers_dropped: int  # stored answers past the replay window, now retained records
    requests_forgotten: int  # idempotency records (and tombstones) past the return window, removed
    lots_removed: int
    holds_removed: int
    more: bool  # the step stopped at `records_max`: run another
    codes_removed: int = 0  # promo codes past validity and the return window, now markers
    counters_removed: int = 0  # counters of closed periods and of removed codes
    step_us: int = 0  # how long the step held the writer (the server sizes the next step by it; not ledger state)


Body = (
    AccountView | CalculateResult | AccrueResult | RedeemResult | RollbackResult | Statement | AdjustResult
    | CardResult | SweepResult | EventResult | PromoCodesResult | CompactResult
)


class Outcome(msgspec.Struct, array_like=True, gc=False, frozen=True):
    code: int  # Code
    reason: int = 0  # Reason
    message: str = ""
    body: Body | None = None

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


def rejected(code: Code, message: str, reason: Reason = Reason.NONE) -> Outcome:
    return Outcome(int(code), int(reason), message)
