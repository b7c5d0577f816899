"""Statements that reconcile: every change to a balance is a journal entry with its own kind and
amount, a clamp's write-off included; `kassa verify` adds every account's statement up against its
points; and every Balance a write answers carries the next expiry, as GetBalance does."""

from __future__ import annotations

import json
import shutil

import lmdb
import msgspec
import pytest

from kassa.core_ext import records as ledger_records
from kassa.v1 import accounts_pb2, processing_pb2
from tests.kassa_harness import REPO
from tests.server.helpers import (
    accrue, balance, by_account, earn, expiry_ms, line, open_account, receipt, redeem, rollback, statement,
)

WRITE_OFF = accounts_pb2.TRANSACTION_KIND_WRITE_OFF
ROLLBACK = accounts_pb2.TRANSACTION_KIND_ROLLBACK


def rules_with(tmp_path, old: str, new: str):
    """A copy of config/rules with one setting of program.toml changed."""
    rules = tmp_path / "rules-changed"
    shutil.copytree(REPO / "config" / "rules", rules)
    program = rules / "program.toml"
    text = program.read_text()
    assert old in text
    program.write_text(text.replace(old, new))
    return rules


@pytest.fixture
def clamp(start_kassa, tmp_path):
    return start_kassa(rules=rules_with(tmp_path, 'clawback = "negative"', 'clawback = "clamp"'))


def spend_most_then_return(kassa) -> processing_pb2.RollbackResponse:
    """1,000 points earned, 800 of them spent, then the purchase returned: 200 left to take back."""
    open_account(kassa, "A-1")
    bought = earn(kassa, "A-1", 1_000, request_id="buy-1")
    redeem(kassa, "A-1", 800, request_id="spend-1")
    return rollback(kassa, "return-1", transaction_id=bought.transaction_id)


def points(the_balance) -> int:
    """What an account's statement adds up to: its active (less debt) and pending points."""
    return the_balance.active_points + the_balance.pending_points


