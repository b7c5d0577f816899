"""The rules language row by row: one receipt, one program, and the exact outcome, worked out by
hand from docs/rules.md and written in the row.

Each row is checked three ways: the core (`kassa.core_ext.Program`) gives the expected numbers, the
pure-Python reference (tests/core/reference.py) gives them, and the two agree on everything else.

Every row's program runs in Europe/Moscow (UTC+3, no daylight saving). NOW is Monday 2026-06-01,
08:00 UTC = 11:00 local. Unless a row says otherwise the receipt is store "s1", terminal "t1", and the
customer is Shopper() (no card category, no tier, no labels, created at the epoch, no birthday, no
purchases, no spend).

Counters of limits (per account per day/week/month, budgets, uses) live in the ledger; the core
only sees what they have left, as `allowances` {campaign id: amount left}: absent means no limit, 0
means nothing left (the campaign does not apply).
"""

from __future__ import annotations

import datetime as dt

import pytest

from kassa.core_ext import Program
from kassa.core_ext.model import Line, Receipt, Shopper
from tests.core import reference
from tests.core.programs import program

DAY_MS = 86_400_000


def utc(text: str) -> int:
    """ms since the epoch of a UTC wall time, e.g. "2026-06-01T08:00:00" (may end in .mmm)."""
    return reference.to_ms(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc))


NOW = utc("2026-06-01T08:00:00")  # Monday, 11:00 in Moscow


def line(line_no, amount, category="grocery/bakery", sku="SKU-1", qty=1000, price=None, brand="", **flags):
    price = amount * 1000 // qty if price is None else price
    return Line(line_no, sku, category, qty, price, amount, brand=brand, **flags)


L10K = [line(1, 10_000)]  # one line of 100.00


def camp(cid, effect, when="", **extra) -> str:
    """One [[campaigns]] entry; `extra` values are TOML text (strings quoted by the caller)."""
    body = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f'[[campaigns]]\nid = "{cid}"\n{body}when = {{ {when} }}\neffect = {effect}\n'


def pct(bps):
    return f'{{ kind = "earn_percent", percent_bps = {bps} }}'


def dpct(bps):
    return f'{{ kind = "discount_percent", percent_bps = {bps} }}'


def fixed(points, per="receipt"):
    return f'{{ kind = "earn_fixed", points = {points}, per = "{per}" }}'


def share(bps):
    return f'{{ kind = "redeem_share", percent_bps = {bps} }}'


TEN = pct(1000)  # 10 % back as points
BUNDLE = '{ kind = "bundle", price_minor = 250 }'  # the set for 2.50
BUNDLE_AB = 'skus = ["A", "B"]'
GRANT_GOLD = '{ kind = "grant_tier", tier = "gold", tier_days = 30 }'
TIERS = '[tiers]\n[[tiers.levels]]\nid = "silver"\nthreshold = 100\n[[tiers.levels]]\nid = "gold"\nthreshold = 200\n'


class Row:
    def __init__(self, name, campaigns, lines, *, settings=None, shopper=None, now=NOW, allowances=None,
                 unlocked=frozenset(), available=0, redeem=0, receipt=None, **expected):
        self.name = name
        self.campaigns = campaigns
        self.lines = lines
        self.settings = {"timezone": "Europe/Moscow", **(settings or {})}
        self.shopper = shopper
        self.now = now
        self.allowances = allowances
        self.unlocked = unlocked
        self.available = available
        self.redeem = redeem
        self.receipt_fields = {"store_id": "s1", "terminal_id": "t1", "receipt_no": "r1", **(receipt or {})}
        unknown = set(expected) - {"earned", "discount", "applied", "limited", "redeemed", "redeemable"}
        assert not unknown, f"{name}: unknown expectation {unknown}"
        self.expected = expected

    def receipt(self):
        return Receipt(lines=tuple(self.lines), **self.receipt_fields)


def on(name, condition, lines=L10K, points=1000, **kwargs):
    """A 10 % earn campaign "c" with one condition: `points` when it holds (0: it does not apply)."""
    campaigns = kwargs.pop("campaigns", "") + camp("c", TEN, condition)
    applied = kwargs.pop("applied", [("c", "earn_percent", points, 0)] if points else [])
    earned = kwargs.pop("earned", [points] if len(lines) == 1 else None)
    if earned is None:
        return Row(name, campaigns, lines, applied=applied, **kwargs)
    return Row(name, campaigns, lines, earned=earned, applied=applied, **kwargs)


MOSCOW_10 = utc("2026-06-01T07:00:00")  # 10:00 local
MOSCOW_18 = utc("2026-06-01T15:00:00")  # 18:00 local
MOSCOW_MIDNIGHT = utc("2026-05-31T21:00:00")  # Monday 00:00 local, Sunday 21:00 UTC


