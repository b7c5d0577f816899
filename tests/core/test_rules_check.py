"""`kassa rules check`: every broken program in tests/rules/broken is refused with one line naming the
file, the campaign and the field; the sample program in config/rules passes.

The CLI runs as a real process (`python -m kassa.server.cli rules check FILE`), as an operator would run it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kassa.core_ext.program import RulesError, load_program, parse_program, source_refusal

REPO = Path(__file__).resolve().parents[2]
BROKEN = Path("tests/rules/broken")  # relative to REPO, as an operator would type it
SAMPLE = Path("config/rules")

# file -> (campaign id, field) the one problem line names; campaign None: the problem is in [program]
EXPECTED: dict[str, tuple[str | None, str]] = {
    "unknown_campaign_field.toml": ("pharmacy", "discount"),
    "wrong_type.toml": ("flowers", "effect.percent_bps"),
    "earn_percent_zero.toml": ("base", "effect.percent_bps"),
    "points_limit_on_discount.toml": ("dairy", "limits.receipt_max_points"),
    "minor_limit_on_earn.toml": ("flowers", "limits.account_day_max_minor"),
    "weekday_8.toml": ("weekend", "when.weekdays"),
    "empty_hour_window.toml": ("happy-hour", "when.hour_to"),
    "unknown_tier.toml": ("platinum-double", "when.tiers"),
    "event_without_types.toml": ("registration", "when.event_types"),
    "line_condition_in_event.toml": ("top-up", "when.category_prefixes"),
    "discount_on_event.toml": ("birthday-event", "effect.kind"),
    "promo_code_on_event.toml": ("registration", "promo_code"),
    "event_field_on_purchase.toml": ("first-purchase", "effect.related_points"),
    "duplicate_id.toml": ("flowers", "id"),
    "bad_campaign_id.toml": ("spring sale!", "id"),
    "valid_to_before_valid_from.toml": ("new-year", "valid_to"),
    "valid_from_without_offset.toml": ("spring", "valid_from"),
    "bad_timezone.toml": (None, "timezone"),
    "per_on_earn_percent.toml": ("base", "effect.per"),
    "negative_limit.toml": ("coffee", "limits.budget_points"),
    "best_group_without_best.toml": ("household-points", "best_group"),
    "unknown_effect_kind.toml": ("pharmacy", "effect.kind"),
    "unknown_condition.toml": ("pharmacy", "when.category"),
    "multiplier_not_above_one.toml": ("gold-double", "effect.multiplier_bps"),
    "bundle_one_sku.toml": ("coffee-bundle", "when.skus"),
    "bundle_category_prefixes.toml": ("breakfast", "when.category_prefixes"),
    "grant_tier_unknown_tier.toml": ("welcome-platinum", "effect.tier"),
    "grant_tier_zero_days.toml": ("trial-gold", "effect.tier_days"),
    "redeem_share_above_100_percent.toml": ("pay-all-with-points", "effect.percent_bps"),
    "limits_on_redeem_share.toml": ("points-friday", "limits"),
    "tier_on_non_grant_tier.toml": ("gold-cashback", "effect.tier"),
}
# files that cannot be read as TOML: no campaign to name, so the file and the position instead
NOT_TOML: dict[str, tuple[int, int]] = {
    "invalid_toml.toml": (11, 44),  # the unclosed string of the name ends at the end of line 11
}


def rules_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kassa.server.cli", "rules", "check", *map(str, paths)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def problem_line(path: Path) -> str:
    """The one line `rules check` prints for a program broken in one way."""
    result = rules_check(path)
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"broken in one way, so one problem:\n{result.stderr}"
    assert lines[0].startswith(f"{path}: "), f"names the file {path}:\n{lines[0]}"
    return lines[0]


def test_every_broken_file_is_in_the_table_and_says_what_is_broken():
    files = {path.name for path in (REPO / BROKEN).glob("*.toml")}
    assert files == set(EXPECTED) | set(NOT_TOML)
    assert len(files) >= 12
    for name in files:
        text = (REPO / BROKEN / name).read_text()
        assert text.startswith("# Broken: "), f"{name}: first lines are a comment saying what is broken"
        assert "[program]" in text, f"{name}: a whole program, with its [program] table"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_broken_program_is_refused_naming_the_file_campaign_and_field(name):
    campaign, field = EXPECTED[name]

    line = problem_line(BROKEN / name)

    if campaign is None:
        assert f": [program]: field '{field}': " in line, line
        assert "campaign '" not in line, line
    else:
        assert f": campaign '{campaign}': field '{field}': " in line, line


@pytest.mark.parametrize("name", sorted(NOT_TOML))
def test_a_file_that_is_not_toml_is_refused_naming_the_file_and_position(name):
    row, column = NOT_TOML[name]

    line = problem_line(BROKEN / name)

    assert "not valid TOML" in line, line
    assert re.search(rf"\(at line {row}, column {column}\)$", line), line


def test_every_problem_is_listed_when_several_files_are_broken():
    """Files decode independently: each broken campaign file adds its own line (one [program] table)."""
    names = ["weekday_8.toml", "empty_hour_window.toml"]
    sources = {name: (REPO / BROKEN / name).read_text() for name in names}
    # the second file without its [program] table, so the two make one program
    second = sources[names[1]]
    second = second[second.index("[[campaigns]]"):]

    with pytest.raises(RulesError) as refused:
        parse_program({names[0]: sources[names[0]], names[1]: second})

    problems = refused.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("weekday_8.toml: campaign 'weekend': field 'when.weekdays'")
    assert problems[1].startswith("empty_hour_window.toml: campaign 'happy-hour': field 'when.hour_to'")


# -- the sample program ---------------------------------------------------------------------------


def test_the_sample_program_validates_and_uses_every_mechanic():
    spec = load_program([REPO / SAMPLE])

    settings = spec.settings
    assert (settings.timezone, settings.rounding, settings.points_lifetime_days) == ("Europe/Moscow", "floor", 365)
    assert (settings.max_redeem_share_bps, settings.clawback) == (5000, "negative")
    assert {tier.id for tier in spec.tiers.levels} == {"silver", "gold"}
    assert all(campaign.name for campaign in spec.campaigns), "every campaign says what it does"
    assert {campaign.stacking for campaign in spec.campaigns} == {"stack", "best", "exclusive"}
    purchase = [c for c in spec.campaigns if c.trigger == "purchase"]
    events = [c for c in spec.campaigns if c.trigger == "event"]
    assert {c.effect.kind for c in purchase} >= {
        "earn_percent", "earn_fixed", "earn_multiplier", "discount_percent", "discount_fixed", "buy_x_get_y"}
    assert {t for c in events for t in c.when.event_types} >= {"registration", "referral", "bill_paid", "top_up"}
    assert any(c.promo_code and c.limits.uses_per_account == 1 for c in purchase)
    assert any(c.limits.budget_points for c in purchase)
    assert any(c.stacking == "exclusive" and c.valid_from and c.valid_to for c in purchase)
    assert any(c.effect.points_lifetime_days == 30 for c in events)
    assert any(c.effect.related_points for c in events)
    assert any(c.when.tiers == ["gold"] and c.effect.multiplier_bps == 20000 for c in purchase)
    assert any(c.when.clubs for c in purchase)


def test_the_sample_program_passes_rules_check():
    result = rules_check(SAMPLE)

    assert result.returncode == 0, result.stdout + result.stderr
    version = load_program([REPO / SAMPLE]).version
    assert re.fullmatch(rf"ok: \d+ campaigns \(\d+ purchase, \d+ event\), ruleset version {version}\n", result.stdout), result.stdout
    assert result.stderr == ""


# -- every problem, and the limits checked before parsing -----------------------------------------

SEVERAL_PROBLEMS = """\
[program]
name = "several problems"
timezone = 5
rounding = "sideways"

