"""The rules through the API: Calculate's explanation, ReloadRules and SIGHUP switching every worker
(a broken program keeps the old one serving), promo codes (generated, imported, presented at the
till), customer events on the stream, and the receipt's and account's new fields.

Each test runs a real server over a program of its own, written here as TOML.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kassa.core_ext import load_program
from kassa.v1 import accounts_pb2, admin_pb2, admin_pb2_grpc, common_pb2, processing_pb2, processing_pb2_grpc
from tests.kassa_harness import DAY_MS, T0_MS
from tests.server.helpers import (
    accrue, balance, by_account, line, open_account, receipt, refused, statement,
)

OK = common_pb2.CODE_OK
SWITCH_TIMEOUT_S = 10  # a reload reaches every worker within this (they look every second)
FRESH_CHANNELS = 12  # connections per poll: SO_REUSEPORT spreads them over the workers

PROGRAM = """
[program]
name = "rules api test"
timezone = "UTC"

[tiers]
window_days = 365
[[tiers.levels]]
id = "silver"
metric = "spend_minor"
threshold = 100000

[[campaigns]]
id = "north-app"
name = "North region, in the app: 2 % extra"
priority = 30
when = { regions = ["north"], channels = ["app"] }
effect = { kind = "earn_percent", percent_bps = 200 }

[[campaigns]]
id = "acme-brand"
name = "ACME: 10 % extra"
priority = 20
when = { brands = ["acme"] }
effect = { kind = "earn_percent", percent_bps = 1000 }

[[campaigns]]
id = "promo-100-off"
name = "With a promo code: 100.00 off groceries"
priority = 10
promo_code = true
when = { category_prefixes = ["grocery"] }
effect = { kind = "discount_fixed", amount_minor = 10000 }

[[campaigns]]
id = "bank-card"
name = "Paid with the partner bank's card: 1 % extra"
when = { card_bins = ["220070"], payment_methods = ["card"] }
effect = { kind = "earn_percent", percent_bps = 100 }

[[campaigns]]
id = "base"
name = "Base: 5 %"
effect = { kind = "earn_percent", percent_bps = {base_bps} }

