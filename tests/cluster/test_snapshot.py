"""Snapshots of a partition in the JetStream object store: a new replica starts from the latest
snapshot, applies only the log after it, and reaches the owner's ledger. The log is trimmed behind
snapshots, never past the previous snapshot or what a node reported it still needs."""

from __future__ import annotations

import asyncio

import pytest

from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica, ReplicaDiverged
from kassa.server.cluster.snapshot import restore_snapshot, save_snapshot, snapshot_and_trim, snapshot_sequence
from tests.cluster.support import T0_MS, jetstream, open_ledger, opening, purchase
from tests.cluster.test_partition_log import TIMING, node

REPLICAS = 3
GROUPS_AFTER_SNAPSHOT = 4


def test_a_new_replica_starts_from_the_snapshot_and_catches_up(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            owner = node(tmp_path, js, kv, "node-a", partition)
            assert await owner.acquire()
            await owner.commit(opening("A1"))
            await owner.commit([purchase("A1", 0)])
            taken_at = await save_snapshot(js, owner.replica)
            for number in range(1, 1 + GROUPS_AFTER_SNAPSHOT):
                await owner.commit([purchase("A1", number)])
            assert taken_at == owner.replica.applied_sequence - GROUPS_AFTER_SNAPSHOT
            assert await snapshot_sequence(js, partition) == taken_at

            assert await restore_snapshot(js, partition, tmp_path / "node-c") is True
            joined = Replica(open_ledger(tmp_path / "node-c"), partition)
            assert joined.applied_sequence == taken_at
            applied = await joined.catch_up(PartitionLog(js, partition))
            assert applied == GROUPS_AFTER_SNAPSHOT  # only the log after the snapshot
            assert joined.applied_sequence == owner.replica.applied_sequence
            assert ledger_digest(joined.ledger) == ledger_digest(owner.replica.ledger)
            assert joined.ledger.verify(T0_MS + 3_600_000) == []

    asyncio.run(scenario())


def test_a_partition_without_a_snapshot_restores_nothing(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, _):
            assert await snapshot_sequence(js, partition) is None
            assert await restore_snapshot(js, partition, tmp_path / "empty") is False
            assert not (tmp_path / "empty" / "data.mdb").exists()

    asyncio.run(scenario())


def test_the_log_is_trimmed_behind_the_previous_snapshot_and_no_further_than_a_node_still_needs(
        shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            owner = node(tmp_path, js, kv, "node-a", partition)
            log = PartitionLog(js, partition)
            assert await owner.acquire()
            await owner.commit(opening("A1"))
            first, nothing_trimmed = await snapshot_and_trim(js, owner.replica, [])
            assert nothing_trimmed == 0  # the partition's first snapshot: no margin behind it yet
            assert await owner.lease.renew()  # this test takes longer than one lease
            for number in range(GROUPS_AFTER_SNAPSHOT):
                await owner.commit([purchase("A1", number)])
            slow_node = first - 1  # a follower reported it applied up to here
            middle, held_back = await snapshot_and_trim(js, owner.replica, [owner.replica.applied_sequence, slow_node])
            assert held_back == first  # not past what the slow node needs next
            assert await log.first() == first  # the groups before it are gone, the one it needs is there
            assert await owner.lease.renew()
            await owner.commit([purchase("A1", GROUPS_AFTER_SNAPSHOT)])
            second, start = await snapshot_and_trim(js, owner.replica, [owner.replica.applied_sequence])
            assert start == middle + 1  # trimmed up to the previous snapshot, not up to this one
            assert await log.first() == second  # the one group after the previous snapshot

            behind = Replica(open_ledger(tmp_path / "node-behind"), partition)  # away too long: applied nothing
            with pytest.raises(ReplicaDiverged, match="trimmed"):
                await behind.catch_up(log)
            assert behind.applied_sequence == 0

            assert await owner.lease.renew()
            await owner.commit([purchase("A1", GROUPS_AFTER_SNAPSHOT + 1)])
            assert await restore_snapshot(js, partition, tmp_path / "node-c") is True
            joined = Replica(open_ledger(tmp_path / "node-c"), partition)
            assert joined.applied_sequence == second
            assert await joined.catch_up(PartitionLog(js, partition)) == 1
            assert ledger_digest(joined.ledger) == ledger_digest(owner.replica.ledger)

    asyncio.run(scenario())


def test_a_replica_reads_the_log_in_batches(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            owner = node(tmp_path, js, kv, "node-a", partition)
            assert await owner.acquire()
            await owner.commit(opening("A1"))
            for number in range(GROUPS_AFTER_SNAPSHOT):
                await owner.commit([purchase("A1", number)])
            log = PartitionLog(js, partition)
            batch = await log.read_batch(1)
            assert [sequence for sequence, _ in batch][-1] == owner.replica.applied_sequence
            assert len(batch) == GROUPS_AFTER_SNAPSHOT + 2  # the take's marker, the opening, the purchases
            assert await log.read_batch(owner.replica.applied_sequence + 1) == []

    asyncio.run(scenario())
