"""kill -9 under load on a ledger of 4 partitions: nothing acknowledged lost, nothing applied twice.

The rounds of test_crash.py (Accrue and Redeem from several threads an account, SIGKILL at a random
moment, restart, re-send everything with its request id) over 4 accounts, one in each partition, so
that the four partitions' writers commit at the moment of the kill. After each round `kassa verify`
checks every partition and the directory, every acknowledged operation replays with its transaction
id, each account's statement holds each OK request once, and its balance is what they imply.
"""

from __future__ import annotations

import random
import threading
import time

from kassa.core_ext.partitions import PARTITION_SHIFT_BITS
from tests.reliability import (
    CALL_TIMEOUT_S, accounts_stub, assert_verifies, create_account, fresh_channel, processing_stub, purchase,
)
from tests.reliability import test_crash as crash
from tests.server.test_partitions import spread_accounts

PARTITIONS = 4
ROUNDS = 2
THREADS_PER_ACCOUNT = 2


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
