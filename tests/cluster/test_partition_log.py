"""One partition's log on three real nats-servers (R3): owners append commit groups, replicas apply
them, a stale owner is refused by the log, and a server killed mid-load loses no acknowledged group."""

from __future__ import annotations

import asyncio
import time

import pytest

from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.group_record import LoggedGroup, decode_group, encode_group
from kassa.server.cluster.lease import PartitionLease
from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.owner import NotOwner, PartitionOwner
from kassa.server.cluster.partition_log import LogUnavailable, PartitionLog, StaleWriter
from kassa.server.cluster.replica import Replica
from kassa.core_ext.model import Code, PromoCodesOp
from tests.cluster.support import T0_MS, jetstream, open_ledger, opening, purchase

REPLICAS = 3
TIMING = LeaseTiming(ttl_ms=1_000, renew_interval_ms=300, margin_ms=200)
TAKEOVER_WAIT_S_MAX = 5.0
FOLLOW_WAIT_S_MAX = 5.0  # for a warm follower to reach the owner's last group
POLL_S = 0.1
GROUPS_BEFORE_KILL = 20
GROUPS_AFTER_KILL = 20


class StepClock:
    """Each group one second after the one before: replicas must take the time from the log."""

    def __init__(self):
        self.now = T0_MS

    def now_ms(self) -> int:
        self.now += 1_000
        return self.now


class FrozenClock:
    """A monotonic clock that stopped: the node believes its lease is still fresh (a long pause)."""

    def __call__(self) -> float:
        return 0.0


def node(tmp_path, js, kv, name: str, partition: int, monotonic=time.monotonic) -> PartitionOwner:
    lease = PartitionLease(kv, partition, name, f"{name}:50051", TIMING, monotonic=monotonic)
    return PartitionOwner(lease, PartitionLog(js, partition), Replica(open_ledger(tmp_path / name), partition),
                          StepClock())


async def acquire_within(owner: PartitionOwner, wait_s: float) -> None:
    deadline_s = time.monotonic() + wait_s
    while not await owner.acquire():
        assert time.monotonic() < deadline_s, f"{owner.lease.node_id} did not take partition {owner.partition}"
        await asyncio.sleep(POLL_S)


async def commit_accounts(owner: PartitionOwner, accounts: list[str], purchases: int) -> None:
    for account in accounts:
        outcomes = await owner.commit(opening(account))
        assert [outcome.code for outcome in outcomes] == [Code.OK, Code.OK]
    for number in range(purchases):
        await owner.commit([purchase(account, number) for account in accounts])


