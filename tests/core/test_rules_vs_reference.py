"""The Cython core and the pure-Python reference evaluator agree, on fixed rows and on random receipts.

The random cases are drawn for a given program: lines whose categories, SKUs and brands come from a
pool holding what the program's campaigns name (and prefixes extended, and values no campaign
names; with a bundle, sometimes one line of each of its SKUs added), a random customer (labels,
tier, card category, age, birthday near the purchase date, n-th purchase, lifetime and window spend
around the thresholds), a purchase time somewhere in one week (hour edges
and validity edges included), receipt fields (store, region, channel, terminal, payment method,
card bin) from pools holding the program's values, random promo-code unlocks and what the limits
have left. A failure prints the falsifying example and a `@reproduce_failure` blob; a run is
repeated with `--hypothesis-seed=N`. The sample program's run draws SAMPLE_PROGRAM_EXAMPLES cases
(4,000 by default, to keep the default suite short; more: `REFERENCE_TEST_EXAMPLES=20000 .venv/bin/python
-m pytest tests/core/test_rules_vs_reference.py`).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kassa.core_ext import Program, load_program
from kassa.core_ext.model import Line, Receipt, Shopper
from tests.core import reference
from tests.core.programs import CATEGORIES, generated_program, program

NOW_MS = 1_780_300_800_000


def line(line_no, amount, category="grocery/bakery", sku="SKU-1", qty=1000, **flags):
    return Line(line_no, sku, category, qty, amount * 1000 // qty, amount, **flags)


def receipt(*lines, store="store-1"):
    return Receipt(store, "t1", "r1", tuple(lines))


BASE = """
[[campaigns]]
id = "base"
effect = { kind = "earn_percent", percent_bps = 500 }
"""


class TestSubsetRows:
    """One receipt and its expected outcome per row."""

    ROWS = [
        # (name, campaigns, settings, lines, expected earned per line, expected discount per line)
        ("percent of eligible amount", BASE, {}, [line(1, 10_000)], [500], [0]),
        ("floor rounding", BASE, {}, [line(1, 1_999)], [99], [0]),
        ("half_up rounding", BASE, {"rounding": "half_up"}, [line(1, 1_990)], [100], [0]),
        ("ceil rounding", BASE, {"rounding": "ceil"}, [line(1, 1_981)], [100], [0]),
        ("no_earn line excluded", BASE, {}, [line(1, 10_000), line(2, 10_000, no_earn=True)], [500, 0], [0, 0]),
        (
            "category prefix",
            '[[campaigns]]\nid = "ph"\nwhen = { category_prefixes = ["pharmacy"] }\neffect = { kind = "earn_percent", percent_bps = 300 }',
            {},
            [line(1, 10_000, "pharmacy/vitamins"), line(2, 10_000, "pharmacyx"), line(3, 10_000, "grocery")],
            [300, 300, 0],
            [0, 0, 0],
        ),
        (
            "sku set",
            '[[campaigns]]\nid = "sku"\nwhen = { skus = ["A", "B"] }\neffect = { kind = "earn_percent", percent_bps = 1000 }',
            {},
            [line(1, 10_000, sku="A"), line(2, 10_000, sku="C")],
            [1000, 0],
            [0, 0],
        ),
        (
            "threshold exactly met",
            '[[campaigns]]\nid = "big"\nwhen = { receipt_total_min_minor = 30000 }\neffect = { kind = "earn_fixed", points = 100 }',
            {},
            [line(1, 10_000), line(2, 20_000)],
            [33, 67],
            [0, 0],
        ),
        (
            "threshold missed by one",
            '[[campaigns]]\nid = "big"\nwhen = { receipt_total_min_minor = 30001 }\neffect = { kind = "earn_fixed", points = 100 }',
            {},
            [line(1, 10_000), line(2, 20_000)],
            [0, 0],
            [0, 0],
        ),
        (
            "discount before earn, no_discount respected",
            BASE + '[[campaigns]]\nid = "d"\npriority = 5\neffect = { kind = "discount_percent", percent_bps = 1000 }',
            {},
            [line(1, 10_000), line(2, 10_000, no_discount=True)],
            [450, 500],
            [1000, 0],
        ),
        (
            "exclusive stops lower priority",
            BASE + '[[campaigns]]\nid = "x"\npriority = 9\nstacking = "exclusive"\neffect = { kind = "earn_percent", percent_bps = 200 }',
            {},
            [line(1, 10_000)],
            [200],
            [0],
        ),
        (
            "validity window closed",
            '[[campaigns]]\nid = "old"\nvalid_to = 2026-01-01T00:00:00Z\neffect = { kind = "earn_percent", percent_bps = 500 }',
            {},
            [line(1, 10_000)],
            [0],
            [0],
        ),
    ]

    @pytest.mark.parametrize("name,campaigns,program_settings,lines,earned,discount", ROWS, ids=[r[0] for r in ROWS])
    def test_row(self, name, campaigns, program_settings, lines, earned, discount):
        spec = program(campaigns, **program_settings)
        result = Program(spec).calculate(receipt(*lines), NOW_MS, 0, 0)
        assert [l.earned_points for l in result.lines] == earned
        assert [l.discount_minor for l in result.lines] == discount
        assert reference.core_as_dict(result) == reference.calculate(spec, receipt(*lines), NOW_MS, 0, 0)

    def test_redeem_share_limits_redeemable(self):
        spec = program(BASE, max_redeem_share_bps=5000)
        result = Program(spec).calculate(receipt(line(1, 10_000), line(2, 30_000)), NOW_MS, 1_000_000, 20_000)
        assert result.redeemable_points == 20_000
        assert result.redeemed_points == 20_000
        assert [l.redeemed_points for l in result.lines] == [5_000, 15_000]

    def test_captured_points_share_the_redeemable_amount_and_leave_the_money_due(self):
        spec = program(BASE, max_redeem_share_bps=5000)
        the_receipt = receipt(line(1, 10_000), line(2, 30_000))  # 20,000 may be paid with points

        fits = Program(spec).calculate(the_receipt, NOW_MS, 5_000, 4_000, captured_points=16_000)
        over = Program(spec).calculate(the_receipt, NOW_MS, 5_000, 4_001, captured_points=16_000)

        assert fits.redeemable_points == 20_000  # within the 5,000 available plus the 16,000 captured
        assert (fits.redeemed_points, fits.captured_points) == (4_000, 16_000)
        assert [l.redeemed_points for l in fits.lines] == [1_000, 3_000]
        assert [l.captured_points for l in fits.lines] == [4_000, 12_000]  # by what is left: 9,000 : 27,000
        assert [l.due_minor for l in fits.lines] == [5_000, 15_000]
        assert fits.due_minor == 40_000 - 20_000
        assert (over.redeemed_points, over.captured_points, over.due_minor) == (0, 0, 40_000)
        assert reference.core_as_dict(fits) == reference.calculate(spec, the_receipt, NOW_MS, 5_000, 4_000,
                                                                   captured_points=16_000)

    def test_redeemable_bounded_by_available(self):
        result = Program(program(BASE)).calculate(receipt(line(1, 10_000)), NOW_MS, 1_234, 0)
        assert result.redeemable_points == 1_234


# ---------------------------------------------------------------------------------------------
# Random cases for any program

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
WEEK_START_MS = reference.to_ms(dt.datetime(2026, 5, 31, 21, 0, tzinfo=dt.timezone.utc))  # Mon 00:00 Moscow


def counted(campaign) -> bool:
    """Whether the campaign has limits the ledger counts (per account per day/week/month, budget, uses)."""
    limits = campaign.limits
    return any(getattr(limits, field) for field in type(limits).__struct_fields__ if not field.startswith("receipt_"))


class Pools:
    """What a program's campaigns name, plus values none of them does."""

    def __init__(self, spec):
        purchase = [c for c in spec.campaigns if c.trigger == "purchase"]

        def named(field, *extra):
            values = {v for c in purchase for v in getattr(c.when, field)}
            return sorted(values | set(extra))

        prefixes = named("category_prefixes") + named("exclude_category_prefixes")
        self.categories = sorted(
            set(CATEGORIES) | set(prefixes) | {p + "/x" for p in prefixes} | {p[:-1] for p in prefixes if len(p) > 1}
            | {"", "misc"}
        )
        self.skus = named("skus", "SKU-1", "SKU-2", "OTHER")
        self.brands = named("brands", "", "other-brand")
        self.stores = named("stores", "store-1", "other-store")
        self.regions = named("regions", "", "other-region")
        self.channels = named("channels", "", "other-channel")
        self.terminals = named("terminals", "t", "other-terminal")
        self.payment_methods = named("payment_methods", "", "other-method")
        bins = named("card_bins")
        self.card_bins = sorted(set(bins) | {b + "12" for b in bins} | {b[:-1] for b in bins} | {"", "9999"})
        self.card_categories = named("card_categories", "", "other-category")
        self.tiers = sorted(set(named("tiers", "", "other-tier")) | {t.id for t in spec.tiers.levels})
        self.segments = named("segments", "other-segment")
        self.tags = named("tags", "other-tag")
        self.clubs = named("clubs", "other-club")
        whens = [c.when for c in purchase]
        self.account_ages = sorted({w.account_age_days_min for w in whens} | {0, 1, 400})
        self.nth_max = max([w.nth_purchase for w in whens] + [3])
        self.spends = sorted({max(0, w.lifetime_spend_min_minor + d) for w in whens for d in (-1, 0)} | {0, 10**7})
        self.window_spends = sorted({max(0, w.window_spend_min_minor + d) for w in whens for d in (-1, 0)}
                                    | {0, 10**7})
        # each bundle's SKUs, so a receipt can hold complete sets
        self.bundles = sorted({tuple(c.when.skus) for c in purchase if c.effect.kind == "bundle"})
        self.line_amounts = sorted({w.line_amount_min_minor + d for w in whens for d in (-1, 0) if w.line_amount_min_minor}
                                   | {0, 1, 999, 10_000})
        self.line_qtys = sorted({w.line_qty_min_milli + d for w in whens for d in (-1, 0) if w.line_qty_min_milli}
                                | {1, 250, 1000, 1500, 2000, 3000, 12_345})
        self.totals = sorted({w.receipt_total_min_minor for w in whens if w.receipt_total_min_minor})
        edges = [c.valid_from for c in purchase if c.valid_from] + [c.valid_to for c in purchase if c.valid_to]
        self.validity_edges = sorted({reference.to_ms(e) + d for e in edges for d in (-1, 0)})
        self.promo_ids = sorted(c.id for c in purchase if c.promo_code)
        # the ledger passes what is left only for campaigns with limits it counts (not a receipt cap
        # alone); an allowance for any other campaign is pinned by a row in test_rules_table.py
        self.counted_ids = sorted(c.id for c in purchase if counted(c))
        self.all_ids = sorted(c.id for c in purchase)


