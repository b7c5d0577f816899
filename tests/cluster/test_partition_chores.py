"""The chores in a cluster of several partitions (cluster.partitions = 2, 2 nodes, one partition
each): each partition's owner runs the expiry sweep and compaction of the partitions it owns,
through that partition's log; the owner of partition 1 is not partition 0's."""

from __future__ import annotations

import json
import time

from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import KassaNodes, cluster_status
from tests.cluster.nats_cluster import NatsCluster

PARTITIONS = 2
NODES = 2
LEASE_TTL_MS = 1_500
CHORE_INTERVAL_S = 1  # the expiry sweep and compaction, by each partition's owner
SPREAD_WAIT_S_MAX = 15.0  # the first node takes both leases, then gives one up
CHORES_WAIT_S_MAX = 10.0
POLL_S = 0.1


def logged(node, message: str) -> list[dict]:
    return [json.loads(line) for line in list(node.log_lines) if f'"msg":"{message}"' in line]


def spread_owners(nodes: KassaNodes) -> list[str]:
    deadline_s = time.monotonic() + SPREAD_WAIT_S_MAX
    while True:
        owners = [partition["owner"] for partition in cluster_status(nodes.nodes[0])["partitions"]]
        if None not in owners and len(set(owners)) == NODES:
            return owners
        assert time.monotonic() < deadline_s, f"leases not spread: {owners}"
        time.sleep(POLL_S)


class TestChores:
    def test_each_partitions_owner_sweeps_and_compacts_it(self, tmp_path):
        servers = NatsCluster(NATS_BINARY, tmp_path / "nats", 1)
        servers.start()
        env = {"KASSA_CLUSTER_PARTITIONS": str(PARTITIONS), "KASSA_LEDGER_PARTITIONS": str(PARTITIONS),
               "KASSA_PROCESSING_EXPIRY_SWEEP_INTERVAL_S": str(CHORE_INTERVAL_S),
               "KASSA_LEDGER_COMPACTION_INTERVAL_S": str(CHORE_INTERVAL_S)}
        nodes = KassaNodes(tmp_path, servers.urls, NODES, LEASE_TTL_MS, replicas=1, extra_env=env)
        try:
            nodes.start()
            owners = spread_owners(nodes)
            by_id = {node.extra_env["KASSA_CLUSTER_NODE_ID"]: node for node in nodes.nodes}
            deadline_s = time.monotonic() + CHORES_WAIT_S_MAX
            for partition, owner_id in enumerate(owners):
                for message in ("expiry sweep", "compaction"):
                    while not any(line.get("partition") == partition for line in logged(by_id[owner_id], message)):
                        assert time.monotonic() < deadline_s, f"partition {partition}: no {message} by {owner_id}"
                        time.sleep(POLL_S)
        finally:
            nodes.stop()
            servers.stop()
