"""The loyalty program as written by an operator: TOML files decoded into typed structs.

A program is a directory (or a list) of TOML files. Exactly one `[program]` table holds the settings;
every file may add `[[campaigns]]`. Unknown keys are refused. Every problem names the file, the
campaign and the field, so `kassa rules check` output can be acted on without reading code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Literal

import msgspec

from kassa.core_ext.limits import BPS_PER_UNIT, CAMPAIGNS_PER_PROGRAM_MAX

EARN_BPS_MAX = 100 * BPS_PER_UNIT  # an earn rate of at most 10,000 %
CAMPAIGN_ID_BYTES_MAX = 64  # bytes of UTF-8
POINTS_LIFETIME_DAYS_MAX = 36_500  # days
ACTIVATION_DELAY_DAYS_MAX = 365  # days
CAMPAIGN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
RULES_SOURCE_BYTES_MAX = 1024 * 1024  # bytes of TOML in one rule file or one ReloadRules source
RULES_NESTING_DEPTH_MAX = 32  # arrays and inline tables inside one another (a table header counts its brackets)
RULES_KEY_PARTS_MAX = 32  # parts of dotted keys on one line (a.b.c is 3): the parser's cost grows as their square


class ProgramSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    timezone: str = "UTC"
    rounding: Literal["floor", "half_up", "ceil"] = "floor"
    points_lifetime_days: int = 365  # 0: points never expire
    activation_delay_days: int = 0  # earned points are pending this long
    max_redeem_share_bps: int = BPS_PER_UNIT  # of the payable amount, in basis points
    clawback: Literal["negative", "clamp"] = "negative"
    blocked_card_earns: bool = True  # a purchase with a blocked card still earns
    inactivity_burn_days: int = 0  # burn the whole balance after this long without activity; 0: never


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A level reached when the metric over the rolling window meets the threshold."""

    id: str
    metric: Literal["spend_minor", "points_earned"] = "spend_minor"
    threshold: int  # in the metric's unit: minor units of money spent, or points earned
    name: str = ""


class TierSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    window_days: int = 365  # the rolling window the metric is summed over (program time zone days)
    levels: list[Tier] = []  # ascending thresholds per metric; the highest level reached wins