class Choices:
    """Several independent choices drawn as one integer: hypothesis spends about as much per draw as
    the test itself takes, so a line, a customer or a place is one draw. Each choice is a list (one
    of its items) or a range of ints. The integer is mixed (splitmix64) before it is split, so every
    choice is uniform although hypothesis favours small integers; 0 picks every first item, which is
    where shrinking goes."""

    MASK = 2**64 - 1

    def __init__(self, *choices):
        self.choices = [c if isinstance(c, range) else list(c) for c in choices]
        size = 1
        for choice in self.choices:
            size *= len(choice)
        assert size < 2**60, "too many combinations for one 64-bit draw"
        self.strategy = st.integers(0, self.MASK).map(self.decode)

    def decode(self, value):
        if value:
            value = (value + 0x9E3779B97F4A7C15) & self.MASK
            value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
            value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & self.MASK
            value ^= value >> 31
        picked = []
        for choice in self.choices:
            value, index = divmod(value, len(choice))
            picked.append(choice[index])
        return tuple(picked)


def cases(spec, card_blocked: bool = False):
    """A strategy of (receipt, shopper, now_ms, available, redeem, allowances, unlocked, captured) for
    `spec`, the shopper presenting a blocked card when `card_blocked`."""
    pools = Pools(spec)
    tz = spec.settings.timezone
    line = Choices(
        pools.skus, pools.categories, pools.brands, pools.line_qtys,
        range(0, 200_001),  # the price
        [None] * 5 + [0, 1, 99, 100, 10_000],  # ... or one of these prices
        [None] * 5 + pools.line_amounts,  # the amount: qty * price // 1000, or one of these
        [0, 0, 0, 0, 0, 0, 1, 2],  # 1: no_earn, 2: no_discount
    ).strategy
    lines = st.lists(line, min_size=1, max_size=8)
    # a bundle's SKUs, one line each, mostly of whole units (the rest as any line), added to the lines
    bundle_lines = st.just(())
    if pools.bundles:
        bundle_line = st.tuples(line, st.sampled_from([1000, 1000, 1000, 2000, 3000, 1500, 999, 2500]))
        bundle = st.tuples(st.sampled_from(pools.bundles), st.lists(bundle_line, min_size=3, max_size=3))
        bundle_lines = st.one_of(st.just(()), bundle, bundle)
    # a receipt total on a threshold, or one below
    total = Choices([None] * 4 + [t - d for t in pools.totals for d in (0, 1)]).strategy
    now = st.one_of(
        st.integers(WEEK_START_MS, WEEK_START_MS + 7 * DAY_MS - 1),
        st.integers(WEEK_START_MS, WEEK_START_MS + 7 * DAY_MS - 1),
        Choices(range(7 * 24), [0, 1]).strategy.map(lambda t: WEEK_START_MS + t[0] * HOUR_MS - t[1]),
        *([st.sampled_from(pools.validity_edges),  # on a campaign's validity edge, or up to 3 days from it
           Choices(pools.validity_edges, range(-3 * DAY_MS, 3 * DAY_MS)).strategy.map(sum)]
          if pools.validity_edges else []),
    )
    customer = Choices(
        pools.card_categories, pools.tiers,
        *([()] + [(v,) for v in pool] + [(v, w) for v in pool for w in pool if v < w]
          for pool in (pools.segments, pools.tags, pools.clubs)),
        pools.account_ages + list(range(0, 1001, 7)),  # age in days
        [0, 0, 1, -1, DAY_MS // 2],  # ... and ms
        ["", "02-29", "02-28", "03-01", "01-01", "12-31"] + list(range(-40, 41)) * 3,  # int: days from the local date
        range(0, pools.nth_max + 1),
        pools.spends,
        pools.window_spends,
    ).strategy
    where = Choices(pools.stores, pools.terminals, pools.regions, pools.channels, pools.payment_methods,
                    pools.card_bins).strategy
    unlocked = st.just(frozenset())
    if pools.promo_ids:
        unlocked = st.frozensets(st.sampled_from(pools.promo_ids + pools.all_ids[:1]), max_size=4)
    allowances = st.none()
    if pools.counted_ids:
        allowances = st.one_of(st.none(), st.dictionaries(
            st.sampled_from(pools.counted_ids),
            st.one_of(st.sampled_from([0, 1, 7, 100, 1_000]), st.integers(0, 100_000)),
            max_size=min(len(pools.counted_ids), 6),
        ))
    points = Choices(list(range(0, 10**7, 997)) + [10**12], [0] * 10 + list(range(1, 10**6, 13))).strategy
    captured_points = st.one_of(st.just(0), st.just(0), st.integers(1, 10**6))  # of holds an Accrue captures

    @st.composite
    def case(draw):
        made = []
        drawn = draw(lines)
        bundle = draw(bundle_lines)
        if bundle:
            skus, extra = bundle
            drawn = drawn + [(sku, *rest[1:3], qty, *rest[4:]) for sku, (rest, qty) in zip(skus, extra)]
        for i, (sku, category, brand, qty, price, special, amount, flag) in enumerate(drawn):
            price = price if special is None else special
            made.append(Line(i + 1, sku, category, qty, price, qty * price // 1000 if amount is None else amount,
                             no_earn=flag == 1, no_discount=flag == 2, brand=brand))
        (target,) = draw(total)
        if target is not None:
            last = made[-1]
            made[-1] = Line(last.line_no, last.sku, last.category, last.qty_milli, last.price_minor,
                            max(0, target - sum(l.amount_minor for l in made[:-1])), last.no_earn, last.no_discount,
                            last.brand)
        now_ms = draw(now)
        card_category, tier, segments, tags, clubs, age_days, age_ms, born, purchases, spend, window = draw(customer)
        if isinstance(born, int):
            born = (reference.local_time(now_ms, tz).date() + dt.timedelta(days=born)).strftime("%m-%d")
        shopper = Shopper(card_category, tier, segments, tags, clubs, now_ms - age_days * DAY_MS + age_ms, born,
                          purchases, spend, window_spend_minor=window, card_blocked=card_blocked)
        store, terminal, region, channel, payment_method, card_bin = draw(where)
        receipt = Receipt(store, terminal, "r", tuple(made), region=region, channel=channel,
                          payment_method=payment_method, card_bin=card_bin)
        available, redeem = draw(points)
        captured = draw(captured_points)
        return receipt, shopper, now_ms, available, redeem, draw(allowances), draw(unlocked), captured

    return case()


def check_agreement(spec, core, case):
    receipt, shopper, now_ms, available, redeem, allowances, unlocked, captured = case
    got = reference.core_as_dict(
        core.calculate(receipt, now_ms, available, redeem, shopper=shopper, allowances=allowances,
                       unlocked=set(unlocked), captured_points=captured)
    )
    expected = reference.calculate(spec, receipt, now_ms, available, redeem, shopper=shopper, allowances=allowances,
                                   unlocked=unlocked, captured_points=captured)
    assert got == expected


SAMPLE_SPEC = load_program([Path(__file__).resolve().parents[2] / "config" / "rules"])
SAMPLE_PROGRAM = Program(SAMPLE_SPEC)
SPEC_50 = generated_program(50)
PROGRAM_50 = Program(SPEC_50)
RANDOM = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SAMPLE_PROGRAM_EXAMPLES = int(os.environ.get("REFERENCE_TEST_EXAMPLES", "4000"))  # 10,000 took 35 s of the default run


@pytest.mark.slow
@settings(max_examples=SAMPLE_PROGRAM_EXAMPLES, **RANDOM)
@given(case=cases(SAMPLE_SPEC))
def test_core_agrees_with_reference_on_the_sample_program(case):
    check_agreement(SAMPLE_SPEC, SAMPLE_PROGRAM, case)


@settings(max_examples=3000, **RANDOM)
@given(case=cases(SPEC_50))
def test_core_agrees_with_reference_on_random_receipts(case):
    check_agreement(SPEC_50, PROGRAM_50, case)


SPEC_50_BLOCKED = msgspec.structs.replace(
    SPEC_50, settings=msgspec.structs.replace(SPEC_50.settings, blocked_card_earns=False))
PROGRAM_50_BLOCKED = Program(SPEC_50_BLOCKED)


@settings(max_examples=300, **RANDOM)
@given(case=cases(SPEC_50_BLOCKED, card_blocked=True))
def test_core_agrees_with_reference_for_a_blocked_card_that_earns_nothing(case):
    """blocked_card_earns = false: no campaign gives points or a tier; discounts still apply."""
    check_agreement(SPEC_50_BLOCKED, PROGRAM_50_BLOCKED, case)
    calculation = PROGRAM_50_BLOCKED.calculate(case[0], case[2], case[3], case[4], shopper=case[1],
                                               allowances=case[5], unlocked=set(case[6]))
    assert calculation.earned_points == 0
    assert calculation.no_points_reason == "card_blocked"


POINT_KINDS = {"earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier", "grant_tier"}


@settings(max_examples=300, **RANDOM)
@given(case=cases(SPEC_50_BLOCKED, card_blocked=True))
def test_a_blocked_card_gets_the_active_cards_selection_without_its_points(case):
    """blocked_card_earns = false: the blocked card's earn campaigns still stop later ones (exclusive)
    and win their best-of groups, so its discounts and campaigns are the active card's less those
    that give points or a tier."""
    receipt, blocked_shopper, now_ms, available, redeem, allowances, unlocked, _ = case
    active_shopper = msgspec.structs.replace(blocked_shopper, card_blocked=False)

    def calculation(shopper):
        return PROGRAM_50_BLOCKED.calculate(receipt, now_ms, available, redeem, shopper=shopper,
                                            allowances=allowances, unlocked=set(unlocked))

    blocked, active = calculation(blocked_shopper), calculation(active_shopper)
    assert [line.discount_minor for line in blocked.lines] == [line.discount_minor for line in active.lines]
    assert [c.campaign_id for c in blocked.campaigns] == [
        c.campaign_id for c in active.campaigns if c.effect not in POINT_KINDS]
    assert blocked.earned_points == 0


def test_generated_program_has_every_kind():
    """The 50-campaign program the random receipts run against uses the whole language."""
    kinds = {c.effect.kind for c in SPEC_50.campaigns}
    assert kinds >= set(reference.DISCOUNT_KINDS) | set(reference.NO_AMOUNT_KINDS) | {
        "earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier"}
    assert any(c.when.window_spend_min_minor for c in SPEC_50.campaigns)
    assert len({c.effect.percent_bps for c in SPEC_50.campaigns if c.effect.kind == "redeem_share"}) >= 2
    assert {c.stacking for c in SPEC_50.campaigns} == {"stack", "exclusive", "best"}
    assert any(c.promo_code for c in SPEC_50.campaigns)
    assert any(c.limits.receipt_max_points or c.limits.receipt_max_minor for c in SPEC_50.campaigns)
    assert any(counted(c) for c in SPEC_50.campaigns)
    assert {c.effect.per for c in SPEC_50.campaigns if c.effect.kind == "earn_fixed"} == {"receipt", "line", "unit"}
    assert any(c.trigger == "event" for c in SPEC_50.campaigns)
    assert any(c.valid_from for c in SPEC_50.campaigns) and any(c.valid_to for c in SPEC_50.campaigns)
    assert SPEC_50.settings.timezone != "UTC"
