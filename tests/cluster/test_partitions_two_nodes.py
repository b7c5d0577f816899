"""A cluster of two partitions on two nodes, one partition each (the owner of partition 1 is not
partition 0's): each partition's owner runs the expiry sweep and compaction of the partitions it
owns; an owner committing for the other node gives up at the caller's deadline."""

from __future__ import annotations

import json
import signal
import threading
import time

import grpc
import pytest

from kassa.core_ext.partitions import home_partition
from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import KassaNodes, accrue_request, cluster_status, open_accounts
from tests.cluster.nats_cluster import NatsCluster

PARTITIONS = 2
NODES = 2
LEASE_TTL_MS = 1_500
CHORE_INTERVAL_S = 1  # the expiry sweep and compaction, by each partition's owner
SPREAD_WAIT_S_MAX = 15.0  # the first node takes both leases, then gives one up
CHORES_WAIT_S_MAX = 10.0
RETRY_S_MAX = 10.0
POLL_S = 0.1
CALL_DEADLINE_S = 0.5  # the caller's deadline in the deadline test
SENT_WITHIN_S = 0.2  # the entry node has sent the commit to the owner by then
OWNER_GAVE_UP_WITHIN_S = 1.5  # the owner's commit for the frozen entry node ends by then (not after 20 s)
COMMIT_METHOD = "/kassa.cluster.Partitions/Commit"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("kassa-two")
    servers = NatsCluster(NATS_BINARY, root / "nats", 1)
    servers.start()
    env = {"KASSA_CLUSTER_PARTITIONS": str(PARTITIONS), "KASSA_LEDGER_PARTITIONS": str(PARTITIONS),
           "KASSA_PROCESSING_EXPIRY_SWEEP_INTERVAL_S": str(CHORE_INTERVAL_S),
           "KASSA_LEDGER_COMPACTION_INTERVAL_S": str(CHORE_INTERVAL_S)}
    nodes = KassaNodes(root, servers.urls, NODES, LEASE_TTL_MS, replicas=1, extra_env=env)
    try:
        nodes.start()
        yield servers, nodes
    finally:
        nodes.stop()
        servers.stop()


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


def node_of(nodes: KassaNodes, node_id: str):
    return next(node for node in nodes.nodes if node.extra_env["KASSA_CLUSTER_NODE_ID"] == node_id)


class TestChores:
    def test_each_partitions_owner_sweeps_and_compacts_it(self, cluster):
        _, nodes = cluster
        owners = spread_owners(nodes)
        deadline_s = time.monotonic() + CHORES_WAIT_S_MAX
        for partition, owner_id in enumerate(owners):
            for message in ("expiry sweep", "compaction"):
                while not any(line.get("partition") == partition for line in logged(node_of(nodes, owner_id), message)):
                    assert time.monotonic() < deadline_s, f"partition {partition}: no {message} by {owner_id}"
                    time.sleep(POLL_S)


class TestDeadline:
    def test_the_owner_gives_up_a_commit_at_the_callers_deadline(self, cluster):
        """The entry node is frozen once it sent the commit (so no cancellation reaches the owner),
        and the log does not answer the owner: the owner's commit must end at the deadline it was
        sent with, not 20 s later."""
        servers, nodes = cluster
        owners = spread_owners(nodes)
        account = next(f"D{number}" for number in range(1000) if home_partition(f"D{number}", PARTITIONS) == 1)
        open_accounts(nodes, [account], RETRY_S_MAX)
        entry, owner = node_of(nodes, owners[0]), node_of(nodes, owners[1])
        answers: list = []
        servers.pause(0)  # the owner's append waits on the log
        call = threading.Thread(target=lambda: answers.append(_accrue_code(entry, account)))
        try:
            call.start()
            time.sleep(SENT_WITHIN_S)
            entry.process.send_signal(signal.SIGSTOP)
            sent_s = time.monotonic()
            while not [line for line in logged(owner, "refused") if line.get("method") == COMMIT_METHOD]:
                assert time.monotonic() - sent_s < OWNER_GAVE_UP_WITHIN_S, "the owner still commits for the caller"
                time.sleep(POLL_S / 2)
        finally:
            entry.process.send_signal(signal.SIGCONT)
            servers.resume(0)
            call.join()
        assert answers == [grpc.StatusCode.DEADLINE_EXCEEDED]


def _accrue_code(node, account: str) -> grpc.StatusCode:
    try:
        node.processing.Accrue(accrue_request("deadline-1", account), timeout=CALL_DEADLINE_S)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK
