"""Partitions: JoinGroup of a member in another partition than its group's, against a real server at
P = 2. The (empty) member moves to the group's partition with its account record, cards, phone and its
record's history (creation, cards: renumbered there, its requests replaying as before); the directory
forwards its id, card and phone there. A member that ever had points stays, refused. A move a crash
cut short (taken out of its partition, not yet in the group's) is finished by the relay at start.
"""

from __future__ import annotations

import grpc

from kassa.core_ext.model import JoinGroupOp, MoveOutOp
from kassa.core_ext.outbox import MOVE_OUT_SUFFIX
from kassa.core_ext.partitions import PARTITION_SHIFT_BITS
from kassa.v1 import accounts_pb2, common_pb2
from tests.reliability import CALL_TIMEOUT_S, purchase
from tests.server.helpers import by_card, refused, statement
from tests.server.test_partitions_relay import (
    assert_relayed_cleanly, one_in_each, open_partitioned, start, wait_until,
)

PURCHASE_POINTS = 100


def create(server, account_id: str, phone: str = "", card: str = ""):
    created = server.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
        request_id=f"create/{account_id}", account_id=account_id, phone=phone), timeout=CALL_TIMEOUT_S)
    if card:
        server.accounts.IssueCard(accounts_pb2.IssueCardRequest(
            request_id=f"card/{card}", account_id=account_id, card=card), timeout=CALL_TIMEOUT_S)
    return created


def join(server, request_id: str, member: str, group: str):
    return server.accounts.JoinGroup(accounts_pb2.JoinGroupRequest(
        request_id=request_id, account_id=member, parent_account_id=group), timeout=CALL_TIMEOUT_S)


def moved_into(server, customer: common_pb2.Customer, group: str) -> bool:
    """Whether the customer is found, in `group` (while it moves, it may not be found)."""
    try:
        return account(server, customer).parent_account_id == group
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        return False


def account(server, customer: common_pb2.Customer):
    return server.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=customer), timeout=CALL_TIMEOUT_S)


class TestJoinAcrossPartitions:
    def test_the_member_moves_to_the_group_and_is_found_there_by_id_card_and_phone(self, start_kassa):
        server = start(start_kassa)
        group, member = one_in_each("JG")
        create(server, group)
        created = create(server, member, phone="+100200300", card="CARD-JG")

        joined = join(server, "join/1", member, group)
        again = join(server, "join/1", member, group)
        bought = server.processing.Accrue(
            purchase(member, "buy/jg", PURCHASE_POINTS), timeout=CALL_TIMEOUT_S)
        replayed = create(server, member, phone="+100200300")

        assert joined.parent_account_id == group
        assert again.SerializeToString(deterministic=True) == joined.SerializeToString(deterministic=True)
        assert replayed.SerializeToString(deterministic=True) == created.SerializeToString(deterministic=True)
        for customer in (common_pb2.Customer(account_id=member), by_card("CARD-JG"),
                         common_pb2.Customer(phone="+100200300")):
            assert account(server, customer).account_id == member
            assert account(server, customer).parent_account_id == group
        assert bought.transaction_id >> PARTITION_SHIFT_BITS == 0  # the group's partition took the purchase
        assert account(server, common_pb2.Customer(account_id=group)).balance.active_points == PURCHASE_POINTS
        kinds = [entry.kind for entry in reversed(statement(server, member))]
        assert kinds[:3] == [accounts_pb2.TRANSACTION_KIND_CREATE_ACCOUNT, accounts_pb2.TRANSACTION_KIND_ISSUE_CARD,
                             accounts_pb2.TRANSACTION_KIND_JOIN_GROUP]
        assert_relayed_cleanly(server)

    def test_a_member_that_had_points_is_refused_and_stays(self, start_kassa):
        server = start(start_kassa)
        group, member = one_in_each("JR")
        create(server, group)
        create(server, member)
        server.processing.Accrue(purchase(member, "buy/jr", PURCHASE_POINTS), timeout=CALL_TIMEOUT_S)
        server.accounts.Adjust(accounts_pb2.AdjustRequest(
            request_id="adj/jr", customer=common_pb2.Customer(account_id=member), points=-PURCHASE_POINTS,
            reason="test", operator_id="op-1"), timeout=CALL_TIMEOUT_S)

        with refused(grpc.StatusCode.FAILED_PRECONDITION) as refusal:
            join(server, "join/jr", member, group)

        assert "history of points" in refusal.details
        assert account(server, common_pb2.Customer(account_id=member)).parent_account_id == ""
        assert_relayed_cleanly(server)


def test_a_move_a_crash_cut_short_is_finished_at_start(start_kassa):
    server = start(start_kassa)
    group, member = one_in_each("JC")
    create(server, group)
    create(server, member, card="CARD-JC")
    server.stop()
    op = JoinGroupOp("join/jc", b"join-digest", member, group)
    with open_partitioned(server) as ledger:  # taken out of partition 1; the server is gone before it goes in
        (outcome,) = ledger.writers[1].apply([MoveOutOp("join/jc" + MOVE_OUT_SUFFIX, op.digest, op, 0)],
                                             int(server.clock.path.read_text()))
        assert outcome.code == 0, outcome.message

    server.start()
    wait_until(lambda: moved_into(server, by_card("CARD-JC"), group))

    assert account(server, common_pb2.Customer(account_id=group)).member_account_ids == [member]
    assert_relayed_cleanly(server)
