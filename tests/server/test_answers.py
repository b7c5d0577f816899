"""Answers that say what they mean: a blocked card that earns nothing still buys (and says why), a
promo code before its window is `not_yet_valid`, `explain` names the tie and the exclusive campaign,
and promo-code generation counts what a pattern can still yield."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kassa.v1 import accounts_pb2, admin_pb2, processing_pb2
from tests.kassa_harness import DAY_MS
from tests.server.helpers import by_account, by_card, line, open_account, receipt, refused, statement
from tests.server.test_statements import rules_with

SILVER_THRESHOLD_MINOR = 3_000_000  # config/rules/tiers.toml
PROMO_TOTAL_MIN_MINOR = 200_000  # config/rules/campaigns.toml: promo-500-off


def calculate(kassa, customer, the_receipt, explain=False) -> processing_pb2.CalculateResponse:
    return kassa.processing.Calculate(processing_pb2.CalculateRequest(
        customer=customer, receipt=the_receipt, explain=explain))


def explained(kassa, the_receipt) -> dict:
    reply = calculate(kassa, by_account("A-1"), the_receipt, explain=True)
    return {e.campaign_id: e for e in reply.calculation.explain}


def get_account(kassa, account_id: str) -> accounts_pb2.Account:
    return kassa.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(account_id)))


def at(moment_ms: int) -> Timestamp:
    return Timestamp(seconds=moment_ms // 1000, nanos=moment_ms % 1000 * 1_000_000)


class TestBlockedCardThatEarnsNothing:
    @pytest.fixture
    def kassa(self, start_kassa, tmp_path):
        server = start_kassa(rules=rules_with(tmp_path, "blocked_card_earns = true", "blocked_card_earns = false"))
        open_account(server, "A-1", card="C-1")
        server.accounts.BlockCard(accounts_pb2.BlockCardRequest(request_id="block-1", card="C-1"))
        return server

    BASKET = receipt(line(1, 10_000, category="grocery/dairy"), line(2, 20_000, category="grocery/bakery"))

    def test_the_purchase_is_recorded_with_no_points_and_says_why(self, kassa):
        reply = kassa.processing.Accrue(processing_pb2.AccrueRequest(
            request_id="buy-1", customer=by_card("C-1"), receipt=self.BASKET))

        calculation = reply.calculation
        assert (calculation.earned_points, calculation.no_points_reason) == (0, "card_blocked")
        assert calculation.discount_minor == 1_000  # dairy's 10 % still applies
        assert [line.earned_points for line in calculation.lines] == [0, 0]
        (entry, *_) = statement(kassa, "A-1")
        assert (entry.kind, entry.transaction_id, entry.earned_points) == (
            accounts_pb2.TRANSACTION_KIND_ACCRUE, reply.transaction_id, 0)

    def test_its_spend_reaches_tiers_and_purchase_counts(self, kassa):
        kassa.processing.Accrue(processing_pb2.AccrueRequest(
            request_id="buy-1", customer=by_card("C-1"), receipt=self.BASKET))

        account = get_account(kassa, "A-1")

        assert account.purchases == 1
        assert account.lifetime_spend_minor == 29_000
        assert (account.next_tier, account.next_tier_missing) == ("silver", SILVER_THRESHOLD_MINOR - 29_000)

    def test_calculate_agrees_and_explain_names_the_blocked_card(self, kassa):
        reply = calculate(kassa, by_card("C-1"), self.BASKET, explain=True)

        assert (reply.calculation.earned_points, reply.calculation.no_points_reason) == (0, "card_blocked")
        reasons = {e.campaign_id: e for e in reply.calculation.explain}
        assert not reasons["base-5pct"].applied
        assert "card is blocked" in reasons["base-5pct"].reason
        assert reasons["dairy-discount"].applied

    # config/rules: household-points (12 %, earn) wins its best-of group from household-discount (7 %)
    HOUSEHOLD = receipt(line(1, 100_000, category="household/cleaning"))

    def test_its_earn_campaigns_still_win_their_best_of_group(self, kassa):
        """The blocked card gets the active card's selection, points zeroed: household-points still
        beats household-discount, so no discount either (before: 7,000 off)."""
        by_the_account = calculate(kassa, by_account("A-1"), self.HOUSEHOLD).calculation
        assert (by_the_account.earned_points, by_the_account.discount_minor) == (17_000, 0)

        reply = kassa.processing.Accrue(processing_pb2.AccrueRequest(
            request_id="buy-household", customer=by_card("C-1"), receipt=self.HOUSEHOLD))

        calculation = reply.calculation
        assert (calculation.earned_points, calculation.no_points_reason) == (0, "card_blocked")
        assert calculation.discount_minor == 0
        assert [c.campaign_id for c in calculation.campaigns] == []

    def test_the_account_itself_still_earns_and_the_card_still_cannot_spend(self, kassa):
        by_the_account = calculate(kassa, by_account("A-1"), self.BASKET).calculation
        assert (by_the_account.earned_points, by_the_account.no_points_reason) == (1_450, "")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "CARD_BLOCKED"):
            kassa.processing.Accrue(processing_pb2.AccrueRequest(
                request_id="buy-2", customer=by_card("C-1"), receipt=self.BASKET, redeem_points=10))


class TestPromoCodeReasons:
    def test_a_code_before_its_window_is_not_yet_valid_and_after_it_expired(self, kassa):
        open_account(kassa, "A-1")
        starts_ms = kassa.clock.now_ms + DAY_MS
        kassa.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
            request_id="imp-1", campaign_id="promo-500-off", codes=["SOON-1"],
            valid_from=at(starts_ms), valid_to=at(starts_ms + 2 * DAY_MS)))
        big = receipt(line(1, PROMO_TOTAL_MIN_MINOR))
        big.promo_codes.append("SOON-1")

        def answer():
            (code,) = calculate(kassa, by_account("A-1"), big).calculation.promo_codes
            return code.accepted, code.reason

        assert answer() == (False, "not_yet_valid")
        kassa.clock.set(starts_ms)
        assert answer() == (True, "")
        kassa.clock.set(starts_ms + 2 * DAY_MS)
        assert answer() == (False, "expired")


class TestExplainReasons:
    def test_a_best_of_tie_says_it_was_a_tie_decided_by_priority_then_file_order(self, kassa):
        open_account(kassa, "A-1")
        # 7 % off 4,285.72 is 300.00, as are its 12 % in points under their 300.00 cap
        tied = receipt(line(1, 428_572, category="household/cleaning"))

        reasons = explained(kassa, tied)

        assert reasons["household-discount"].applied
        assert reasons["household-points"].reason == (
            "best-of: tied with 'household-discount', which wins by priority, then file order")

    def test_a_best_of_that_is_worth_less_says_so(self, kassa):
        open_account(kassa, "A-1")

        reasons = explained(kassa, receipt(line(1, 100_000, category="household/cleaning")))

        assert reasons["household-discount"].reason == "best-of: 'household-points' is worth more"

    def test_a_campaign_stopped_by_an_exclusive_one_names_it(self, kassa):
        open_account(kassa, "A-1")
        black_friday = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
        kassa.clock.set(int(black_friday.timestamp() * 1000))

        reasons = explained(kassa, receipt(line(1, 100_000, category="electronics/tv")))

        assert reasons["black-friday-electronics"].applied
        assert reasons["base-5pct"].reason == (
            "stopped by the exclusive campaign 'black-friday-electronics', which applied first")


class TestPromoCodeGeneration:
    def test_a_pattern_gives_at_most_half_of_what_it_can_still_yield(self, kassa):
        def generate(request_id, count):
            return kassa.admin.GeneratePromoCodes(admin_pb2.GeneratePromoCodesRequest(
                request_id=request_id, campaign_id="promo-500-off", pattern="AB-##", charset="XY", count=count))

        first = generate("gen-1", 2)  # 4 codes in all: half of them
        assert len(set(first.codes)) == 2
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            generate("gen-2", 2)  # 2 still free: at most 1
        assert refusal.details.startswith("count: 'AB-##' with 2 characters yields at most 4 codes, 2 of them taken")
        assert "at most 1 may be asked at once" in refusal.details
        (third,) = generate("gen-3", 1).codes
        assert third not in first.codes
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            generate("gen-4", 1)  # 1 still free: at most 0
        assert refusal.details.startswith("count:")
        assert "at most 0 may be asked at once" in refusal.details
