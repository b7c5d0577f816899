"""The loyalty program as written by an operator: TOML files decoded into typed structs.

A program is a directory (or a list) of TOML files. Exactly one `[program]` table holds the settings;
every file may add `[[campaigns]]`. Unknown keys are refused. Every problem names the file, the
campaign and the field, so `kassa rules check` output can be acted on without reading code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Literal

import msgspec

BPS_PER_UNIT = 10_000  # basis points in 100 %
EARN_BPS_MAX = 100 * BPS_PER_UNIT  # an earn rate of at most 10,000 %
CAMPAIGNS_PER_PROGRAM_MAX = 4096  # campaigns
CAMPAIGN_ID_BYTES_MAX = 64  # bytes of UTF-8
POINTS_LIFETIME_DAYS_MAX = 36_500  # days
ACTIVATION_DELAY_DAYS_MAX = 365  # days
CAMPAIGN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


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


class Conditions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    category_prefixes: list[str] = []  # a line matches if its category starts with one of these
    skus: list[str] = []  # ... or its sku is one of these
    receipt_total_min_minor: int = 0  # the receipt's payable total must reach this
    stores: list[str] = []  # empty: every store


class Effect(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["earn_percent", "earn_fixed", "discount_percent"]
    percent_bps: int = 0  # earn_percent, discount_percent
    points: int = 0  # earn_fixed: points per receipt, prorated over the matching lines


class Campaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    name: str = ""
    priority: int = 0  # higher runs first
    stacking: Literal["stack", "exclusive"] = "stack"
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None
    when: Conditions = Conditions()
    effect: Effect


class ProgramFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    program: ProgramSettings | None = None
    campaigns: list[Campaign] = []


class ProgramSpec(msgspec.Struct, frozen=True):
    settings: ProgramSettings
    campaigns: list[Campaign]
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
            sources[str(file)] = file.read_text(encoding="utf-8")
        except OSError as error:
            raise RulesError([f"{file}: cannot read: {error.strerror}"]) from None
    return parse_program(sources)


def parse_program(sources: dict[str, str]) -> ProgramSpec:
    """Decode and validate TOML sources given as {file name: text}."""
    problems: list[str] = []
    settings: list[tuple[str, ProgramSettings]] = []
    campaigns: list[tuple[str, Campaign]] = []
    for name, text in sources.items():
        decoded = _decode_file(name, text, problems)
        if decoded is None:
            continue
        if decoded.program is not None:
            settings.append((name, decoded.program))
        campaigns.extend((name, campaign) for campaign in decoded.campaigns)
    if len(settings) != 1 and not problems:
        where = ", ".join(name for name, _ in settings) or "no file"
        problems.append(f"exactly one [program] table is required, found {len(settings)} ({where})")
    if settings:
        problems.extend(_check_settings(*settings[0]))
    seen: dict[str, str] = {}
    for name, campaign in campaigns:
        problems.extend(_check_campaign(name, campaign))
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
    return ProgramSpec(settings[0][1], [c for _, c in campaigns], "v-" + digest.hexdigest()[:12], dict(sources))


def _decode_file(name: str, text: str, problems: list[str]) -> ProgramFile | None:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{name}: not valid TOML: {error}")
        return None
    try:
        return msgspec.convert(raw, type=ProgramFile)
    except msgspec.ValidationError as error:
        problems.append(f"{name}: {_locate(raw, str(error))}")
        return None


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


def _check_campaign(name: str, campaign: Campaign) -> list[str]:
    where = f"{name}: campaign '{campaign.id}'"
    problems = []
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
    effect = campaign.effect
    if effect.kind == "earn_percent" and not 0 < effect.percent_bps <= EARN_BPS_MAX:
        problems.append(f"{where}: field 'effect.percent_bps': must be 1..{EARN_BPS_MAX} for earn_percent")
    if effect.kind == "discount_percent" and not 0 < effect.percent_bps <= BPS_PER_UNIT:
        problems.append(f"{where}: field 'effect.percent_bps': must be 1..{BPS_PER_UNIT} for discount_percent")
    if effect.kind == "earn_fixed" and effect.points <= 0:
        problems.append(f"{where}: field 'effect.points': must be > 0 for earn_fixed")
    if campaign.when.receipt_total_min_minor < 0:
        problems.append(f"{where}: field 'when.receipt_total_min_minor': must be >= 0")
    for field, values in (("category_prefixes", campaign.when.category_prefixes), ("skus", campaign.when.skus)):
        if any(not value for value in values):
            problems.append(f"{where}: field 'when.{field}': empty string")
    return problems
