"""A nats-server of three killed (SIGKILL: the log stream's leader) while an owner commits groups:
no acknowledged group is lost, none is stored twice, and a replica reading the log afterwards
reaches the owner's ledger."""

from __future__ import annotations

import asyncio
import time

from kassa.core_ext.model import Code
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.group_record import decode_group
from kassa.server.cluster.lease import PartitionLease
from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.owner import NotOwner, PartitionOwner
from kassa.server.cluster.partition_log import LogUnavailable, PartitionLog
from kassa.server.cluster.replica import Replica
from kassa.server.cluster.streams import LOG_STREAM
from tests.cluster.support import T0_MS, jetstream, open_ledger, opening, purchase
from tests.cluster.test_partition_log import StepClock, acquire_within

REPLICAS = 3
PARTITION = 1
TIMING = LeaseTiming()  # the default 3 s lease, renewed below while the servers elect a new leader
ACCOUNTS = ("A1", "A2", "A3")
GROUPS_BEFORE_KILL = 20
GROUPS_AFTER_KILL = 20
LOAD_S_MAX = 25.0  # the whole load, the new leader's election included


async def keep_renewing(lease: PartitionLease) -> None:
    while True:
        await asyncio.sleep(lease.timing.renew_interval_ms / 1000)
        await lease.renew()


async def stream_leader_index(js, cluster) -> int:
    leader = (await js.stream_info(LOG_STREAM)).cluster.leader
    return [server.name for server in cluster.servers].index(leader)


async def load(owner: PartitionOwner, js, cluster) -> tuple[dict[int, list[str]], int]:
    """Commit one purchase per account per group until GROUPS_AFTER_KILL groups were acknowledged
    after the kill. {sequence: request ids} of every acknowledged group, and the number of groups
    refused (UNAVAILABLE, in the log or not, or refused while the lease was being taken back): never
    acknowledged. The lease (3 s) is shorter than the servers' election: when its bucket's leader
    was the server killed, the owner loses its hold and takes its own lease back."""
    acked: dict[int, list[str]] = {}
    unanswered = 0
    killed_at = None
    deadline_s = time.monotonic() + LOAD_S_MAX
    number = 0
    while killed_at is None or len(acked) < killed_at + GROUPS_AFTER_KILL:
        assert time.monotonic() < deadline_s, f"only {len(acked)} groups acknowledged in {LOAD_S_MAX} s"
        if killed_at is None and len(acked) == GROUPS_BEFORE_KILL:
            cluster.kill(await stream_leader_index(js, cluster))
            killed_at = len(acked)
        ops = [purchase(account, number) for account in ACCOUNTS]
        number += 1
        try:
            outcomes = await owner.commit(ops)
        except LogUnavailable:
            unanswered += 1
            continue
        except NotOwner:  # the lease bucket's leader was on the killed server: renewals stalled
            unanswered += 1
            await acquire_within(owner, LOAD_S_MAX)
            continue
        assert [outcome.code for outcome in outcomes] == [Code.OK] * len(ACCOUNTS)
        acked[owner.replica.applied_sequence] = [op.request_id for op in ops]
    return acked, unanswered


async def whole_log(log: PartitionLog) -> dict[int, list[str]]:
    groups = {}
    sequence = 1
    while (found := await log.read(sequence)) is not None:
        sequence, payload = found
        groups[sequence] = [op.request_id for op in decode_group(payload).ops]
        sequence += 1
    return groups


def test_a_killed_server_loses_no_acknowledged_group(nats_three, tmp_path):
    async def scenario():
        async with jetstream(nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            lease = PartitionLease(kv, PARTITION, "node-a", "node-a:50051", TIMING)
            owner = PartitionOwner(lease, PartitionLog(js, PARTITION), Replica(open_ledger(tmp_path / "a"), PARTITION),
                                   StepClock())
            assert await owner.acquire()
            renewing = asyncio.get_running_loop().create_task(keep_renewing(lease))
            try:
                for account in ACCOUNTS:
                    await owner.commit(opening(account))
                acked, unanswered = await load(owner, js, nats_three)
            finally:
                renewing.cancel()
            logged = await whole_log(PartitionLog(js, PARTITION))
            lost = {sequence: ids for sequence, ids in acked.items() if logged.get(sequence) != ids}
            assert lost == {}
            request_ids = [request_id for ids in logged.values() for request_id in ids]
            assert len(request_ids) == len(set(request_ids))  # nothing stored twice
            assert len(acked) >= GROUPS_BEFORE_KILL + GROUPS_AFTER_KILL
            follower = Replica(open_ledger(tmp_path / "b"), PARTITION)
            await follower.catch_up(PartitionLog(js, PARTITION))
            assert follower.applied_sequence == owner.replica.applied_sequence
            assert ledger_digest(follower.ledger) == ledger_digest(owner.replica.ledger)
            assert follower.ledger.verify(T0_MS + 3_600_000) == []
            print(f"acked={len(acked)} unanswered={unanswered} logged={len(logged)}")

    asyncio.run(scenario())