class Conditions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every condition set must hold; an empty list or a zero/None value means "any"."""

    # the customer
    card_categories: list[str] = []  # the presented card's category is one of these
    tiers: list[str] = []  # the customer's tier (before this purchase) is one of these; "" = no tier
    segments: list[str] = []  # the account has at least one of these segments
    tags: list[str] = []  # ... tags
    clubs: list[str] = []  # ... clubs
    account_age_days_min: int = 0  # the account is at least this many days old
    birthday_within_days: int | None = None  # the local date is within this many days of the birthday
    nth_purchase: int = 0  # this purchase is the account's n-th (1 = the first)
    lifetime_spend_min_minor: int = 0  # the account's lifetime spend before this purchase
    window_spend_min_minor: int = 0  # its spend over the tier window (`[tiers] window_days`)
    # the receipt (or event)
    stores: list[str] = []
    regions: list[str] = []
    channels: list[str] = []
    terminals: list[str] = []
    payment_methods: list[str] = []
    card_bins: list[str] = []  # the bank card number paid with starts with one of these
    weekdays: list[int] = []  # local weekday, 1 = Monday .. 7 = Sunday
    hour_from: int = 0  # local time of day: from this hour (inclusive) ...
    hour_to: int = 24  # ... to this hour (exclusive); hour_from > hour_to wraps past midnight
    receipt_total_min_minor: int = 0  # the receipt's total (line amounts before discounts)
    item_qty_min_milli: int = 0  # the quantity over the lines the campaign takes
    # a line (the lines a campaign takes; it applies when it takes at least one)
    category_prefixes: list[str] = []  # a line matches if its category starts with one of these
    skus: list[str] = []  # ... or its sku is one of these (with prefixes: either matches)
    brands: list[str] = []  # and its brand is one of these
    exclude_category_prefixes: list[str] = []  # and its category starts with none of these
    line_qty_min_milli: int = 0  # and its quantity reaches this
    line_amount_min_minor: int = 0  # and its amount reaches this
    # a non-purchase event (event campaigns only)
    event_types: list[str] = []  # the event's type is one of these
    event_attributes: dict[str, str] = {}  # every one of these attributes has this value


EFFECT_KINDS = (
    "earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier",
    "discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle",
    "redeem_share", "grant_tier",
)
DISCOUNT_EFFECTS = frozenset(("discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle"))
NO_AMOUNT_EFFECTS = frozenset(("redeem_share", "grant_tier"))  # they change the receipt or the customer
TIER_DAYS_MAX = 36_500  # days
EVENT_EFFECTS = frozenset(("earn_percent", "earn_fixed", "earn_per_step"))


class Effect(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kind: Literal[
        "earn_percent", "earn_fixed", "earn_per_step", "earn_multiplier",
        "discount_percent", "discount_fixed", "fixed_price", "buy_x_get_y", "bundle",
        "redeem_share", "grant_tier",
    ]
    percent_bps: int = 0  # earn_percent, discount_percent, redeem_share
    points: int = 0  # earn_fixed (per receipt, line or unit), earn_per_step (per step)
    per: Literal["receipt", "line", "unit"] = "receipt"  # earn_fixed
    step_minor: int = 0  # earn_per_step: points for every full step of the eligible amount
    multiplier_bps: int = 0  # earn_multiplier: 20000 doubles the points the lines earned
    amount_minor: int = 0  # discount_fixed: an amount off the receipt, prorated over the lines
    price_minor: int = 0  # fixed_price: the unit price the matching lines are sold at; bundle: the set's price
    buy: int = 0  # buy_x_get_y: of every buy + get whole units, the `get` cheapest are free
    get: int = 0
    tier: str = ""  # grant_tier: the tier the customer holds at least ...
    tier_days: int = 0  # ... for this many days from the purchase
    related_points: int = 0  # event campaigns: points for the event's related customer (referrer)
    points_lifetime_days: int | None = None  # the points' own lifetime (a lot of their own)
    activation_delay_days: int | None = None  # the points' own activation delay


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Caps on what a campaign gives, in points (earn effects) or minor units (discounts).
    0 means no cap. A cap that would be exceeded reduces the effect to what is left."""

    receipt_max_points: int = 0
    receipt_max_minor: int = 0
    account_day_max_points: int = 0  # per account per local day
    account_day_max_minor: int = 0
    account_week_max_points: int = 0  # per account per local ISO week (Monday first)
    account_week_max_minor: int = 0
    account_month_max_points: int = 0  # per account per local calendar month
    account_month_max_minor: int = 0
    budget_points: int = 0  # for the whole campaign, over its life
    budget_minor: int = 0
    uses_per_account: int = 0  # receipts or events it may apply to per account


# The limits the ledger keeps counters for; a per-receipt cap needs none.
LEDGER_KEPT_LIMITS = tuple(field for field in Limits.__struct_fields__ if not field.startswith("receipt_max"))


def kept_by_ledger(limits: Limits) -> bool:
    """Whether the ledger counts something for these limits (caps over time, budget, uses)."""
    return any(getattr(limits, field) for field in LEDGER_KEPT_LIMITS)


class Campaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    priority: int = 0  # higher runs first
    stacking: Literal["stack", "exclusive", "best"] = "stack"
    best_group: str = ""  # `best` campaigns of one group compete; only the best for the customer applies
    trigger: Literal["purchase", "event"] = "purchase"
    promo_code: bool = False  # applies only with an accepted promo code bound to it
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None
    when: Conditions = Conditions()
    effect: Effect
    limits: Limits = Limits()


class ProgramFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    program: ProgramSettings | None = None
    tiers: TierSettings | None = None
    campaigns: list[Campaign] = []


class ProgramSpec(msgspec.Struct, frozen=True):
    settings: ProgramSettings
    campaigns: list[Campaign]
    tiers: TierSettings
    version: str  # content hash of the sources
    sources: dict[str, str]  # file name -> TOML text


