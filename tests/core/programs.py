"""Programs for the core tests and benchmarks, built as TOML text like an operator writes them."""

from __future__ import annotations

import datetime as dt
import random

from kassa.core_ext import parse_program

CATEGORIES = ("grocery/dairy/milk", "grocery/bakery", "pharmacy/vitamins", "flowers/roses", "home/kitchen", "tobacco")

# The values generated programs draw their conditions from (the random receipts draw from them too).
SKUS = tuple(f"SKU-{i}" for i in range(1, 21))
BRANDS = ("acme", "bolt", "cora")
STORES = ("store-1", "store-2", "store-3")
REGIONS = ("north", "south")
CHANNELS = ("pos", "online")
TERMINALS = ("t1", "t2")
PAYMENT_METHODS = ("card", "cash", "sbp")
CARD_BINS = ("4", "4276", "5100", "2200")
CARD_CATEGORIES = ("gold-card", "employee")
TIERS = ("silver", "gold")
SEGMENTS = ("students", "pensioners")
TAGS = ("vip", "new")
CLUBS = ("kids", "pets")
GENERATED_NOW = dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.timezone.utc)  # the week generated validity falls in


def program(campaigns_toml: str, **settings) -> object:
    head = {"name": "test", "rounding": "floor", "points_lifetime_days": 365, "max_redeem_share_bps": 5000}
    head.update(settings)
    lines = ["[program]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in head.items()]
    return parse_program({"test.toml": "\n".join(lines) + "\n" + campaigns_toml})


def _strings(values) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _some(rng: random.Random, pool, most: int = 2) -> list:
    return rng.sample(pool, rng.randint(1, min(most, len(pool))))


def _toml_time(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(rng: random.Random, discount: bool) -> list[str]:
    """A few random conditions: each kind with a small chance, so most campaigns still apply."""
    when = []
    chance = rng.choice((0.03, 0.06, 0.1))

    def maybe(text_of):
        if rng.random() < chance:
            when.append(text_of())

    # the customer
    maybe(lambda: f"card_categories = {_strings(_some(rng, CARD_CATEGORIES))}")
    maybe(lambda: f"tiers = {_strings(_some(rng, ('',) + TIERS))}")
    maybe(lambda: f"segments = {_strings(_some(rng, SEGMENTS))}")
    maybe(lambda: f"tags = {_strings(_some(rng, TAGS))}")
    maybe(lambda: f"clubs = {_strings(_some(rng, CLUBS))}")
    maybe(lambda: f"account_age_days_min = {rng.choice((1, 30, 365))}")
    maybe(lambda: f"birthday_within_days = {rng.choice((0, 3, 7, 30))}")
    maybe(lambda: f"nth_purchase = {rng.randint(1, 4)}")
    maybe(lambda: f"lifetime_spend_min_minor = {rng.choice((1, 100_000, 5_000_000))}")
    maybe(lambda: f"window_spend_min_minor = {rng.choice((1, 50_000, 2_000_000))}")
    # the receipt
    maybe(lambda: f"stores = {_strings(_some(rng, STORES))}")
    maybe(lambda: f"regions = {_strings(_some(rng, REGIONS, 1))}")
    maybe(lambda: f"channels = {_strings(_some(rng, CHANNELS, 1))}")
    maybe(lambda: f"terminals = {_strings(_some(rng, TERMINALS, 1))}")
    maybe(lambda: f"payment_methods = {_strings(_some(rng, PAYMENT_METHODS))}")
    maybe(lambda: f"card_bins = {_strings(_some(rng, CARD_BINS))}")
    maybe(lambda: f"weekdays = [{', '.join(map(str, sorted(rng.sample(range(1, 8), rng.randint(1, 5)))))}]")
    if rng.random() < chance:
        hour_from, hour_to = rng.sample(range(0, 25), 2)
        hour_from = min(hour_from, 23)
        if hour_to == 0 or hour_to == hour_from:
            hour_to = hour_from + 1
        when.append(f"hour_from = {hour_from}, hour_to = {hour_to}")  # hour_from > hour_to wraps
    maybe(lambda: f"receipt_total_min_minor = {rng.randint(0, 200_000)}")
    maybe(lambda: f"item_qty_min_milli = {rng.choice((1000, 2500, 5000))}")
    # the lines
    if rng.random() < 0.4:
        when.append(f"category_prefixes = {_strings(_some(rng, sorted({c.split('/')[0] for c in CATEGORIES})))}")
    if rng.random() < 0.2:
        when.append(f"skus = {_strings(_some(rng, SKUS, 3))}")
    maybe(lambda: f"brands = {_strings(_some(rng, BRANDS))}")
    maybe(lambda: f"exclude_category_prefixes = {_strings(_some(rng, ('grocery/dairy', 'tobacco', 'home')))}")
    maybe(lambda: f"line_qty_min_milli = {rng.choice((500, 1000, 2000))}")
    maybe(lambda: f"line_amount_min_minor = {rng.choice((100, 5_000, 50_000))}")
    return when


# a bundle names its SKUs alone: no other line condition
BUNDLE_LINE_CONDITIONS = ("category_prefixes", "skus", "brands", "exclude_category_prefixes", "line_qty_min_milli",
                          "line_amount_min_minor")
BUNDLE_SKUS = SKUS[:4]  # few, so random receipts often hold complete sets


def _bundle_conditions(rng: random.Random, when: list[str]) -> list[str]:
    kept = [c for c in when if c.split(" = ")[0] not in BUNDLE_LINE_CONDITIONS]
    return kept + [f"skus = {_strings(rng.sample(BUNDLE_SKUS, rng.randint(2, 3)))}"]


def _effect(rng: random.Random, kind: str) -> str:
    if kind == "earn_percent":
        return f'{{ kind = "earn_percent", percent_bps = {rng.randint(1, 3000)} }}'
    if kind == "earn_fixed":
        per = rng.choice(("receipt", "line", "unit"))
        return f'{{ kind = "earn_fixed", points = {rng.randint(1, 50_000 if per == "receipt" else 500)}, per = "{per}" }}'
    if kind == "earn_per_step":
        return f'{{ kind = "earn_per_step", points = {rng.randint(1, 5_000)}, step_minor = {rng.choice((100, 10_000, 99_999))} }}'
    if kind == "earn_multiplier":
        return f'{{ kind = "earn_multiplier", multiplier_bps = {rng.choice((15_000, 20_000, 30_000, rng.randint(10_001, 50_000)))} }}'
    if kind == "discount_percent":
        return f'{{ kind = "discount_percent", percent_bps = {rng.randint(1, 5000)} }}'
    if kind == "discount_fixed":
        return f'{{ kind = "discount_fixed", amount_minor = {rng.randint(1, 100_000)} }}'
    if kind == "fixed_price":
        return f'{{ kind = "fixed_price", price_minor = {rng.randint(0, 50_000)} }}'
    if kind == "buy_x_get_y":
        return f'{{ kind = "buy_x_get_y", buy = {rng.randint(1, 3)}, get = {rng.randint(1, 2)} }}'
    if kind == "bundle":
        return f'{{ kind = "bundle", price_minor = {rng.choice((0, rng.randint(1, 300_000)))} }}'
    if kind == "redeem_share":
        return f'{{ kind = "redeem_share", percent_bps = {rng.choice((0, 10_000, rng.randint(1, 9_999), rng.randint(1, 9_999)))} }}'
    if kind == "grant_tier":
        return f'{{ kind = "grant_tier", tier = "{rng.choice(TIERS)}", tier_days = {rng.choice((1, 30, 365))} }}'
    raise ValueError(kind)


def _limits(rng: random.Random, discount: bool) -> str:
    if rng.random() >= 0.25:
        return ""
    unit = "minor" if discount else "points"
    fields = [f"receipt_max_{unit}", f"account_day_max_{unit}", f"account_week_max_{unit}",
              f"account_month_max_{unit}", f"budget_{unit}", "uses_per_account"]
    chosen = _some(rng, fields, 3)
    values = [f"{field} = {rng.randint(1, 5) if field == 'uses_per_account' else rng.randint(1, 20_000)}"
              for field in chosen]
    return f"limits = {{ {', '.join(values)} }}\n"


def generated_program(count: int, seed: int = 131):
    """`count` campaigns of every effect kind (bundles over a few SKUs; redeem_share and grant_tier
    without limits and never best), with random conditions of every kind, limits,
    priorities, stacking (stack, exclusive, best in a few groups), promo codes and validity windows,
    and a few event campaigns (which a purchase ignores)."""
    rng = random.Random(seed)
    parts = [
        "[tiers]\nwindow_days = 365\n"
        + "".join(f'[[tiers.levels]]\nid = "{tier}"\nthreshold = {1_000_000 * (n + 1)}\n' for n, tier in enumerate(TIERS))
    ]
    kinds = ("earn_percent", "earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier",
             "discount_percent", "discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle",
             "redeem_share", "grant_tier")
    for index in range(count):
        if rng.random() < 0.03:
            parts.append(
                f'[[campaigns]]\nid = "c{index}"\ntrigger = "event"\nwhen = {{ event_types = ["signup"] }}\n'
                f'effect = {{ kind = "earn_fixed", points = {rng.randint(1, 1000)} }}\n'
            )
            continue
        kind = rng.choice(kinds)
        discount = kind in ("discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle")
        no_amount = kind in ("redeem_share", "grant_tier")  # never best, no limits
        roll = rng.random()
        stacking = "exclusive" if roll < 0.04 else "best" if roll < 0.25 and not no_amount else "stack"
        extra = ""
        if stacking == "best":
            extra += f'best_group = "{rng.choice(("", "g1", "g2"))}"\n'
        if rng.random() < 0.1:
            extra += "promo_code = true\n"
        if rng.random() < 0.15:
            start = GENERATED_NOW + dt.timedelta(hours=rng.randint(-48, 24 * 7))
            if rng.random() < 0.5:
                extra += f"valid_from = {_toml_time(start)}\n"
            if rng.random() < 0.7:
                extra += f"valid_to = {_toml_time(start + dt.timedelta(hours=rng.randint(1, 96)))}\n"
        when = _conditions(rng, discount)
        if kind == "bundle":
            when = _bundle_conditions(rng, when)
        parts.append(
            f'[[campaigns]]\nid = "c{index}"\npriority = {rng.randint(0, 5)}\nstacking = "{stacking}"\n{extra}'
            f"when = {{ {', '.join(when)} }}\neffect = {_effect(rng, kind)}\n"
            + ("" if no_amount else _limits(rng, discount))
        )
    return program("\n".join(parts), rounding=rng.choice(("floor", "half_up", "ceil")), timezone="Europe/Moscow")
