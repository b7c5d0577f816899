"""One partition's owner as a process of its own, for the tests that kill or pause it.

`python -m tests.cluster.partition_node --urls U,U,U --partition P --node-id N --ledger DIR`
takes the partition's lease as soon as it is free, renews it, and commits groups of purchases one
after another until it is ended or `--run-s` passes. It prints one JSON line per event, flushed:
{"event": "owner", "token": T} when it serves, {"event": "acked", "sequence": S, "ids": [...]} for
each acknowledged group, {"event": "refused", "error": "..."} for a group that was not, and
{"event": "lost"} when it finds it no longer holds the lease.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import nats

from kassa.server.clock import SystemClock
from kassa.server.cluster.lease import PartitionLease
from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.owner import NotOwner, PartitionOwner
from kassa.server.cluster.partition_log import LogUnavailable, PartitionLog, StaleWriter
from kassa.server.cluster.replica import Replica
from kassa.server.cluster.streams import LEASE_BUCKET, ensure_streams
from tests.cluster.support import open_ledger, opening, purchase

RUN_S_MAX = 60.0  # a node nobody ended stops by itself
ACQUIRE_POLL_S = 0.1
GROUP_PAUSE_S = 0.01  # between groups: a steady load, not a flood of the shared cores


def say(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def keep_renewing(lease: PartitionLease) -> None:
    while True:
        await asyncio.sleep(lease.timing.renew_interval_ms / 1000)
        await lease.renew()


async def serve(owner: PartitionOwner, accounts: list[str], deadline_s: float) -> None:
    number = 0
    served = False
    while time.monotonic() < deadline_s:
        if not owner.serving():
            if served:  # it held the lease and no longer does (lapsed by its clock, or fenced)
                say(event="lost")
                served = False
            if not await owner.acquire():
                await asyncio.sleep(ACQUIRE_POLL_S)
                continue
            say(event="owner", token=owner.lease.token)
            served = True
        ops = [purchase(account, number) for account in accounts]
        number += 1
        try:
            for account in accounts if number == 1 else ():
                await owner.commit(opening(account))
            await owner.commit(ops)
        except (NotOwner, StaleWriter, LogUnavailable) as error:
            say(event="refused", error=f"{type(error).__name__}: {error}")
            continue
        say(event="acked", sequence=owner.replica.applied_sequence, ids=[op.request_id for op in ops])
        await asyncio.sleep(GROUP_PAUSE_S)


async def main(args) -> None:
    client = await nats.connect(servers=args.urls.split(","), reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    js = client.jetstream(timeout=2)
    timing = LeaseTiming(ttl_ms=args.ttl_ms, renew_interval_ms=args.ttl_ms // 4, margin_ms=args.ttl_ms // 5)
    await ensure_streams(js, args.replicas, timing.ttl_ms)
    lease = PartitionLease(await js.key_value(LEASE_BUCKET), args.partition, args.node_id, f"{args.node_id}:0", timing)
    owner = PartitionOwner(lease, PartitionLog(js, args.partition), Replica(open_ledger(args.ledger), args.partition),
                           SystemClock())
    renewing = asyncio.get_running_loop().create_task(keep_renewing(lease))
    try:
        await serve(owner, [f"{args.node_id}-{n}" for n in range(args.accounts)], time.monotonic() + args.run_s)
    finally:
        renewing.cancel()
        await client.close()


def parse(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True)
    parser.add_argument("--partition", type=int, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--ttl-ms", type=int, default=1_000)
    parser.add_argument("--accounts", type=int, default=3)
    parser.add_argument("--run-s", type=float, default=RUN_S_MAX)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
