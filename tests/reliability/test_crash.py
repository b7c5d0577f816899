"""Crash at any moment (DESIGN §4.6): kill -9 under load, restart, re-send, nothing acknowledged lost.

Each round starts load threads (Accrue and Redeem with unique request ids, several threads per
account so that operations share group commits), kills the server with SIGKILL after a random
delay, restarts it on the same ledger and re-sends every request with its request id: an
acknowledged one must replay byte for byte (the same transaction_id), an unacknowledged one gets
OK or a business refusal and is applied once. Then `kassa verify` exits 0, every account's
statement holds exactly the requests answered OK (each once) and its balance is exactly what they
imply.

Rounds: 3 by default; the long profile sets CRASH_TEST_ROUNDS (e.g. CRASH_TEST_ROUNDS=200).
The random seed is printed (pytest -s shows it; a failure report shows it too); CRASH_TEST_SEED
replays a run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from tests.reliability import (
    BUSINESS_REFUSALS, CALL_TIMEOUT_S, accounts_stub, assert_verifies, create_account, fresh_channel,
    processing_stub, purchase, spend, transactions_by_request,
)
from tests.server.helpers import balance

ROUNDS = int(os.environ.get("CRASH_TEST_ROUNDS", "3"))
SEED = int(os.environ.get("CRASH_TEST_SEED", str(random.SystemRandom().randrange(2**32))))
ACCOUNTS = 3
THREADS_PER_ACCOUNT = 2
KILL_AFTER_S = (0.05, 0.8)  # the random moment, after the load started
OPENING_POINTS = 500


@dataclass
class Sent:
    """One request and what became of it."""

    account_id: str
    kind: str  # "accrue" | "redeem"
    request: object
    points: int  # earned by an accrue, spent by a redeem
    reply: object = None  # the OK answer the client saw before the crash
    refusal: grpc.StatusCode | None = None  # the business refusal the client saw before the crash
    final: str = ""  # after the re-send: "ok" or "refused"


@dataclass
class Load:
    rng: random.Random
    round_no: int
    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(server, load: Load, account_id: str, worker: int, seed: int) -> None:
    """Send operations until the server dies (the first transport error) or the load stops."""
    rng = random.Random(seed)
    with fresh_channel(server) as channel:
        processing = processing_stub(channel)
        for number in range(10**9):
            if load.stop.is_set():
                return
            request_id = f"crash/r{load.round_no}/{account_id}/w{worker}/{number}"
            if rng.random() < 0.7:
                points = rng.randint(1, 400)
                sent = Sent(account_id, "accrue", purchase(account_id, request_id, points), points)
                method = processing.Accrue
            else:
                points = rng.randint(1, 300)
                sent = Sent(account_id, "redeem", spend(account_id, request_id, points), points)
                method = processing.Redeem
            with load.lock:
                load.sent.append(sent)
            try:
                sent.reply = method(sent.request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                if error.code() in BUSINESS_REFUSALS:
                    sent.refusal = error.code()
                    continue
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    load.errors.append(f"{request_id}: {error.code().name} {error.details()}")
                return  # the server is gone: this request is unacknowledged


def resend(server, sent: Sent) -> None:
    """The client's retry after the restart: same request id, same payload."""
    processing = server.processing
    method = processing.Accrue if sent.kind == "accrue" else processing.Redeem
    try:
        reply = method(sent.request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        assert error.code() in BUSINESS_REFUSALS, (
            f"{sent.request.request_id}: re-sent after the crash, got {error.code().name}: {error.details()}"
        )
        assert sent.reply is None, (
            f"{sent.request.request_id} was acknowledged OK (transaction {sent.reply.transaction_id}) "
            f"before the crash; after the restart it is refused: {error.code().name} {error.details()}"
        )
        sent.final = "refused"
        return
    assert sent.refusal is None, (
        f"{sent.request.request_id} was refused {sent.refusal.name} before the crash, "
        f"OK after it: a retry flipped the outcome"
    )
    if sent.reply is not None:
        assert reply.transaction_id == sent.reply.transaction_id, (
            f"{sent.request.request_id}: acknowledged as transaction {sent.reply.transaction_id} before the crash, "
            f"replayed as {reply.transaction_id} after it"
        )
        assert reply.SerializeToString(deterministic=True) == sent.reply.SerializeToString(deterministic=True)
    sent.final = "ok"


class TestKillNineUnderLoad:
    def test_every_acknowledged_transaction_survives_kill_9_at_a_random_moment(self, kassa):
        print(f"\ncrash test seed: {SEED} (replay with CRASH_TEST_SEED={SEED}), rounds: {ROUNDS}")
        rng = random.Random(SEED)
        accounts = [f"CRASH-{n}" for n in range(ACCOUNTS)]
        expected = {account_id: OPENING_POINTS for account_id in accounts}
        with fresh_channel(kassa) as channel:
            for account_id in accounts:
                create_account(accounts_stub(channel), account_id)
                processing_stub(channel).Accrue(
                    purchase(account_id, f"open/{account_id}", OPENING_POINTS), timeout=CALL_TIMEOUT_S
                )
        everything: list[Sent] = []

        for round_no in range(ROUNDS):
            load = Load(rng, round_no)
            threads = [
                threading.Thread(
                    target=drive, args=(kassa, load, account_id, worker, rng.randrange(2**32)), daemon=True
                )
                for account_id in accounts
                for worker in range(THREADS_PER_ACCOUNT)
            ]
            for thread in threads:
                thread.start()
            delay = rng.uniform(*KILL_AFTER_S)
            time.sleep(delay)
            kassa.kill9()
            load.stop.set()
            for thread in threads:
                thread.join(CALL_TIMEOUT_S)
                assert not thread.is_alive(), "a load thread did not notice the crash"
            assert not load.errors, f"round {round_no} (seed {SEED}): unexpected answers: {load.errors[:5]}"
            acked = sum(sent.reply is not None for sent in load.sent)
            print(f"round {round_no}: killed after {delay:.3f}s, {len(load.sent)} sent, {acked} acknowledged OK")

            kassa.start()
            for sent in load.sent:
                resend(kassa, sent)
            for sent in load.sent:
                if sent.final == "ok":
                    sign = 1 if sent.kind == "accrue" else -1
                    expected[sent.account_id] += sign * sent.points
            everything.extend(load.sent)

            assert_verifies(kassa)
            self.assert_ledger_holds_exactly(kassa, accounts, everything, expected, round_no)

    @staticmethod
    def assert_ledger_holds_exactly(kassa, accounts, everything, expected, round_no):
        for account_id in accounts:
            found = transactions_by_request(kassa, account_id)
            for sent in everything:
                if sent.account_id != account_id:
                    continue
                request_id = sent.request.request_id
                transactions = found.get(request_id, [])
                if sent.final == "ok":
                    assert len(transactions) == 1, (
                        f"round {round_no} (seed {SEED}): {request_id} answered OK is in the ledger "
                        f"{len(transactions)} times"
                    )
                    if sent.reply is not None:
                        assert transactions[0].transaction_id == sent.reply.transaction_id
                    moved = transactions[0].earned_points if sent.kind == "accrue" else transactions[0].redeemed_points
                    assert moved == sent.points, f"{request_id}: recorded {moved} points, asked {sent.points}"
                else:
                    assert not transactions, f"round {round_no} (seed {SEED}): refused {request_id} is in the ledger"
            now = balance(kassa, account_id)
            assert now.available_points == now.active_points == expected[account_id], (
                f"round {round_no} (seed {SEED}): account {account_id} holds {now.active_points} active, "
                f"{now.available_points} available; the answered operations imply {expected[account_id]}"
            )
            assert now.held_points == 0 and now.pending_points == 0 and now.debt_points == 0
