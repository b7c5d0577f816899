"""The Cython core and the pure-Python reference evaluator agree, on fixed rows and on random receipts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_ext import Program
from core_ext.model import Line, Receipt
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

    def test_redeemable_bounded_by_available(self):
        result = Program(program(BASE)).calculate(receipt(line(1, 10_000)), NOW_MS, 1_234, 0)
        assert result.redeemable_points == 1_234


lines_strategy = st.lists(
    st.builds(
        lambda sku, category, qty, price, no_earn, no_discount: (sku, category, qty, price, no_earn, no_discount),
        st.sampled_from([f"SKU-{i}" for i in range(1, 25)]),
        st.sampled_from(CATEGORIES + ("", "misc")),
        st.sampled_from([1, 250, 1000, 1500, 3000, 12_345]),
        st.integers(0, 10**7),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


def build_receipt(raw, store):
    return Receipt(
        store,
        "t",
        "r",
        tuple(
            Line(i + 1, sku, category, qty, price, qty * price // 1000, no_earn, no_discount)
            for i, (sku, category, qty, price, no_earn, no_discount) in enumerate(raw)
        ),
    )


SPEC_50 = generated_program(50)
PROGRAM_50 = Program(SPEC_50)


@settings(max_examples=3000, deadline=None, print_blob=True)
@given(
    raw=lines_strategy,
    store=st.sampled_from(["store-1", "store-2", "store-3"]),
    available=st.integers(0, 10**8),
    redeem=st.integers(0, 10**6),
)
def test_core_agrees_with_reference_on_random_receipts(raw, store, available, redeem):
    subject = build_receipt(raw, store)
    core = reference.core_as_dict(PROGRAM_50.calculate(subject, NOW_MS, available, redeem))
    assert core == reference.calculate(SPEC_50, subject, NOW_MS, available, redeem)
