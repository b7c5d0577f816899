"""The ledger in depth, against a real server: cards (several per account, blocking, reissue),
family groups pooling into a parent, points activation, expiry and inactivity burn, manual
adjustments, account attributes, rollbacks that arrive before their originals, and one request
sent many times at once."""

from __future__ import annotations

import json
import shutil
import threading

import grpc

from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2
from tests.kassa_harness import DAY_MS, REPO
from tests.server.helpers import (
    LIFETIME_DAYS, accrue, balance, by_account, by_card, earn, line, open_account, receipt, redeem, refused,
    rollback, snapshot, statement,
)


def by_phone(phone: str) -> common_pb2.Customer:
    return common_pb2.Customer(phone=phone)


def issue_card(kassa, account_id: str, card: str, replaces: str = "", category: str = ""):
    return kassa.accounts.IssueCard(accounts_pb2.IssueCardRequest(
        request_id=f"card/{card}", account_id=account_id, card=card, replaces_card=replaces, category=category))


def block_card(kassa, card: str):
    return kassa.accounts.BlockCard(accounts_pb2.BlockCardRequest(request_id=f"block/{card}", card=card))


def get_account(kassa, customer: common_pb2.Customer) -> accounts_pb2.Account:
    return kassa.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=customer))


def redeem_as(kassa, customer: common_pb2.Customer, points: int, request_id: str):
    return kassa.processing.Redeem(processing_pb2.RedeemRequest(
        request_id=request_id, customer=customer, points=points, receipt_total_minor=10**9,
        mode=processing_pb2.REDEEM_MODE_IMMEDIATE))


def accrue_as(kassa, customer: common_pb2.Customer, the_receipt, request_id: str, **fields):
    return kassa.processing.Accrue(processing_pb2.AccrueRequest(
        request_id=request_id, customer=customer, receipt=the_receipt, **fields))


def basket(points: int, receipt_no: str) -> common_pb2.Receipt:
    """A one-line receipt that earns exactly `points` at the sample program's base 5 %."""
    return receipt(line(1, points * 20), receipt_no=receipt_no)


def join(kassa, member: str, parent: str, request_id: str = ""):
    return kassa.accounts.JoinGroup(accounts_pb2.JoinGroupRequest(
        request_id=request_id or f"join/{member}/{parent}", account_id=member, parent_account_id=parent))


def leave(kassa, member: str, request_id: str = ""):
    return kassa.accounts.LeaveGroup(accounts_pb2.LeaveGroupRequest(
        request_id=request_id or f"leave/{member}", account_id=member))


def adjust(kassa, account_id: str, points: int, request_id: str, reason: str = "goodwill", operator_id: str = "op-1"):
    return kassa.accounts.Adjust(accounts_pb2.AdjustRequest(
        request_id=request_id, customer=by_account(account_id), points=points, reason=reason, operator_id=operator_id))


def expire_points(kassa) -> admin_pb2.ExpirePointsResponse:
    return kassa.admin.ExpirePoints(admin_pb2.ExpirePointsRequest())


def program_rules(tmp_path, **settings) -> object:
    """A copy of config/rules with `settings` set in program.toml's [program] table."""
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "config" / "rules", rules)
    program = rules / "program.toml"
    lines = program.read_text().splitlines()
    for key, value in settings.items():
        rendered = f"{key} = {json.dumps(value)}"
        for index, text in enumerate(lines):
            if text.split("=")[0].strip() == key:
                lines[index] = rendered
                break
        else:
            lines.insert(lines.index("[program]") + 1, rendered)
    program.write_text("\n".join(lines) + "\n")
    return rules