ROWS = [
    # ---------------------------------------------------------------- conditions: the customer
    on("card_categories: one of them", 'card_categories = ["gold-card", "staff"]', shopper=Shopper(card_category="staff")),
    on("card_categories: another", 'card_categories = ["gold-card"]', shopper=Shopper(card_category="staff"), points=0),
    on("card_categories: no card category", 'card_categories = ["gold-card"]', points=0),
    on("tiers: gold", 'tiers = ["gold"]', campaigns=TIERS, shopper=Shopper(tier="gold")),
    on("tiers: silver not gold", 'tiers = ["gold"]', campaigns=TIERS, shopper=Shopper(tier="silver"), points=0),
    on("tiers: '' is no tier", 'tiers = ["", "silver"]', campaigns=TIERS),
    on("tiers: no tier not listed", 'tiers = ["silver"]', campaigns=TIERS, points=0),
    on("segments: one in common", 'segments = ["students", "pensioners"]', shopper=Shopper(segments=("x", "pensioners"))),
    on("segments: none in common", 'segments = ["students"]', shopper=Shopper(segments=("x",)), points=0),
    on("segments: account has none", 'segments = ["students"]', points=0),
    on("tags: one in common", 'tags = ["vip"]', shopper=Shopper(tags=("new", "vip"))),
    on("tags: none in common", 'tags = ["vip"]', shopper=Shopper(tags=("new",), segments=("vip",)), points=0),
    on("clubs: one in common", 'clubs = ["kids", "pets"]', shopper=Shopper(clubs=("pets",))),
    on("clubs: none in common", 'clubs = ["kids"]', shopper=Shopper(clubs=("pets",), tags=("kids",)), points=0),
    on("account_age_days_min: exactly 30 days", "account_age_days_min = 30",
       shopper=Shopper(created_at_ms=NOW - 30 * DAY_MS)),
    on("account_age_days_min: 1 ms short", "account_age_days_min = 30",
       shopper=Shopper(created_at_ms=NOW - 30 * DAY_MS + 1), points=0),
    on("birthday_within_days: 3 days ahead", "birthday_within_days = 3", shopper=Shopper(birthday="06-04")),
    on("birthday_within_days: 4 days ahead", "birthday_within_days = 3", shopper=Shopper(birthday="06-05"), points=0),
    on("birthday_within_days: 3 days ago", "birthday_within_days = 3", shopper=Shopper(birthday="05-29")),
    on("birthday_within_days: 4 days ago", "birthday_within_days = 3", shopper=Shopper(birthday="05-28"), points=0),
    on("birthday_within_days = 0: the day itself", "birthday_within_days = 0", shopper=Shopper(birthday="06-01")),
    on("birthday_within_days = 0: the day before", "birthday_within_days = 0", shopper=Shopper(birthday="05-31"), points=0),
    on("birthday_within_days: no birthday never", "birthday_within_days = 183", points=0),
    # local date: 00:00 Monday June 1 in Moscow is still Sunday May 31 in UTC
    on("birthday_within_days: local date, not UTC", "birthday_within_days = 3",
       shopper=Shopper(birthday="06-04"), now=MOSCOW_MIDNIGHT),
    on("birthday_within_days: 1 ms before local midnight", "birthday_within_days = 3",
       shopper=Shopper(birthday="06-04"), now=MOSCOW_MIDNIGHT - 1, points=0),
    on("birthday_within_days: next year's birthday", "birthday_within_days = 3",
       shopper=Shopper(birthday="01-02"), now=utc("2026-12-30T09:00:00")),
    on("birthday_within_days: last year's birthday", "birthday_within_days = 3",
       shopper=Shopper(birthday="12-29"), now=utc("2027-01-01T09:00:00")),
    on("birthday_within_days: Feb 29 is Feb 28 in 2027", "birthday_within_days = 1",
       shopper=Shopper(birthday="02-29"), now=utc("2027-03-01T09:00:00")),
    on("birthday_within_days: Feb 29, 2 days from Feb 28", "birthday_within_days = 1",
       shopper=Shopper(birthday="02-29"), now=utc("2027-03-02T09:00:00"), points=0),
    on("nth_purchase: the 3rd", "nth_purchase = 3", shopper=Shopper(purchases=2)),
    on("nth_purchase: the 4th", "nth_purchase = 3", shopper=Shopper(purchases=3), points=0),
    on("nth_purchase: the 2nd", "nth_purchase = 3", shopper=Shopper(purchases=1), points=0),
    on("nth_purchase = 1: the first", "nth_purchase = 1"),
    on("lifetime_spend_min_minor: exactly met", "lifetime_spend_min_minor = 50000",
       shopper=Shopper(lifetime_spend_minor=50_000)),
    on("lifetime_spend_min_minor: one below", "lifetime_spend_min_minor = 50000",
       shopper=Shopper(lifetime_spend_minor=49_999), points=0),
    on("window_spend_min_minor: exactly met", "window_spend_min_minor = 50000",
       shopper=Shopper(window_spend_minor=50_000)),
    on("window_spend_min_minor: one below", "window_spend_min_minor = 50000",
       shopper=Shopper(window_spend_minor=49_999), points=0),
    on("window_spend_min_minor: lifetime spend does not count", "window_spend_min_minor = 50000",
       shopper=Shopper(lifetime_spend_minor=10**7, window_spend_minor=0), points=0),
    on("window_spend_min_minor = 0: always holds", "window_spend_min_minor = 0"),
    # ---------------------------------------------------------------- conditions: the receipt
    on("stores: one of them", 'stores = ["s0", "s1"]'),
    on("stores: another", 'stores = ["s2"]', points=0),
    on("regions: one of them", 'regions = ["north"]', receipt={"region": "north"}),
    on("regions: another", 'regions = ["north"]', receipt={"region": "south"}, points=0),
    on("channels: one of them", 'channels = ["online", "pos"]', receipt={"channel": "pos"}),
    on("channels: none given", 'channels = ["online"]', points=0),
    on("terminals: one of them", 'terminals = ["t1"]'),
    on("terminals: another", 'terminals = ["t9"]', points=0),
    on("payment_methods: one of them", 'payment_methods = ["card"]', receipt={"payment_method": "card"}),
    on("payment_methods: another", 'payment_methods = ["card"]', receipt={"payment_method": "cash"}, points=0),
    on("card_bins: starts with one", 'card_bins = ["4276", "55"]', receipt={"card_bin": "427612"}),
    on("card_bins: the whole bin", 'card_bins = ["4276", "55"]', receipt={"card_bin": "55"}),
    on("card_bins: starts with none", 'card_bins = ["4276"]', receipt={"card_bin": "4277"}, points=0),
    on("card_bins: shorter than the bin", 'card_bins = ["4276"]', receipt={"card_bin": "427"}, points=0),
    on("card_bins: no card", 'card_bins = ["4276"]', points=0),
    on("weekdays: Monday", "weekdays = [1]"),
    on("weekdays: not Monday", "weekdays = [2, 3, 4, 5, 6, 7]", points=0),
    on("weekdays: local Monday 00:00 is UTC Sunday", "weekdays = [1]", now=MOSCOW_MIDNIGHT),
    on("weekdays: local Sunday 23:59:59.999", "weekdays = [1]", now=MOSCOW_MIDNIGHT - 1, points=0),
    on("weekdays: Sunday is 7", "weekdays = [7]", now=MOSCOW_MIDNIGHT - 1),
    on("hours [10, 18): 10:00 local", "hour_from = 10, hour_to = 18", now=MOSCOW_10),
    on("hours [10, 18): 09:59:59.999 local", "hour_from = 10, hour_to = 18", now=MOSCOW_10 - 1, points=0),
    on("hours [10, 18): 17:59:59.999 local", "hour_from = 10, hour_to = 18", now=MOSCOW_18 - 1),
    on("hours [10, 18): 18:00 local", "hour_from = 10, hour_to = 18", now=MOSCOW_18, points=0),
    on("hours [10, 18): 08:00 UTC is 11:00 local", "hour_from = 10, hour_to = 18"),
    on("hours [0, 11): 08:00 UTC is 11:00 local, not 8", "hour_from = 0, hour_to = 11", points=0),
    on("hours [22, 6): 22:00 local", "hour_from = 22, hour_to = 6", now=utc("2026-06-01T19:00:00")),
    on("hours [22, 6): 21:59:59.999 local", "hour_from = 22, hour_to = 6", now=utc("2026-06-01T19:00:00") - 1,
       points=0),
    on("hours [22, 6): 00:00 local", "hour_from = 22, hour_to = 6", now=MOSCOW_MIDNIGHT),
    on("hours [22, 6): 05:59:59.999 local", "hour_from = 22, hour_to = 6", now=utc("2026-06-01T03:00:00") - 1),
    on("hours [22, 6): 06:00 local", "hour_from = 22, hour_to = 6", now=utc("2026-06-01T03:00:00"), points=0),
    on("hours [23, 24): 23:00 local", "hour_from = 23, hour_to = 24", now=utc("2026-06-01T20:00:00")),
    on("hours only hour_to: [0, 11) at 10:59:59.999 local", "hour_to = 11", now=utc("2026-06-01T08:00:00") - 1),
    on("receipt_total_min_minor: exactly met", "receipt_total_min_minor = 30000",
       lines=[line(1, 10_000), line(2, 20_000)], earned=[1000, 2000], points=3000),
    on("receipt_total_min_minor: one below", "receipt_total_min_minor = 30001",
       lines=[line(1, 10_000), line(2, 20_000)], earned=[0, 0], points=0),
    # the total is before discounts, and counts lines the campaign does not take
    on("receipt_total_min_minor: before discounts, every line", 'receipt_total_min_minor = 30000, skus = ["B"]',
       campaigns=camp("d", dpct(5000), priority=9),
       lines=[line(1, 10_000, sku="A"), line(2, 20_000, sku="B")], earned=[0, 1000], points=1000,
       discount=[5000, 10_000], applied=[("d", "discount_percent", 0, 15_000), ("c", "earn_percent", 1000, 0)]),
    on("item_qty_min_milli: exactly met over the taken lines", 'item_qty_min_milli = 3000, category_prefixes = ["grocery"]',
       lines=[line(1, 10_000, qty=1000), line(2, 10_000, qty=2000), line(3, 10_000, "home", qty=5000)],
       earned=[1000, 1000, 0], points=2000),
    on("item_qty_min_milli: untaken lines do not count", 'item_qty_min_milli = 3000, category_prefixes = ["grocery"]',
       lines=[line(1, 10_000, qty=1000), line(2, 10_000, qty=1999), line(3, 10_000, "home", qty=5000)],
       earned=[0, 0, 0], points=0),
    on("item_qty_min_milli: no_earn lines do not count", "item_qty_min_milli = 2000",
       lines=[line(1, 10_000, qty=1000), line(2, 10_000, qty=1000, no_earn=True)], earned=[0, 0], points=0),
    # ---------------------------------------------------------------- conditions: the lines
    on("category_prefixes: a prefix, not a path", 'category_prefixes = ["pharmacy"]',
       lines=[line(1, 10_000, "pharmacy/vitamins"), line(2, 10_000, "pharmacyx"), line(3, 10_000, "grocery")],
       earned=[1000, 1000, 0], points=2000),
    on("category_prefixes or skus", 'category_prefixes = ["home"], skus = ["A"]',
       lines=[line(1, 10_000, "home/x"), line(2, 10_000, sku="A"), line(3, 10_000, sku="B")],
       earned=[1000, 1000, 0], points=2000),
    on("skus: none of them", 'skus = ["A", "B"]', lines=[line(1, 10_000, sku="C")], points=0),
    on("brands: and its brand", 'category_prefixes = ["grocery"], brands = ["acme", "bolt"]',
       lines=[line(1, 10_000, brand="acme"), line(2, 10_000, brand="cora"), line(3, 10_000, "home", brand="acme"),
              line(4, 10_000)],
       earned=[1000, 0, 0, 0], points=1000),
    on("exclude_category_prefixes", 'exclude_category_prefixes = ["grocery/dairy", "tobacco"]',
       lines=[line(1, 10_000, "grocery/dairy/milk"), line(2, 10_000, "grocery/bakery"), line(3, 10_000, "tobacco")],
       earned=[0, 1000, 0], points=1000),
    on("exclude_category_prefixes: excludes a matching sku", 'skus = ["A"], exclude_category_prefixes = ["tobacco"]',
       lines=[line(1, 10_000, "tobacco", sku="A")], points=0),
    on("line_qty_min_milli: exactly met and one below", "line_qty_min_milli = 2000",
       lines=[line(1, 10_000, qty=2000), line(2, 10_000, qty=1999)], earned=[1000, 0], points=1000),
    on("line_amount_min_minor: exactly met and one below", "line_amount_min_minor = 5000",
       lines=[line(1, 5_000), line(2, 4_999)], earned=[500, 0], points=500),
    on("line conditions: on the amount before discounts", "line_amount_min_minor = 5000",
       campaigns=camp("d", dpct(5000), priority=9), lines=[line(1, 6_000)], earned=[300], points=300,
       discount=[3000], applied=[("d", "discount_percent", 0, 3000), ("c", "earn_percent", 300, 0)]),
    on("no_earn line never earns", "", lines=[line(1, 10_000), line(2, 10_000, no_earn=True)], earned=[1000, 0],
       points=1000),
    on("only no_earn lines: does not apply", "", lines=[line(1, 10_000, no_earn=True)], points=0),
    # ---------------------------------------------------------------- validity and triggers
    Row("valid_from: exactly now", camp("c", TEN, valid_from="2026-06-01T08:00:00Z"), L10K, earned=[1000]),
    Row("valid_from: 1 s later", camp("c", TEN, valid_from="2026-06-01T08:00:01Z"), L10K, earned=[0], applied=[]),
    Row("valid_to: exactly now (exclusive)", camp("c", TEN, valid_to="2026-06-01T08:00:00Z"), L10K, earned=[0],
        applied=[]),
    Row("valid_to: 1 ms before", camp("c", TEN, valid_to="2026-06-01T08:00:00Z"), L10K, now=NOW - 1, earned=[1000]),
    Row("valid_to with an offset", camp("c", TEN, valid_to="2026-06-01T11:00:01+03:00"), L10K, earned=[1000]),
    Row("event campaigns are ignored",
        camp("e", '{ kind = "earn_fixed", points = 500 }', 'event_types = ["signup"]', trigger='"event"')
        + camp("c", TEN), L10K, earned=[1000], applied=[("c", "earn_percent", 1000, 0)]),
    # ---------------------------------------------------------------- promo codes
    Row("promo_code: unlocked", camp("p", TEN, promo_code="true"), L10K, unlocked=frozenset({"p"}), earned=[1000],
        applied=[("p", "earn_percent", 1000, 0)]),
    Row("promo_code: not unlocked", camp("p", TEN, promo_code="true"), L10K, earned=[0], applied=[]),
    Row("promo_code: another campaign unlocked", camp("p", TEN, promo_code="true") + camp("q", pct(100), promo_code="true"),
        L10K, unlocked=frozenset({"q"}), earned=[100], applied=[("q", "earn_percent", 100, 0)]),
    Row("promo_code: unlocking a campaign without one changes nothing", camp("c", TEN), L10K,
        unlocked=frozenset({"c"}), earned=[1000]),
    # ---------------------------------------------------------------- effects
    Row("earn_percent", camp("c", pct(250)), [line(1, 10_000), line(2, 333)], earned=[250, 8],
        applied=[("c", "earn_percent", 258, 0)]),
    Row("earn_percent above 100 %", camp("c", pct(25_000)), [line(1, 1_001)], earned=[2502]),
    Row("earn_fixed per receipt: by net", camp("c", fixed(100)), [line(1, 10_000), line(2, 20_000)], earned=[33, 67]),
    Row("earn_fixed per receipt: ties to the earlier line", camp("c", fixed(100)),
        [line(1, 5_000), line(2, 5_000), line(3, 5_000)], earned=[34, 33, 33]),
    Row("earn_fixed per receipt: only the taken lines", camp("c", fixed(100), 'skus = ["A"]'),
        [line(1, 5_000), line(2, 1_000, sku="A"), line(3, 3_000, sku="A")], earned=[0, 25, 75]),
    Row("earn_fixed per receipt: every net 0, equal parts", camp("d", dpct(10_000), priority=9) + camp("c", fixed(11)),
        [line(1, 5_000), line(2, 7_000)], earned=[6, 5], discount=[5_000, 7_000],
        applied=[("d", "discount_percent", 0, 12_000), ("c", "earn_fixed", 11, 0)]),
    # every taken net 0 beside an untaken line: the weights are [net if taken else 0] over every line,
    # all 0, so equal parts over every line, and only the taken lines keep theirs
    Row("earn_fixed per receipt: every taken net 0, an untaken line", camp("c", fixed(100)),
        [line(1, 0), line(2, 10_000, no_earn=True), line(3, 0)], earned=[50, 0, 50],
        applied=[("c", "earn_fixed", 100, 0)]),
    Row("earn_fixed per line", camp("c", fixed(70, "line"), 'category_prefixes = ["grocery"]'),
        [line(1, 10), line(2, 0), line(3, 10_000, "home")], earned=[70, 70, 0],
        applied=[("c", "earn_fixed", 140, 0)]),
    Row("earn_fixed per unit", camp("c", fixed(10, "unit")),
        [line(1, 1_000, qty=2500), line(2, 1_000, qty=500), line(3, 1_000, qty=1)], earned=[25, 5, 0]),
    Row("earn_per_step: two full steps spread by net",
        camp("c", '{ kind = "earn_per_step", points = 50, step_minor = 10000 }'),
        [line(1, 12_000), line(2, 9_000)], earned=[57, 43], applied=[("c", "earn_per_step", 100, 0)]),
    Row("earn_per_step: exactly one step", camp("c", '{ kind = "earn_per_step", points = 50, step_minor = 10000 }'),
        [line(1, 4_000), line(2, 6_000)], earned=[20, 30]),
    Row("earn_per_step: one below a step gives 0 but applies",
        camp("c", '{ kind = "earn_per_step", points = 50, step_minor = 10000 }'),
        [line(1, 9_999)], earned=[0], applied=[("c", "earn_per_step", 0, 0)]),
    Row("earn_per_step: on the net after discounts",
        camp("d", dpct(1000), priority=9) + camp("c", '{ kind = "earn_per_step", points = 50, step_minor = 10000 }'),
        [line(1, 11_000)], earned=[0], discount=[1_100]),
    Row("earn_multiplier: doubles what the line earned",
        camp("c", TEN) + camp("x2", '{ kind = "earn_multiplier", multiplier_bps = 20000 }', 'category_prefixes = ["pharmacy"]'),
        [line(1, 10_000), line(2, 10_000, "pharmacy")], earned=[1000, 2000],
        applied=[("c", "earn_percent", 2000, 0), ("x2", "earn_multiplier", 1000, 0)]),
    Row("earn_multiplier: multipliers do not compound, priority does not matter",
        camp("x2", '{ kind = "earn_multiplier", multiplier_bps = 20000 }', priority=99)
        + camp("c", TEN)
        + camp("x3", '{ kind = "earn_multiplier", multiplier_bps = 30000 }', priority=50)
        + camp("f", fixed(500), priority=-1),
        [line(1, 10_000)], earned=[1500 + 1500 + 3000],
        applied=[("c", "earn_percent", 1000, 0), ("f", "earn_fixed", 500, 0), ("x2", "earn_multiplier", 1500, 0),
                 ("x3", "earn_multiplier", 3000, 0)]),
    Row("earn_multiplier: rounding floor", camp("c", pct(333)) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 15000 }'),
        [line(1, 10_000)], earned=[333 + 166]),
    Row("earn_multiplier: rounding half_up", camp("c", pct(333)) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 15000 }'),
        [line(1, 10_000)], settings={"rounding": "half_up"}, earned=[333 + 167]),
    Row("earn_multiplier: rounding ceil", camp("c", pct(333)) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 15001 }'),
        [line(1, 10_000)], settings={"rounding": "ceil"}, earned=[333 + 167]),
    Row("earn_multiplier: alone it gives 0 but applies", camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }'),
        [line(1, 10_000)], earned=[0], applied=[("m", "earn_multiplier", 0, 0)]),
    Row("earn_multiplier: never on a no_earn line",
        camp("c", TEN) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }'),
        [line(1, 10_000, no_earn=True), line(2, 1_000)], earned=[0, 200]),
    Row("discount_percent", camp("d", dpct(1500)), [line(1, 10_000), line(2, 999)], discount=[1_500, 149], earned=[0, 0],
        applied=[("d", "discount_percent", 0, 1_649)]),
    Row("discount_percent: 100 % is the whole net", camp("d", dpct(10_000)), [line(1, 777)], discount=[777]),
    Row("discount_percent: no_discount line, earn after", camp("c", pct(500)) + camp("d", dpct(1000), priority=5),
        [line(1, 10_000), line(2, 10_000, no_discount=True)], earned=[450, 500], discount=[1000, 0]),
    Row("discount_percent: stacks on the net the earlier one left",
        camp("a", dpct(5000), priority=2) + camp("b", dpct(1000), priority=1),
        [line(1, 10_000)], discount=[5_000 + 500],
        applied=[("a", "discount_percent", 0, 5_000), ("b", "discount_percent", 0, 500)]),
    Row("discount_fixed: spread by net", camp("d", '{ kind = "discount_fixed", amount_minor = 1000 }'),
        [line(1, 3_000), line(2, 6_000)], discount=[333, 667]),
    Row("discount_fixed: at most the taken net", camp("d", '{ kind = "discount_fixed", amount_minor = 5000 }'),
        [line(1, 1_000), line(2, 2_000), line(3, 9_000, no_discount=True)], discount=[1_000, 2_000, 0],
        applied=[("d", "discount_fixed", 0, 3_000)]),
    Row("fixed_price", camp("f", '{ kind = "fixed_price", price_minor = 500 }'),
        [line(1, 1_600, qty=2000), line(2, 300), line(3, 1_000, qty=1500)], discount=[600, 0, 250],
        applied=[("f", "fixed_price", 0, 850)]),
    Row("fixed_price: on the net after an earlier discount",
        camp("d", dpct(5000), priority=9) + camp("f", '{ kind = "fixed_price", price_minor = 400 }'),
        [line(1, 1_000)], discount=[500 + 100]),
    Row("buy_x_get_y: buy 2 get 1, the cheapest units free",
        camp("b", '{ kind = "buy_x_get_y", buy = 2, get = 1 }'),
        [line(1, 600, qty=2000, price=300), line(2, 100, qty=1000, price=100), line(3, 600, qty=3000, price=200)],
        discount=[0, 100, 200], applied=[("b", "buy_x_get_y", 0, 300)]),
    Row("buy_x_get_y: one unit short of a set",
        camp("b", '{ kind = "buy_x_get_y", buy = 2, get = 1 }'),
        [line(1, 600, qty=2000, price=300)], discount=[0], applied=[("b", "buy_x_get_y", 0, 0)]),
    Row("buy_x_get_y: whole units only, price ties to line order",
        camp("b", '{ kind = "buy_x_get_y", buy = 1, get = 1 }'),
        [line(1, 500, qty=2500, price=200), line(2, 200, qty=1000, price=200), line(3, 90, qty=900, price=100)],
        discount=[200, 0, 0]),
    Row("buy_x_get_y: at most the net", camp("b", '{ kind = "buy_x_get_y", buy = 1, get = 1 }'),
        [line(1, 150, qty=2000, price=200)], discount=[150]),
    Row("buy_x_get_y: several lines free, no_discount not taken",
        camp("b", '{ kind = "buy_x_get_y", buy = 1, get = 2 }'),
        [line(1, 3_000, qty=3000, price=1_000), line(2, 500, qty=1000, price=500), line(3, 100, qty=5000, price=20,
         no_discount=True), line(4, 1_200, qty=2000, price=600)],
        discount=[1_000, 500, 0, 1_200]),
    # bundle A + B for 2.50; A 2.00, B 1.50: 1.00 off each complete set
    Row("bundle: one complete set, spread by net", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[57, 43], earned=[0, 0],
        applied=[("b", "bundle", 0, 100)]),
    Row("bundle: two complete sets, the fewest units decide, other lines untouched", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 400, sku="A", qty=2000, price=200), line(2, 450, sku="B", qty=3000, price=150), line(3, 1_000)],
        discount=[94, 106, 0], applied=[("b", "bundle", 0, 200)]),
    Row("bundle: units summed over a SKU's lines", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 200, sku="A"), line(2, 200, sku="A"), line(3, 300, sku="B", qty=2000, price=150)],
        discount=[57, 57, 86], applied=[("b", "bundle", 0, 200)]),
    Row("bundle: an incomplete set (no B) does not apply", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 400, sku="A", qty=2000, price=200), line(2, 1_000)], discount=[0, 0], applied=[]),
    Row("bundle: an incomplete set (B under one whole unit) does not apply", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 400, sku="A", qty=2000, price=200), line(2, 149, sku="B", qty=999, price=150)],
        discount=[0, 0], applied=[]),
    Row("bundle: a no_discount line is not taken, so no complete set", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 200, sku="A", no_discount=True), line(2, 150, sku="B")], discount=[0, 0], applied=[]),
    # A's lowest unit price is line 2's 1.00 although it holds no whole unit: 1.00 + 2.00 - 2.50
    Row("bundle: the lowest unit price among a SKU's lines, a part unit's too", camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 300, sku="A"), line(2, 50, sku="A", qty=500, price=100), line(3, 200, sku="B")],
        discount=[27, 5, 18], applied=[("b", "bundle", 0, 50)]),
    Row("bundle: priced above the sum applies and gives 0",
        camp("b", '{ kind = "bundle", price_minor = 1000 }', BUNDLE_AB),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[0, 0], applied=[("b", "bundle", 0, 0)]),
    Row("bundle: priced at exactly the sum applies and gives 0",
        camp("b", '{ kind = "bundle", price_minor = 350 }', BUNDLE_AB),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[0, 0], applied=[("b", "bundle", 0, 0)]),
    Row("bundle: three SKUs",
        camp("b", '{ kind = "bundle", price_minor = 450 }', 'skus = ["A", "B", "C"]'),
        [line(1, 200, sku="A", qty=2000, price=100), line(2, 400, sku="B", qty=2000, price=200), line(3, 300, sku="C")],
        discount=[33, 67, 50], applied=[("b", "bundle", 0, 150)]),
    Row("bundle: a SKU named twice counts once", camp("b", BUNDLE, 'skus = ["A", "B", "A"]'),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[57, 43], applied=[("b", "bundle", 0, 100)]),
    # the set's regular price is from price_minor; the discount is on the net the earlier one left
    Row("bundle: after an earlier discount, spread by the net it left",
        camp("d", dpct(1000), 'skus = ["A"]', priority=9) + camp("b", '{ kind = "bundle", price_minor = 1500 }', BUNDLE_AB),
        [line(1, 1_000, sku="A"), line(2, 1_000, sku="B")], discount=[100 + 237, 263],
        applied=[("d", "discount_percent", 0, 100), ("b", "bundle", 0, 500)]),
    Row("bundle: at most the taken lines' net",
        camp("d", dpct(5000), priority=9) + camp("b", '{ kind = "bundle", price_minor = 100 }', BUNDLE_AB),
        [line(1, 1_000, sku="A"), line(2, 1_000, sku="B"), line(3, 1_000)], discount=[1_000, 1_000, 500],
        applied=[("d", "discount_percent", 0, 1_500), ("b", "bundle", 0, 1_000)]),
    Row("bundle: before the earn pass",
        camp("c", TEN) + camp("b", BUNDLE, BUNDLE_AB),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[57, 43], earned=[14, 10],
        applied=[("b", "bundle", 0, 100), ("c", "earn_percent", 24, 0)]),
    Row("bundle: receipt_max_minor caps it", camp("b", BUNDLE, BUNDLE_AB, limits="{ receipt_max_minor = 60 }"),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[34, 26], applied=[("b", "bundle", 0, 60)],
        limited=[("b", (34, 26))]),
    Row("bundle: what its budget has left caps it", camp("b", BUNDLE, BUNDLE_AB, limits="{ budget_minor = 1000 }"),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], allowances={"b": 30}, discount=[17, 13],
        limited=[("b", (17, 13))]),
    Row("bundle: budget spent, does not apply", camp("b", BUNDLE, BUNDLE_AB, limits="{ budget_minor = 1000 }"),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], allowances={"b": 0}, discount=[0, 0], applied=[], limited=[]),
    Row("bundle: in a best-of, worth its discount",
        camp("b", BUNDLE, BUNDLE_AB, stacking='"best"') + camp("c", pct(2000), stacking='"best"'),
        [line(1, 200, sku="A"), line(2, 150, sku="B")], discount=[57, 43], earned=[0, 0],
        applied=[("b", "bundle", 0, 100)]),
    Row("bundle: without a complete set it does not compete in a best-of",
        camp("b", BUNDLE, BUNDLE_AB, stacking='"best"', priority=9) + camp("c", pct(100), stacking='"best"'),
        [line(1, 200, sku="A"), line(2, 150, sku="C")], discount=[0, 0], earned=[2, 1],
        applied=[("c", "earn_percent", 3, 0)]),
    Row("bundle: exclusive only when it applies",
        camp("b", BUNDLE, BUNDLE_AB, stacking='"exclusive"', priority=9) + camp("c", TEN),
        [line(1, 200, sku="A")], discount=[0], earned=[20], applied=[("c", "earn_percent", 20, 0)]),
    # ---------------------------------------------------------------- rounding
    Row("earn floor", camp("c", pct(500)), [line(1, 1_999)], earned=[99]),
    Row("earn half_up below .5", camp("c", pct(500)), [line(1, 1_989)], settings={"rounding": "half_up"}, earned=[99]),
    Row("earn half_up exactly .5", camp("c", pct(500)), [line(1, 1_990)], settings={"rounding": "half_up"}, earned=[100]),
    Row("earn ceil", camp("c", pct(500)), [line(1, 1_981)], settings={"rounding": "ceil"}, earned=[100]),
    Row("earn ceil exact", camp("c", pct(500)), [line(1, 2_000)], settings={"rounding": "ceil"}, earned=[100]),
    Row("discount floor", camp("d", dpct(1000)), [line(1, 1_999)], discount=[199]),
    Row("discount half_up", camp("d", dpct(1000)), [line(1, 1_995)], settings={"rounding": "half_up"}, discount=[200]),
    Row("discount ceil", camp("d", dpct(1000)), [line(1, 1_991)], settings={"rounding": "ceil"}, discount=[200]),
    # ---------------------------------------------------------------- limits
    Row("receipt_max_points: capped, spread by the uncapped amounts",
        camp("c", TEN, limits="{ receipt_max_points = 150 }"), [line(1, 10_000), line(2, 5_000)],
        earned=[100, 50], applied=[("c", "earn_percent", 150, 0)], limited=[("c", (100, 50))]),
    Row("receipt_max_points: exactly reached, not capped", camp("c", TEN, limits="{ receipt_max_points = 1500 }"),
        [line(1, 10_000), line(2, 5_000)], earned=[1000, 500], limited=[("c", (1000, 500))]),
    Row("receipt_max_points: largest remainder", camp("c", fixed(3, "line"), limits="{ receipt_max_points = 4 }"),
        [line(1, 10), line(2, 10), line(3, 10)], earned=[2, 1, 1], limited=[("c", (2, 1, 1))]),
    Row("receipt_max_minor: a discount is capped before the next campaign sees the net",
        camp("d", dpct(5000), limits="{ receipt_max_minor = 1000 }", priority=9) + camp("c", TEN),
        [line(1, 1_000), line(2, 3_000)], discount=[250, 750], earned=[75, 225],
        applied=[("d", "discount_percent", 0, 1000), ("c", "earn_percent", 300, 0)], limited=[("d", (250, 750))]),
    Row("account_day_max_points: what is left caps", camp("c", TEN, limits="{ account_day_max_points = 500 }"),
        [line(1, 10_000), line(2, 5_000)], allowances={"c": 120}, earned=[80, 40], limited=[("c", (80, 40))]),
    Row("account_day_max_points: nothing left, does not apply", camp("c", TEN, limits="{ account_day_max_points = 500 }"),
        L10K, allowances={"c": 0}, earned=[0], applied=[], limited=[]),
    Row("account_day_max_points: more left than given", camp("c", TEN, limits="{ account_day_max_points = 5000 }"),
        L10K, allowances={"c": 4000}, earned=[1000], limited=[("c", (1000,))]),
    Row("account_day_max_points: allowance absent, unlimited", camp("c", TEN, limits="{ account_day_max_points = 5 }"),
        L10K, earned=[1000], limited=[("c", (1000,))]),
    Row("account_week_max_points", camp("c", TEN, limits="{ account_week_max_points = 500 }"),
        [line(1, 10_000), line(2, 5_000)], allowances={"c": 301}, earned=[201, 100], limited=[("c", (201, 100))]),
    Row("account_week_max_points: nothing left", camp("c", TEN, limits="{ account_week_max_points = 500 }"),
        L10K, allowances={"c": 0}, earned=[0], applied=[]),
    Row("account_month_max_points", camp("c", TEN, limits="{ account_month_max_points = 500 }"),
        L10K, allowances={"c": 1}, earned=[1], limited=[("c", (1,))]),
    Row("account_month_max_minor: a discount", camp("d", dpct(5000), limits="{ account_month_max_minor = 900 }"),
        [line(1, 1_000), line(2, 2_000)], allowances={"d": 600}, discount=[200, 400], limited=[("d", (200, 400))]),
    Row("account_month_max_minor: nothing left", camp("d", dpct(5000), limits="{ account_month_max_minor = 900 }"),
        [line(1, 1_000)], allowances={"d": 0}, discount=[0], applied=[]),
    Row("budget_points", camp("c", TEN, limits="{ budget_points = 1000000 }"), [line(1, 10_000), line(2, 10_000)],
        allowances={"c": 999}, earned=[500, 499], limited=[("c", (500, 499))]),
    Row("budget_points: spent", camp("c", TEN, limits="{ budget_points = 1000000 }"), L10K,
        allowances={"c": 0}, earned=[0], applied=[]),
    Row("budget_minor: fixed discount", camp("d", '{ kind = "discount_fixed", amount_minor = 5000 }',
                                            limits="{ budget_minor = 100000 }"),
        [line(1, 10_000)], allowances={"d": 2_500}, discount=[2_500], limited=[("d", (2_500,))]),
    Row("uses_per_account: uses left", camp("c", TEN, limits="{ uses_per_account = 1 }"), L10K, earned=[1000],
        limited=[("c", (1000,))]),
    Row("uses_per_account: used up", camp("c", TEN, limits="{ uses_per_account = 1 }") + camp("b", pct(100)),
        L10K, allowances={"c": 0}, earned=[100], applied=[("b", "earn_percent", 100, 0)], limited=[]),
    # the ledger's allowances concern only the limits it counts (day/week/month caps, budget, uses)
    Row("allowance for a campaign with only a receipt cap: ignored",
        camp("c", TEN, limits="{ receipt_max_points = 500 }") + camp("b", pct(100)), L10K, allowances={"c": 0},
        earned=[600], applied=[("c", "earn_percent", 500, 0), ("b", "earn_percent", 100, 0)],
        limited=[("c", (500,))]),
    Row("allowance for a campaign without limits: ignored", camp("c", TEN) + camp("b", pct(100)), L10K,
        allowances={"c": 0}, earned=[1100]),
    Row("receipt cap and allowance: the smallest",
        camp("c", TEN, limits="{ receipt_max_points = 150, account_day_max_points = 1000 }"),
        [line(1, 10_000), line(2, 5_000)], allowances={"c": 90}, earned=[60, 30], limited=[("c", (60, 30))]),
    Row("receipt cap smaller than the allowance",
        camp("c", TEN, limits="{ receipt_max_points = 90, budget_points = 1000 }"),
        [line(1, 10_000), line(2, 5_000)], allowances={"c": 150}, earned=[60, 30], limited=[("c", (60, 30))]),
    Row("limited lists a capped campaign that gave 0, not the others",
        camp("c", pct(1), limits="{ receipt_max_points = 5 }") + camp("b", pct(100)),
        [line(1, 99), line(2, 50)], earned=[0, 0], limited=[("c", (0, 0))],
        applied=[("c", "earn_percent", 0, 0), ("b", "earn_percent", 0, 0)]),
    Row("multiplier capped", camp("c", TEN) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 30000 }',
                                                    limits="{ receipt_max_points = 300 }"),
        [line(1, 10_000), line(2, 5_000)], earned=[1000 + 200, 500 + 100], limited=[("m", (200, 100))]),
    Row("multiplier of capped earn points", camp("c", TEN, limits="{ receipt_max_points = 300 }")
        + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }'),
        [line(1, 10_000), line(2, 5_000)], earned=[400, 200], limited=[("c", (200, 100))]),
    # ---------------------------------------------------------------- stacking
    Row("stack: both apply", camp("a", TEN) + camp("b", fixed(100)), [line(1, 10_000)], earned=[1100],
        applied=[("a", "earn_percent", 1000, 0), ("b", "earn_fixed", 100, 0)]),
    Row("walk order: priority, then file order",
        camp("a", pct(100), priority=1) + camp("b", pct(200), priority=3) + camp("c", pct(300), priority=1),
        L10K, earned=[600],
        applied=[("b", "earn_percent", 200, 0), ("a", "earn_percent", 100, 0), ("c", "earn_percent", 300, 0)]),
    Row("applied: discounts, then earns, then multipliers",
        camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }', priority=9) + camp("e", TEN, priority=5)
        + camp("d", dpct(1000), priority=1),
        L10K, discount=[1000], earned=[1800],
        applied=[("d", "discount_percent", 0, 1000), ("e", "earn_percent", 900, 0), ("m", "earn_multiplier", 900, 0)]),
    Row("exclusive: stops the lower ones",
        camp("a", pct(100), priority=9) + camp("x", pct(200), priority=5, stacking='"exclusive"')
        + camp("b", pct(300), priority=1), L10K, earned=[300],
        applied=[("a", "earn_percent", 100, 0), ("x", "earn_percent", 200, 0)]),
    Row("exclusive: stops a later one of the same priority",
        camp("x", pct(200), stacking='"exclusive"') + camp("b", pct(300)), L10K, earned=[200],
        applied=[("x", "earn_percent", 200, 0)]),
    Row("exclusive: not when it does not apply",
        camp("x", pct(200), 'stores = ["s9"]', priority=5, stacking='"exclusive"') + camp("b", pct(300)), L10K,
        earned=[300], applied=[("b", "earn_percent", 300, 0)]),
    Row("exclusive: not when its limits have nothing left",
        camp("x", pct(200), priority=5, stacking='"exclusive"', limits="{ budget_points = 10 }") + camp("b", pct(300)),
        L10K, allowances={"x": 0}, earned=[300], applied=[("b", "earn_percent", 300, 0)]),
    Row("exclusive: not without its promo code",
        camp("x", pct(200), priority=5, stacking='"exclusive"', promo_code="true") + camp("b", pct(300)),
        L10K, earned=[300], applied=[("b", "earn_percent", 300, 0)]),
    Row("exclusive: with its promo code",
        camp("x", pct(200), priority=5, stacking='"exclusive"', promo_code="true") + camp("b", pct(300)),
        L10K, unlocked=frozenset({"x"}), earned=[200], applied=[("x", "earn_percent", 200, 0)]),
    Row("exclusive: a discount stops earns below",
        camp("x", dpct(2000), priority=5, stacking='"exclusive"') + camp("b", pct(300)),
        L10K, discount=[2000], earned=[0], applied=[("x", "discount_percent", 0, 2000)]),
    Row("best: the most valuable of the group",
        camp("a", pct(500), stacking='"best"', best_group='"g"') + camp("b", dpct(1000), stacking='"best"', best_group='"g"'),
        L10K, discount=[1000], earned=[0], applied=[("b", "discount_percent", 0, 1000)]),
    Row("best: a tie goes to the earlier in walk order",
        camp("a", fixed(500), stacking='"best"', best_group='"g"')
        + camp("b", pct(500), stacking='"best"', best_group='"g"', priority=1),
        L10K, earned=[500], applied=[("b", "earn_percent", 500, 0)]),
    Row("best: a tie, same priority, file order",
        camp("a", fixed(500), stacking='"best"', best_group='"g"')
        + camp("b", pct(500), stacking='"best"', best_group='"g"'),
        L10K, earned=[500], applied=[("a", "earn_fixed", 500, 0)]),
    Row("best: one point more wins",
        camp("a", fixed(501), stacking='"best"', best_group='"g"')
        + camp("b", pct(500), stacking='"best"', best_group='"g"', priority=1),
        L10K, earned=[501], applied=[("a", "earn_fixed", 501, 0)]),
    Row("best: groups compete apart, stack campaigns stay",
        camp("a", pct(100), stacking='"best"', best_group='"g1"') + camp("b", pct(200), stacking='"best"', best_group='"g1"')
        + camp("c", pct(300), stacking='"best"', best_group='"g2"') + camp("s", pct(50)),
        L10K, earned=[550],
        applied=[("b", "earn_percent", 200, 0), ("c", "earn_percent", 300, 0), ("s", "earn_percent", 50, 0)]),
    Row("best: the empty group is a group",
        camp("a", pct(100), stacking='"best"') + camp("b", pct(200), stacking='"best"'),
        L10K, earned=[200], applied=[("b", "earn_percent", 200, 0)]),
    Row("best: valued on the receipt as it came, not after discounts",
        camp("d", dpct(5000), priority=9)
        + camp("a", TEN, stacking='"best"', best_group='"g"') + camp("b", fixed(600), stacking='"best"', best_group='"g"'),
        L10K, discount=[5000], earned=[500],
        applied=[("d", "discount_percent", 0, 5000), ("a", "earn_percent", 500, 0)]),
    Row("best: valued after its receipt cap",
        camp("a", pct(2000), stacking='"best"', best_group='"g"', limits="{ receipt_max_points = 100 }")
        + camp("b", pct(500), stacking='"best"', best_group='"g"'),
        L10K, earned=[500], applied=[("b", "earn_percent", 500, 0)]),
    Row("best: valued after what its limits have left",
        camp("a", pct(2000), stacking='"best"', best_group='"g"', limits="{ account_day_max_points = 5000 }")
        + camp("b", pct(500), stacking='"best"', best_group='"g"'),
        L10K, allowances={"a": 499}, earned=[500], applied=[("b", "earn_percent", 500, 0)]),
    Row("best: with more left it wins",
        camp("a", pct(2000), stacking='"best"', best_group='"g"', limits="{ account_day_max_points = 5000 }")
        + camp("b", pct(500), stacking='"best"', best_group='"g"'),
        L10K, allowances={"a": 501}, earned=[501], applied=[("a", "earn_percent", 501, 0)],
        limited=[("a", (501,))]),
    Row("best: a multiplier is worth 0 alone",
        camp("c", TEN) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 30000 }', stacking='"best"')
        + camp("f", fixed(1), stacking='"best"'),
        L10K, earned=[1001], applied=[("c", "earn_percent", 1000, 0), ("f", "earn_fixed", 1, 0)]),
    Row("best: a multiplier ties with a 0 and is earlier",
        camp("c", TEN) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 30000 }', stacking='"best"')
        + camp("f", '{ kind = "earn_per_step", points = 5, step_minor = 1000000 }', stacking='"best"'),
        L10K, earned=[3000], applied=[("c", "earn_percent", 1000, 0), ("m", "earn_multiplier", 2000, 0)]),
    Row("best: one that does not apply does not compete",
        camp("a", pct(5000), 'stores = ["s9"]', stacking='"best"') + camp("b", pct(200), stacking='"best"'),
        L10K, earned=[200], applied=[("b", "earn_percent", 200, 0)]),
    Row("best: below an exclusive, not chosen",
        camp("x", pct(100), stacking='"exclusive"', priority=5) + camp("a", pct(5000), stacking='"best"'),
        L10K, earned=[100], applied=[("x", "earn_percent", 100, 0)]),
    Row("best: an exclusive stops the walk after the best ones above it",
        camp("a", pct(300), stacking='"best"', priority=9) + camp("b", pct(200), stacking='"best"', priority=9)
        + camp("x", pct(100), stacking='"exclusive"', priority=5),
        L10K, earned=[400], applied=[("a", "earn_percent", 300, 0), ("x", "earn_percent", 100, 0)]),
    Row("best: valued with only the lines it takes",
        camp("a", fixed(150), 'skus = ["A"]', stacking='"best"') + camp("b", pct(1000), 'skus = ["B"]', stacking='"best"'),
        [line(1, 1_000, sku="A"), line(2, 1_400, sku="B")], earned=[150, 0], applied=[("a", "earn_fixed", 150, 0)]),
    # ---------------------------------------------------------------- redemption
    Row("redeem: spread over the lines by net",
        camp("d", dpct(5000), 'skus = ["A"]'), [line(1, 10_000, sku="A"), line(2, 10_000)],
        settings={"max_redeem_share_bps": 10_000}, available=10**6, redeem=300, discount=[5000, 0],
        redeemed=[100, 200], redeemable=15_000),
    Row("redeem: share of the payable, floor", camp("c", TEN), [line(1, 3_333)],
        settings={"max_redeem_share_bps": 5000}, available=10**6, redeem=1666, redeemed=[1666], redeemable=1666),
    Row("redeem: more than redeemable redeems nothing", camp("c", TEN), [line(1, 3_333)],
        settings={"max_redeem_share_bps": 5000}, available=10**6, redeem=1667, redeemed=[0], redeemable=1666),
    Row("redeem: at most the available points", camp("c", TEN), [line(1, 10_000)],
        available=1_234, redeem=1_234, redeemed=[1_234], redeemable=1_234),
    # ---------------------------------------------------------------- redeem_share, grant_tier
    Row("redeem_share: raises the share on this receipt", camp("r", share(8000)), L10K, available=10**6, redeem=8_000,
        redeemed=[8_000], redeemable=8_000, earned=[0], discount=[0], applied=[("r", "redeem_share", 0, 0)],
        limited=[]),
    Row("redeem_share: one above its share redeems nothing", camp("r", share(8000)), L10K, available=10**6,
        redeem=8_001, redeemed=[0], redeemable=8_000),
    Row("redeem_share: lowers the share", camp("r", share(1000)), L10K, available=10**6, redeem=1_001,
        redeemed=[0], redeemable=1_000),
    Row("redeem_share: 0 allows no redemption", camp("r", share(0)), L10K, available=10**6, redeem=1,
        redeemed=[0], redeemable=0, applied=[("r", "redeem_share", 0, 0)]),
    Row("redeem_share: without it the program's share", camp("c", TEN), L10K, available=10**6, redeemable=5_000),
    Row("redeem_share: the first in walk order decides",
        camp("low", share(2000), priority=1) + camp("high", share(9000), priority=5), L10K, available=10**6,
        redeemable=9_000, applied=[("high", "redeem_share", 0, 0), ("low", "redeem_share", 0, 0)]),
    Row("redeem_share: same priority, file order decides",
        camp("a", share(3000)) + camp("b", share(9000)), L10K, available=10**6, redeemable=3_000,
        applied=[("a", "redeem_share", 0, 0), ("b", "redeem_share", 0, 0)]),
    Row("redeem_share: the first that applies decides",
        camp("a", share(9000), 'stores = ["s9"]', priority=5) + camp("b", share(7000)), L10K, available=10**6,
        redeemable=7_000, applied=[("b", "redeem_share", 0, 0)]),
    Row("redeem_share: condition fails, the program's share",
        camp("r", share(9000), "window_spend_min_minor = 1"), L10K, available=10**6, redeemable=5_000, applied=[]),
    Row("redeem_share: takes no line, does not apply", camp("r", share(9000), 'skus = ["Z"]'), L10K,
        available=10**6, redeemable=5_000, applied=[]),
    Row("redeem_share: takes no_earn and no_discount lines",
        camp("r", share(9000)) + camp("c", TEN) + camp("d", dpct(1000)),
        [line(1, 10_000, no_earn=True, no_discount=True)], available=10**6, redeemable=9_000, earned=[0],
        discount=[0], applied=[("r", "redeem_share", 0, 0)]),
    Row("redeem_share: of the payable after discounts, redemption spread by net",
        camp("d", dpct(5000), 'skus = ["A"]') + camp("r", share(10_000)),
        [line(1, 10_000, sku="A"), line(2, 10_000)], available=10**6, redeem=15_000, redeemable=15_000,
        discount=[5_000, 0], redeemed=[5_000, 10_000]),
    Row("redeem_share: at most the available points", camp("r", share(10_000)), L10K, available=1_234,
        redeem=1_234, redeemable=1_234, redeemed=[1_234]),
    Row("redeem_share: listed after the multipliers",
        camp("r", share(9000), priority=9) + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }', priority=8)
        + camp("c", TEN, priority=7) + camp("d", dpct(1000)),
        L10K, available=10**6, discount=[1_000], earned=[1_800], redeemable=8_100,
        applied=[("d", "discount_percent", 0, 1_000), ("c", "earn_percent", 900, 0), ("m", "earn_multiplier", 900, 0),
                 ("r", "redeem_share", 0, 0)]),
    Row("redeem_share: exclusive stops the walk",
        camp("r", share(9000), priority=9, stacking='"exclusive"') + camp("c", TEN), L10K, available=10**6,
        earned=[0], redeemable=9_000, applied=[("r", "redeem_share", 0, 0)]),
    Row("redeem_share: an exclusive above stops it",
        camp("x", TEN, priority=9, stacking='"exclusive"') + camp("r", share(9000)), L10K, available=10**6,
        earned=[1_000], redeemable=5_000, applied=[("x", "earn_percent", 1_000, 0)]),
    Row("redeem_share: with its promo code", camp("r", share(9000), promo_code="true"), L10K,
        unlocked=frozenset({"r"}), available=10**6, redeemable=9_000, applied=[("r", "redeem_share", 0, 0)]),
    Row("redeem_share: without its promo code", camp("r", share(9000), promo_code="true"), L10K,
        available=10**6, redeemable=5_000, applied=[]),
    Row("redeem_share: an allowance for it is ignored (it has no limits)", camp("r", share(9000)), L10K,
        allowances={"r": 0}, available=10**6, redeemable=9_000, applied=[("r", "redeem_share", 0, 0)], limited=[]),
    Row("grant_tier: listed after the earns, gives nothing",
        TIERS + camp("g", GRANT_GOLD, priority=9) + camp("c", TEN), L10K, earned=[1_000], discount=[0],
        applied=[("c", "earn_percent", 1_000, 0), ("g", "grant_tier", 0, 0)], limited=[]),
    Row("grant_tier and redeem_share: one group after the multipliers, in walk order",
        TIERS + camp("r", share(9000), priority=1) + camp("g", GRANT_GOLD, priority=5)
        + camp("m", '{ kind = "earn_multiplier", multiplier_bps = 20000 }', priority=9) + camp("c", TEN)
        + camp("r2", share(10_000)),
        L10K, available=10**6, earned=[2_000], redeemable=9_000,
        applied=[("c", "earn_percent", 1_000, 0), ("m", "earn_multiplier", 1_000, 0), ("g", "grant_tier", 0, 0),
                 ("r", "redeem_share", 0, 0), ("r2", "redeem_share", 0, 0)]),
    Row("grant_tier: takes a no_earn line", TIERS + camp("g", GRANT_GOLD) + camp("c", TEN),
        [line(1, 10_000, no_earn=True)], earned=[0], applied=[("g", "grant_tier", 0, 0)]),
    Row("grant_tier: line conditions take no line, does not apply", TIERS + camp("g", GRANT_GOLD, 'skus = ["Z"]'),
        L10K, earned=[0], applied=[]),
    Row("grant_tier: window spend exactly met", TIERS + camp("g", GRANT_GOLD, "window_spend_min_minor = 300000"),
        L10K, shopper=Shopper(window_spend_minor=300_000), applied=[("g", "grant_tier", 0, 0)]),
    Row("grant_tier: window spend one below", TIERS + camp("g", GRANT_GOLD, "window_spend_min_minor = 300000"),
        L10K, shopper=Shopper(window_spend_minor=299_999), applied=[]),
    Row("grant_tier: when.tiers sees the tier before the purchase",
        TIERS + camp("g", GRANT_GOLD, priority=9) + camp("c", TEN, 'tiers = ["gold"]'), L10K, earned=[0],
        applied=[("g", "grant_tier", 0, 0)]),
    Row("grant_tier: exclusive stops the walk",
        TIERS + camp("g", GRANT_GOLD, priority=9, stacking='"exclusive"') + camp("c", TEN) + camp("r", share(9000)),
        L10K, available=10**6, earned=[0], redeemable=5_000, applied=[("g", "grant_tier", 0, 0)]),
]