[tiers]
window_days = "year"
levels = [{ id = "gold", threshold = "lots" }]

[[campaigns]]
id = "typed-wrong"
priority = "high"
when = { weekdays = [1, "Tue"], hours = 3 }
effect = { kind = "earn_percent", percent_bps = "five" }

[[campaigns]]
id = "no-such-kind"
effect = { kind = "teleport" }

[[campaigns]]
id = "zero-rate"
when = { tiers = ["gold"] }
effect = { kind = "earn_percent", percent_bps = 0 }
"""
SEVERAL_PROBLEMS_SAID = [  # (where, field, what) of every line, in the order rules check prints them
    ("[program]", "program.timezone", "Expected `str`, got `int`"),
    ("[program]", "program.rounding", "Invalid enum value 'sideways'"),
    ("[tiers]", "tiers.window_days", "Expected `int`, got `str`"),
    ("[tiers]", "tiers.levels[0].threshold", "Expected `int`, got `str`"),
    ("campaign 'typed-wrong'", "priority", "Expected `int`, got `str`"),
    ("campaign 'typed-wrong'", "when.hours", "unknown field"),
    ("campaign 'typed-wrong'", "when.weekdays[1]", "Expected `int`, got `str`"),
    ("campaign 'typed-wrong'", "effect.percent_bps", "Expected `int`, got `str`"),
    ("campaign 'no-such-kind'", "effect.kind", "Invalid enum value 'teleport'"),
    # a campaign that decodes still gets every other check (its tier is not judged: [tiers] did not decode)
    ("campaign 'zero-rate'", "effect.percent_bps", "must be 1..1000000 for earn_percent"),
]


def test_every_problem_in_a_file_is_listed_not_only_the_first_type_or_enum_error(tmp_path):
    path = tmp_path / "several.toml"
    path.write_text(SEVERAL_PROBLEMS)

    result = rules_check(path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(SEVERAL_PROBLEMS_SAID), result.stderr
    for said, (where, field, what) in zip(lines, SEVERAL_PROBLEMS_SAID):
        assert said.startswith(f"{path}: "), said
        if where.startswith("campaign"):
            assert said == f"{path}: {where}: field '{field}': {what}"
        else:
            assert said == f"{path}: field '{field}': {what}"


NESTED_TOO_DEEP = 300  # levels: beyond the parser's recursion for inline tables, far beyond the limit


@pytest.mark.parametrize("name, text, said", [
    ("deep-inline-tables", "[program]\nname = 'x'\n[[campaigns]]\nid = 'deep'\neffect = { kind = 'earn_fixed', points = 1 }\n"
     "when = { event_attributes = " + "{ a = " * NESTED_TOO_DEEP + "1" + " }" * NESTED_TOO_DEEP + " }\n",
     "arrays and inline tables nested more than 32 deep"),
    ("deep-arrays", "[program]\nname = 'x'\nskus = " + "[" * NESTED_TOO_DEEP + "]" * NESTED_TOO_DEEP + "\n",
     "arrays and inline tables nested more than 32 deep"),
    ("long-dotted-key", "[program]\nname = 'x'\n" + ".".join(["a"] * 20_000) + " = 1\n",
     "line 3: more than 32 dotted key parts"),
    ("too-many-bytes", "[program]\nname = 'x'\n" + "# padding\n" * 110_000, "more than the limit of 1048576"),
])
def test_a_source_past_the_limits_is_refused_before_it_is_parsed(tmp_path, name, text, said):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)

    line = problem_line(path)

    assert said in line, line


def test_the_limits_let_the_sample_program_and_its_dotted_keys_and_strings_through():
    for path in (REPO / SAMPLE).glob("*.toml"):
        assert source_refusal(path.read_text()) == "", path
    text = ("[program]\nname = '" + "[" * 100 + "." * 100 + "'  # " + "{" * 100 + "\n"
            + 'description = """\n' + "[" * 100 + "\n" + "." * 100 + '\n"""\n' + "a.b.c.d = 1\n")
    assert source_refusal(text) == ""


def test_a_deep_source_through_parse_program_is_refused_like_a_file():
    deep = "[program]\nname = 'x'\nx = " + "{ a = " * NESTED_TOO_DEEP + "1" + " }" * NESTED_TOO_DEEP + "\n"

    with pytest.raises(RulesError) as refused:
        parse_program({"ReloadRules.source_toml": deep})

    assert refused.value.problems == [
        "ReloadRules.source_toml: arrays and inline tables nested more than 32 deep"
    ]