def verify(kassa):
    result = kassa.run_cli("verify", "--config", str(kassa.config_path()))
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def rewrite_journal(kassa, change) -> None:
    """With the server stopped, let `change(journal, accounts)` rewrite LMDB records directly."""
    kassa.stop()
    env = lmdb.open(str(kassa.ledger_path), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            change(_Records(txn, env.open_db(b"journal", txn=txn), ledger_records.decode_txn),
                   _Records(txn, env.open_db(b"accounts", txn=txn), ledger_records.decode_account))
    finally:
        env.close()


class _Records:
    def __init__(self, txn, db, decode):
        self.txn, self.db, self.decode = txn, db, decode

    def key(self, key) -> bytes:
        return key.to_bytes(8, "big") if isinstance(key, int) else key.encode()

    def get(self, key):
        return self.decode(self.txn.get(self.key(key), db=self.db))

    def put(self, key, record) -> None:
        self.txn.put(self.key(key), msgspec.msgpack.encode(record), db=self.db)

    def delete(self, key) -> None:
        assert self.txn.delete(self.key(key), db=self.db)


class TestClampWriteOffs:
    def test_the_rollback_answer_says_what_was_taken_and_what_written_off(self, clamp):
        reply = spend_most_then_return(clamp)

        assert reply.clawed_back_points == 1_000
        assert (reply.taken_points, reply.written_off_points, reply.debt_points) == (200, 800, 0)
        assert points(reply.balance) == 0

    def test_the_write_off_is_an_entry_of_its_own_and_the_statement_adds_up(self, clamp):
        reply = spend_most_then_return(clamp)

        entries = statement(clamp, "A-1")

        write_off, returned = entries[0], entries[1]
        assert (write_off.kind, write_off.written_off_points, write_off.balance_change_points) == (WRITE_OFF, 800, 800)
        assert write_off.reverses_transaction_id == reply.transaction_id
        assert write_off.actor == "system"
        assert (returned.kind, returned.clawed_back_points, returned.balance_change_points) == (ROLLBACK, 1_000, -1_000)
        assert [t.balance_change_points for t in entries] == [800, -1_000, -800, 1_000, 0]
        assert sum(t.balance_change_points for t in entries) == points(balance(clamp, "A-1")) == 0
        shown = sum(t.earned_points - t.redeemed_points - t.clawed_back_points + t.written_off_points for t in entries)
        assert shown == 0

    def test_under_the_negative_policy_the_rest_is_debt_and_no_write_off(self, kassa):
        reply = spend_most_then_return(kassa)

        assert (reply.taken_points, reply.written_off_points, reply.debt_points) == (200, 0, 800)
        entries = statement(kassa, "A-1")
        assert WRITE_OFF not in [t.kind for t in entries]
        assert sum(t.balance_change_points for t in entries) == points(balance(kassa, "A-1")) == -800


class TestVerifyAddsStatementsUp:
    def test_verify_passes_on_a_ledger_with_write_offs_holds_expiry_and_groups(self, clamp):
        spend_most_then_return(clamp)
        open_account(clamp, "A-2")
        bought = earn(clamp, "A-2", 500, request_id="a2-buy")
        hold = redeem(clamp, "A-2", 100, request_id="a2-hold", hold=True)
        rollback(clamp, "a2-void", transaction_id=hold.transaction_id)
        redeem(clamp, "A-2", 300, request_id="a2-spend")
        rollback(clamp, "a2-return", transaction_id=bought.transaction_id)
        clamp.clock.advance(days=400)
        earn(clamp, "A-1", 50, request_id="a1-late")

        result, summary = verify(clamp)

        assert result.returncode == 0, result.stdout + result.stderr
        assert summary["violations"] == 0

    def test_a_write_off_no_entry_shows_fails_verify_naming_the_account(self, clamp):
        reply = spend_most_then_return(clamp)
        open_account(clamp, "A-HONEST")
        earn(clamp, "A-HONEST", 300, request_id="honest-buy")

        def drop_the_write_off(journal, accounts):
            # As if the clamp had dropped 800 points without a trace: no WRITE_OFF entry, and the
            # rollback's entry neither owes them nor says they were forgiven.
            account = accounts.get("A-1")
            write_off = journal.get(account.last_txn_id)
            assert write_off.kind == WRITE_OFF
            journal.delete(write_off.txn_id)
            entry = journal.get(reply.transaction_id)
            entry.debt_delta = 0
            journal.put(entry.txn_id, entry)
            account.last_txn_id = entry.txn_id
            accounts.put("A-1", account)

        rewrite_journal(clamp, drop_the_write_off)
        result, summary = verify(clamp)

        assert result.returncode == 1
        assert summary["ok"] is False
        assert "account A-1: statement adds up to -800 points, expected 0" in result.stdout
        assert f"transaction {reply.transaction_id} (rollback) shows -1000 points" in result.stdout
        assert "A-HONEST" not in result.stdout

    def test_a_rollback_written_before_write_off_entries_still_verifies(self, clamp):
        """Older ledgers kept a clamp's write-off in the rollback's own entry (`forgiven`), with no
        WRITE_OFF entry: that entry shows it, and verify counts it."""
        reply = spend_most_then_return(clamp)

        def as_older_code_wrote_it(journal, accounts):
            account = accounts.get("A-1")
            journal.delete(account.last_txn_id)
            entry = journal.get(reply.transaction_id)
            entry.debt_delta, entry.forgiven = 0, 800
            journal.put(entry.txn_id, entry)
            account.last_txn_id = entry.txn_id
            accounts.put("A-1", account)

        rewrite_journal(clamp, as_older_code_wrote_it)
        result, summary = verify(clamp)

        assert result.returncode == 0, result.stdout
        assert summary["violations"] == 0
        clamp.start()
        returned = statement(clamp, "A-1")[0]
        assert (returned.clawed_back_points, returned.written_off_points) == (1_000, 800)
        assert returned.balance_change_points == -200


class TestBalancesInWriteAnswers:
    def test_every_write_answer_names_the_next_expiry_as_get_balance_does(self, kassa):
        open_account(kassa, "A-1")
        pairs = []  # (what, the Balance it answered, GetBalance right after)

        def answered(what, reply):
            pairs.append((what, reply.balance, balance(kassa, "A-1")))
            return reply

        bought = answered("accrue", earn(kassa, "A-1", 1_000, request_id="buy-1"))
        expires_at_ms = expiry_ms(kassa.clock.now_ms)
        kassa.clock.advance(days=2)  # a second lot, expiring two days later
        answered("accrue again", earn(kassa, "A-1", 400, request_id="buy-2"))
        answered("redeem", redeem(kassa, "A-1", 300, request_id="spend-1"))
        hold = answered("hold", redeem(kassa, "A-1", 100, request_id="hold-1", hold=True))
        answered("void", rollback(kassa, "void-1", transaction_id=hold.transaction_id))
        answered("adjust", kassa.accounts.Adjust(accounts_pb2.AdjustRequest(
            request_id="adjust-1", customer=by_account("A-1"), points=50, reason="goodwill", operator_id="op-1")))
        answered("calculate", kassa.processing.Calculate(processing_pb2.CalculateRequest(
            customer=by_account("A-1"), receipt=receipt(line(1, 2_000)))))
        answered("rollback", rollback(kassa, "return-1", transaction_id=bought.transaction_id))

        first = pairs[0][1]
        assert (first.next_expiry_at.ToMilliseconds(), first.next_expiry_points) == (expires_at_ms, 1_000)
        for what, answer, read in pairs:
            assert answer.HasField("next_expiry_at"), what
            assert answer == read, f"{what}: answered {answer}, GetBalance {read}"

    def test_an_account_written_before_its_lots_were_kept_in_expiry_order_still_answers_right(self, kassa):
        """Answers read the next expiry from the first lots of an account's open lots, which the
        ledger keeps in expiry order; an older record is put in order by its next write."""
        open_account(kassa, "A-1")
        first_expiry_ms = expiry_ms(kassa.clock.now_ms)
        for day in range(3):
            earn(kassa, "A-1", 100 + day, request_id=f"buy-{day}")
            kassa.clock.advance(days=2)

        def as_older_code_kept_it(journal, accounts):
            account = accounts.get("A-1")
            assert account.lots_by_expiry and len(account.open_lot_ids) == 3
            account.open_lot_ids.reverse()
            account.lots_by_expiry = False
            accounts.put("A-1", account)

        rewrite_journal(kassa, as_older_code_kept_it)
        kassa.start()

        read = balance(kassa, "A-1")
        assert (read.next_expiry_at.ToMilliseconds(), read.next_expiry_points) == (first_expiry_ms, 100)
        answered = earn(kassa, "A-1", 5, request_id="buy-later").balance
        assert (answered.next_expiry_at.ToMilliseconds(), answered.next_expiry_points) == (first_expiry_ms, 100)
        result, summary = verify(kassa)
        assert result.returncode == 0, result.stdout

        def in_order_now(journal, accounts):
            account = accounts.get("A-1")
            assert account.lots_by_expiry
            assert account.open_lot_ids == sorted(account.open_lot_ids)  # these lots expire in id order

        rewrite_journal(kassa, in_order_now)


class TestConventions:
    """What the reference writes down: one convention for a lot's dates, who pays for a return of
    a member who left its group, and the statement's page size."""

    def test_a_manual_credit_expires_on_a_utc_midnight_as_every_lot_does(self, kassa):
        open_account(kassa, "A-1")
        credited_at_ms = kassa.clock.now_ms  # 08:00 UTC

        credit = kassa.accounts.Adjust(accounts_pb2.AdjustRequest(
            request_id="adjust-1", customer=by_account("A-1"), points=500, reason="goodwill", operator_id="op-1"))

        assert credit.balance.next_expiry_at.ToMilliseconds() == expiry_ms(credited_at_ms)
        assert balance(kassa, "A-1").next_expiry_at.ToMilliseconds() == expiry_ms(credited_at_ms)

    def test_a_return_of_a_member_who_left_its_group_comes_from_the_group(self, kassa):
        open_account(kassa, "P-1")
        open_account(kassa, "M-1")
        kassa.accounts.JoinGroup(accounts_pb2.JoinGroupRequest(
            request_id="join-1", account_id="M-1", parent_account_id="P-1"))
        bought = earn(kassa, "M-1", 300, request_id="m-buy-1")
        kassa.accounts.LeaveGroup(accounts_pb2.LeaveGroupRequest(request_id="leave-1", account_id="M-1"))
        earn(kassa, "M-1", 40, request_id="m-buy-2")  # its own points now

        reply = rollback(kassa, "m-return-1", transaction_id=bought.transaction_id)

        assert (reply.account_id, reply.clawed_back_points) == ("P-1", 300)
        assert points(balance(kassa, "P-1")) == 0
        assert points(balance(kassa, "M-1")) == 40
        member = kassa.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account("M-1")))
        assert member.lifetime_earned_points == 40  # the member's own history loses the return
        assert member.purchases == 2  # purchases count, rolled back or not
        returned = next(t for t in statement(kassa, "M-1") if t.request_id == "m-return-1")
        assert (returned.member_account_id, returned.balance_change_points) == ("M-1", 0)
        assert sum(t.balance_change_points for t in statement(kassa, "M-1")) == 40

    def test_a_statement_page_is_50_entries_unless_asked(self, kassa):
        open_account(kassa, "A-1")
        for number in range(60):
            kassa.accounts.Adjust(accounts_pb2.AdjustRequest(
                request_id=f"adjust-{number}", customer=by_account("A-1"), points=1, reason="r", operator_id="op"))

        def page(size):
            return kassa.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
                customer=by_account("A-1"), page_size=size))

        assert len(page(0).transactions) == 50
        assert page(0).next_page_token
        assert len(page(10_000).transactions) == 61
        assert not page(10_000).next_page_token