def assert_verifies(kassa):
    result = kassa.run_cli("verify", "--config", str(kassa.config_path()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True


def kinds(transactions) -> list[int]:
    return [t.kind for t in transactions]


# ---------------------------------------------------------------------------------------------


class TestCards:
    def open_with_cards(self, kassa):
        kassa.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
            request_id="create/A-1", account_id="A-1", phone="+7-900-000-01"))
        issue_card(kassa, "A-1", "C-1", category="gold")
        return issue_card(kassa, "A-1", "C-2").account

    def test_an_account_is_found_by_each_card_and_by_its_phone(self, kassa):
        account = self.open_with_cards(kassa)
        assert [(c.card, c.category, c.blocked) for c in account.cards] == [("C-1", "gold", False), ("C-2", "", False)]
        earn(kassa, "A-1", 700, request_id="buy-1")

        for customer in (by_account("A-1"), by_card("C-1"), by_card("C-2"), by_phone("+7-900-000-01")):
            found = get_account(kassa, customer)
            assert (found.account_id, found.phone) == ("A-1", "+7-900-000-01")
            assert [c.card for c in found.cards] == ["C-1", "C-2"]
            assert found.balance.available_points == 700

        reply = accrue_as(kassa, by_card("C-2"), basket(100, "R-2"), "buy-2")
        assert reply.account_id == "A-1"
        assert get_account(kassa, by_phone("+7-900-000-01")).balance.available_points == 800

    def test_unknown_card_and_phone_are_not_found(self, kassa):
        self.open_with_cards(kassa)
        for customer in (by_card("C-404"), by_phone("+7-404")):
            with refused(grpc.StatusCode.NOT_FOUND):
                get_account(kassa, customer)

    def test_a_blocked_card_cannot_redeem_but_still_earns(self, kassa):
        self.open_with_cards(kassa)
        earn(kassa, "A-1", 1_000, request_id="buy-1")

        blocked = block_card(kassa, "C-1")

        assert (blocked.card.card, blocked.card.blocked) == ("C-1", True)
        before = snapshot(kassa, "A-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "CARD_BLOCKED"):
            redeem_as(kassa, by_card("C-1"), 100, "spend-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "CARD_BLOCKED"):
            accrue_as(kassa, by_card("C-1"), basket(100, "R-2"), "buy-2", redeem_points=10)
        assert snapshot(kassa, "A-1") == before

        earned = accrue_as(kassa, by_card("C-1"), basket(100, "R-3"), "buy-3")  # blocked_card_earns = true
        assert earned.calculation.earned_points == 100
        assert balance(kassa, "A-1").available_points == 1_100
        spent = redeem_as(kassa, by_card("C-2"), 100, "spend-2")  # the other card still pays
        assert spent.balance.available_points == 1_000
        cards = {c.card: c.blocked for c in get_account(kassa, by_account("A-1")).cards}
        assert cards == {"C-1": True, "C-2": False}

    def test_reissue_blocks_the_lost_card_and_the_new_one_serves_the_same_account(self, kassa):
        self.open_with_cards(kassa)
        earn(kassa, "A-1", 1_000, request_id="buy-1")

        reissued = issue_card(kassa, "A-1", "C-1-NEW", replaces="C-1").account

        assert [(c.card, c.blocked) for c in reissued.cards] == [("C-1", True), ("C-2", False), ("C-1-NEW", False)]
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "CARD_BLOCKED"):
            redeem_as(kassa, by_card("C-1"), 100, "spend-1")
        spent = redeem_as(kassa, by_card("C-1-NEW"), 300, "spend-2")
        assert (spent.account_id, spent.balance.available_points) == ("A-1", 700)
        assert balance(kassa, "A-1").available_points == 700

    def test_a_card_of_another_account_cannot_be_replaced_and_a_card_is_issued_once(self, kassa):
        self.open_with_cards(kassa)
        open_account(kassa, "A-2", card="C-9")

        with refused(grpc.StatusCode.NOT_FOUND):
            issue_card(kassa, "A-2", "C-10", replaces="C-1")
        with refused(grpc.StatusCode.ALREADY_EXISTS):
            kassa.accounts.IssueCard(accounts_pb2.IssueCardRequest(request_id="card/again", account_id="A-2", card="C-1"))
        assert not get_account(kassa, by_card("C-1")).cards[0].blocked
        assert get_account(kassa, by_card("C-1")).account_id == "A-1"


class TestFamily:
    def family(self, kassa):
        """Parent P-1 with 1,000 points; member M-1 (card MC-1) joined empty."""
        open_account(kassa, "P-1")
        earn(kassa, "P-1", 1_000, request_id="p-buy-1")
        open_account(kassa, "M-1", card="MC-1")
        return join(kassa, "M-1", "P-1")

    def test_an_empty_account_joins_and_sees_the_pool(self, kassa):
        joined = self.family(kassa)

        assert joined.account_id == "M-1" and joined.parent_account_id == "P-1"
        assert joined.balance.available_points == 1_000  # a member's view is the pool's
        parent = get_account(kassa, by_account("P-1"))
        assert list(parent.member_account_ids) == ["M-1"]
        assert balance(kassa, "M-1") == balance(kassa, "P-1")

    def test_a_member_earns_into_and_redeems_from_the_pool(self, kassa):
        self.family(kassa)

        bought = accrue_as(kassa, by_card("MC-1"), basket(200, "M-R-1"), "m-buy-1")
        spent = redeem_as(kassa, by_card("MC-1"), 700, "m-spend-1")

        assert bought.account_id == "P-1" and bought.calculation.earned_points == 200
        assert spent.account_id == "P-1" and spent.redeemed_points == 700
        assert balance(kassa, "P-1").available_points == 1_000 + 200 - 700
        assert balance(kassa, "M-1") == balance(kassa, "P-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem_as(kassa, by_card("MC-1"), 501, "m-spend-2")

        pooled = {t.request_id: t for t in statement(kassa, "P-1")}
        for request_id in ("m-buy-1", "m-spend-1"):
            assert pooled[request_id].member_account_id == "M-1"
        assert pooled["p-buy-1"].member_account_id == ""
        assert {"m-buy-1", "m-spend-1"} <= {t.request_id for t in statement(kassa, "M-1")}
        member = get_account(kassa, by_account("M-1"))
        assert member.lifetime_earned_points == 200  # the member's own history, not the pool's

    def test_a_members_purchase_returns_from_the_pool(self, kassa):
        self.family(kassa)
        bought = accrue_as(kassa, by_card("MC-1"), basket(200, "M-R-1"), "m-buy-1")

        reply = rollback(kassa, "m-return-1", transaction_id=bought.transaction_id)

        assert (reply.account_id, reply.clawed_back_points) == ("P-1", 200)
        assert balance(kassa, "P-1").available_points == 1_000
        assert_verifies(kassa)

    def test_leaving_keeps_the_pooled_points_with_the_parent(self, kassa):
        self.family(kassa)
        accrue_as(kassa, by_card("MC-1"), basket(200, "M-R-1"), "m-buy-1")

        left = leave(kassa, "M-1")

        assert left.parent_account_id == "" and left.balance.available_points == 0
        assert balance(kassa, "P-1").available_points == 1_200
        assert list(get_account(kassa, by_account("P-1")).member_account_ids) == []
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem_as(kassa, by_card("MC-1"), 1, "m-spend-1")
        accrue_as(kassa, by_card("MC-1"), basket(50, "M-R-2"), "m-buy-2")  # earns for itself now
        assert balance(kassa, "M-1").available_points == 50
        assert balance(kassa, "P-1").available_points == 1_200

    def test_a_member_must_join_empty(self, kassa):
        open_account(kassa, "P-1")
        open_account(kassa, "M-1")
        earn(kassa, "M-1", 10, request_id="m-buy-1")
        before = snapshot(kassa, "M-1"), snapshot(kassa, "P-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY"):
            join(kassa, "M-1", "P-1")

        assert (snapshot(kassa, "M-1"), snapshot(kassa, "P-1")) == before
        assert get_account(kassa, by_account("M-1")).parent_account_id == ""

    def test_groups_are_one_level_deep(self, kassa):
        self.family(kassa)
        open_account(kassa, "X-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_GROUP"):
            join(kassa, "X-1", "M-1")  # a member cannot be a parent
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_GROUP"):
            join(kassa, "M-1", "X-1")  # nor join a second group
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_GROUP"):
            leave(kassa, "X-1")
        with refused(grpc.StatusCode.NOT_FOUND):
            join(kassa, "X-1", "P-404")


class TestActivation:
    def test_points_are_pending_until_the_delay_passes(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=program_rules(tmp_path, activation_delay_days=14))
        open_account(kassa, "A-1")

        bought = accrue(kassa, "A-1", basket(1_000, "R-1"), "buy-1")

        activate_at = bought.calculation.points_activate_at.ToMilliseconds()
        assert activate_at >= kassa.clock.now_ms + 14 * DAY_MS
        now = balance(kassa, "A-1")
        assert (now.active_points, now.pending_points, now.available_points) == (0, 1_000, 0)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1, request_id="spend-1")

        kassa.clock.set(activate_at - 1)
        assert balance(kassa, "A-1").pending_points == 1_000
        kassa.clock.set(activate_at)
        now = balance(kassa, "A-1")
        assert (now.active_points, now.pending_points, now.available_points) == (1_000, 0, 1_000)
        assert (now.next_expiry_at.ToMilliseconds(), now.next_expiry_points) == (
            bought.calculation.points_expire_at.ToMilliseconds(), 1_000)
        assert redeem(kassa, "A-1", 400, request_id="spend-2").balance.available_points == 600

    def test_a_return_inside_the_window_cancels_the_pending_points_first(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=program_rules(tmp_path, activation_delay_days=14))
        open_account(kassa, "A-1")
        first = accrue(kassa, "A-1", basket(1_000, "R-1"), "buy-1")
        kassa.clock.set(first.calculation.points_activate_at.ToMilliseconds() + DAY_MS)
        second = accrue(kassa, "A-1", basket(500, "R-2"), "buy-2")  # pending again
        assert (balance(kassa, "A-1").active_points, balance(kassa, "A-1").pending_points) == (1_000, 500)

        reply = rollback(kassa, "return-2", transaction_id=second.transaction_id)

        assert (reply.clawed_back_points, reply.debt_points) == (500, 0)
        now = balance(kassa, "A-1")
        assert (now.active_points, now.pending_points, now.debt_points) == (1_000, 0, 0)
        assert_verifies(kassa)


class TestExpiry:
    def test_points_run_out_after_their_lifetime_without_any_sweep(self, kassa):
        open_account(kassa, "A-1")
        bought = earn(kassa, "A-1", 1_000, request_id="buy-1")
        expire_at = bought.calculation.points_expire_at.ToMilliseconds()
        assert expire_at >= kassa.clock.now_ms + LIFETIME_DAYS * DAY_MS

        before = balance(kassa, "A-1")
        assert (before.next_expiry_at.ToMilliseconds(), before.next_expiry_points) == (expire_at, 1_000)
        kassa.clock.set(expire_at - 1)
        assert balance(kassa, "A-1").active_points == 1_000

        kassa.clock.advance(days=1)
        after = balance(kassa, "A-1")
        assert (after.active_points, after.available_points, after.next_expiry_points) == (0, 0, 0)
        assert not after.HasField("next_expiry_at")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1, request_id="spend-1")

    def test_points_of_a_purchase_batched_after_a_cancelled_one_still_expire(self, kassa):
        """One ProcessBatch (one commit, one `now`): buy, cancel it, buy again. The second purchase's
        points land in the first one's emptied lot of the same day and must expire with it."""
        open_account(kassa, "A-1")
        operations = [
            processing_pb2.Operation(accrue=processing_pb2.AccrueRequest(
                request_id="buy-1", customer=by_account("A-1"), receipt=basket(1_000, "R-1"))),
            processing_pb2.Operation(rollback=processing_pb2.RollbackRequest(
                request_id="cancel-1", original_request_id="buy-1")),
            processing_pb2.Operation(accrue=processing_pb2.AccrueRequest(
                request_id="buy-2", customer=by_account("A-1"), receipt=basket(1_000, "R-2"))),
        ]
        results = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results
        assert [r.code for r in results] == [common_pb2.CODE_OK] * 3
        assert balance(kassa, "A-1").active_points == 1_000

        kassa.clock.set(results[2].accrue.calculation.points_expire_at.ToMilliseconds())

        assert balance(kassa, "A-1").active_points == 0
        assert expire_points(kassa).expired_points == 1_000

    def test_next_expiry_names_the_earliest_lot(self, kassa):
        open_account(kassa, "A-1")
        first = earn(kassa, "A-1", 300, request_id="buy-1")
        kassa.clock.advance(days=10)
        earn(kassa, "A-1", 200, request_id="buy-2")
        now = balance(kassa, "A-1")
        assert now.next_expiry_at.ToMilliseconds() == first.calculation.points_expire_at.ToMilliseconds()
        assert now.next_expiry_points == 300

        redeem(kassa, "A-1", 100, request_id="spend-1")  # earliest expiry first
        assert balance(kassa, "A-1").next_expiry_points == 200

    def test_expire_points_reports_and_journals_what_expired(self, kassa):
        for account_id, points in (("A-1", 1_000), ("A-2", 250)):
            open_account(kassa, account_id)
            earn(kassa, account_id, points, request_id=f"buy/{account_id}")
        redeem(kassa, "A-1", 100, request_id="spend-1")
        kassa.clock.advance(days=LIFETIME_DAYS + 1)

        swept = expire_points(kassa)

        assert swept.expired_points == 900 + 250
        assert swept.accounts_settled >= 2
        for account_id, points in (("A-1", 900), ("A-2", 250)):
            entries = [t for t in statement(kassa, account_id) if t.kind == accounts_pb2.TRANSACTION_KIND_EXPIRE]
            assert [t.expired_points for t in entries] == [points]
            assert entries[0].created_at.ToMilliseconds() == kassa.clock.now_ms
            assert balance(kassa, account_id).active_points == 0
        again = expire_points(kassa)
        assert again.expired_points == 0
        assert_verifies(kassa)

    def test_inactivity_burns_the_whole_balance_and_activity_postpones_it(self, start_kassa, tmp_path):
        kassa = start_kassa(rules=program_rules(tmp_path, inactivity_burn_days=30))
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        kassa.clock.advance(days=20)
        earn(kassa, "A-1", 500, request_id="buy-2")  # activity: the burn moves to day 50
        kassa.clock.advance(days=30, seconds=-1)
        assert balance(kassa, "A-1").active_points == 1_500

        kassa.clock.advance(seconds=1)
        assert balance(kassa, "A-1").active_points == 0
        assert expire_points(kassa).expired_points == 1_500
        entries = [t for t in statement(kassa, "A-1") if t.kind == accounts_pb2.TRANSACTION_KIND_EXPIRE]
        assert [t.expired_points for t in entries] == [1_500]
        earn(kassa, "A-1", 50, request_id="buy-3")  # a fresh start
        assert balance(kassa, "A-1").active_points == 50
        assert_verifies(kassa)


