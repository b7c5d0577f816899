"""Snapshots of a partition in the JetStream object store: a new replica starts from the latest
snapshot, applies only the log after it, and reaches the owner's ledger."""

from __future__ import annotations

import asyncio

from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica
from kassa.server.cluster.snapshot import restore_snapshot, save_snapshot, snapshot_sequence
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
