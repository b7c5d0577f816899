"""Review findings on the rules engine's ledger work, each pinned by a minimal test against the real
core in process: tier grants that overlap or are rolled back out of order, event lots' own
lifetimes, an event's balance when the related customer shares the pool, which lot a return takes
from, and tier activity across a ruleset switch. Each failed before its fix."""

from __future__ import annotations

import itertools

from kassa.core_ext import Ledger, Program
from kassa.core_ext.records import decode_txn
from kassa.core_ext.model import (
    AccrueOp, Code, CreateAccountOp, Customer, EventOp, IdKind, JoinGroupOp, Line, Receipt, RedeemOp, RollbackOp, SetRulesOp,
)
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z (a Monday), 11:00 in Moscow
DAY_MS = 86_400_000
DAY_END_MS = (T0_MS // DAY_MS + 1) * DAY_MS  # the UTC midnight after T0
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900

_ids = itertools.count()


def open_ledger(tmp_path, campaigns_toml, accounts=("A",), **settings):
    settings.setdefault("timezone", "Europe/Moscow")
    ledger = Ledger(str(tmp_path / f"ledger-{next(_ids)}"), Program(program(campaigns_toml, **settings)),
                    MAP_SIZE_BYTES, HOLD_TTL_S)
    ledger.apply([CreateAccountOp(f"create-{a}", b"d", a) for a in accounts], T0_MS)
    return ledger


def one(ledger, op, at_ms):
    (outcome,) = ledger.apply([op], at_ms)
    assert outcome.code == Code.OK, outcome.message
    return outcome.body


def buy(ledger, amount, at_ms, sku="X", account="A"):
    n = next(_ids)
    receipt = Receipt("s", "t", f"r{n}", (Line(1, sku, "grocery", 1000, amount, amount),))
    return one(ledger, AccrueOp(f"buy-{n}", b"d", Customer(IdKind.ACCOUNT, account), receipt), at_ms)


def cancel(ledger, transaction_id, at_ms):
    n = next(_ids)
    return one(ledger, RollbackOp(f"back-{n}", b"d", transaction_id=transaction_id), at_ms)


def event(ledger, event_type, at_ms, account="A", related=None, amount_minor=0):
    n = next(_ids)
    op = EventOp(f"event-{n}", b"d", Customer(IdKind.ACCOUNT, account), event_type, amount_minor=amount_minor,
                 related=None if related is None else Customer(IdKind.ACCOUNT, related))
    return one(ledger, op, at_ms)


def view(ledger, at_ms, account="A"):
    return ledger.account(Customer(IdKind.ACCOUNT, account), at_ms).body


# ---------------------------------------------------------------------------------------------
# grant_tier

GRANTS = """
[tiers]
window_days = 30
[[tiers.levels]]
id = "silver"
threshold = 1000000
[[tiers.levels]]
id = "gold"
threshold = 5000000

[[campaigns]]
id = "vip"
when = { skus = ["VIP"] }
effect = { kind = "grant_tier", tier = "gold", tier_days = 10 }

[[campaigns]]
id = "silver-card"
when = { skus = ["SILVER"] }
effect = { kind = "grant_tier", tier = "silver", tier_days = 365 }

[[campaigns]]
id = "gold-week"
when = { skus = ["GOLDWEEK"] }
effect = { kind = "grant_tier", tier = "gold", tier_days = 7 }
"""


def test_rolling_back_both_grants_in_purchase_order_withdraws_the_tier(tmp_path):
    ledger = open_ledger(tmp_path, GRANTS)
    first = buy(ledger, 500, T0_MS, sku="VIP")  # gold until T0 + 10 days
    second = buy(ledger, 500, T0_MS + DAY_MS, sku="VIP")  # gold until T0 + 11 days, replacing the first grant
    assert view(ledger, T0_MS + DAY_MS).tier == "gold"
    cancel(ledger, first.transaction_id, T0_MS + DAY_MS)
    cancel(ledger, second.transaction_id, T0_MS + DAY_MS)
    # Neither purchase happened: no grant is left (the other order, second then first, gets this right).
    assert view(ledger, T0_MS + 2 * DAY_MS).tier == ""
    assert ledger.verify(T0_MS + 2 * DAY_MS) == []


def test_a_short_higher_grant_does_not_cancel_a_long_lower_one(tmp_path):
    ledger = open_ledger(tmp_path, GRANTS)
    buy(ledger, 500, T0_MS, sku="SILVER")  # at least silver for 365 days
    buy(ledger, 500, T0_MS, sku="GOLDWEEK")  # at least gold for 7 days
    assert view(ledger, T0_MS).tier == "gold"
    # After the week the silver grant (365 days from its purchase) still holds.
    assert view(ledger, T0_MS + 8 * DAY_MS).tier == "silver"


# ---------------------------------------------------------------------------------------------
# Events

EVENTS = """
[[campaigns]]
id = "regulars-checkin"
trigger = "event"
when = { event_types = ["checkin"], window_spend_min_minor = 100000 }
effect = { kind = "earn_fixed", points = 10 }

[[campaigns]]
id = "short"
trigger = "event"
when = { event_types = ["signup"] }
effect = { kind = "earn_fixed", points = 10, points_lifetime_days = 30 }

[[campaigns]]
id = "forever"
trigger = "event"
when = { event_types = ["signup"] }
effect = { kind = "earn_fixed", points = 20, points_lifetime_days = 0 }

[[campaigns]]
id = "referral"
trigger = "event"
when = { event_types = ["referral"] }
effect = { kind = "earn_percent", percent_bps = 100, related_points = 50, points_lifetime_days = 30 }

[[campaigns]]
id = "bonus"
trigger = "event"
when = { event_types = ["bonus"] }
effect = { kind = "earn_fixed", points = 100, related_points = 40 }
"""


def test_event_campaign_checks_window_spend(tmp_path):
    ledger = open_ledger(tmp_path, EVENTS)
    # No spend at all: far below the campaign's 100,000.
    assert event(ledger, "checkin", T0_MS).points == 0


def test_event_lot_takes_the_shortest_own_lifetime_when_one_is_unlimited(tmp_path):
    ledger = open_ledger(tmp_path, EVENTS)
    assert event(ledger, "signup", T0_MS).points == 30
    balance = view(ledger, T0_MS).balance
    assert (balance.next_expiry_at_ms, balance.next_expiry_points) == (DAY_END_MS + 30 * DAY_MS, 30)


def test_related_points_keep_their_campaigns_own_lifetime(tmp_path):
    ledger = open_ledger(tmp_path, EVENTS, accounts=("A", "R"))
    result = event(ledger, "referral", T0_MS, related="R", amount_minor=0)  # 1 % of 0: only the referrer earns
    assert (result.points, result.related_points) == (0, 50)
    balance = view(ledger, T0_MS, "R").balance
    assert (balance.next_expiry_at_ms, balance.next_expiry_points) == (DAY_END_MS + 30 * DAY_MS, 50)


def test_event_balance_counts_related_points_of_the_same_pool(tmp_path):
    ledger = open_ledger(tmp_path, EVENTS, accounts=("P", "M1", "M2"))
    for member in ("M1", "M2"):
        one(ledger, JoinGroupOp(f"join-{member}", b"d", member, "P"), T0_MS)
    result = event(ledger, "bonus", T0_MS, account="M1", related="M2")
    assert (result.points, result.related_points) == (100, 40)
    assert view(ledger, T0_MS, "P").balance.active == 140  # the ledger itself is right
    assert result.balance.active == 140


# ---------------------------------------------------------------------------------------------
# Lots of campaigns with their own lifetime

OWN_LOTS = """
[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 100 }

[[campaigns]]
id = "welcome"
when = { nth_purchase = 1 }
effect = { kind = "earn_fixed", points = 500, points_lifetime_days = 30 }
"""


def test_full_rollback_leaves_other_purchases_points_in_their_own_lot(tmp_path):
    ledger = open_ledger(tmp_path, OWN_LOTS, points_lifetime_days=365)
    first = buy(ledger, 1_000, T0_MS)  # 10 into the day's lot, 500 into a 30-day lot
    assert first.calculation.earned_points == 510
    buy(ledger, 10_000, T0_MS + 1000)  # 100 into the same day's lot
    cancel(ledger, first.transaction_id, T0_MS + 2000)
    balance = view(ledger, T0_MS + 2000).balance
    assert (balance.active, balance.debt) == (100, 0)
    # As if the first purchase never happened: the second's 100 points expire in 365 days.
    assert (balance.next_expiry_at_ms, balance.next_expiry_points) == (DAY_END_MS + 365 * DAY_MS, 100)


# ---------------------------------------------------------------------------------------------
# Ruleset switching

NO_TIERS = """
[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 100 }
"""

WITH_TIERS = """
[tiers]
window_days = 30
[[tiers.levels]]
id = "silver"
threshold = 10000

[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 100 }
"""


def test_return_of_a_purchase_made_before_tiers_existed_does_not_lower_the_tier(tmp_path):
    ledger = open_ledger(tmp_path, NO_TIERS)
    old = buy(ledger, 50_000, T0_MS)  # no [tiers]: no activity kept
    spec = program(WITH_TIERS, timezone="Europe/Moscow")
    (outcome,) = ledger.apply([SetRulesOp(tuple(spec.sources.items()), spec.version)], T0_MS + 1000)
    assert outcome.code == Code.OK
    buy(ledger, 20_000, T0_MS + 2000)
    assert view(ledger, T0_MS + 2000).tier == "silver"
    cancel(ledger, old.transaction_id, T0_MS + 3000)
    # The 20,000 bought under the new ruleset are still in the window.
    assert view(ledger, T0_MS + 3000).tier == "silver"



BASE_TEN = """
[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 1000 }
"""


def test_a_cancel_gives_redeemed_points_back_to_their_lot_when_the_purchase_also_repaid_debt(tmp_path):
    ledger = open_ledger(tmp_path, BASE_TEN, max_redeem_share_bps=10_000)
    customer = Customer(IdKind.ACCOUNT, "A")

    def one(op, at_ms):
        (outcome,) = ledger.apply([op], at_ms)
        assert outcome.code == Code.OK, outcome.message
        return outcome.body

    def purchase(request_id, amount, at_ms, redeem_points=0):
        receipt = Receipt("s", "t", request_id, (Line(1, "X", "c", 1000, amount, amount),))
        return one(AccrueOp(request_id, b"d", customer, receipt, redeem_points), at_ms)

    early = purchase("p-early", 1_000, T0_MS - DAY_MS)  # its lot: 100, expiring first
    kept = purchase("p-kept", 2_000, T0_MS)  # its lot: 200
    one(RedeemOp("spend", b"d", customer, 100, 100), T0_MS)  # empties the early lot
    hold = one(RedeemOp("hold", b"d", customer, 200, 200, hold=True), T0_MS)
    owed = one(RollbackOp("cancel-early", b"d", transaction_id=early.transaction_id), T0_MS)
    assert owed.debt_points == 100  # nothing left to claw: the rest of the points are held
    one(RollbackOp("void", b"d", transaction_id=hold.transaction_id), T0_MS)
    # A day later (a lot of its own): spends 50 of the kept lot, and its points repay the debt.
    both = purchase("p-both", 2_000, T0_MS + DAY_MS, redeem_points=50)
    assert both.balance.debt == 0

    back = one(RollbackOp("cancel-both", b"d", transaction_id=both.transaction_id), T0_MS + DAY_MS)

    restored = [posting for posting in journal(ledger, back.transaction_id).postings if posting.delta > 0]
    assert [(posting.lot_id, posting.delta) for posting in restored] == [(kept.transaction_id, 50)]
    assert ledger.verify(T0_MS + DAY_MS) == []


def journal(ledger, txn_id):
    with ledger.env.begin() as txn:
        return decode_txn(txn.get(txn_id.to_bytes(8, "big"), db=ledger.env.open_db(b"journal", txn=txn)))