class TestAdjust:
    def test_credit_and_debit_carry_reason_and_operator_into_the_statement(self, kassa):
        open_account(kassa, "A-1")

        credit = adjust(kassa, "A-1", 500, "adj-1", reason="goodwill: late delivery", operator_id="op-7")
        debit = adjust(kassa, "A-1", -200, "adj-2", reason="duplicate credit", operator_id="op-9")

        assert (credit.account_id, credit.balance.available_points) == ("A-1", 500)
        assert debit.balance.available_points == 300
        entries = {t.request_id: t for t in statement(kassa, "A-1")}
        assert entries["adj-1"].kind == accounts_pb2.TRANSACTION_KIND_ADJUST
        assert (entries["adj-1"].adjusted_points, entries["adj-1"].reason, entries["adj-1"].operator_id) == (
            500, "goodwill: late delivery", "op-7")
        assert (entries["adj-2"].adjusted_points, entries["adj-2"].reason, entries["adj-2"].operator_id) == (
            -200, "duplicate credit", "op-9")
        assert entries["adj-1"].transaction_id == credit.transaction_id

    def test_a_debit_beyond_available_is_refused_and_changes_nothing(self, kassa):
        open_account(kassa, "A-1")
        adjust(kassa, "A-1", 300, "adj-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            adjust(kassa, "A-1", -301, "adj-2")

        assert snapshot(kassa, "A-1") == before
        with refused(grpc.StatusCode.INVALID_ARGUMENT):
            adjust(kassa, "A-1", 0, "adj-3")

    def test_rollback_of_an_adjustment_reverses_it(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        credit = adjust(kassa, "A-1", 500, "adj-1")
        debit = adjust(kassa, "A-1", -200, "adj-2")
        assert balance(kassa, "A-1").available_points == 1_300

        undo_credit = rollback(kassa, "undo-1", transaction_id=credit.transaction_id)
        undo_debit = rollback(kassa, "undo-2", original_request_id="adj-2")

        assert (undo_credit.reversed_transaction_id, undo_credit.clawed_back_points) == (credit.transaction_id, 500)
        assert (undo_debit.reversed_transaction_id, undo_debit.restored_points) == (debit.transaction_id, 200)
        assert balance(kassa, "A-1").available_points == 1_000
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_ROLLED_BACK"):
            rollback(kassa, "undo-3", transaction_id=credit.transaction_id)
        assert_verifies(kassa)


class TestAttributes:
    def test_set_attributes_shows_in_get_account_and_replaces_the_old_ones(self, kassa):
        kassa.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
            request_id="create/A-1", account_id="A-1", phone="+7-900-000-01"))

        reply = kassa.accounts.SetAttributes(accounts_pb2.SetAttributesRequest(
            request_id="attrs-1", customer=by_phone("+7-900-000-01"), segments=["vip", "b2b"], tags=["new"],
            birthday="04-12", clubs=["wine"]))

        assert reply.account.account_id == "A-1"
        account = get_account(kassa, by_account("A-1"))
        assert (list(account.segments), list(account.tags), account.birthday, list(account.clubs)) == (
            ["vip", "b2b"], ["new"], "04-12", ["wine"])

        kassa.accounts.SetAttributes(accounts_pb2.SetAttributesRequest(
            request_id="attrs-2", customer=by_account("A-1"), segments=["vip"]))
        account = get_account(kassa, by_account("A-1"))
        assert (list(account.segments), list(account.tags), account.birthday, list(account.clubs)) == (
            ["vip"], [], "", [])
        with refused(grpc.StatusCode.INVALID_ARGUMENT):
            kassa.accounts.SetAttributes(accounts_pb2.SetAttributesRequest(
                request_id="attrs-3", customer=by_account("A-1"), birthday="13-40"))


