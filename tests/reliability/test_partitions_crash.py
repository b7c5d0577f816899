"""kill -9 under load on a ledger of 4 partitions: nothing acknowledged lost, nothing applied twice.

The rounds of test_crash.py (Accrue and Redeem from several threads an account, SIGKILL at a random
moment, restart, re-send everything with its request id) over 4 accounts, one in each partition, so
that the four partitions' writers commit at the moment of the kill. After each round `kassa verify`
checks every partition and the directory, every acknowledged operation replays with its transaction
id, each account's statement holds each OK request once, and its balance is what they imply.
Then once more racing a shared budget and a promo code's uses, killed mid-race.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import grpc
import lmdb

from kassa.core_ext.ledger import MAX_DBS
from kassa.core_ext.outbox import OUTBOX_DB, WORK_PREFIX
from kassa.core_ext.partitions import PARTITION_SHIFT_BITS
from kassa.server.relay import RELAY_INTERVAL_S
from kassa.v1 import admin_pb2, processing_pb2, processing_pb2_grpc
from tests.reliability import (
    CALL_TIMEOUT_S, accounts_stub, assert_verifies, create_account, fresh_channel, processing_stub, purchase,
)
from tests.reliability import test_crash as crash
from tests.server import test_partitions as shared
from tests.server import test_partitions_relay as relay
from tests.server.helpers import balance, by_account, open_account
from tests.server.test_process_event import FRIEND_POINTS, REFERRER_POINTS, customer_event
from tests.server.test_partitions import spread_accounts

PARTITIONS = 4
ROUNDS = 2
THREADS_PER_ACCOUNT = 2
RACE_KILL_AFTER_S = (0.05, 0.25)  # into the race: mostly before the budget is spent


def test_kill_9_under_load_on_4_partitions_loses_nothing_acknowledged(start_kassa):
    seed = crash.SEED
    print(f"\npartitions crash test seed: {seed} (replay with CRASH_TEST_SEED={seed})")
    rng = random.Random(seed)
    server = start_kassa(env={"KASSA_LEDGER_PARTITIONS": str(PARTITIONS)})
    accounts = spread_accounts("KILL", PARTITIONS, PARTITIONS)
    expected = {account_id: crash.OPENING_POINTS for account_id in accounts}
    opened = []
    with fresh_channel(server) as channel:
        for account_id in accounts:
            create_account(accounts_stub(channel), account_id)
            opened.append(processing_stub(channel).Accrue(
                purchase(account_id, f"open/{account_id}", crash.OPENING_POINTS), timeout=CALL_TIMEOUT_S))
    assert sorted(reply.transaction_id >> PARTITION_SHIFT_BITS for reply in opened) == list(range(PARTITIONS))
    everything = []
    for round_no in range(ROUNDS):
        load = crash.Load(rng, round_no)
        threads = [threading.Thread(target=crash.drive, args=(server, load, account_id, worker, rng.randrange(2**32)),
                                    daemon=True)
                   for account_id in accounts for worker in range(THREADS_PER_ACCOUNT)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(*crash.KILL_AFTER_S))
        server.kill9()
        load.stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S)
            assert not thread.is_alive(), "a load thread did not notice the crash"
        assert not load.errors, f"round {round_no} (seed {seed}): unexpected answers: {load.errors[:5]}"
        acked = sum(sent.reply is not None for sent in load.sent)
        print(f"round {round_no}: {len(load.sent)} sent, {acked} acknowledged OK")
        assert acked > 0, "the kill came before any operation was acknowledged: the round tested nothing"

        server.start()
        for sent in load.sent:
            crash.resend(server, sent)
        for sent in load.sent:
            if sent.final == "ok":
                expected[sent.account_id] += sent.points if sent.kind == "accrue" else -sent.points
        everything.extend(load.sent)
        summary = assert_verifies(server)
        assert summary["partitions"] == PARTITIONS
        crash.TestKillNineUnderLoad.assert_ledger_holds_exactly(server, accounts, everything, expected, round_no)


def test_kill_9_while_partitions_refill_from_the_bank_never_overspends(start_kassa, tmp_path):
    """16 clients race a budget of 1,000 and a code's 100 uses over 4 partitions; kill -9 mid-race
    (a refill may be in the directory while its purchase is not), restart, re-send everything: each
    acknowledged purchase replays, and purchases until none gets anything grant exactly 1,000 points
    and 100 uses; verify (bank + slices = cap, no slice overspent) passes."""
    seed = crash.SEED
    rng = random.Random(seed)
    server = shared.start_partitioned(start_kassa, tmp_path, PARTITIONS)
    accounts = spread_accounts("KB", PARTITIONS, 16)
    for account_id in accounts:
        open_account(server, account_id)
    server.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
        request_id="codes-1", campaign_id="promo-5", codes=[shared.CODE], uses_total=shared.CODE_USES))
    sent: list[list] = []  # [request, reply before the crash or None]
    lock, stop = threading.Lock(), threading.Event()

    def client(account_id: str) -> None:
        with fresh_channel(server) as channel:
            stub = processing_stub(channel)
            while not stop.is_set():
                entry = [shared.purchase(account_id), None]
                with lock:
                    sent.append(entry)
                try:
                    entry[1] = stub.Accrue(entry[0], timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    return  # the server is gone: unacknowledged

    threads = [threading.Thread(target=client, args=(a,), daemon=True) for a in accounts]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(*RACE_KILL_AFTER_S))
    server.kill9()
    stop.set()
    for thread in threads:
        thread.join(CALL_TIMEOUT_S)
    acked = [entry for entry in sent if entry[1] is not None]
    spent = sum(shared.granted(reply, "budget-7") for _, reply in acked)
    print(f"\nseed {seed}: {len(sent)} sent, {len(acked)} acknowledged before the kill, {spent} points of the budget")
    assert acked, "the kill came before any purchase was acknowledged: the round tested nothing"
    assert spent <= shared.BUDGET_POINTS

    server.start()
    final = []
    for request, reply in sent:
        again = server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
        if reply is not None:
            assert again.SerializeToString(deterministic=True) == reply.SerializeToString(deterministic=True)
        final.append(again)
    everything = final + shared.drain(server, accounts)
    assert sum(shared.granted(r, "budget-7") for r in everything) == shared.BUDGET_POINTS
    assert sum(shared.granted(r, "promo-5") for r in everything) == shared.CODE_USES * 5
    assert sum(balance(server, a).active_points for a in accounts) == shared.BUDGET_POINTS + shared.CODE_USES * 5
    summary = assert_verifies(server)
    assert summary["partitions"] == PARTITIONS


REFERRALS = 24  # events acknowledged just before the kill, each with a referrer in the other partition


def test_kill_9_right_after_referrals_across_partitions_credits_each_side_once(start_kassa):
    """24 referrals, each friend in one partition and its referrer in the other, sent at once; kill -9
    as soon as the last is acknowledged (relays may be in flight or not run yet: the outboxes left
    are printed), restart: the relay at start completes them, each side once; retries answer the same
    bytes and credit nothing more; verify passes."""
    server = start_kassa(env={"KASSA_LEDGER_PARTITIONS": "2"})
    pairs = [(friend, referrer) if number % 2 else (referrer, friend)
             for number, (friend, referrer) in enumerate(relay.one_in_each(f"KR{n}") for n in range(REFERRALS))]
    for friend, referrer in pairs:
        open_account(server, friend)
        open_account(server, referrer)
    requests = [processing_pb2.ProcessEventRequest(
        request_id=f"crm/kill/{number}", event=customer_event(friend, "referral", related=by_account(referrer)))
        for number, (friend, referrer) in enumerate(pairs)]

    async def send_all():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = processing_pb2_grpc.ProcessingStub(channel)
            return await asyncio.gather(*(stub.ProcessEvent(request, timeout=CALL_TIMEOUT_S) for request in requests))

    replies = asyncio.run(send_all())
    server.kill9()
    print(f"\nleft to relay at the kill: {relay_work_left(server.ledger_path)} of {REFERRALS}")

    server.start()
    for _, referrer in pairs:
        relay.wait_for_points(server, referrer, REFERRER_POINTS)
    again = [server.processing.ProcessEvent(request, timeout=CALL_TIMEOUT_S) for request in requests]
    time.sleep(2 * RELAY_INTERVAL_S)

    assert [r.SerializeToString(deterministic=True) for r in again] == \
        [r.SerializeToString(deterministic=True) for r in replies]
    for number, (friend, referrer) in enumerate(pairs):
        assert balance(server, friend).active_points == FRIEND_POINTS
        assert balance(server, referrer).active_points == REFERRER_POINTS
        assert len(relay.entries(server, referrer, f"crm/kill/{number}/related")) == 1
    relay.assert_relayed_cleanly(server)


def relay_work_left(ledger_path) -> int:
    """Outbox records still to relay in a stopped ledger's partitions."""
    left = 0
    for index in range(2):
        env = lmdb.open(str(ledger_path / f"p{index}"), max_dbs=MAX_DBS, readonly=True)
        try:
            with env.begin() as txn:
                outbox = env.open_db(OUTBOX_DB, txn=txn, create=False)
                left += sum(key.startswith(WORK_PREFIX) for key in txn.cursor(db=outbox).iternext(values=False))
        finally:
            env.close()
    return left
