"""Group commit: hundreds of concurrent unary calls share write transactions, and still every caller
gets exactly the answer it would have got alone, and the ledger holds exactly what was answered."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass

import grpc

from kassa.v1 import common_pb2, processing_pb2, processing_pb2_grpc
from tests.server.helpers import REASON_KEY, balance, by_account, receipt
from tests.server.stream_helpers import (
    earned_by, ledger_transactions, open_accounts, points_statement, purchase_request, verify,
)

ACCOUNTS = [f"A-{n:02d}" for n in range(20)]
SEED_PRICE = 200_000  # earns 10,000 points
TO_CANCEL_PRICE = 4_000  # earns 200 points
SPEND_POINTS = 500
SPENDS_PER_ACCOUNT = 3
HOLD_POINTS = 700
BUYS_PER_ACCOUNT = 6


@dataclass
class Call:
    """One concurrent call, what it must get, and (once made) what it got."""

    kind: str
    method: str
    request: object
    account_id: str = ""
    points: int = 0  # earned, redeemed, held or clawed back, when OK
    expect: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    names: str = ""  # what the refusal must name: the malformed field, the unknown id
    reply: object = None
    code: grpc.StatusCode | None = None
    details: str = ""
    got_reason: str = ""


def seed_request(account_id: str) -> processing_pb2.AccrueRequest:
    return purchase_request(f"seed/{account_id}", account_id, SEED_PRICE)


def to_cancel_request(account_id: str) -> processing_pb2.AccrueRequest:
    return purchase_request(f"seed-cancel/{account_id}", account_id, TO_CANCEL_PRICE)


def redeem_request(request_id: str, account_id: str, points: int, hold: bool = False) -> processing_pb2.RedeemRequest:
    mode = processing_pb2.REDEEM_MODE_HOLD if hold else processing_pb2.REDEEM_MODE_IMMEDIATE
    return processing_pb2.RedeemRequest(
        request_id=request_id, customer=by_account(account_id), points=points, receipt_total_minor=10**9, mode=mode)


def plan_calls() -> list[Call]:
    calls = []
    for a, account_id in enumerate(ACCOUNTS):
        for k in range(BUYS_PER_ACCOUNT):
            price = 1_000 + 97 * (a * BUYS_PER_ACCOUNT + k)
            calls.append(Call("buy", "Accrue", purchase_request(f"buy/{account_id}/{k}", account_id, price),
                              account_id, earned_by(price)))
        for k in range(SPENDS_PER_ACCOUNT):
            calls.append(Call("spend", "Redeem", redeem_request(f"spend/{account_id}/{k}", account_id, SPEND_POINTS),
                              account_id, SPEND_POINTS))
        calls.append(Call("hold", "Redeem", redeem_request(f"hold/{account_id}", account_id, HOLD_POINTS, hold=True),
                          account_id, HOLD_POINTS))
        calls.append(Call("cancel", "Rollback", processing_pb2.RollbackRequest(
            request_id=f"cancel/{account_id}", original_request_id=f"seed-cancel/{account_id}"),
            account_id, earned_by(TO_CANCEL_PRICE)))
        calls.append(Call("greedy", "Redeem", redeem_request(f"greedy/{account_id}", account_id, 10**7),
                          account_id, expect=grpc.StatusCode.FAILED_PRECONDITION, reason="INSUFFICIENT_POINTS"))
    for k in range(15):
        calls.append(Call("ghost", "Accrue", purchase_request(f"ghost/{k}", f"A-GHOST-{k}", 5_000),
                          expect=grpc.StatusCode.NOT_FOUND, names="customer.account_id"))
    for k in range(15):
        if k % 2:
            request = redeem_request(f"bad/{k}", ACCOUNTS[k], 0)
            calls.append(Call("invalid", "Redeem", request, expect=grpc.StatusCode.INVALID_ARGUMENT, names="points"))
        else:
            bad = common_pb2.Line(line_no=1, sku="S", category="grocery", qty_milli=1_000, price_minor=700, amount_minor=-700)
            request = processing_pb2.AccrueRequest(request_id=f"bad/{k}", customer=by_account(ACCOUNTS[k]),
                                                   receipt=receipt(bad, receipt_no=f"bad/{k}"))
            calls.append(Call("invalid", "Accrue", request, expect=grpc.StatusCode.INVALID_ARGUMENT,
                              names="receipt.lines[0].amount_minor"))
    for account_id in ACCOUNTS[:10]:  # an earlier call's request_id again: the same request, and another one
        calls.append(Call("seed-replay", "Accrue", seed_request(account_id), account_id, earned_by(SEED_PRICE)))
    for account_id in ACCOUNTS[10:]:
        other = purchase_request(f"seed/{account_id}", account_id, SEED_PRICE + 1)
        calls.append(Call("seed-conflict", "Accrue", other, account_id, expect=grpc.StatusCode.ALREADY_EXISTS,
                          names=f"seed/{account_id}"))
    for k, account_id in enumerate(ACCOUNTS[:10]):  # the same request sent twice at once
        for _twin in range(2):
            calls.append(Call("twin", "Accrue", purchase_request(f"twin/{k}", account_id, 3_000 + k),
                              account_id, earned_by(3_000 + k)))
    random.Random(7).shuffle(calls)
    return calls


async def make_calls(address: str, calls: list[Call], at_once: bool = True) -> None:
    """Make the calls on one channel: all at once, or one after another."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = processing_pb2_grpc.ProcessingStub(channel)

        async def make(call: Call) -> None:
            try:
                call.reply = await getattr(stub, call.method)(call.request, timeout=60)
                call.code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                call.code, call.details = error.code(), error.details()
                call.got_reason = dict(error.trailing_metadata() or ()).get(REASON_KEY, "")

        if at_once:
            await asyncio.gather(*(make(call) for call in calls))
        else:
            for call in calls:
                await make(call)


