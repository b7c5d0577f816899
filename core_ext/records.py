"""What the ledger stores in LMDB, one msgspec struct per record kind (msgpack, array-like).
msgspec writes every field of an array-like struct, defaults too: the records a purchase writes
have layouts of their own (a format byte first) that leave out what a plain purchase does not use
(`JOURNAL_V1`, `IDEMPOTENCY_ACCRUE_V2`); each kind's decoder reads every layout it ever had.

Keys: account ids, cards and request ids as UTF-8; transaction and lot ids as 8-byte big-endian,
so that LMDB's byte order is their numeric order.
"""

from __future__ import annotations

import enum
import functools
import operator

import msgspec

from kassa.core_ext.model import AppliedCampaign, Balance, CampaignExplain, PromoCodeResult, TxnKind


_encode_msgpack = msgspec.msgpack.Encoder().encode


class LotState(enum.IntEnum):
    PENDING = 0  # earned, not active before activates_at_ms
    ACTIVE = 1
    EXPIRED = 2  # what remained at expires_at_ms was written off by an EXPIRE entry


class HoldState(enum.IntEnum):
    LIVE = 0
    CAPTURED = 1
    VOIDED = 2
    EXPIRED = 3


class AccountRec(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    account_id: str
    phone: str
    created_at_ms: int
    active: int = 0  # sum of `remaining` over ACTIVE lots
    pending: int = 0  # sum of `remaining` over PENDING lots
    held: int = 0  # sum of `amount` over LIVE holds
    debt: int = 0  # clawback that no lot could cover (policy "negative")
    next_change_at_ms: int = 0  # earliest activation, expiry or hold expiry; 0: none
    lifetime_spend_minor: int = 0
    lifetime_earned_points: int = 0
    cards: list[str] = []
    open_lot_ids: list[int] = []  # PENDING lots and ACTIVE lots with remaining > 0
    live_hold_ids: list[int] = []
    parent_id: str = ""  # a group member's points pool into this account
    member_ids: list[str] = []  # on a group's parent
    segments: list[str] = []
    tags: list[str] = []
    birthday: str = ""  # "MM-DD"
    clubs: list[str] = []
    last_activity_at_ms: int = 0  # last accrue, redeem or adjustment; drives inactivity burn
    last_lot_id: int = 0  # the newest earned lot: the day's purchases add to it
    burnt_below_lot_id: int = 0  # an inactivity burn took every lot with a smaller id
    last_txn_id: int = 0  # the newest journal entry of its statement
    purchases: int = 0  # accrues made (by this member), rolled back or not: for `nth_purchase`
    activity: list[tuple[int, int, int]] = []  # (local day, spend minor, points earned) inside the tier window
    tier_grants: list[tuple[str, int, int]] = []  # (tier, until ms, granting transaction) of grant_tier campaigns
    # open_lot_ids is in lot_expiry_order, so the next expiry is read from its first lots; records
    # written before it are put in order by their next write
    lots_by_expiry: bool = False


def lot_expiry_order(lot: LotRec) -> tuple[bool, int, int]:
    """The order lots are spent in, and kept in `AccountRec.open_lot_ids`: earliest expiry first,
    lots that never expire last, older first."""
    return lot.expires_at_ms == 0, lot.expires_at_ms, lot.lot_id


class IdentRec(msgspec.Struct, array_like=True, gc=False):
    account_id: str
    category: str = ""
    blocked: bool = False


class LotRec(msgspec.Struct, array_like=True, gc=False):
    lot_id: int  # the id of the transaction that earned it
    account_id: str
    amount: int
    remaining: int
    activates_at_ms: int
    expires_at_ms: int  # 0: never
    state: int = LotState.ACTIVE


class HoldRec(msgspec.Struct, array_like=True, gc=False):
    hold_id: int  # the id of the HOLD transaction
    account_id: str
    amount: int
    expires_at_ms: int
    state: int = HoldState.LIVE


class JournalLine(msgspec.Struct, array_like=True, gc=False):
    line_no: int
    qty_milli: int
    amount_minor: int
    discount_minor: int
    earned_points: int
    redeemed_points: int  # share of redeemed and captured points carried by this line


class Posting(msgspec.Struct, array_like=True, gc=False):
    """One change to one lot's `remaining`; replaying every posting rebuilds every lot."""

    lot_id: int
    delta: int


class TxnRec(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    txn_id: int
    kind: int  # model.TxnKind
    request_id: str
    account_id: str
    created_at_ms: int
    store_id: str = ""
    terminal_id: str = ""
    receipt_no: str = ""
    total_minor: int = 0
    payable_minor: int = 0
    lines: list[JournalLine] = []
    earned: int = 0
    redeemed: int = 0
    held: int = 0
    captured: int = 0
    clawed: int = 0
    restored: int = 0
    expired: int = 0
    debt_delta: int = 0
    forgiven: int = 0  # WRITE_OFF: clawback dropped under policy "clamp" (older ledgers: on the ROLLBACK itself)
    new_lot: LotRec | None = None
    extra_lots: list[LotRec] = []  # lots of campaigns with their own activation or lifetime
    postings: list[Posting] = []
    reverses: int = 0
    captured_hold_ids: list[int] = []
    returned: list[tuple[int, int]] = []  # (line_no, qty_milli) given back by this rollback
    hold_expires_at_ms: int = 0
    ruleset_version: str = ""
    member_id: str = ""  # the group member who made it, when `account_id` is the group's pool
    reason: str = ""
    operator_id: str = ""
    adjusted: int = 0  # > 0 credit, < 0 debit
    actor: str = ""  # who did it: the API key's terminal or operator; "system" for expiry
    prev_id: int = 0  # the previous entry of `account_id`'s statement (0: none)
    member_prev_id: int = 0  # the previous entry of `member_id`'s statement
    counters: list[tuple[bytes, int]] = []  # every change to a counter (caps, budgets, uses)
    limited: list[LimitedUse] = []  # per campaign with limits: what it gave and where it was counted
    use_keys: list[bytes] = []  # use counters (campaign uses, promo codes) given back by a full rollback
    promo_codes: list[str] = []  # the promo codes it accepted
    activity_counted: bool = False  # its spend and points went into the account's tier activity
    spent_postings: int = -1  # its first postings that spent points (-1: every negative one)


def statement_change(entry: TxnRec, account_id: str) -> int:
    """What `entry` changed the points of `account_id` by (active + pending - debt), from the
    amounts its statement line shows; an account's statement adds up to its points.

    An entry a group member made in its pool changed the pool's points, not the member's: 0 on the
    member's statement. A void releases a hold: it posts to no lot, and its `restored` is the
    released hold; every other rollback posts each point it restores to a lot (points whose lot has
    expired meanwhile stay expired and are not in `restored`). A rollback written before write-offs
    had entries of their own carries the clamp's write-off in `forgiven` itself."""
    if entry.account_id != account_id:
        return 0
    kind = entry.kind
    if kind == TxnKind.ACCRUE:
        return entry.earned - entry.redeemed - entry.captured
    if kind == TxnKind.EVENT:
        return entry.earned
    if kind == TxnKind.REDEEM:
        return -entry.redeemed
    if kind == TxnKind.ROLLBACK:
        restored = entry.restored if entry.postings else 0  # (a void: no postings)
        return restored - entry.clawed + entry.forgiven
    if kind == TxnKind.WRITE_OFF:
        return entry.forgiven
    if kind == TxnKind.ADJUST:
        return entry.adjusted
    if kind == TxnKind.EXPIRE:
        return -entry.expired
    return 0  # holds, debt repaid from new points, account and card changes


class LimitedUse(msgspec.Struct, array_like=True, gc=False):
    """What one campaign with ledger-kept limits gave in a transaction, per line (one amount for an
    event), and the counters that amount was added to: a rollback takes back its share."""

    campaign_id: str
    amounts: list[int]
    keys: list[bytes]


class PromoCodeRec(msgspec.Struct, array_like=True, gc=False):
    campaign_id: str
    valid_from_ms: int = 0  # 0: open
    valid_to_ms: int = 0  # 0: open
    uses_total: int = 0  # 0: unlimited
    uses_per_account: int = 0  # 0: unlimited


class ReversalRec(msgspec.Struct, array_like=True, gc=False):
    """How much of an ACCRUE or REDEEM transaction has been given back so far."""

    returned_qty: dict[int, int] = {}  # line_no -> qty_milli returned
    restored_per_posting: list[int] = []  # parallel to the original's negative postings
    rollback_ids: list[int] = []
    complete: bool = False


class IdempotencyRec(msgspec.Struct, array_like=True, gc=False):
    digest: bytes  # of the request payload; b"" for a tombstone
    txn_id: int  # 0 for a rejection or a tombstone
    outcome: bytes  # msgpack of model.Outcome, replayed as it is
    # A tombstone's stores: the scope of the key that wrote it. It cancels only an original from one
    # of them; empty (an unscoped key, or a ledger from before stores were kept): any store.
    stores: list[str] = []


# An idempotency record begins with its format: a msgpack array header (0x90-0x9f, 0xdc) for an
# `IdempotencyRec` (every record written before formats existed), or one of these bytes.
IDEMPOTENCY_ACCRUE_V1 = 0x01  # an accepted purchase: `AccrueOutcomeRec`, the rest read from its journal entry
IDEMPOTENCY_RETAINED_V1 = 0x02  # past the replay window: `RetainedRec`, the answer dropped (core_ext/retention.py)
IDEMPOTENCY_ACCRUE_V2 = 0x03  # an accepted purchase: `AccrueOutcomeV2`, smaller than `AccrueOutcomeRec`


class AccrueOutcomeRare(msgspec.Struct, array_like=True, gc=False):
    """The parts of a purchase's answer that most purchases leave empty."""

    promo_codes: tuple[PromoCodeResult, ...] = ()
    explain: tuple[CampaignExplain, ...] = ()
    limited: tuple[tuple[str, tuple[int, ...]], ...] = ()
    lots: tuple[tuple[int, int, int], ...] = ()
    captured_points: int = 0  # the calculation's
    no_points_reason: str = ""
    # Per line, its share of the captured holds; (): none. The journal line holds redeemed + captured.
    line_captured_points: tuple[int, ...] = ()


class AccrueOutcomeRec(msgspec.Struct, array_like=True, gc=False):
    """What a purchase's answer holds beyond its journal entry: the answer is rebuilt from both,
    equal to the one first given (the journal keeps the lines, totals, points, ruleset and account).
    Stored after the byte IDEMPOTENCY_ACCRUE_V1. (msgspec writes every field of an array-like
    struct, defaults too: what is mostly empty sits in `rare`, one byte when None.)"""

    digest: bytes  # of the request payload
    txn_id: int
    balance: Balance
    campaigns: tuple[AppliedCampaign, ...]
    discount_minor: int
    redeemable_points: int
    redeemed_points: int
    activate_at_ms: int
    expire_at_ms: int
    rare: AccrueOutcomeRare | None = None


# The effects of the answer's campaigns, stored as their index here: append only (a stored index
# must keep its name); an effect not in it is stored as its name.
STORED_EFFECTS = (
    "earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier",
    "discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle",
    "redeem_share", "grant_tier",
)
_IDEMPOTENCY_ACCRUE_V2_BYTE = bytes([IDEMPOTENCY_ACCRUE_V2])
_EFFECT_INDEX = {effect: index for index, effect in enumerate(STORED_EFFECTS)}


class AccrueOutcomeV2(msgspec.Struct, array_like=True, gc=False):
    """`AccrueOutcomeRec`, smaller: stored after IDEMPOTENCY_ACCRUE_V2, read through
    `accrue_outcome_fields`. Its times are relative to what the answer usually equals, so that
    most are 0; its campaigns' effects are indexes into STORED_EFFECTS."""

    digest: bytes  # of the request payload
    txn_id: int
    balance: Balance
    campaigns: tuple[tuple[str, int | str, int, int], ...]  # (campaign id, effect, points, discount minor)
    discount_minor: int
    redeemable_points: int
    redeemed_points: int
    activate_after_ms: int  # activate_at_ms less the journal entry's created_at_ms
    expire_after_expiry_ms: int  # expire_at_ms less the balance's next_expiry_at_ms
    rare: AccrueOutcomeRare | None = None


def accrue_outcome_v2(digest: bytes, txn_id: int, balance: Balance, calculation, created_at_ms: int,
                      rare: AccrueOutcomeRare | None) -> bytes:
    """The stored record (IDEMPOTENCY_ACCRUE_V2) of a purchase's answer, its entry made at `created_at_ms`."""
    campaigns = tuple([(campaign.campaign_id, _EFFECT_INDEX.get(campaign.effect, campaign.effect), campaign.points,
                        campaign.discount_minor) for campaign in calculation.campaigns])
    record = AccrueOutcomeV2(digest, txn_id, balance, campaigns, calculation.discount_minor,
                             calculation.redeemable_points, calculation.redeemed_points,
                             calculation.activate_at_ms - created_at_ms,
                             calculation.expire_at_ms - balance.next_expiry_at_ms, rare)
    return _IDEMPOTENCY_ACCRUE_V2_BYTE + _encode_msgpack(record)


def accrue_outcome_fields(record, created_at_ms: int) -> tuple:
    """(campaigns, activate_at_ms, expire_at_ms) of a purchase's answer, from its record in either
    format (`AccrueOutcomeRec`, `AccrueOutcomeV2`) and its journal entry's created_at_ms."""
    if type(record) is AccrueOutcomeRec:
        return record.campaigns, record.activate_at_ms, record.expire_at_ms
    campaigns = tuple([AppliedCampaign(campaign_id, STORED_EFFECTS[effect] if type(effect) is int else effect,
                                       points, discount_minor)
                       for campaign_id, effect, points, discount_minor in record.campaigns])
    return (campaigns, created_at_ms + record.activate_after_ms,
            record.balance.next_expiry_at_ms + record.expire_after_expiry_ms)


class RetainedRec(msgspec.Struct, array_like=True, gc=False):
    """What is kept of a request past the replay window, for the return window: enough to refuse
    its retry (never apply it twice) and to roll it back by `original_request_id`; the answer is
    dropped. Stored after the byte IDEMPOTENCY_RETAINED_V1. Tombstones are never retained this
    way: they keep their `IdempotencyRec` (and its stores) until the return window ends."""

    digest: bytes  # of the request payload (never b"": a tombstone is not retained)
    txn_id: int  # 0 for a rejection
    at_ms: int  # when the request was applied: the record leaves the ledger a return window later


def decode_idempotency(stored: bytes) -> IdempotencyRec | AccrueOutcomeRec | AccrueOutcomeV2 | RetainedRec:
    """Any format of an idempotency record; each has `digest` and `txn_id`."""
    if stored[0] == IDEMPOTENCY_ACCRUE_V2:
        return decode_accrue_outcome_v2(memoryview(stored)[1:])
    if stored[0] == IDEMPOTENCY_ACCRUE_V1:
        return decode_accrue_outcome(memoryview(stored)[1:])
    if stored[0] == IDEMPOTENCY_RETAINED_V1:
        return decode_retained(memoryview(stored)[1:])
    return _decode_idempotency_rec(stored)


# One decoder per record kind, shared by the ledger and the invariant checks.
decode_account = msgspec.msgpack.Decoder(AccountRec).decode
decode_ident = msgspec.msgpack.Decoder(IdentRec).decode
decode_lot = msgspec.msgpack.Decoder(LotRec).decode
decode_hold = msgspec.msgpack.Decoder(HoldRec).decode
_decode_txn_v0 = msgspec.msgpack.Decoder(TxnRec).decode
decode_reversal = msgspec.msgpack.Decoder(ReversalRec).decode
_decode_idempotency_rec = msgspec.msgpack.Decoder(IdempotencyRec).decode
decode_accrue_outcome = msgspec.msgpack.Decoder(AccrueOutcomeRec).decode
decode_promo_code = msgspec.msgpack.Decoder(PromoCodeRec).decode
decode_retained = msgspec.msgpack.Decoder(RetainedRec).decode
decode_accrue_outcome_v2 = msgspec.msgpack.Decoder(AccrueOutcomeV2).decode


# -- The journal entry's stored layout ------------------------------------------------------------
# A journal entry is stored as one byte, its format, then msgpack. Entries written before formats
# existed start with a msgpack array header (0x90-0x9f, 0xdc): `TxnRec` in its field order.
JOURNAL_V1 = 0x01  # `_TxnV1`: what a plain purchase sets first, the rest in `_TxnRestV1`
_JOURNAL_V1_BYTE = bytes([JOURNAL_V1])
RULESET_VERSION_PREFIX = "v-"  # core_ext/program.py: "v-" and 12 hex digits, stored as their 6 bytes
_RULESET_VERSION_DIGITS = 12
RULESET_VERSIONS_CACHED = 64  # versions whose stored bytes are kept at hand: a ledger uses a few


class _TxnRestV1(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """The fields of a journal entry a plain purchase leaves at their default, most used first
    (a record ends at its last field that is not)."""

    redeemed: int = 0
    captured: int = 0
    debt_delta: int = 0
    member_id: str = ""
    member_prev_id: int = 0
    counters: list[tuple[bytes, int]] = []
    limited: list[LimitedUse] = []
    use_keys: list[bytes] = []
    promo_codes: list[str] = []
    extra_lots: list[LotRec] = []
    captured_hold_ids: list[int] = []
    held: int = 0
    hold_expires_at_ms: int = 0
    clawed: int = 0
    restored: int = 0
    expired: int = 0
    forgiven: int = 0
    reverses: int = 0
    returned: list[tuple[int, int]] = []
    reason: str = ""
    operator_id: str = ""
    adjusted: int = 0
    ruleset_version: str = ""  # one not of the form "v-" and 12 hex digits (those are `_TxnV1.ruleset_digits`)


_REST_FIELDS = _TxnRestV1.__struct_fields__[:-1]  # those read from and written to `TxnRec` as they are
_rest_of = operator.attrgetter(*_REST_FIELDS)


class _TxnV1(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """A journal entry as stored after JOURNAL_V1: `TxnRec`'s fields, packed.

    - `lot`: `new_lot` as [lot_id, amount, remaining, created_at_ms - activates_at_ms,
      expires_at_ms, state] and its account id only when it is not the entry's.
    - `ruleset_digits`: a ruleset version "v-" and 12 hex digits, as their 6 bytes; any other
      version is `rest.ruleset_version`."""

    txn_id: int
    kind: int
    request_id: str
    account_id: str
    created_at_ms: int
    store_id: str = ""
    terminal_id: str = ""
    receipt_no: str = ""
    total_minor: int = 0
    payable_minor: int = 0
    lines: list[JournalLine] = []
    earned: int = 0
    lot: list[int | str] = []
    postings: list[Posting] = []
    ruleset_digits: bytes = b""
    actor: str = ""
    prev_id: int = 0
    activity_counted: bool = False
    spent_postings: int = -1
    rest: _TxnRestV1 | None = None


_decode_txn_v1 = msgspec.msgpack.Decoder(_TxnV1).decode


def _defaults(cls) -> tuple:
    """Per field of an array-like struct, its default (None for a field without one)."""
    return tuple(None if field.default is msgspec.NODEFAULT and field.default_factory is msgspec.NODEFAULT
                 else field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
                 for field in msgspec.inspect.type_info(cls).fields)


_V1_DEFAULTS = _defaults(_TxnV1)
_REST_DEFAULTS = _defaults(_TxnRestV1)
_REST_FIELD_DEFAULTS = _REST_DEFAULTS[:len(_REST_FIELDS)]


def _trimmed(values: list | tuple, defaults: tuple) -> list | tuple:
    """`values` without its trailing defaults: msgspec writes every field of an array-like struct,
    and reads a shorter array as the leading fields, the others at their default."""
    end = len(values)
    while end and values[end - 1] == defaults[end - 1]:
        end -= 1
    return values[:end] if end < len(values) else values


@functools.lru_cache(maxsize=RULESET_VERSIONS_CACHED)
def _ruleset_digits(version: str) -> bytes | None:
    """The 6 bytes a version "v-" + 12 lowercase hex digits is stored as; None for any other."""
    digits = version[len(RULESET_VERSION_PREFIX):]
    if (len(digits) == _RULESET_VERSION_DIGITS and version.startswith(RULESET_VERSION_PREFIX)
            and digits == digits.lower()):
        try:
            return bytes.fromhex(digits)
        except ValueError:
            return None
    return None


def _packed_lot(lot: LotRec, entry: TxnRec) -> list:
    packed = [lot.lot_id, lot.amount, lot.remaining, entry.created_at_ms - lot.activates_at_ms,
              lot.expires_at_ms, lot.state]
    if lot.account_id != entry.account_id:
        packed.append(lot.account_id)
    return packed


def encode_txn(entry: TxnRec) -> bytes:
    """The stored form of a journal entry (JOURNAL_V1); `decode_txn` gives it back equal."""
    rest = _rest_of(entry)
    digits = _ruleset_digits(entry.ruleset_version) if entry.ruleset_version else b""
    if digits is None:
        rest = _rest_of(entry) + (entry.ruleset_version,)
        digits = b""
    elif rest == _REST_FIELD_DEFAULTS:  # a plain purchase: one tuple comparison, in C
        rest = ()
    else:
        rest = _trimmed(rest, _REST_DEFAULTS)
    packed = _trimmed([
        entry.txn_id, entry.kind, entry.request_id, entry.account_id, entry.created_at_ms, entry.store_id,
        entry.terminal_id, entry.receipt_no, entry.total_minor, entry.payable_minor, entry.lines,
        entry.earned, _packed_lot(entry.new_lot, entry) if entry.new_lot is not None else [], entry.postings,
        digits, entry.actor, entry.prev_id, entry.activity_counted, entry.spent_postings, rest or None],
        _V1_DEFAULTS)
    return _JOURNAL_V1_BYTE + _encode_msgpack(packed)


def _unpacked_lot(packed: _TxnV1) -> LotRec | None:
    lot = packed.lot
    if not lot:
        return None
    account_id = lot[6] if len(lot) > 6 else packed.account_id
    return LotRec(lot[0], account_id, lot[1], lot[2], packed.created_at_ms - lot[3], lot[4], lot[5])


def _decode_v1(stored) -> TxnRec:
    return _from_v1(_decode_txn_v1(stored))


def _from_v1(packed: _TxnV1) -> TxnRec:
    digits = packed.ruleset_digits
    entry = TxnRec(
        packed.txn_id, packed.kind, packed.request_id, packed.account_id, packed.created_at_ms, packed.store_id,
        packed.terminal_id, packed.receipt_no, packed.total_minor, packed.payable_minor, packed.lines,
        earned=packed.earned, new_lot=_unpacked_lot(packed),
        postings=packed.postings,
        ruleset_version=RULESET_VERSION_PREFIX + digits.hex() if digits else "",
        actor=packed.actor, prev_id=packed.prev_id, activity_counted=packed.activity_counted,
        spent_postings=packed.spent_postings)
    rest = packed.rest
    if rest is not None:
        for name in _REST_FIELDS:
            setattr(entry, name, getattr(rest, name))
        if rest.ruleset_version:
            entry.ruleset_version = rest.ruleset_version
    return entry


def journal_body(stored):
    """The msgpack array of a stored journal entry, in any format: each begins with txn_id, kind,
    request_id, account_id, created_at_ms (what a walk over the journal may read alone)."""
    return memoryview(stored)[1:] if stored[0] == JOURNAL_V1 else stored


def decode_txn(stored) -> TxnRec:
    """A journal entry in any of its stored formats (JOURNAL_V1, or a `TxnRec` array of before)."""
    if stored[0] == JOURNAL_V1:
        return _decode_v1(memoryview(stored)[1:])
    return _decode_txn_v0(stored)


_MSGPACK_ARRAY16 = b"\xdc"
_decode_txns_v0 = msgspec.msgpack.Decoder(list[TxnRec]).decode
_decode_txns_v1 = msgspec.msgpack.Decoder(list[_TxnV1]).decode


def decode_txns(stored: list[bytes]) -> list[TxnRec]:
    """Journal entries (at most 65,535), as `decode_txn` gives each, in one decoder call per run of
    entries of one format (a walk over the journal, e.g. the archive's, reads them by the block)."""
    entries: list[TxnRec] = []
    start = 0
    while start < len(stored):
        v1 = stored[start][0] == JOURNAL_V1
        end = start + 1
        while end < len(stored) and (stored[end][0] == JOURNAL_V1) == v1:
            end += 1
        run = stored[start:end]
        header = _MSGPACK_ARRAY16 + len(run).to_bytes(2, "big")
        if v1:
            entries += map(_from_v1, _decode_txns_v1(header + b"".join(value[1:] for value in run)))
        else:
            entries += _decode_txns_v0(header + b"".join(run))
        start = end
    return entries