class RulesError(Exception):
    """The program is refused; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def rule_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    return files


def load_program(paths: list[Path]) -> ProgramSpec:
    """Read, decode and validate the program in `paths` (files or directories of *.toml)."""
    files = rule_files(paths)
    if not files:
        raise RulesError([f"{', '.join(map(str, paths))}: no rule files (*.toml) found"])
    sources = {}
    for file in files:
        try:
            if file.stat().st_size > RULES_SOURCE_BYTES_MAX:
                raise RulesError([f"{file}: {file.stat().st_size} bytes, more than the limit of {RULES_SOURCE_BYTES_MAX}"])
            sources[str(file)] = file.read_text(encoding="utf-8")
        except OSError as error:
            raise RulesError([f"{file}: cannot read: {error.strerror}"]) from None
        except UnicodeDecodeError as error:
            raise RulesError([f"{file}: not UTF-8 text (byte {error.start})"]) from None
    return parse_program(sources)


def parse_program(sources: dict[str, str]) -> ProgramSpec:
    """Decode and validate TOML sources given as {file name: text}."""
    problems: list[str] = []
    settings: list[tuple[str, ProgramSettings]] = []
    tiers: list[tuple[str, TierSettings]] = []
    campaigns: list[tuple[str, Campaign]] = []
    tiers_unread = False  # a [tiers] table that did not decode: which tiers exist is not known
    for name, text in sources.items():
        decoded, tiers_table_unread = _decode_file(name, text, problems)
        tiers_unread |= tiers_table_unread
        if decoded is None:
            continue
        if decoded.program is not None:
            settings.append((name, decoded.program))
        if decoded.tiers is not None:
            tiers.append((name, decoded.tiers))
        campaigns.extend((name, campaign) for campaign in decoded.campaigns)
    if len(settings) != 1 and not problems:
        where = ", ".join(name for name, _ in settings) or "no file"
        problems.append(f"exactly one [program] table is required, found {len(settings)} ({where})")
    if settings:
        problems.extend(_check_settings(*settings[0]))
    if len(tiers) > 1:
        problems.append(f"at most one [tiers] table, found {len(tiers)} ({', '.join(n for n, _ in tiers)})")
    tier_settings = tiers[0][1] if tiers else TierSettings()
    if tiers:
        problems.extend(_check_tiers(*tiers[0]))
    tier_ids = None if tiers_unread else {tier.id for tier in tier_settings.levels}
    seen: dict[str, str] = {}
    for name, campaign in campaigns:
        problems.extend(_check_campaign(name, campaign, tier_ids))
        if campaign.id in seen:
            problems.append(f"{name}: campaign '{campaign.id}': field 'id': duplicate, first defined in {seen[campaign.id]}")
        seen.setdefault(campaign.id, name)
    if len(campaigns) > CAMPAIGNS_PER_PROGRAM_MAX:
        problems.append(f"{len(campaigns)} campaigns, more than the limit of {CAMPAIGNS_PER_PROGRAM_MAX}")
    if problems:
        raise RulesError(problems)
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(Path(name).name.encode() + b"\0" + sources[name].encode() + b"\0")
    return ProgramSpec(
        settings[0][1], [c for _, c in campaigns], tier_settings, "v-" + digest.hexdigest()[:12], dict(sources)
    )


def _decode_file(name: str, text: str, problems: list[str]) -> tuple[ProgramFile | None, bool]:
    """Decode one file, adding a line to `problems` for every field that is wrong (msgspec stops at
    the first): the program's tables and each campaign decode on their own, so the campaigns that do
    decode still get every other check. Returns the file (its well-typed parts) and whether it has a
    [tiers] table that did not decode."""
    raw = _read_toml(name, text, problems)
    if raw is None:
        return None, False
    unknown = {key: value for key, value in raw.items() if key not in ProgramFile.__struct_fields__}
    found = _field_problems(unknown, ProgramFile, "")
    program = _decoded(raw["program"], ProgramSettings, "program", found) if "program" in raw else None
    tiers = _decoded(raw["tiers"], TierSettings, "tiers", found) if "tiers" in raw else None
    entries = raw.get("campaigns", [])
    if not isinstance(entries, list):
        found.append(f"Expected `array`, got `{_toml_type(entries)}` - at `$.campaigns`")
        entries = []
    campaigns = [_decoded(entry, Campaign, f"campaigns[{index}]", found) for index, entry in enumerate(entries)]
    problems.extend(f"{name}: {_locate(raw, message)}" for message in found)
    decoded = ProgramFile(program=program, tiers=tiers, campaigns=[c for c in campaigns if c is not None])
    return decoded, "tiers" in raw and tiers is None


def _decoded(raw, struct_type: type, path: str, found: list[str]):
    """`raw` as `struct_type`, or None when a field is wrong; adds its problems to `found`."""
    problems = _field_problems(raw, struct_type, path)
    if problems:
        found.extend(problems)
        return None
    try:
        return msgspec.convert(raw, type=struct_type)
    except msgspec.ValidationError as error:  # a rule the field-by-field pass does not know: still reported
        detail, _, at = str(error).partition(" - at `$")
        found.append(f"{detail} - at `$.{path}{at.rstrip('`')}`")
        return None


def _read_toml(name: str, text: str, problems: list[str]) -> dict | None:
    """Parse `text`, after checking it against the limits that keep the parser's time and stack bounded."""
    refusal = source_refusal(text)
    if refusal:
        problems.append(f"{name}: {refusal}")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{name}: not valid TOML: {error}")
    except RecursionError:  # the depth check above lets none through; should it, still the caller's fault
        problems.append(f"{name}: nested too deeply to read")
    return None