[[campaigns]]
id = "registration"
name = "Registering: 15.00 in points, once"
trigger = "event"
when = { event_types = ["registration"] }
effect = { kind = "earn_fixed", points = 1500 }
limits = { uses_per_account = 1 }
"""
PURCHASE_CAMPAIGNS = ["north-app", "acme-brand", "promo-100-off", "bank-card", "base"]

BROKEN_CAMPAIGN = """
[[campaigns]]
id = "bad-one"
name = "A condition that does not exist"
when = { category = ["pharmacy"] }
effect = { kind = "earn_percent", percent_bps = 300 }
"""


def program(base_bps: int = 500) -> str:
    return PROGRAM.replace("{base_bps}", str(base_bps))


def rules_dir(tmp_path: Path, base_bps: int = 500) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "program.toml").write_text(program(base_bps))
    return directory


def version_of(directory: Path) -> str:
    return load_program([directory]).version


def rules(server) -> admin_pb2.GetRulesResponse:
    return server.admin.GetRules(admin_pb2.GetRulesRequest())


def plain_receipt(receipt_no: str, price_minor: int = 10_000, category: str = "grocery/bakery") -> common_pb2.Receipt:
    return receipt(line(1, price_minor, category=category), receipt_no=receipt_no)


def with_codes(the_receipt: common_pb2.Receipt, *codes: str) -> common_pb2.Receipt:
    copy = common_pb2.Receipt()
    copy.CopyFrom(the_receipt)
    copy.promo_codes.extend(codes)
    return copy


def calculate(server, account_id: str, the_receipt, **fields) -> processing_pb2.CalculateResponse:
    return server.processing.Calculate(
        processing_pb2.CalculateRequest(customer=by_account(account_id), receipt=the_receipt, **fields)
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_workers(start_kassa, directory: Path, workers: int = 2):
    """A server of `workers` processes on one port, once every worker serves."""
    server = start_kassa(
        rules=directory, env={"KASSA_SERVER_WORKERS": str(workers), "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}"}
    )
    wait_for_log(server, '"msg":"serving"', workers)
    return server


def wait_for_log(server, needle: str, count: int = 1, timeout_s: float = SWITCH_TIMEOUT_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [entry for entry in list(server.log_lines) if needle in entry]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{count} log lines with {needle} expected:\n{''.join(server.log_lines)}"
        time.sleep(0.05)


def versions_seen(server) -> set[str]:
    """The ruleset version each of FRESH_CHANNELS new connections is served."""
    seen = set()
    for _ in range(FRESH_CHANNELS):
        # A channel of its own: grpc would otherwise share one connection between channels.
        with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            seen.add(admin_pb2_grpc.AdminStub(channel).GetRules(admin_pb2.GetRulesRequest(), timeout=10).ruleset_version)
    return seen


def wait_for_version(server, version: str) -> None:
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    while True:
        seen = versions_seen(server)
        if seen == {version}:
            return
        assert time.monotonic() < deadline, f"workers serve {seen}, expected only {version}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------


class TestExplain:
    def test_calculate_with_explain_lists_every_purchase_campaign_with_a_reason(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        open_account(kassa, "A-1")
        everything = receipt(
            line(1, 10_000, category="grocery/bakery", brand="acme"), receipt_no="R-explain-1"
        )
        everything.region, everything.channel = "north", "app"
        everything.payment_method, everything.card_bin = "card", "2200701234"

        reply = calculate(kassa, "A-1", everything, explain=True)

        explained = {e.campaign_id: e for e in reply.calculation.explain}
        assert [e.campaign_id for e in reply.calculation.explain] == PURCHASE_CAMPAIGNS  # walk order
        assert list(rules(kassa).campaign_ids) == [*PURCHASE_CAMPAIGNS, "registration"]  # event campaigns too
        assert all(e.reason for e in reply.calculation.explain)
        applied = {c.campaign_id: c.points for c in reply.calculation.campaigns}
        assert applied == {"north-app": 200, "acme-brand": 1000, "bank-card": 100, "base": 500}
        assert {cid for cid, e in explained.items() if e.applied} == set(applied)
        assert "promo code" in explained["promo-100-off"].reason
        assert reply.calculation.earned_points == 1800

    def test_explain_names_the_condition_that_failed(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        open_account(kassa, "A-1")
        elsewhere = receipt(line(1, 10_000, category="grocery/bakery", brand="other"), receipt_no="R-explain-2")
        elsewhere.region, elsewhere.channel = "south", "app"
        elsewhere.payment_method, elsewhere.card_bin = "card", "411111"

        explained = {e.campaign_id: e for e in calculate(kassa, "A-1", elsewhere, explain=True).calculation.explain}

        assert not explained["north-app"].applied and "when.regions" in explained["north-app"].reason
        assert not explained["bank-card"].applied and "when.card_bins" in explained["bank-card"].reason
        assert not explained["acme-brand"].applied and "line" in explained["acme-brand"].reason
        assert explained["base"].applied

    def test_without_explain_there_is_no_explanation(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        open_account(kassa, "A-1")
        reply = calculate(kassa, "A-1", plain_receipt("R-1"))
        assert len(reply.calculation.explain) == 0
        assert reply.calculation.earned_points == 500


class TestReloadRules:
    def test_a_broken_program_is_refused_naming_file_campaign_and_field_and_the_old_one_keeps_serving(
        self, start_kassa, tmp_path
    ):
        directory = rules_dir(tmp_path)
        kassa = start_kassa(rules=directory)
        old = rules(kassa).ruleset_version
        assert old == version_of(directory)
        open_account(kassa, "A-1")

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=program(1000) + BROKEN_CAMPAIGN))
        assert "ReloadRules.source_toml" in refusal.details
        assert "bad-one" in refusal.details and "when.category" in refusal.details

        (directory / "extra.toml").write_text(BROKEN_CAMPAIGN)
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest())
        assert str(directory / "extra.toml") in refusal.details
        assert "bad-one" in refusal.details and "when.category" in refusal.details

        assert rules(kassa).ruleset_version == old
        bought = accrue(kassa, "A-1", plain_receipt("R-1"), "buy-1")
        assert bought.calculation.ruleset_version == old
        assert bought.calculation.earned_points == 500

    def test_a_good_program_switches_and_purchases_earn_by_it(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_kassa(rules=directory)
        old = rules(kassa).ruleset_version
        open_account(kassa, "A-1")

        reply = kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=program(1000)))

        new = reply.ruleset_version
        assert new != old
        now = rules(kassa)
        assert now.ruleset_version == new
        assert "percent_bps = 1000" in now.source_toml
        assert list(now.campaign_ids) == [*PURCHASE_CAMPAIGNS, "registration"]
        bought = accrue(kassa, "A-1", plain_receipt("R-1"), "buy-1")
        assert bought.calculation.ruleset_version == new
        assert bought.calculation.earned_points == 1000

        # An empty source reloads the configured files: back to the first program.
        assert kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest()).ruleset_version == old
        assert accrue(kassa, "A-1", plain_receipt("R-2"), "buy-2").calculation.earned_points == 500

    def test_a_restart_serves_the_stored_ruleset_from_its_first_call(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_kassa(rules=directory)
        new = kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=program(1000))).ruleset_version

        kassa.restart()

        assert rules(kassa).ruleset_version == new
        assert f'"ruleset_version":"{new}","files_ruleset_version":"{version_of(directory)}"' in "".join(kassa.log_lines)

    def test_rule_files_edited_while_stopped_take_over_at_the_restart(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_kassa(rules=directory)
        kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=program(1000)))
        kassa.stop()
        rules_dir(tmp_path, base_bps=700)  # the operator edits the files

        kassa.start()

        edited = version_of(directory)
        assert rules(kassa).ruleset_version == edited
        open_account(kassa, "A-1")
        bought = accrue(kassa, "A-1", plain_receipt("R-1"), "buy-1")
        assert (bought.calculation.ruleset_version, bought.calculation.earned_points) == (edited, 700)

    def test_a_reload_through_one_worker_reaches_every_worker(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_workers(start_kassa, directory)
        old = version_of(directory)
        assert versions_seen(kassa) == {old}

        new = kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=program(1000))).ruleset_version

        wait_for_version(kassa, new)
        wait_for_log(kassa, f'"msg":"ruleset switched","ruleset_version":"{new}"')  # the other worker
        open_account(kassa, "A-1")
        for n in range(FRESH_CHANNELS):
            with grpc.insecure_channel(kassa.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                bought = processing_pb2_grpc.ProcessingStub(channel).Accrue(
                    processing_pb2.AccrueRequest(
                        request_id=f"buy-{n}", customer=by_account("A-1"), receipt=plain_receipt(f"R-{n}")
                    ),
                    timeout=10,
                )
            assert (bought.calculation.ruleset_version, bought.calculation.earned_points) == (new, 1000)


class TestSighup:
    def test_sighup_reloads_the_rule_files_and_a_broken_file_keeps_the_old_ruleset(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_kassa(rules=directory)
        open_account(kassa, "A-1")

        (directory / "program.toml").write_text(program(1000))
        new = version_of(directory)
        kassa.process.send_signal(signal.SIGHUP)
        wait_for_version(kassa, new)
        assert accrue(kassa, "A-1", plain_receipt("R-1"), "buy-1").calculation.earned_points == 1000

        (directory / "extra.toml").write_text(BROKEN_CAMPAIGN)
        kassa.process.send_signal(signal.SIGHUP)
        refusal = wait_for_log(kassa, "ruleset refused")[0]
        assert "bad-one" in refusal and "when.category" in refusal and '"level":"error"' in refusal
        assert kassa.process.poll() is None
        assert rules(kassa).ruleset_version == new
        assert accrue(kassa, "A-1", plain_receipt("R-2"), "buy-2").calculation.earned_points == 1000

    def test_sighup_to_the_parent_reaches_every_worker(self, start_kassa, tmp_path):
        directory = rules_dir(tmp_path)
        kassa = start_workers(start_kassa, directory)

        (directory / "program.toml").write_text(program(1000))
        new = version_of(directory)
        kassa.process.send_signal(signal.SIGHUP)

        wait_for_version(kassa, new)
        wait_for_log(kassa, f'"msg":"ruleset reloaded","ruleset_version":"{new}"', count=2)  # each worker read the files
        assert kassa.process.poll() is None
        assert kassa.stop() == 0


class TestPromoCodes:
    def test_generate_returns_unique_codes_and_a_replay_returns_the_same(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        request = admin_pb2.GeneratePromoCodesRequest(
            request_id="gen-1", campaign_id="promo-100-off", pattern="SPRING-######", count=50
        )

        reply = kassa.admin.GeneratePromoCodes(request)

        assert reply.campaign_id == "promo-100-off"
        assert len(reply.codes) == 50 and len(set(reply.codes)) == 50
        assert all(re.fullmatch(r"SPRING-[A-HJ-NP-Z2-9]{6}", code) for code in reply.codes)
        assert list(kassa.admin.GeneratePromoCodes(request).codes) == list(reply.codes)
        request.count = 51
        with refused(grpc.StatusCode.ALREADY_EXISTS):
            kassa.admin.GeneratePromoCodes(request)

    def test_generate_refusals_name_the_field(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))

        def generate(**fields):
            request = dict(request_id="gen-x", campaign_id="promo-100-off", pattern="SPRING-####", count=5)
            request.update(fields)
            return kassa.admin.GeneratePromoCodes(admin_pb2.GeneratePromoCodesRequest(**request))

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            generate(pattern="X-#", charset="AB", count=2)  # 2 codes in all: at most half may be asked
        assert refusal.details.startswith("count:")
        for fields, field in (
            ({"count": 0}, "count"),
            ({"campaign_id": ""}, "campaign_id"),
            ({"request_id": ""}, "request_id"),
            ({"pattern": ""}, "pattern"),
            ({"pattern": "SPRING ####"}, "pattern"),
            ({"charset": "AA"}, "charset"),
        ):
            with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
                generate(**fields)
            assert refusal.details.startswith(f"{field}:"), (fields, refusal.details)
        for campaign_id in ("no-such-campaign", "base"):  # unknown; takes no codes
            with refused(grpc.StatusCode.FAILED_PRECONDITION, reason="UNKNOWN_CAMPAIGN") as refusal:
                generate(campaign_id=campaign_id, request_id=f"gen-{campaign_id}")
            assert "campaign_id" in refusal.details

    def test_codes_that_would_not_fit_in_a_response_are_refused_before_they_are_made(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path), env={"KASSA_SERVER_MESSAGE_BYTES_MAX": str(64 * 1024)})

        def generate(request_id, count):
            return kassa.admin.GeneratePromoCodes(admin_pb2.GeneratePromoCodesRequest(
                request_id=request_id, campaign_id="promo-100-off", pattern="SPRING-########", count=count
            ))

        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            generate("gen-big", 5_000)  # about 90 KB of codes
        assert refusal.details.startswith("count:") and "server.message_bytes_max" in refusal.details
        assert len(generate("gen-big", 3_000).codes) == 3_000  # nothing was stored under the id

    def test_import(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))

        def import_codes(request_id, *codes):
            return kassa.admin.ImportPromoCodes(
                admin_pb2.ImportPromoCodesRequest(request_id=request_id, campaign_id="promo-100-off", codes=codes)
            )

        reply = import_codes("imp-1", "PARTNER-0001", "partner-0001")
        assert (reply.campaign_id, list(reply.codes)) == ("promo-100-off", ["PARTNER-0001", "partner-0001"])
        assert list(import_codes("imp-1", "PARTNER-0001", "partner-0001").codes) == list(reply.codes)  # replay
        with refused(grpc.StatusCode.ALREADY_EXISTS) as refusal:
            import_codes("imp-2", "PARTNER-0002", "PARTNER-0001")
        assert "codes[1]" in refusal.details
        for codes, field in ((("A-1", "A-1"), "codes[1]"), (("A 1",), "codes[0]"), ((), "codes")):
            with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
                import_codes("imp-3", *codes)
            assert refusal.details.startswith(f"{field}:"), refusal.details
        for seconds, nanos, field in (
            (2**63 - 1, 0, "valid_to"), (-1, 0, "valid_to"), (T0_MS // 1000, -1, "valid_to.nanos"), (1, 0, "valid_to")
        ):
            window = {"valid_from": Timestamp(seconds=2), "valid_to": Timestamp(seconds=seconds, nanos=nanos)}
            with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
                kassa.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
                    request_id="imp-4", campaign_id="promo-100-off", codes=["B-1"], **window
                ))
            assert refusal.details.startswith(f"{field}"), refusal.details

    def test_presented_codes_are_accepted_or_rejected_with_a_reason(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        for account_id in ("A-1", "A-2"):
            open_account(kassa, account_id)
        good = kassa.admin.GeneratePromoCodes(
            admin_pb2.GeneratePromoCodesRequest(
                request_id="gen-1", campaign_id="promo-100-off", pattern="P-########", count=2, uses_per_account=1
            )
        ).codes
        kassa.admin.ImportPromoCodes(
            admin_pb2.ImportPromoCodesRequest(
                request_id="imp-old", campaign_id="promo-100-off", codes=["OLD-1"],
                valid_to=Timestamp(seconds=(T0_MS - DAY_MS) // 1000),  # ended yesterday
            )
        )
        kassa.admin.ImportPromoCodes(
            admin_pb2.ImportPromoCodesRequest(
                request_id="imp-once", campaign_id="promo-100-off", codes=["ONCE-1"], uses_total=1
            )
        )
        groceries = plain_receipt("R-1", price_minor=50_000)

        def presented(account_id, the_receipt, *codes):
            calculation = calculate(kassa, account_id, with_codes(the_receipt, *codes)).calculation
            return [(r.code, r.accepted, r.reason) for r in calculation.promo_codes], calculation

        statuses, calculation = presented("A-1", groceries, good[0], "NOPE-1", "OLD-1")
        assert statuses == [(good[0], True, ""), ("NOPE-1", False, "unknown"), ("OLD-1", False, "expired")]
        assert calculation.discount_minor == 10_000
        assert "promo-100-off" in [c.campaign_id for c in calculation.campaigns]

        statuses, calculation = presented("A-1", plain_receipt("R-2", category="pharmacy/x"), good[0])
        assert statuses == [(good[0], False, "not_applicable")]
        assert calculation.discount_minor == 0
        statuses, _ = presented("A-1", groceries, good[0], good[1])  # one code per campaign
        assert statuses == [(good[0], True, ""), (good[1], False, "not_applicable")]

        without_code = calculate(kassa, "A-1", groceries).calculation
        assert without_code.discount_minor == 0 and len(without_code.promo_codes) == 0

        bought = accrue(kassa, "A-1", with_codes(groceries, good[0], "ONCE-1"), "buy-1")
        assert [(r.code, r.accepted, r.reason) for r in bought.calculation.promo_codes] == [
            (good[0], True, ""), ("ONCE-1", False, "not_applicable")
        ]
        assert bought.calculation.discount_minor == 10_000
        assert presented("A-1", groceries, good[0])[0] == [(good[0], False, "limit_per_account")]
        assert presented("A-2", groceries, good[0])[0] == [(good[0], True, "")]

        accrue(kassa, "A-2", with_codes(groceries, "ONCE-1"), "buy-2")
        assert presented("A-1", groceries, "ONCE-1")[0] == [("ONCE-1", False, "exhausted")]


class TestCustomerEvents:
    def test_stream_takes_customer_events_beside_purchases(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        open_account(kassa, "A-1")

        def event(event_id, account_id="A-1", kind="registration", **fields):
            return processing_pb2.Event(
                event_id=event_id,
                customer_event=processing_pb2.CustomerEvent(customer=by_account(account_id), type=kind, **fields),
            )

        purchase = processing_pb2.Event(
            event_id="ev-buy", purchase=processing_pb2.AccrueRequest(customer=by_account("A-1"), receipt=plain_receipt("R-1"))
        )
        batch = processing_pb2.EventBatch(events=[
            event("ev-1", attributes={"source": "app"}, amount_minor=0),
            event("ev-2"),  # once per customer: nothing the second time
            event("ev-3", kind="check_in"),  # no campaign takes it
            purchase,
            event("ev-4", kind=""),
            event("ev-5", account_id="A-404"),
            event("ev-6", attributes={f"k{n}": "v" for n in range(33)}),
            event("ev-7", related=by_account("A-1")),
        ])

        acks = list(kassa.processing.StreamEvents(iter([batch]), timeout=30))[0].acks

        assert [ack.event_id for ack in acks] == [e.event_id for e in batch.events]
        assert (acks[0].code, acks[0].points) == (OK, 1500) and acks[0].transaction_id
        assert (acks[1].code, acks[1].points, acks[1].transaction_id) == (OK, 0, 0)
        assert (acks[2].code, acks[2].points, acks[2].transaction_id) == (OK, 0, 0)
        assert (acks[3].code, acks[3].points) == (OK, 500)
        assert acks[4].code == common_pb2.CODE_INVALID_ARGUMENT
        assert acks[4].message.startswith("events[4].customer_event.type:"), acks[4].message
        assert acks[5].code == common_pb2.CODE_NOT_FOUND
        assert acks[6].code == common_pb2.CODE_INVALID_ARGUMENT
        assert acks[6].message.startswith("events[6].customer_event.attributes:"), acks[6].message
        assert acks[7].code == common_pb2.CODE_INVALID_ARGUMENT and "related" in acks[7].message

        again = list(kassa.processing.StreamEvents(iter([processing_pb2.EventBatch(events=[batch.events[0]])]), timeout=30))
        assert again[0].acks[0] == acks[0]  # the event id is the idempotency key
        assert balance(kassa, "A-1").active_points == 2000
        entries = {t.request_id: t for t in statement(kassa, "A-1")}
        assert entries["ev-1"].kind == accounts_pb2.TRANSACTION_KIND_EVENT
        assert entries["ev-1"].earned_points == 1500


class TestNewFields:
    def test_account_shows_tier_progress_and_purchases(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=rules_dir(tmp_path))
        open_account(kassa, "A-1")

        def account():
            return kassa.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account("A-1")))

        before = account()
        assert (before.tier, before.next_tier, before.next_tier_missing, before.purchases) == ("", "silver", 100_000, 0)
        accrue(kassa, "A-1", plain_receipt("R-1", price_minor=60_000), "buy-1")
        middle = account()
        assert (middle.tier, middle.next_tier, middle.next_tier_missing, middle.purchases) == ("", "silver", 40_000, 1)
        accrue(kassa, "A-1", plain_receipt("R-2", price_minor=50_000), "buy-2")
        after = account()
        assert (after.tier, after.next_tier, after.next_tier_missing, after.purchases) == ("silver", "", 0, 2)

    @pytest.mark.parametrize(
        "change, field",
        [
            (lambda r: r.promo_codes.extend(f"C-{n}" for n in range(17)), "receipt.promo_codes:"),
            (lambda r: r.promo_codes.extend(["C-1", "C-1"]), "receipt.promo_codes[1]:"),
            (lambda r: r.promo_codes.extend(["C 1"]), "receipt.promo_codes[0]:"),
            (lambda r: r.promo_codes.extend([""]), "receipt.promo_codes[0]:"),
            (lambda r: setattr(r, "card_bin", "2200-70"), "receipt.card_bin:"),
            (lambda r: setattr(r, "region", "r" * 65), "receipt.region:"),
            (lambda r: setattr(r, "channel", "c" * 65), "receipt.channel:"),
            (lambda r: setattr(r, "payment_method", "p" * 65), "receipt.payment_method:"),
            (lambda r: setattr(r.lines[0], "brand", "b" * 65), "receipt.lines[0].brand:"),
        ],
    )
    def test_the_receipts_new_fields_are_checked_naming_the_field(self, kassa, change, field):
        open_account(kassa, "A-1")
        the_receipt = plain_receipt("R-1")
        change(the_receipt)
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            calculate(kassa, "A-1", the_receipt)
        assert refusal.details.startswith(field), refusal.details
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            accrue(kassa, "A-1", the_receipt, "buy-1")
        assert refusal.details.startswith(field), refusal.details
