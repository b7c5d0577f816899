"""The server's GroupCommitter over a LoggedLedger: callers' operations go to the partition's log
(three real nats-servers) before they are applied and answered; a refused group is answered
UNAVAILABLE and applied nowhere."""

from __future__ import annotations

import asyncio

from kassa.core_ext.model import Code
from kassa.server.cluster.committing import LoggedLedger
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica
from kassa.server.commit import GroupCommitter
from tests.cluster.support import jetstream, open_ledger, opening, purchase
from tests.cluster.test_partition_log import TIMING, FrozenClock, StepClock, acquire_within, node

REPLICAS = 3
BATCH_OPERATIONS_MAX = 1_000
WAIT_US_MAX = 2_000
CALLERS = 8


def test_callers_are_answered_after_the_log_holds_their_group(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            owner = node(tmp_path, js, kv, "node-a", partition)
            assert await owner.acquire()
            committer = GroupCommitter(LoggedLedger(owner, asyncio.get_running_loop()), StepClock(),
                                       BATCH_OPERATIONS_MAX, WAIT_US_MAX)
            committer.start()
            try:
                opened = await committer.submit(opening("A1"))
                answers = await asyncio.gather(*(committer.submit([purchase("A1", n)]) for n in range(CALLERS)))
            finally:
                await committer.stop()
            assert [outcome.code for outcome in opened] == [Code.OK, Code.OK]
            assert [outcome.code for (outcome,) in answers] == [Code.OK] * CALLERS
            assert await PartitionLog(js, partition).end() == owner.replica.applied_sequence
            follower = Replica(open_ledger(tmp_path / "node-b"), partition)
            await follower.catch_up(PartitionLog(js, partition))
            assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)
            assert committer.groups_committed < 1 + CALLERS  # callers shared groups

    asyncio.run(scenario())


def test_a_stale_owners_callers_get_unavailable_and_nothing_is_applied(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            old = node(tmp_path, js, kv, "node-a", partition, monotonic=FrozenClock())
            assert await old.acquire()
            committer = GroupCommitter(LoggedLedger(old, asyncio.get_running_loop()), StepClock(),
                                       BATCH_OPERATIONS_MAX, WAIT_US_MAX)
            committer.start()
            try:
                await committer.submit(opening("A1"))
                await acquire_within(node(tmp_path, js, kv, "node-b", partition), TIMING.ttl_ms / 1000 * 5)
                before = ledger_digest(old.replica.ledger)
                (outcome,) = await committer.submit([purchase("A1", 1)])
            finally:
                await committer.stop()
            assert outcome.code == Code.UNAVAILABLE
            assert "another owner wrote to it" in outcome.message
            assert ledger_digest(old.replica.ledger) == before

    asyncio.run(scenario())


LARGE_GROUP_OPERATIONS = 14_000  # purchases in one commit group (about 99 bytes each): over 1 MiB of log record
LARGE_BATCH_OPERATIONS_MAX = 20_000


def test_a_group_larger_than_a_log_message_is_logged_in_parts_and_every_purchase_applied(
        shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            owner = node(tmp_path, js, kv, "node-a", partition)
            assert await owner.acquire()
            committer = GroupCommitter(LoggedLedger(owner, asyncio.get_running_loop()), StepClock(),
                                       LARGE_BATCH_OPERATIONS_MAX, WAIT_US_MAX)
            committer.start()
            try:
                await committer.submit(opening("A1"))
                log_end_before = await PartitionLog(js, partition).end()
                answers = await committer.submit([purchase("A1", n) for n in range(LARGE_GROUP_OPERATIONS)])
            finally:
                await committer.stop()
            assert {outcome.code for outcome in answers} == {Code.OK}
            assert await PartitionLog(js, partition).end() - log_end_before > 1  # in parts
            follower = Replica(open_ledger(tmp_path / "node-b"), partition)
            await follower.catch_up(PartitionLog(js, partition))
            assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)

    asyncio.run(scenario())
