"""Programs for the core tests and benchmarks, built as TOML text like an operator writes them."""

from __future__ import annotations

import random

from core_ext import parse_program

CATEGORIES = ("grocery/dairy/milk", "grocery/bakery", "pharmacy/vitamins", "flowers/roses", "home/kitchen", "tobacco")


def program(campaigns_toml: str, **settings) -> object:
    head = {"name": "test", "rounding": "floor", "points_lifetime_days": 365, "max_redeem_share_bps": 5000}
    head.update(settings)
    lines = ["[program]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in head.items()]
    return parse_program({"test.toml": "\n".join(lines) + "\n" + campaigns_toml})


def generated_program(count: int, seed: int = 7):
    """`count` campaigns of every kind the core knows, with random filters, priorities and stacking."""
    rng = random.Random(seed)
    parts = []
    for index in range(count):
        kind = rng.choice(("earn_percent", "earn_percent", "earn_fixed", "discount_percent"))
        effect = {
            "earn_percent": f'{{ kind = "earn_percent", percent_bps = {rng.randint(1, 3000)} }}',
            "earn_fixed": f'{{ kind = "earn_fixed", points = {rng.randint(1, 50_000)} }}',
            "discount_percent": f'{{ kind = "discount_percent", percent_bps = {rng.randint(1, 5000)} }}',
        }[kind]
        when = []
        if rng.random() < 0.5:
            when.append(f'category_prefixes = ["{rng.choice(CATEGORIES).split("/")[0]}"]')
        if rng.random() < 0.3:
            when.append(f'skus = ["SKU-{rng.randint(1, 20)}", "SKU-{rng.randint(1, 20)}"]')
        if rng.random() < 0.3:
            when.append(f"receipt_total_min_minor = {rng.randint(0, 200_000)}")
        if rng.random() < 0.1:
            when.append('stores = ["store-1", "store-2"]')
        stacking = "exclusive" if rng.random() < 0.05 else "stack"
        parts.append(
            f'[[campaigns]]\nid = "c{index}"\npriority = {rng.randint(0, 5)}\nstacking = "{stacking}"\n'
            f"when = {{ {', '.join(when)} }}\neffect = {effect}\n"
        )
    return program("\n".join(parts), rounding=rng.choice(("floor", "half_up", "ceil")))