# Strings and comments, whose brackets and dots are text: TOML's four kinds of string, then a comment.
# Possessive repeats: an unclosed string costs one scan to the end, never a backtracking search.
_TOML_TEXT = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*+"""'
    r"|'''(?:[^']|'(?!''))*+'''"
    r'|"(?:[^"\\\n]|\\.)*+"'
    r"|'[^'\n]*+'"
    r"|#[^\n]*+"
)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NESTING_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def source_refusal(text: str) -> str:
    """Why a rules source is refused before it is parsed ("" when it is not): more bytes than
    RULES_SOURCE_BYTES_MAX, arrays and inline tables nested deeper than RULES_NESTING_DEPTH_MAX, or
    more than RULES_KEY_PARTS_MAX dotted key parts on one line."""
    size_bytes = len(text.encode("utf-8", "surrogatepass"))
    if size_bytes > RULES_SOURCE_BYTES_MAX:
        return f"{size_bytes} bytes, more than the limit of {RULES_SOURCE_BYTES_MAX}"
    code = _TOML_TEXT.sub(_keep_line_breaks, text)
    brackets = _NOT_BRACKETS.sub("", code)
    if max(itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0) > RULES_NESTING_DEPTH_MAX:
        return f"arrays and inline tables nested more than {RULES_NESTING_DEPTH_MAX} deep"
    for number, line in enumerate(code.splitlines(), 1):
        if line.count(".") >= RULES_KEY_PARTS_MAX:
            return f"line {number}: more than {RULES_KEY_PARTS_MAX} dotted key parts"
    return ""


def _keep_line_breaks(text: re.Match) -> str:
    """A string or comment, gone but for its line breaks: lines keep their numbers."""
    return "\n" * text.group().count("\n")


def _field_problems(raw, struct_type: type, path: str) -> list[str]:
    """Every field of `raw` that does not decode as `struct_type`, in msgspec's words and with its
    path (`... - at `$.campaigns[2].effect.kind``), as `_locate` reads them."""
    where = f" - at `$.{path}`" if path else ""
    if not isinstance(raw, dict):
        return [f"Expected `object`, got `{_toml_type(raw)}`{where}"]
    fields = {field.encode_name: field for field in msgspec.structs.fields(struct_type)}
    problems = [f"Object contains unknown field `{key}`{where}" for key in raw if key not in fields]
    problems += [f"Object missing required field `{field.encode_name}`{where}"
                 for field in fields.values() if field.required and field.encode_name not in raw]
    for key, field in fields.items():
        if key not in raw:
            continue
        inner, item_type = f"{path}.{key}" if path else key, _struct_of(field.type)
        if item_type is not None and isinstance(raw[key], list) and field.type != item_type:
            for index, item in enumerate(raw[key]):
                problems += _field_problems(item, item_type, f"{inner}[{index}]")
        elif item_type is not None and field.type != list[item_type]:
            problems += _field_problems(raw[key], item_type, inner)
        else:
            try:
                msgspec.convert(raw[key], type=field.type)
            except msgspec.ValidationError as error:
                detail, _, at = str(error).partition(" - at `$")
                problems.append(f"{detail} - at `$.{inner}{at.rstrip('`')}`")
    return problems


def _struct_of(field_type) -> type | None:
    """The struct a field holds (`Conditions`, `ProgramSettings | None`) or a list of (`list[Tier]`)."""
    for candidate in (field_type, *getattr(field_type, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return candidate
    return None


def _toml_type(value) -> str:
    return {dict: "object", list: "array", str: "str", int: "int", float: "float", bool: "bool"}.get(
        type(value), type(value).__name__
    )


def _locate(raw: dict, message: str) -> str:
    """Turn msgspec's `... - at `$.campaigns[2].effect`` into campaign id and field."""
    match = re.search(r" - at `\$\.campaigns\[(\d+)\]\.?(.*)`$", message)
    if match is None:
        path = re.search(r" - at `\$\.?(.*)`$", message)
        if path is None:
            return message
        return f"field '{path.group(1)}': {message[: path.start()]}"
    index, field = int(match.group(1)), match.group(2)
    campaign_id = "?"
    entries = raw.get("campaigns", [])
    if index < len(entries) and isinstance(entries[index], dict):
        campaign_id = str(entries[index].get("id", f"#{index + 1}"))
    detail = message[: match.start()]
    unknown = re.match(r"Object contains unknown field `(.+)`", detail)
    if unknown:
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
        detail = "unknown field"
    return f"campaign '{campaign_id}': field '{field or '(campaign)'}': {detail}"


