"""A pure-Python reference evaluator of a loyalty program, written from the rules' description
(docs/rules.md: conditions, effects, order, stacking and limits), not from the
Cython code. The tests hold the core against it; the benchmarks time the core beside it.

Deliberately plain: one function per rule, no caching, no clever data structures.

How a purchase is evaluated (event campaigns are ignored here):

1. Every purchase campaign is walked by priority, highest first, file order breaking ties. A
   campaign *applies* when now is in [valid_from, valid_to), every customer and receipt condition
   holds (local time in the program's time zone), it takes at least one line, the quantity over the
   lines it takes reaches `item_qty_min_milli`, its promo code was accepted (`promo_code = true`:
   its id is in `unlocked`) and what the ledger's counters leave it (`allowances[id]`, when present)
   is above 0. Every applying campaign is chosen; an applying `exclusive` one stops the walk.
2. Of the chosen `best` campaigns of one `best_group` (the empty group is a group too) only the one
   worth most stays: each is valued alone on the receipt as it came (net = amount, no discounts; a
   multiplier is worth 0), after its caps; ties go to the earlier one in walk order.
3. Three passes, each in walk order: discounts (each on the net the earlier ones left), earns except
   multipliers (on the net after every discount), multipliers (of the points each line earned in the
   earn pass).
4. A campaign's per-line amounts are capped by the smallest of its per-receipt cap and its allowance;
   a capped total is spread over the lines by the uncapped amounts (largest remainder).
5. Redeemable: `max_redeem_share_bps` of the payable amount (floor), at most the available points;
   the first chosen `redeem_share` campaign in walk order replaces the program's share with its
   `percent_bps`. Points captured from holds pay beside the available ones: redeemable is at most
   available + captured, and redeemed + captured together must fit it (0 < redeemed + captured <=
   redeemable), else neither is applied. The redemption is spread over the lines by net, then the
   captured points by what each line has left to pay. Money due: net - redeemed - captured, per line
   and in total (a point pays one minor unit).
6. `redeem_share` and `grant_tier` give no amount (points 0, discount 0), have no limits, are never
   `best`, and are listed after the multipliers, in walk order, as (id, kind, 0, 0).

Which lines a campaign *takes* is decided on the original line: discount effects (`bundle` too)
never take a `no_discount` line, earn effects (multipliers too) never a `no_earn` line, the no-amount
effects take either; then the line filters.

A `bundle` (the SKUs of `when.skus`, at least two) applies only with at least one complete set:
n = the fewest whole units (qty_milli // 1000, summed over its taken lines) of any one SKU; its
discount is min(n * max(0, sum over the SKUs of the lowest price_minor among its taken lines -
price_minor), the taken lines' summed net), spread over the taken lines by net.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

BPS_PER_UNIT = 10_000
MS_PER_DAY = 86_400_000
DISCOUNT_KINDS = frozenset(("discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle"))
NO_AMOUNT_KINDS = frozenset(("redeem_share", "grant_tier"))  # they change the receipt or the customer
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Arithmetic


def apply_rate(amount: int, bps: int, rounding: str) -> int:
    quotient, remainder = divmod(amount * bps, BPS_PER_UNIT)
    if rounding == "half_up" and 2 * remainder >= BPS_PER_UNIT:
        return quotient + 1
    if rounding == "ceil" and remainder > 0:
        return quotient + 1
    return quotient


def prorate(total: int, weights: list[int]) -> list[int]:
    """`total` spread by `weights`: largest remainder, ties to the lower index; equal parts when
    every weight is 0."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    parts = [divmod(total * w, weight_sum) for w in weights]
    shares = [q for q, _ in parts]
    order = sorted(range(len(weights)), key=lambda i: (-parts[i][1], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def to_ms(value: dt.datetime) -> int:
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def local_time(now_ms: int, timezone: str) -> dt.datetime:
    return (EPOCH + dt.timedelta(milliseconds=now_ms)).astimezone(zoneinfo.ZoneInfo(timezone))


# ---------------------------------------------------------------------------------------------
# Conditions


def is_discount(campaign) -> bool:
    return campaign.effect.kind in DISCOUNT_KINDS


def is_no_amount(campaign) -> bool:
    return campaign.effect.kind in NO_AMOUNT_KINDS


def takes(campaign, line) -> bool:
    """Whether the campaign takes this (original) line."""
    when = campaign.when
    if is_discount(campaign):
        if line.no_discount:
            return False
    elif is_no_amount(campaign):
        pass  # whatever the line's flags
    elif line.no_earn:
        return False
    if when.category_prefixes or when.skus:
        by_category = any(line.category.startswith(prefix) for prefix in when.category_prefixes)
        if not by_category and line.sku not in when.skus:
            return False
    if when.brands and line.brand not in when.brands:
        return False
    if any(line.category.startswith(prefix) for prefix in when.exclude_category_prefixes):
        return False
    if line.qty_milli < when.line_qty_min_milli:
        return False
    if line.amount_minor < when.line_amount_min_minor:
        return False
    return True


def birthday_near(birthday: str, today: dt.date, days: int) -> bool:
    """`today` is at most `days` from the birthday ("MM-DD") in the previous, this or next year."""
    if not birthday:
        return False
    month, day = int(birthday[:2]), int(birthday[3:5])
    for year in (today.year - 1, today.year, today.year + 1):
        this_day = day
        if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
            this_day = 28
        if abs((dt.date(year, month, this_day) - today).days) <= days:
            return True
    return False


def hour_in_window(hour: int, hour_from: int, hour_to: int) -> bool:
    if hour_from < hour_to:
        return hour_from <= hour < hour_to
    return hour >= hour_from or hour < hour_to  # wraps past midnight


def customer_and_receipt_hold(campaign, receipt, shopper, now_ms: int, local: dt.datetime) -> bool:
    when = campaign.when
    # the customer
    if when.card_categories and shopper.card_category not in when.card_categories:
        return False
    if when.tiers and shopper.tier not in when.tiers:
        return False
    for wanted, has in ((when.segments, shopper.segments), (when.tags, shopper.tags), (when.clubs, shopper.clubs)):
        if wanted and not set(wanted) & set(has):
            return False
    if when.account_age_days_min and now_ms - shopper.created_at_ms < when.account_age_days_min * MS_PER_DAY:
        return False
    if when.birthday_within_days is not None and not birthday_near(
        shopper.birthday, local.date(), when.birthday_within_days
    ):
        return False
    if when.nth_purchase and shopper.purchases + 1 != when.nth_purchase:
        return False
    if shopper.lifetime_spend_minor < when.lifetime_spend_min_minor:
        return False
    if shopper.window_spend_minor < when.window_spend_min_minor:
        return False
    # the receipt
    for wanted, value in (
        (when.stores, receipt.store_id),
        (when.regions, receipt.region),
        (when.channels, receipt.channel),
        (when.terminals, receipt.terminal_id),
        (when.payment_methods, receipt.payment_method),
    ):
        if wanted and value not in wanted:
            return False
    if when.card_bins and not any(receipt.card_bin.startswith(prefix) for prefix in when.card_bins):
        return False
    if when.weekdays and local.isoweekday() not in when.weekdays:
        return False
    if not hour_in_window(local.hour, when.hour_from, when.hour_to):
        return False
    if sum(line.amount_minor for line in receipt.lines) < when.receipt_total_min_minor:
        return False
    return True


def applies(campaign, receipt, shopper, now_ms, local, allowances, unlocked) -> bool:
    if campaign.valid_from is not None and now_ms < to_ms(campaign.valid_from):
        return False
    if campaign.valid_to is not None and now_ms >= to_ms(campaign.valid_to):
        return False
    if not customer_and_receipt_hold(campaign, receipt, shopper, now_ms, local):
        return False
    taken = [line for line in receipt.lines if takes(campaign, line)]
    if not taken:
        return False
    if sum(line.qty_milli for line in taken) < campaign.when.item_qty_min_milli:
        return False
    if campaign.promo_code and campaign.id not in unlocked:
        return False
    if campaign.id in allowances and allowances[campaign.id] <= 0:
        return False
    if campaign.effect.kind == "bundle" and bundle_sets(campaign, receipt.lines) < 1:
        return False  # no complete bundle
    return True


def bundle_sets(campaign, lines) -> int:
    """How many complete sets of the bundle's SKUs the lines it takes hold."""
    units = {sku: 0 for sku in campaign.when.skus}
    for line in lines:
        if line.sku in units and takes(campaign, line):
            units[line.sku] += line.qty_milli // 1000
    return min(units.values())


def bundle_regular_price(campaign, lines) -> int:
    """The sum over the bundle's SKUs of the lowest unit price among the lines it takes (every SKU
    has a taken line when the bundle applies)."""
    lowest: dict[str, int] = {}
    for line in lines:
        if takes(campaign, line):
            lowest[line.sku] = min(lowest.get(line.sku, line.price_minor), line.price_minor)
    return sum(lowest.get(sku, 0) for sku in set(campaign.when.skus))


# ---------------------------------------------------------------------------------------------
# Effects: per-line amounts, before the caps


def _counted_limits(campaign) -> bool:
    limits = campaign.limits
    return any(getattr(limits, field) for field in limits.__struct_fields__ if not field.startswith("receipt_max"))


def gains(campaign, lines, net: list[int], earned: list[int], rounding: str) -> list[int]:
    """What the campaign gives on each line: points (earn) or minor units (discount).
    `net`: each line's amount less the discounts already on it; `earned`: each line's points from
    the earn pass (for multipliers)."""
    effect = campaign.effect
    kind = effect.kind
    taken = [takes(campaign, line) for line in lines]
    count = len(lines)
    taken_net = [net[i] if taken[i] else 0 for i in range(count)]
    if kind == "earn_percent":
        return [apply_rate(net[i], effect.percent_bps, rounding) if taken[i] else 0 for i in range(count)]
    if kind == "earn_fixed":
        if effect.per == "line":
            return [effect.points if taken[i] else 0 for i in range(count)]
        if effect.per == "unit":
            return [effect.points * lines[i].qty_milli // 1000 if taken[i] else 0 for i in range(count)]
        # spread by net over the lines taken; equal parts among them when every net is 0
        weights = taken_net if sum(taken_net) else [1 if taken[i] else 0 for i in range(count)]
        shares = prorate(effect.points, weights)
        return [shares[i] if taken[i] else 0 for i in range(count)]
    if kind == "earn_per_step":
        total = sum(taken_net) // effect.step_minor * effect.points
        shares = prorate(total, taken_net)
        return [shares[i] if taken[i] else 0 for i in range(count)]
    if kind == "earn_multiplier":
        return [
            apply_rate(earned[i], effect.multiplier_bps - BPS_PER_UNIT, rounding) if taken[i] else 0
            for i in range(count)
        ]
    if kind == "discount_percent":
        return [min(net[i], apply_rate(net[i], effect.percent_bps, rounding)) if taken[i] else 0 for i in range(count)]
    if kind == "discount_fixed":
        amount = min(effect.amount_minor, sum(taken_net))
        shares = prorate(amount, taken_net)
        return [shares[i] if taken[i] else 0 for i in range(count)]
    if kind == "fixed_price":
        return [
            max(0, net[i] - effect.price_minor * lines[i].qty_milli // 1000) if taken[i] else 0 for i in range(count)
        ]
    if kind == "buy_x_get_y":
        units = [lines[i].qty_milli // 1000 if taken[i] else 0 for i in range(count)]
        free = sum(units) // (effect.buy + effect.get) * effect.get
        free_units = [0] * count
        for i in sorted((i for i in range(count) if taken[i]), key=lambda i: (lines[i].price_minor, i)):
            free_units[i] = min(units[i], free)
            free -= free_units[i]
        return [min(net[i], free_units[i] * lines[i].price_minor) if taken[i] else 0 for i in range(count)]
    if kind == "bundle":
        per_set = max(0, bundle_regular_price(campaign, lines) - effect.price_minor)
        amount = min(bundle_sets(campaign, lines) * per_set, sum(taken_net))
        shares = prorate(amount, taken_net)
        return [shares[i] if taken[i] else 0 for i in range(count)]
    if kind in NO_AMOUNT_KINDS:
        return [0] * count
    raise ValueError(f"unknown effect kind {kind!r}")


def has_limits(campaign) -> bool:
    if is_no_amount(campaign):
        return False  # validation refuses limits on them
    return any(getattr(campaign.limits, field) for field in type(campaign.limits).__struct_fields__)


def capped(campaign, amounts: list[int], allowances: dict) -> list[int]:
    caps = [cap for cap in (campaign.limits.receipt_max_points, campaign.limits.receipt_max_minor) if cap > 0]
    if campaign.id in allowances:
        caps.append(allowances[campaign.id])
    if caps and sum(amounts) > min(caps):
        return prorate(min(caps), amounts)
    return amounts


def standalone_value(campaign, lines, rounding: str, allowances: dict) -> int:
    """The campaign alone on the receipt as it came: its discount plus its points, after its caps."""
    net = [line.amount_minor for line in lines]
    return sum(capped(campaign, gains(campaign, lines, net, [0] * len(lines), rounding), allowances))


# ---------------------------------------------------------------------------------------------
# The receipt


def select(spec, receipt, shopper, now_ms, allowances, unlocked) -> list:
    """The campaigns that apply, in walk order, after exclusivity and best-of-group."""
    local = local_time(now_ms, spec.settings.timezone)
    walk = sorted((c for c in spec.campaigns if c.trigger == "purchase"), key=lambda c: -c.priority)
    chosen = []
    for campaign in walk:
        if not applies(campaign, receipt, shopper, now_ms, local, allowances, unlocked):
            continue
        chosen.append(campaign)
        if campaign.stacking == "exclusive":
            break
    best_of_group: dict[str, tuple[int, object]] = {}
    for campaign in chosen:
        if campaign.stacking != "best":
            continue
        value = standalone_value(campaign, receipt.lines, spec.settings.rounding, allowances)
        held = best_of_group.get(campaign.best_group)
        if held is None or value > held[0]:
            best_of_group[campaign.best_group] = (value, campaign)
    winners = {id(campaign) for _, campaign in best_of_group.values()}
    selected = [c for c in chosen if c.stacking != "best" or id(c) in winners]
    # A blocked card under blocked_card_earns = false: the selection above is the active card's;
    # of it, no campaign gives points or a tier.
    if shopper.card_blocked and not spec.settings.blocked_card_earns:
        return [c for c in selected if not gives_points(c)]
    return selected


def gives_points(campaign) -> bool:
    return campaign.effect.kind.startswith("earn_") or campaign.effect.kind == "grant_tier"


def calculate(
    spec,
    receipt,
    now_ms: int,
    available_points: int,
    redeem_points: int,
    shopper=None,
    allowances=None,
    unlocked=frozenset(),
    captured_points: int = 0,
) -> dict:
    from kassa.core_ext.model import Shopper

    shopper = Shopper() if shopper is None else shopper
    # Only campaigns whose limits the ledger counts (day/week/month caps, budget, uses) have an allowance.
    allowances = {
        campaign_id: left for campaign_id, left in (allowances or {}).items()
        if any(_counted_limits(campaign) for campaign in spec.campaigns if campaign.id == campaign_id)
    }
    unlocked = frozenset() if unlocked is None else unlocked
    rounding = spec.settings.rounding
    lines = receipt.lines
    count = len(lines)
    chosen = select(spec, receipt, shopper, now_ms, allowances, unlocked)

    discount = [0] * count
    earned = [0] * count  # the earn pass
    multiplied = [0] * count  # the multiplier pass
    applied = []
    limited = {}

    def give(campaign, amounts):
        if has_limits(campaign):
            limited[campaign.id] = tuple(amounts)
        if is_discount(campaign):
            applied.append((campaign.id, campaign.effect.kind, 0, sum(amounts)))
        else:
            applied.append((campaign.id, campaign.effect.kind, sum(amounts), 0))

    for campaign in (c for c in chosen if is_discount(c)):
        net = [lines[i].amount_minor - discount[i] for i in range(count)]
        amounts = capped(campaign, gains(campaign, lines, net, earned, rounding), allowances)
        for i in range(count):
            discount[i] += amounts[i]
        give(campaign, amounts)
    net = [lines[i].amount_minor - discount[i] for i in range(count)]
    for campaign in (c for c in chosen if not is_discount(c) and not is_no_amount(c)
                     and c.effect.kind != "earn_multiplier"):
        amounts = capped(campaign, gains(campaign, lines, net, earned, rounding), allowances)
        for i in range(count):
            earned[i] += amounts[i]
        give(campaign, amounts)
    for campaign in (c for c in chosen if c.effect.kind == "earn_multiplier"):
        amounts = capped(campaign, gains(campaign, lines, net, earned, rounding), allowances)
        for i in range(count):
            multiplied[i] += amounts[i]
        give(campaign, amounts)
    no_amount = [c for c in chosen if is_no_amount(c)]
    for campaign in no_amount:
        applied.append((campaign.id, campaign.effect.kind, 0, 0))

    points = [earned[i] + multiplied[i] for i in range(count)]
    total = sum(line.amount_minor for line in lines)
    payable = total - sum(discount)
    share = spec.settings.max_redeem_share_bps
    shares = [c.effect.percent_bps for c in no_amount if c.effect.kind == "redeem_share"]
    if shares:
        share = shares[0]  # the first in walk order decides
    redeemable = max(0, min(payable * share // BPS_PER_UNIT, available_points + captured_points))
    redeemed = captured = [0] * count
    if 0 < redeem_points + captured_points <= redeemable:
        redeemed = prorate(redeem_points, net)
        captured = prorate(captured_points, [net[i] - redeemed[i] for i in range(count)])
    due = [net[i] - redeemed[i] - captured[i] for i in range(count)]
    return {
        "lines": [(line.line_no, line.amount_minor, discount[i], points[i], redeemed[i], captured[i], due[i])
                  for i, line in enumerate(lines)],
        "total_minor": total,
        "discount_minor": sum(discount),
        "payable_minor": payable,
        "earned_points": sum(points),
        "redeemable_points": redeemable,
        "redeemed_points": sum(redeemed),
        "captured_points": sum(captured),
        "due_minor": payable - sum(redeemed) - sum(captured),
        "campaigns": applied,
        "limited": sorted(limited.items()),
    }


def core_as_dict(calculation) -> dict:
    """The core's Calculation in the reference's shape (`limited` sorted by campaign id: its order is
    not specified)."""
    return {
        "lines": [
            (l.line_no, l.amount_minor, l.discount_minor, l.earned_points, l.redeemed_points, l.captured_points,
             l.due_minor)
            for l in calculation.lines
        ],
        "total_minor": calculation.total_minor,
        "discount_minor": calculation.discount_minor,
        "payable_minor": calculation.payable_minor,
        "earned_points": calculation.earned_points,
        "redeemable_points": calculation.redeemable_points,
        "redeemed_points": calculation.redeemed_points,
        "captured_points": calculation.captured_points,
        "due_minor": calculation.due_minor,
        "campaigns": [(c.campaign_id, c.effect, c.points, c.discount_minor) for c in calculation.campaigns],
        "limited": sorted((campaign_id, tuple(amounts)) for campaign_id, amounts in calculation.limited),
    }