class TestReplicas:
    def test_two_replicas_applying_the_same_log_have_equal_digests_and_verify(self, shared_nats_three, tmp_path,
                                                                             partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
                owner = node(tmp_path, js, kv, "node-a", partition)
                assert await owner.acquire()
                await commit_accounts(owner, ["A1", "A2", "A3"], purchases=5)
                follower = Replica(open_ledger(tmp_path / "node-b"), partition)
                await follower.catch_up(PartitionLog(js, partition), to_sequence=owner.replica.applied_sequence - 1)
                behind = ledger_digest(follower.ledger)
                await follower.catch_up(PartitionLog(js, partition))
                assert follower.applied_sequence == owner.replica.applied_sequence
                assert behind != ledger_digest(owner.replica.ledger)  # the digest sees one group
                assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)
                assert follower.ledger.verify(T0_MS + 3_600_000) == []
                assert owner.replica.ledger.verify(T0_MS + 3_600_000) == []

        asyncio.run(scenario())

    def test_a_warm_follower_keeps_up_with_the_owner(self, shared_nats_three, tmp_path, partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
                owner = node(tmp_path, js, kv, "node-a", partition)
                assert await owner.acquire()
                follower = Replica(open_ledger(tmp_path / "node-b"), partition)
                stop = asyncio.Event()
                following = asyncio.get_running_loop().create_task(follower.follow(PartitionLog(js, partition), stop))
                await commit_accounts(owner, ["A1", "A2"], purchases=3)
                deadline_s = time.monotonic() + FOLLOW_WAIT_S_MAX
                while follower.applied_sequence < owner.replica.applied_sequence:
                    assert time.monotonic() < deadline_s, "the follower fell behind"
                    await asyncio.sleep(POLL_S)
                stop.set()
                await following
                assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)

        asyncio.run(scenario())

    def test_a_group_applied_before_is_skipped(self, shared_nats_three, tmp_path, partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
                owner = node(tmp_path, js, kv, "node-a", partition)
                assert await owner.acquire()
                await commit_accounts(owner, ["A1"], purchases=1)
                sequence, payload = await PartitionLog(js, partition).read(owner.replica.applied_sequence)
                before = ledger_digest(owner.replica.ledger)
                assert owner.replica.apply(sequence, decode_group(payload)) is None
                assert ledger_digest(owner.replica.ledger) == before

        asyncio.run(scenario())

    def test_drawn_promo_codes_are_the_same_on_every_replica(self, shared_nats_three, tmp_path, partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
                owner = node(tmp_path, js, kv, "node-a", partition)
                assert await owner.acquire()
                op = PromoCodesOp("codes", b"d", "spring", pattern="SPRING-########", count=20, seed=b"s" * 16)
                (outcome,) = await owner.commit([op])
                assert outcome.code == Code.OK, outcome.message
                follower = Replica(open_ledger(tmp_path / "node-b"), partition)
                await follower.catch_up(PartitionLog(js, partition))
                assert follower.applied_sequence == owner.replica.applied_sequence
                assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)

        asyncio.run(scenario())


class TestFencing:
    def test_a_stale_owners_append_is_refused_and_changes_nothing(self, shared_nats_three, tmp_path, partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
                old = node(tmp_path, js, kv, "node-a", partition, monotonic=FrozenClock())
                assert await old.acquire()
                old_token = old.lease.token
                await commit_accounts(old, ["A1"], purchases=1)
                new = node(tmp_path, js, kv, "node-b", partition)
                await acquire_within(new, TAKEOVER_WAIT_S_MAX)  # old stopped renewing: its lease lapsed
                assert old.serving() is True  # it still believes it owns the partition
                before = ledger_digest(old.replica.ledger)
                with pytest.raises(StaleWriter):
                    await old.commit([purchase("A1", 99)])
                assert ledger_digest(old.replica.ledger) == before
                assert old.serving() is False
                with pytest.raises(NotOwner):
                    await old.commit([purchase("A1", 100)])
                (outcome,) = await new.commit([purchase("A1", 99)])
                assert outcome.code == Code.OK
                assert new.lease.token > old_token
                log = PartitionLog(js, partition)
                sequence, payload = await log.read(await log.end())
                assert decode_group(payload).token == new.lease.token

        asyncio.run(scenario())

    def test_another_group_sent_at_the_position_of_one_stored_late_is_not_acknowledged(self, shared_nats_three,
                                                                                      partition):
        """G1's answer was lost but G1 was stored; G2, sent next at the same position, must not be
        answered as G1's duplicate (the log holds G1, not G2)."""
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, _):
                log = PartitionLog(js, partition)
                late = encode_group(LoggedGroup(partition, 5, T0_MS, "v", ()))
                other = encode_group(LoggedGroup(partition, 5, T0_MS + 1, "v", ()))
                stored_at = await log.append(late, 0, token=5)  # stands in for G1, stored late
                with pytest.raises((LogUnavailable, StaleWriter)):
                    await log.append(other, 0, token=5)
                assert (await log.read(stored_at))[1] == late
                assert await log.end() == stored_at

        asyncio.run(scenario())

    def test_a_retried_append_is_answered_by_the_first_without_a_second_copy(self, shared_nats_three, partition):
        async def scenario():
            async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, _):
                log = PartitionLog(js, partition)
                payload = encode_group(LoggedGroup(partition, 5, T0_MS, "v", ()))
                first = await log.append(payload, 0, token=5)
                again = await log.append(payload, 0, token=5)  # as after a lost acknowledgement
                assert again == first
                assert await log.end() == first
                with pytest.raises(StaleWriter):  # the same position under another token is a rival
                    await log.append(payload, 0, token=6)

        asyncio.run(scenario())
