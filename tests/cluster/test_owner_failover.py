"""An owner in a process of its own (tests/cluster/partition_node.py), on three real nats-servers:
`kill -9` it mid-load and another node takes the partition over with every acknowledged group;
pause it with SIGSTOP past its lease, and once resumed it can no longer commit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from kassa.core_ext.model import Code
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.group_record import decode_group
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.replica import Replica
from tests.cluster.support import jetstream, open_ledger, opening, purchase
from tests.cluster.test_partition_log import TIMING, acquire_within, node
from tests.kassa_harness import REPO

REPLICAS = 3
NODE_TTL_MS = TIMING.ttl_ms  # the process's lease, the same as the in-test node's
GROUPS_BEFORE_FAULT = 15
EVENT_WAIT_S_MAX = 15.0  # for the process to start, take the lease and commit that many groups
FAILOVER_S_MAX = 10.0  # the bound: the owner killed, another serves within this
POLL_S = 0.05


class NodeProcess:
    def __init__(self, tmp_path, urls: list[str], partition: int, node_id: str):
        self.output = tmp_path / f"{node_id}.jsonl"
        self.ledger_path = tmp_path / node_id
        with open(self.output, "wb") as out, open(tmp_path / f"{node_id}.err", "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster.partition_node", "--urls", ",".join(urls),
                 "--partition", str(partition), "--node-id", node_id, "--ledger", str(self.ledger_path),
                 "--ttl-ms", str(NODE_TTL_MS)],
                cwd=REPO, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)})

    def events(self, kind: str) -> list[dict]:
        lines = self.output.read_text().splitlines()
        return [event for event in map(json.loads, filter(None, lines)) if event["event"] == kind]

    async def wait_for(self, kind: str, count: int) -> list[dict]:
        deadline_s = time.monotonic() + EVENT_WAIT_S_MAX
        while len(found := self.events(kind)) < count:
            assert self.process.poll() is None, f"the node process exited: {self.process.returncode}"
            assert time.monotonic() < deadline_s, f"{len(found)} of {count} '{kind}' events in {EVENT_WAIT_S_MAX} s"
            await asyncio.sleep(POLL_S)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait()


async def logged_groups(js, partition: int) -> dict[int, object]:
    log = PartitionLog(js, partition)
    groups, sequence = {}, 1
    while (found := await log.read(sequence)) is not None:
        sequence, payload = found
        groups[sequence] = decode_group(payload)
        sequence += 1
    return groups


def assert_acked_groups_kept(acked: list[dict], groups: dict) -> None:
    lost = [event for event in acked if [op.request_id for op in groups[event["sequence"]].ops] != event["ids"]]
    assert lost == []
    request_ids = [op.request_id for group in groups.values() for op in group.ops if op.request_id]
    duplicated = len(request_ids) - len(set(request_ids))
    assert duplicated == 0


def test_a_killed_owner_is_replaced_with_every_acknowledged_group(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            old = NodeProcess(tmp_path, shared_nats_three.urls, partition, "node-a")
            try:
                await old.wait_for("acked", GROUPS_BEFORE_FAULT)
                new = node(tmp_path, js, kv, "node-b", partition)
                assert await new.acquire() is False  # held by the running owner
                old.process.kill()
                killed_at_s = time.monotonic()
                await acquire_within(new, FAILOVER_S_MAX)
                failover_s = time.monotonic() - killed_at_s
            finally:
                old.stop()
            assert failover_s <= FAILOVER_S_MAX
            outcomes = await new.commit(opening("B1"))
            assert [outcome.code for outcome in outcomes] == [Code.OK, Code.OK]
            assert_acked_groups_kept(old.events("acked"), await logged_groups(js, partition))
            recovered = Replica(open_ledger(old.ledger_path), partition)  # the dead owner's disk, restarted
            await recovered.catch_up(PartitionLog(js, partition))
            assert ledger_digest(recovered.ledger) == ledger_digest(new.replica.ledger)
            assert new.replica.ledger.verify(int(time.time() * 1000)) == []
            print(f"failover_s={failover_s:.2f} acked={len(old.events('acked'))}")

    asyncio.run(scenario())


def test_an_owner_paused_past_its_lease_cannot_commit_once_resumed(shared_nats_three, tmp_path, partition):
    async def scenario():
        async with jetstream(shared_nats_three, REPLICAS, TIMING.ttl_ms) as (_, js, kv):
            old = NodeProcess(tmp_path, shared_nats_three.urls, partition, "node-a")
            try:
                (taken,) = await old.wait_for("owner", 1)
                await old.wait_for("acked", GROUPS_BEFORE_FAULT)
                old.process.send_signal(signal.SIGSTOP)
                new = node(tmp_path, js, kv, "node-b", partition)
                await acquire_within(new, FAILOVER_S_MAX)
                (outcome,) = await new.commit([purchase("B1", 0)])
                old.process.send_signal(signal.SIGCONT)
                await old.wait_for("lost", 1)  # by its own clock, or refused by the log
                (outcome,) = await new.commit([purchase("B1", 1)])  # the new owner is not disturbed
            finally:
                old.stop()
            groups = await logged_groups(js, partition)
            takeover = min(sequence for sequence, group in groups.items() if group.token == new.lease.token)
            after = {group.token for sequence, group in groups.items() if sequence >= takeover}
            assert after == {new.lease.token}  # nothing of the old owner's after the takeover
            assert max(event["sequence"] for event in old.events("acked")) < takeover
            assert taken["token"] < new.lease.token
            assert_acked_groups_kept(old.events("acked"), groups)

    asyncio.run(scenario())
