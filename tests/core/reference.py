"""A pure-Python reference evaluator of a loyalty program, written from the rules' description,
not from the Cython code. The tests hold the core against it; the benchmarks time the core beside it.

Semantics (README "Rules"): campaigns run by priority, highest first, file order breaking ties; a
campaign applies when it is inside its validity window, the store is allowed, the receipt total
(before discounts) reaches its threshold, and at least one line takes it; an applying `exclusive`
campaign stops every campaign below it. Discounts are computed first (each on what is left of the
line), then earn on the discounted amount. Every rate uses the program's rounding; fixed points are
split over the lines in proportion to their discounted amounts (largest remainder, ties to the
earlier line; equal parts when all amounts are zero).
"""

from __future__ import annotations

BPS_PER_UNIT = 10_000


def apply_rate(amount: int, bps: int, rounding: str) -> int:
    quotient, remainder = divmod(amount * bps, BPS_PER_UNIT)
    if rounding == "half_up" and 2 * remainder >= BPS_PER_UNIT:
        return quotient + 1
    if rounding == "ceil" and remainder > 0:
        return quotient + 1
    return quotient


def prorate(total: int, weights: list[int]) -> list[int]:
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    parts = [divmod(total * w, weight_sum) for w in weights]
    shares = [q for q, _ in parts]
    order = sorted(range(len(weights)), key=lambda i: (-parts[i][1], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _ms(value) -> int:
    return 0 if value is None else int(value.timestamp() * 1000)


def _line_matches(campaign, line) -> bool:
    when = campaign.when
    if not when.category_prefixes and not when.skus:
        return True
    if any(line.category.startswith(prefix) for prefix in when.category_prefixes):
        return True
    return line.sku in when.skus


def _takes(campaign, line) -> bool:
    if campaign.effect.kind == "discount_percent":
        if line.no_discount:
            return False
    elif line.no_earn:
        return False
    return _line_matches(campaign, line)


def calculate(spec, receipt, now_ms: int, available_points: int, redeem_points: int) -> dict:
    settings = spec.settings
    campaigns = sorted(spec.campaigns, key=lambda c: -c.priority)
    lines = receipt.lines
    total = sum(line.amount_minor for line in lines)
    chosen = []
    for campaign in campaigns:
        start, end = _ms(campaign.valid_from), _ms(campaign.valid_to)
        if (start and now_ms < start) or (end and now_ms >= end):
            continue
        if total < campaign.when.receipt_total_min_minor:
            continue
        if campaign.when.stores and receipt.store_id not in campaign.when.stores:
            continue
        if not any(_takes(campaign, line) for line in lines):
            continue
        chosen.append(campaign)
        if campaign.stacking == "exclusive":
            break
    discount = [0] * len(lines)
    earned = [0] * len(lines)
    applied = []
    for campaign in (c for c in chosen if c.effect.kind == "discount_percent"):
        given = 0
        for i, line in enumerate(lines):
            if _takes(campaign, line):
                net = line.amount_minor - discount[i]
                cut = min(net, apply_rate(net, campaign.effect.percent_bps, settings.rounding))
                discount[i] += cut
                given += cut
        applied.append((campaign.id, "discount_percent", 0, given))
    for campaign in (c for c in chosen if c.effect.kind != "discount_percent"):
        takes = [_takes(campaign, line) for line in lines]
        if campaign.effect.kind == "earn_fixed":
            weights = [line.amount_minor - discount[i] if takes[i] else 0 for i, line in enumerate(lines)]
            shares = prorate(campaign.effect.points, weights)
            gains = [shares[i] if takes[i] else 0 for i in range(len(lines))]
        else:
            gains = [
                apply_rate(line.amount_minor - discount[i], campaign.effect.percent_bps, settings.rounding)
                if takes[i]
                else 0
                for i, line in enumerate(lines)
            ]
        for i, gain in enumerate(gains):
            earned[i] += gain
        applied.append((campaign.id, campaign.effect.kind, sum(gains), 0))
    payable = total - sum(discount)
    redeemable = max(0, min(payable * settings.max_redeem_share_bps // BPS_PER_UNIT, available_points))
    redeemed = [0] * len(lines)
    if 0 < redeem_points <= redeemable:
        redeemed = prorate(redeem_points, [line.amount_minor - discount[i] for i, line in enumerate(lines)])
    return {
        "lines": [
            (line.line_no, line.amount_minor, discount[i], earned[i], redeemed[i]) for i, line in enumerate(lines)
        ],
        "total_minor": total,
        "discount_minor": sum(discount),
        "payable_minor": payable,
        "earned_points": sum(earned),
        "redeemable_points": redeemable,
        "redeemed_points": sum(redeemed),
        "campaigns": applied,
    }


def core_as_dict(calculation) -> dict:
    """The core's Calculation in the reference's shape."""
    return {
        "lines": [
            (l.line_no, l.amount_minor, l.discount_minor, l.earned_points, l.redeemed_points)
            for l in calculation.lines
        ],
        "total_minor": calculation.total_minor,
        "discount_minor": calculation.discount_minor,
        "payable_minor": calculation.payable_minor,
        "earned_points": calculation.earned_points,
        "redeemable_points": calculation.redeemable_points,
        "redeemed_points": calculation.redeemed_points,
        "campaigns": [(c.campaign_id, c.effect, c.points, c.discount_minor) for c in calculation.campaigns],
    }