def _check_settings(name: str, settings: ProgramSettings) -> list[str]:
    problems = []
    where = f"{name}: [program]"
    try:
        zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(f"{where}: field 'timezone': unknown IANA time zone '{settings.timezone}'")
    if not 0 <= settings.points_lifetime_days <= POINTS_LIFETIME_DAYS_MAX:
        problems.append(f"{where}: field 'points_lifetime_days': must be 0..{POINTS_LIFETIME_DAYS_MAX}")
    if not 0 <= settings.activation_delay_days <= ACTIVATION_DELAY_DAYS_MAX:
        problems.append(f"{where}: field 'activation_delay_days': must be 0..{ACTIVATION_DELAY_DAYS_MAX}")
    if not 0 <= settings.inactivity_burn_days <= POINTS_LIFETIME_DAYS_MAX:
        problems.append(f"{where}: field 'inactivity_burn_days': must be 0..{POINTS_LIFETIME_DAYS_MAX}")
    if not 0 <= settings.max_redeem_share_bps <= BPS_PER_UNIT:
        problems.append(f"{where}: field 'max_redeem_share_bps': must be 0..{BPS_PER_UNIT}")
    return problems


def _check_tiers(name: str, tiers: TierSettings) -> list[str]:
    where = f"{name}: [tiers]"
    problems = []
    if not 1 <= tiers.window_days <= POINTS_LIFETIME_DAYS_MAX:
        problems.append(f"{where}: field 'window_days': must be 1..{POINTS_LIFETIME_DAYS_MAX}")
    seen = set()
    for index, tier in enumerate(tiers.levels):
        field = f"levels[{index}]"
        if not tier.id or not CAMPAIGN_ID_PATTERN.match(tier.id):
            problems.append(f"{where}: field '{field}.id': must be letters, digits and '_.:-'")
        if tier.id in seen:
            problems.append(f"{where}: field '{field}.id': duplicate tier '{tier.id}'")
        seen.add(tier.id)
        if tier.threshold <= 0:
            problems.append(f"{where}: field '{field}.threshold': must be > 0")
    return problems


def _positive(where, problems, field, value, needed_by):
    if value <= 0:
        problems.append(f"{where}: field '{field}': must be > 0 for {needed_by}")


