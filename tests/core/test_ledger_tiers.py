"""Tiers in the ledger, in process against a real LMDB: the tier follows spend over the rolling
window (in the program's time zone), a return takes its spend back from the purchase's day and can
lower the tier, a `grant_tier` campaign lifts the tier for its days and a full rollback of the
purchase withdraws the grant, and `window_spend_min_minor` sees the window's spend before the
purchase. Campaigns that depend on the tier see the tier before the purchase."""

from __future__ import annotations

import itertools

import pytest

from kassa.core_ext import Ledger, Program
from kassa.core_ext.model import AccrueOp, Code, CreateAccountOp, Customer, IdKind, Line, Receipt, ReturnLine, RollbackOp
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z, 11:00 in Moscow
DAY_MS = 86_400_000
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900

PROGRAM = """
[tiers]
window_days = 30
[[tiers.levels]]
id = "silver"
threshold = 10000
[[tiers.levels]]
id = "gold"
threshold = 50000

[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 100 }

[[campaigns]]
id = "gold-bonus"
when = { tiers = ["gold"] }
effect = { kind = "earn_fixed", points = 7 }

[[campaigns]]
id = "vip-card"
when = { skus = ["VIP"] }
effect = { kind = "grant_tier", tier = "gold", tier_days = 10 }

[[campaigns]]
id = "regular"
when = { window_spend_min_minor = 20000 }
effect = { kind = "earn_fixed", points = 3 }
"""


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"), Program(program(PROGRAM, timezone="Europe/Moscow")),
                    MAP_SIZE_BYTES, HOLD_TTL_S)
    ledger.apply([CreateAccountOp("c-A", b"d", "A")], T0_MS)
    yield ledger
    assert ledger.verify(T0_MS + 100 * DAY_MS) == []
    ledger.close()


_ids = itertools.count()