def outcome_of(result: dict, row: Row) -> dict:
    """The row's expectations, read from a result in the reference's shape."""
    got = {
        "earned": [l[3] for l in result["lines"]],
        "discount": [l[2] for l in result["lines"]],
        "redeemed": [l[4] for l in result["lines"]],
        "applied": [tuple(c) for c in result["campaigns"]],
        "limited": [(cid, tuple(a)) for cid, a in result["limited"]],
        "redeemable": result["redeemable_points"],
    }
    return {key: got[key] for key in row.expected}


def spec_of(row: Row):
    return program(row.campaigns, **row.settings)


def run_reference(row: Row) -> dict:
    return reference.calculate(spec_of(row), row.receipt(), row.now, row.available, row.redeem, shopper=row.shopper,
                               allowances=row.allowances, unlocked=row.unlocked)


def run_core(row: Row) -> dict:
    calculation = Program(spec_of(row)).calculate(row.receipt(), row.now, row.available, row.redeem,
                                                  shopper=row.shopper, allowances=row.allowances,
                                                  unlocked=set(row.unlocked))
    return reference.core_as_dict(calculation)


def check_totals(result: dict) -> None:
    lines = result["lines"]
    assert result["total_minor"] == sum(l[1] for l in lines)
    assert result["discount_minor"] == sum(l[2] for l in lines)
    assert result["payable_minor"] == result["total_minor"] - result["discount_minor"]
    assert result["earned_points"] == sum(l[3] for l in lines)
    assert result["redeemed_points"] == sum(l[4] for l in lines)


PARAMS = [pytest.param(row, id=row.name) for row in ROWS]


def test_rows_are_named_once():
    names = [row.name for row in ROWS]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


@pytest.mark.parametrize("row", PARAMS)
def test_reference(row):
    result = run_reference(row)
    assert outcome_of(result, row) == row.expected
    check_totals(result)


@pytest.mark.parametrize("row", PARAMS)
def test_core(row):
    result = run_core(row)
    assert outcome_of(result, row) == row.expected
    check_totals(result)


@pytest.mark.parametrize("row", PARAMS)
def test_core_agrees_with_reference(row):
    assert run_core(row) == run_reference(row)