def _check_campaign(name: str, campaign: Campaign, tier_ids: set[str] | None = frozenset()) -> list[str]:
    where = f"{name}: campaign '{campaign.id}'"
    problems: list[str] = []
    if not CAMPAIGN_ID_PATTERN.match(campaign.id) or len(campaign.id.encode()) > CAMPAIGN_ID_BYTES_MAX:
        problems.append(f"{where}: field 'id': must be 1..{CAMPAIGN_ID_BYTES_MAX} bytes of letters, digits, '_.:-'")
    if campaign.valid_from and campaign.valid_from.tzinfo is None:
        problems.append(f"{where}: field 'valid_from': needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
    if campaign.valid_to and campaign.valid_to.tzinfo is None:
        problems.append(f"{where}: field 'valid_to': needs a UTC offset, e.g. 2026-12-31T23:59:59Z")
    if (
        campaign.valid_from
        and campaign.valid_to
        and campaign.valid_from.tzinfo
        and campaign.valid_to.tzinfo
        and campaign.valid_from >= campaign.valid_to
    ):
        problems.append(f"{where}: field 'valid_to': must be after valid_from")
    if campaign.best_group and campaign.stacking != "best":
        problems.append(f"{where}: field 'best_group': only for stacking = \"best\"")
    problems.extend(_check_effect(where, campaign, tier_ids))
    problems.extend(_check_conditions(where, campaign, tier_ids))
    problems.extend(_check_limits(where, campaign))
    return problems


def _check_effect(where: str, campaign: Campaign, tier_ids: set[str] | None) -> list[str]:
    effect, kind = campaign.effect, campaign.effect.kind
    problems: list[str] = []
    if kind == "earn_percent" and not 0 < effect.percent_bps <= EARN_BPS_MAX:
        problems.append(f"{where}: field 'effect.percent_bps': must be 1..{EARN_BPS_MAX} for earn_percent")
    if kind == "discount_percent" and not 0 < effect.percent_bps <= BPS_PER_UNIT:
        problems.append(f"{where}: field 'effect.percent_bps': must be 1..{BPS_PER_UNIT} for discount_percent")
    if kind in ("earn_fixed", "earn_per_step"):
        _positive(where, problems, "effect.points", effect.points, kind)
    if kind == "earn_per_step":
        _positive(where, problems, "effect.step_minor", effect.step_minor, kind)
    if kind == "earn_multiplier" and not BPS_PER_UNIT < effect.multiplier_bps <= EARN_BPS_MAX:
        problems.append(f"{where}: field 'effect.multiplier_bps': must be {BPS_PER_UNIT + 1}..{EARN_BPS_MAX} "
                        f"(20000 doubles the points)")
    if kind == "discount_fixed":
        _positive(where, problems, "effect.amount_minor", effect.amount_minor, kind)
    if kind in ("fixed_price", "bundle") and effect.price_minor < 0:
        problems.append(f"{where}: field 'effect.price_minor': must be >= 0 for {kind}")
    if kind == "bundle":
        if len(set(campaign.when.skus)) < 2:
            problems.append(f"{where}: field 'when.skus': a bundle names at least two SKUs")
        for field in ("category_prefixes", "brands", "exclude_category_prefixes", "line_qty_min_milli",
                      "line_amount_min_minor"):
            if getattr(campaign.when, field):
                problems.append(f"{where}: field 'when.{field}': a bundle is defined by its SKUs alone")
    if kind == "redeem_share" and not 0 <= effect.percent_bps <= BPS_PER_UNIT:
        problems.append(f"{where}: field 'effect.percent_bps': must be 0..{BPS_PER_UNIT} for redeem_share")
    if kind == "grant_tier":
        if tier_ids is not None and effect.tier not in tier_ids:
            problems.append(f"{where}: field 'effect.tier': unknown tier '{effect.tier}' (not in [tiers] levels)")
        if not 1 <= effect.tier_days <= TIER_DAYS_MAX:
            problems.append(f"{where}: field 'effect.tier_days': must be 1..{TIER_DAYS_MAX} for grant_tier")
    elif effect.tier or effect.tier_days:
        problems.append(f"{where}: field 'effect.{'tier' if effect.tier else 'tier_days'}': only for grant_tier")
    if kind in NO_AMOUNT_EFFECTS and campaign.limits != Limits():
        problems.append(f"{where}: field 'limits': {kind} gives no amount to limit")
    if kind in NO_AMOUNT_EFFECTS and campaign.stacking == "best":
        problems.append(f"{where}: field 'stacking': {kind} gives no amount to compare in a best-of")
    if kind == "buy_x_get_y":
        _positive(where, problems, "effect.buy", effect.buy, kind)
        _positive(where, problems, "effect.get", effect.get, kind)
    if effect.per != "receipt" and kind != "earn_fixed":
        problems.append(f"{where}: field 'effect.per': only for earn_fixed")
    event_only = {"related_points": effect.related_points}
    lifetime, delay = effect.points_lifetime_days, effect.activation_delay_days
    if lifetime is not None and not 0 <= lifetime <= POINTS_LIFETIME_DAYS_MAX:
        problems.append(f"{where}: field 'effect.points_lifetime_days': must be 0..{POINTS_LIFETIME_DAYS_MAX}")
    if delay is not None and not 0 <= delay <= ACTIVATION_DELAY_DAYS_MAX:
        problems.append(f"{where}: field 'effect.activation_delay_days': must be 0..{ACTIVATION_DELAY_DAYS_MAX}")
    if (lifetime is not None or delay is not None) and (kind in DISCOUNT_EFFECTS or kind in NO_AMOUNT_EFFECTS):
        field = "points_lifetime_days" if lifetime is not None else "activation_delay_days"
        problems.append(f"{where}: field 'effect.{field}': only for effects that earn points")
    if campaign.trigger == "event":
        if kind not in EVENT_EFFECTS:
            problems.append(f"{where}: field 'effect.kind': an event campaign earns points: "
                            f"one of {', '.join(sorted(EVENT_EFFECTS))}")
        if effect.per != "receipt":
            problems.append(f"{where}: field 'effect.per': an event campaign gives its points per event")
        if effect.related_points < 0:
            problems.append(f"{where}: field 'effect.related_points': must be >= 0")
    else:
        for field, value in event_only.items():
            if value:
                problems.append(f"{where}: field 'effect.{field}': only for event campaigns (trigger = \"event\")")
    if campaign.promo_code and campaign.trigger == "event":
        problems.append(f"{where}: field 'promo_code': promo codes are presented with a purchase, not an event")
    return problems


LINE_CONDITIONS = ("category_prefixes", "skus", "brands", "exclude_category_prefixes", "line_qty_min_milli",
                   "line_amount_min_minor", "item_qty_min_milli", "receipt_total_min_minor", "payment_methods",
                   "card_bins", "terminals")


def _check_conditions(where: str, campaign: Campaign, tier_ids: set[str] | None) -> list[str]:
    when = campaign.when
    problems: list[str] = []
    for field in ("receipt_total_min_minor", "item_qty_min_milli", "line_qty_min_milli", "line_amount_min_minor",
                  "account_age_days_min", "lifetime_spend_min_minor", "window_spend_min_minor", "nth_purchase"):
        if getattr(when, field) < 0:
            problems.append(f"{where}: field 'when.{field}': must be >= 0")
    for field in ("category_prefixes", "skus", "brands", "exclude_category_prefixes", "card_categories", "segments",
                  "tags", "clubs", "stores", "regions", "channels", "terminals", "payment_methods", "card_bins",
                  "event_types"):
        if any(not value for value in getattr(when, field)):
            problems.append(f"{where}: field 'when.{field}': empty string")
    for value in when.weekdays:
        if not 1 <= value <= 7:
            problems.append(f"{where}: field 'when.weekdays': {value} is not a weekday (1 = Monday .. 7 = Sunday)")
    if not 0 <= when.hour_from <= 23:
        problems.append(f"{where}: field 'when.hour_from': must be 0..23")
    if not 1 <= when.hour_to <= 24:
        problems.append(f"{where}: field 'when.hour_to': must be 1..24")
    if when.hour_from == when.hour_to:
        problems.append(f"{where}: field 'when.hour_to': equal to hour_from, the window is empty")
    if when.birthday_within_days is not None and not 0 <= when.birthday_within_days <= 183:
        problems.append(f"{where}: field 'when.birthday_within_days': must be 0..183")
    for tier in when.tiers:
        if tier and tier_ids is not None and tier not in tier_ids:
            problems.append(f"{where}: field 'when.tiers': unknown tier '{tier}' (not in [tiers] levels)")
    if campaign.trigger == "event":
        if not when.event_types:
            problems.append(f"{where}: field 'when.event_types': an event campaign names the event types it takes")
        for field in LINE_CONDITIONS:
            if getattr(when, field) != getattr(Conditions(), field):
                problems.append(f"{where}: field 'when.{field}': not a condition of an event (receipts only)")
    else:
        for field in ("event_types", "event_attributes"):
            if getattr(when, field):
                problems.append(f"{where}: field 'when.{field}': only for event campaigns (trigger = \"event\")")
    return problems


def _check_limits(where: str, campaign: Campaign) -> list[str]:
    limits = campaign.limits
    problems: list[str] = []
    if campaign.effect.kind in NO_AMOUNT_EFFECTS:
        return problems  # refused as a whole by _check_effect
    discount = campaign.effect.kind in DISCOUNT_EFFECTS
    for field in Limits.__struct_fields__:
        value = getattr(limits, field)
        if value < 0:
            problems.append(f"{where}: field 'limits.{field}': must be >= 0")
        elif value and field.endswith("_points") and discount:
            problems.append(f"{where}: field 'limits.{field}': a discount is capped in money: use "
                            f"'{field[:-len('_points')]}_minor'")
        elif value and field.endswith("_minor") and not discount:
            problems.append(f"{where}: field 'limits.{field}': points are capped in points: use "
                            f"'{field[:-len('_minor')]}_points'")
    return problems