class TestRollbackBeforeArrival:
    def test_the_late_original_is_refused_and_has_no_effect(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 100, request_id="buy-0")

        tombstone = rollback(kassa, "cancel-late", original_request_id="store-1/term-1/R-404")

        assert tombstone.transaction_id == 0
        before = snapshot(kassa, "A-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            accrue(kassa, "A-1", basket(500, "R-404"), "store-1/term-1/R-404")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            redeem(kassa, "A-1", 10, request_id="store-1/term-1/R-404")
        assert snapshot(kassa, "A-1") == before
        again = rollback(kassa, "cancel-late", original_request_id="store-1/term-1/R-404")
        assert again.SerializeToString(deterministic=True) == tombstone.SerializeToString(deterministic=True)
        kassa.restart()
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            accrue(kassa, "A-1", basket(500, "R-404"), "store-1/term-1/R-404")
        assert snapshot(kassa, "A-1") == before


class TestConcurrentDuplicates:
    COPIES = 8

    def test_the_same_accrue_sent_eight_times_at_once_takes_effect_once(self, kassa):
        open_account(kassa, "A-1")
        request = processing_pb2.AccrueRequest(
            request_id="store-1/term-1/R-8", customer=by_account("A-1"), receipt=basket(1_234, "R-8"))
        channels = [grpc.insecure_channel(kassa.address) for _ in range(self.COPIES)]
        start = threading.Barrier(self.COPIES)
        answers: list = [None] * self.COPIES

        def send(index: int) -> None:
            stub = type(kassa.processing)(channels[index])
            start.wait()
            try:
                answers[index] = stub.Accrue(request, timeout=30).SerializeToString(deterministic=True)
            except grpc.RpcError as error:
                answers[index] = error.code()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(self.COPIES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for channel in channels:
            channel.close()

        oks = [answer for answer in answers if isinstance(answer, bytes)]
        others = [answer for answer in answers if not isinstance(answer, bytes)]
        assert oks, answers
        assert len(set(oks)) == 1, "every OK answer is the same bytes"
        assert set(others) <= {grpc.StatusCode.ABORTED}, others
        assert balance(kassa, "A-1").available_points == 1_234
        accrued = [t for t in statement(kassa, "A-1") if t.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE]
        assert [t.request_id for t in accrued] == ["store-1/term-1/R-8"]
        retry = kassa.processing.Accrue(request).SerializeToString(deterministic=True)
        assert retry == oks[0]