def buy(ledger, amount, at_ms, sku="X", qty_milli=1000):
    n = next(_ids)
    receipt = Receipt("s", "t", f"r{n}", (Line(1, sku, "grocery", qty_milli, amount * 1000 // qty_milli, amount),))
    (outcome,) = ledger.apply([AccrueOp(f"buy-{n}", b"d", Customer(IdKind.ACCOUNT, "A"), receipt)], at_ms)
    assert outcome.code == Code.OK, outcome.message
    return outcome.body


def back(ledger, transaction_id, at_ms, return_lines=()):
    n = next(_ids)
    (outcome,) = ledger.apply([RollbackOp(f"back-{n}", b"d", transaction_id=transaction_id,
                                          return_lines=return_lines)], at_ms)
    assert outcome.code == Code.OK, outcome.message
    return outcome.body


def tier(ledger, at_ms):
    view = ledger.account(Customer(IdKind.ACCOUNT, "A"), at_ms).body
    return view.tier, view.next_tier, view.next_tier_missing


def applied(result):
    return {campaign.campaign_id: campaign.points for campaign in result.calculation.campaigns}


def test_the_tier_follows_spend_over_the_window(ledger):
    assert tier(ledger, T0_MS) == ("", "silver", 10000)
    buy(ledger, 9_999, T0_MS)
    assert tier(ledger, T0_MS) == ("", "silver", 1)
    buy(ledger, 1, T0_MS)  # threshold exactly met
    assert tier(ledger, T0_MS) == ("silver", "gold", 40000)
    buy(ledger, 40_000, T0_MS + DAY_MS)
    assert tier(ledger, T0_MS + DAY_MS) == ("gold", "", 0)
    # The first day's 10,000 leave the 30-day window: 40,000 is silver again.
    assert tier(ledger, T0_MS + 30 * DAY_MS) == ("silver", "gold", 10000)
    assert tier(ledger, T0_MS + 31 * DAY_MS) == ("", "silver", 10000)


def test_a_campaign_sees_the_tier_before_the_purchase(ledger):
    first = buy(ledger, 50_000, T0_MS)  # reaches gold with this purchase
    assert "gold-bonus" not in applied(first)
    second = buy(ledger, 100, T0_MS)
    assert applied(second)["gold-bonus"] == 7


def test_a_return_takes_its_spend_back_and_can_lower_the_tier(ledger):
    bought = buy(ledger, 50_000, T0_MS, qty_milli=5000)
    assert tier(ledger, T0_MS)[0] == "gold"
    back(ledger, bought.transaction_id, T0_MS + DAY_MS, (ReturnLine(1, 1000),))  # a fifth back: 40,000
    assert tier(ledger, T0_MS + DAY_MS) == ("silver", "gold", 10000)
    back(ledger, bought.transaction_id, T0_MS + DAY_MS)  # the rest
    assert tier(ledger, T0_MS + DAY_MS) == ("", "silver", 10000)


def test_a_granted_tier_lasts_its_days_and_a_full_rollback_withdraws_it(ledger):
    vip = buy(ledger, 500, T0_MS, sku="VIP")
    assert tier(ledger, T0_MS) == ("gold", "", 0)
    assert applied(buy(ledger, 100, T0_MS + DAY_MS))["gold-bonus"] == 7
    assert tier(ledger, T0_MS + 10 * DAY_MS - 1)[0] == "gold"
    assert tier(ledger, T0_MS + 10 * DAY_MS) == ("", "silver", 10000 - 600)
    back(ledger, vip.transaction_id, T0_MS + DAY_MS)
    assert tier(ledger, T0_MS + DAY_MS)[0] == ""


def test_a_partial_return_keeps_the_grant(ledger):
    vip = buy(ledger, 500, T0_MS, sku="VIP", qty_milli=2000)
    back(ledger, vip.transaction_id, T0_MS, (ReturnLine(1, 1000),))
    assert tier(ledger, T0_MS)[0] == "gold"


def test_window_spend_counts_what_came_before_the_purchase(ledger):
    assert "regular" not in applied(buy(ledger, 20_000, T0_MS))  # reaches 20,000 only with this one
    assert applied(buy(ledger, 100, T0_MS))["regular"] == 3
    assert "regular" not in applied(buy(ledger, 100, T0_MS + 30 * DAY_MS))  # the window moved on


OWN_LOTS = """
[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 100 }

[[campaigns]]
id = "welcome"
when = { nth_purchase = 1 }
effect = { kind = "earn_fixed", points = 500, points_lifetime_days = 30 }

[[campaigns]]
id = "later"
when = { skus = ["LATER"] }
effect = { kind = "earn_fixed", points = 40, activation_delay_days = 3 }
"""


@pytest.fixture
def own_lots(tmp_path):
    ledger = Ledger(str(tmp_path / "own"), Program(program(OWN_LOTS, points_lifetime_days=365)),
                    MAP_SIZE_BYTES, HOLD_TTL_S)
    ledger.apply([CreateAccountOp("c-A", b"d", "A")], T0_MS)
    yield ledger
    assert ledger.verify(T0_MS + 400 * DAY_MS) == []
    ledger.close()


def balance(ledger, at_ms):
    return ledger.account(Customer(IdKind.ACCOUNT, "A"), at_ms).body.balance


def test_a_campaign_with_its_own_lifetime_puts_its_points_in_a_lot_of_their_own(own_lots):
    first = buy(own_lots, 10_000, T0_MS)
    day_end = (T0_MS // DAY_MS + 1) * DAY_MS
    assert first.calculation.earned_points == 600
    assert first.calculation.lots == ((T0_MS, day_end + 30 * DAY_MS, 500),)  # the first UTC midnight 30 days on
    assert first.calculation.expire_at_ms == day_end + 365 * DAY_MS
    assert balance(own_lots, T0_MS).active == 600
    assert (balance(own_lots, T0_MS).next_expiry_at_ms, balance(own_lots, T0_MS).next_expiry_points) == \
        (day_end + 30 * DAY_MS, 500)
    assert balance(own_lots, day_end + 30 * DAY_MS).active == 100  # the welcome points expired, the rest stay


def test_own_activation_delay_keeps_those_points_pending(own_lots):
    bought = buy(own_lots, 1_000, T0_MS, sku="LATER")  # also the first purchase: welcome 500
    assert bought.calculation.earned_points == 10 + 500 + 40
    now = balance(own_lots, T0_MS)
    assert (now.active, now.pending) == (510, 40)
    later = balance(own_lots, (T0_MS // DAY_MS + 4) * DAY_MS)  # the UTC midnight at or after 3 days
    assert (later.active, later.pending) == (550, 0)


def test_a_rollback_takes_back_from_every_lot_the_purchase_made(own_lots):
    bought = buy(own_lots, 1_000, T0_MS, sku="LATER")
    result = back(own_lots, bought.transaction_id, T0_MS + DAY_MS)
    assert (result.clawed_back_points, result.debt_points) == (550, 0)
    now = balance(own_lots, T0_MS + DAY_MS)
    assert (now.active, now.pending, now.debt) == (0, 0, 0)