def wire(message) -> bytes:
    return message.SerializeToString(deterministic=True)


def commit_counts(server) -> tuple[int, int]:
    """(groups, operations) committed, from the server's "stopped" log line."""
    for entry in server.log_lines:
        if '"msg":"stopped"' in entry:
            record = json.loads(entry)
            return record["groups_committed"], record["ops_committed"]
    raise AssertionError("the server logged no 'stopped' line")


class TestConcurrentMixedOperations:
    def test_each_concurrent_caller_gets_its_own_answer_and_the_ledger_adds_up(self, kassa):
        open_accounts(kassa, ACCOUNTS)
        seeds = {}
        for account_id in ACCOUNTS:
            seeds[account_id] = kassa.processing.Accrue(seed_request(account_id))
            assert kassa.processing.Accrue(to_cancel_request(account_id)).calculation.earned_points == 200
        sequential_ops = 3 * len(ACCOUNTS)  # each its own group: account, seed, purchase to cancel
        transactions_before = ledger_transactions(kassa)
        calls = plan_calls()
        assert len(calls) >= 300

        asyncio.run(make_calls(kassa.address, calls))

        for call in calls:
            if call.kind == "twin":
                continue
            where = f"{call.kind} {call.request.request_id}: {call.code} {call.details}"
            assert call.code == call.expect, where
            if call.reason:
                assert call.got_reason == call.reason, where
            if call.names:
                assert call.names in call.details, where
            if call.code != grpc.StatusCode.OK:
                continue
            assert call.reply.account_id == call.account_id, where
            assert call.reply.transaction_id, where
            if call.kind == "buy":
                assert call.reply.calculation.earned_points == call.points, where
            elif call.kind == "spend":
                assert (call.reply.redeemed_points, call.reply.held_points) == (call.points, 0), where
            elif call.kind == "hold":
                assert (call.reply.redeemed_points, call.reply.held_points) == (0, call.points), where
            elif call.kind == "cancel":
                assert call.reply.kind == processing_pb2.ROLLBACK_KIND_CANCEL, where
                assert call.reply.reversed_transaction_id == seeds_to_cancel(kassa, call.account_id), where
                assert (call.reply.clawed_back_points, call.reply.restored_points, call.reply.debt_points) == (
                    call.points, 0, 0), where
            elif call.kind == "seed-replay":
                assert wire(call.reply) == wire(seeds[call.account_id]), where
        twins = {}
        for call in (c for c in calls if c.kind == "twin"):
            twins.setdefault(call.request.request_id, []).append(call)
        for request_id, pair in twins.items():
            codes = sorted(call.code.name for call in pair)
            assert codes in (["OK", "OK"], ["ABORTED", "OK"]), (request_id, [(c.code, c.details) for c in pair])
            replies = [wire(call.reply) for call in pair if call.code == grpc.StatusCode.OK]
            assert len(set(replies)) == 1, request_id  # both OK: one transaction, answered twice
            assert pair[0].account_id and all(
                call.reply.calculation.earned_points == call.points for call in pair if call.reply), request_id

        made = [call for call in calls if call.code == grpc.StatusCode.OK and call.kind != "seed-replay"]
        new_transactions = {call.reply.transaction_id for call in made}
        assert len(new_transactions) == len(made) - sum(
            1 for pair in twins.values() if all(c.code == grpc.StatusCode.OK for c in pair))
        assert ledger_transactions(kassa) == transactions_before + len(new_transactions)
        for account_id in ACCOUNTS:
            mine = [call for call in made if call.account_id == account_id]
            earned = sum(call.points for call in mine if call.kind in ("buy",)) + sum(
                {call.request.request_id: call.points for call in mine if call.kind == "twin"}.values())
            spent = sum(call.points for call in mine if call.kind == "spend")
            clawed = sum(call.points for call in mine if call.kind == "cancel")
            now = balance(kassa, account_id)
            active = earned_by(SEED_PRICE) + earned_by(TO_CANCEL_PRICE) + earned - spent - clawed
            assert (now.active_points, now.held_points, now.available_points, now.debt_points) == (
                active, HOLD_POINTS, active - HOLD_POINTS, 0), account_id
            entries = points_statement(kassa, account_id)
            twin_count = len({call.request.request_id for call in mine if call.kind == "twin"})
            assert len(entries) == 2 + BUYS_PER_ACCOUNT + SPENDS_PER_ACCOUNT + 1 + 1 + twin_count, account_id
            assert {t.transaction_id for t in entries} >= {call.reply.transaction_id for call in mine}, account_id
        verify(kassa)

        # The commits were shared: far fewer write transactions than operations.
        kassa.stop()
        groups, operations = commit_counts(kassa)
        concurrent_groups, concurrent_ops = groups - sequential_ops, operations - sequential_ops
        assert concurrent_ops >= len(calls) - 15 - 15 - 10, (groups, operations)  # all but malformed and ABORTED
        assert concurrent_groups * 2 <= concurrent_ops, (
            f"{concurrent_ops} concurrent operations took {concurrent_groups} commits")

        # After a restart every answered call replays byte for byte, with no new effect.
        kassa.start()
        before = ledger_transactions(kassa)
        answered = [call for call in calls if call.code in (
            grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)]
        retries = [Call(call.kind, call.method, call.request) for call in answered]
        asyncio.run(make_calls(kassa.address, retries, at_once=False))
        for call, again in zip(answered, retries):
            where = f"{call.request.request_id}: {again.code} {again.details}"
            if call.code == grpc.StatusCode.ABORTED:  # the twin that was turned away gets its sibling's answer
                call = next(c for c in twins[call.request.request_id] if c is not call)
            assert again.code == call.code, where
            if call.code == grpc.StatusCode.OK:
                assert wire(again.reply) == wire(call.reply), where
            else:
                assert again.details == call.details, where
        assert ledger_transactions(kassa) == before


def seeds_to_cancel(server, account_id: str) -> int:
    """The transaction id of the account's purchase made to be cancelled."""
    return next(t.transaction_id for t in points_statement(server, account_id)
                if t.request_id == f"seed-cancel/{account_id}")
