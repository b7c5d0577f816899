"""The internal Partitions/Commit method when the server has API keys (cluster.partitions = 2, two
nodes, one partition each): it serves only calls carrying cluster.internal_key, which the nodes
send each other; a node with auth and no internal key does not start."""

from __future__ import annotations

import hashlib
import time

import grpc
import msgspec
import pytest

from kassa.core_ext.partitions import home_partition
from kassa.server.cluster.routing import CLUSTER_KEY_METADATA, COMMIT_METHOD, CommitRequest
from kassa.v1 import accounts_pb2
from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import KassaNodes, accrue_request, cluster_status
from tests.cluster.nats_cluster import NatsCluster
from tests.kassa_harness import KassaServer

PARTITIONS = 2
NODES = 2
LEASE_TTL_MS = 1_500
SPREAD_WAIT_S_MAX = 15.0
RETRY_S_MAX = 10.0
POLL_S = 0.1
CALL_S_MAX = 5.0
API_KEY = "k-admin-5c1e0b7d93"
INTERNAL_KEY = "cluster-secret-8b2f61"
AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
name = "ops/test"
admin = true
"""
PARTITION_ENV = {"KASSA_CLUSTER_PARTITIONS": str(PARTITIONS), "KASSA_LEDGER_PARTITIONS": str(PARTITIONS)}
KEYED = (("x-api-key", API_KEY),)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("kassa-auth")
    servers = NatsCluster(NATS_BINARY, root / "nats", 1)
    servers.start()
    env = {**PARTITION_ENV, "KASSA_CLUSTER_INTERNAL_KEY": INTERNAL_KEY}
    nodes = KassaNodes(root, servers.urls, NODES, LEASE_TTL_MS, replicas=1, extra_env=env)
    for node in nodes.nodes:
        node.config_text = AUTH_CONFIG
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        servers.stop()


def spread_owners(nodes: KassaNodes) -> list[str]:
    deadline_s = time.monotonic() + SPREAD_WAIT_S_MAX
    while True:
        owners = [partition["owner"] for partition in cluster_status(nodes.nodes[0])["partitions"]]
        if None not in owners and len(set(owners)) == NODES:
            return owners
        assert time.monotonic() < deadline_s, f"leases not spread: {owners}"
        time.sleep(POLL_S)


def commit_code(node, metadata) -> grpc.StatusCode:
    with grpc.insecure_channel(node.address) as channel:
        call = channel.unary_unary(COMMIT_METHOD)
        try:
            call(msgspec.msgpack.encode(CommitRequest(0, ())), metadata=metadata, timeout=CALL_S_MAX)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def until_ok(send):
    deadline_s = time.monotonic() + RETRY_S_MAX
    while True:
        try:
            return send()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() < deadline_s, error
            time.sleep(POLL_S)


class TestInternalKey:
    def test_a_commit_without_the_clusters_key_is_refused(self, cluster):
        for node in cluster.nodes:
            assert commit_code(node, ()) == grpc.StatusCode.UNAUTHENTICATED
            assert commit_code(node, ((CLUSTER_KEY_METADATA, "not-it"),)) == grpc.StatusCode.UNAUTHENTICATED
            assert commit_code(node, KEYED) == grpc.StatusCode.UNAUTHENTICATED  # an API key is not the cluster's

    def test_nodes_commit_for_each_other_with_it(self, cluster):
        owners = spread_owners(cluster)
        account = next(f"K{number}" for number in range(1000) if home_partition(f"K{number}", PARTITIONS) == 1)
        entry = next(node for node in cluster.nodes if node.extra_env["KASSA_CLUSTER_NODE_ID"] == owners[0])
        create = accounts_pb2.CreateAccountRequest(request_id=f"create-{account}", account_id=account)
        until_ok(lambda: entry.accounts.CreateAccount(create, metadata=KEYED, timeout=CALL_S_MAX))
        reply = until_ok(lambda: entry.processing.Accrue(accrue_request("auth-1", account), metadata=KEYED,
                                                         timeout=CALL_S_MAX))
        assert reply.account_id == account  # committed by partition 1's owner, the other node


class TestRefusal:
    def test_auth_without_an_internal_key_is_refused_at_start(self, tmp_path):
        env = {**PARTITION_ENV, "KASSA_CLUSTER_NODE_ID": "node-x", "KASSA_CLUSTER_ADVERTISE": "127.0.0.1:0",
               "KASSA_CLUSTER_NATS_URLS": "nats://127.0.0.1:1"}
        server = KassaServer(tmp_path, env=env, config_text=AUTH_CONFIG)
        with pytest.raises(RuntimeError) as caught:
            server.start()
        assert server.process.returncode == 2
        assert "set cluster.internal_key" in str(caught.value)
