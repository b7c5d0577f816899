"""A cluster of several partitions (cluster.partitions = 4, 3 nodes): each partition has its own
lease, log and LMDB on every node; the leases are spread over the nodes; any node takes every call
and each operation lands in its partition, committed by that partition's owner; kill -9 of a node
moves only its partitions, loses nothing acknowledged, and every partition's copies end equal."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.js.api import Header

from kassa.core_ext.partitions import home_partition
from kassa.server.app import open_ledger
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.streams import EVENTS_STREAM, events_subject
from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import (
    KassaNodes, PurchaseLoad, accrue_request, audit, call_until_ok, cluster_status, open_accounts,
    statement_request_ids,
)
from tests.cluster.nats_cluster import NatsCluster
from tests.kassa_harness import KassaServer
from tests.server.helpers import by_account
from kassa.v1 import accounts_pb2, processing_pb2
from tests.server.stream_helpers import purchase_event
from tests.server.test_process_event import REFERRER_POINTS, customer_event
from bench import failover

PARTITIONS = 4
NODES = 3
LEASE_TTL_MS = 1_500
RETRY_S_MAX = 10.0
SPREAD_WAIT_S_MAX = 20.0  # the first node takes every lease, then gives them up one every 2 s
LOAD_BEFORE_KILL_S = 1.5
LOAD_AFTER_KILL_S = 3.0
FAILOVER_S_MAX = 10.0
RELAYED_WITHIN_S = 10.0
SNAPSHOT_INTERVAL_S = 1.0  # the owner of the event's partition relays every second
EVENTS_PER_SUBJECT = 8
EVENT_PRICE_MINOR = 4_000
EVENTS_WAIT_S_MAX = 10.0
CATCH_UP_CALLS = 10
REPORT_WAIT_S_MAX = 5.0
PARTITION_ENV = {"KASSA_CLUSTER_PARTITIONS": str(PARTITIONS), "KASSA_LEDGER_PARTITIONS": str(PARTITIONS)}


def accounts_per_partition(count: int) -> list[str]:
    """`count` account ids placed in each partition (by the hash of their id)."""
    found: dict[int, list[str]] = {partition: [] for partition in range(PARTITIONS)}
    number = 0
    while any(len(ids) < count for ids in found.values()):
        account = f"P{number}"
        placed = found[home_partition(account, PARTITIONS)]
        if len(placed) < count:
            placed.append(account)
        number += 1
    return [account for ids in found.values() for account in ids]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("kassa-parts")
    servers = NatsCluster(NATS_BINARY, root / "nats", 1)
    servers.start()
    env = {**PARTITION_ENV, "KASSA_CLUSTER_SNAPSHOT_INTERVAL_S": str(SNAPSHOT_INTERVAL_S)}
    nodes = KassaNodes(root, servers.urls, NODES + 1, LEASE_TTL_MS, replicas=1, extra_env=env)
    try:
        for node in nodes.nodes[:NODES]:  # the last one joins later (TestJoining)
            node.start()
        nodes.wait_serving(nodes.nodes[:NODES])
        yield servers, nodes
    finally:
        nodes.stop()
        servers.stop()


def live(nodes: KassaNodes) -> list:
    return [node for node in nodes.nodes if node.process is not None and node.process.poll() is None]


def owners_by_partition(node) -> list[str | None]:
    return [partition["owner"] for partition in cluster_status(node)["partitions"]]


def wait_spread(nodes: KassaNodes) -> list[str | None]:
    """The owners once every partition has one and no node holds two more than another."""
    deadline_s = time.monotonic() + SPREAD_WAIT_S_MAX
    while True:
        owners = owners_by_partition(nodes.nodes[0])
        counts = [owners.count(node.extra_env["KASSA_CLUSTER_NODE_ID"]) for node in live(nodes)]
        if None not in owners and max(counts) - min(counts) <= 1:
            return owners
        assert time.monotonic() < deadline_s, f"leases not spread: {owners}"
        time.sleep(0.2)


def balance(node, account: str) -> bytes:
    reply = node.accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account(account)), timeout=5)
    return reply.SerializeToString()


class TestPlacement:
    def test_the_leases_are_spread_over_the_nodes(self, cluster):
        _, nodes = cluster
        owners = wait_spread(nodes)
        assert len(set(owners)) == NODES  # P = 4 over 3 nodes: 2, 1, 1
        assert len(owners) == PARTITIONS

    def test_status_lists_every_partition_and_each_nodes_lag(self, cluster):
        _, nodes = cluster
        status = cluster_status(nodes.nodes[1])
        assert [partition["partition"] for partition in status["partitions"]] == list(range(PARTITIONS))
        assert {len(node["lags"]) for node in status["nodes"]} == {PARTITIONS}


class TestRouting:
    def test_calls_through_any_node_land_in_their_partition(self, cluster):
        _, nodes = cluster
        wait_spread(nodes)
        accounts = accounts_per_partition(2)
        open_accounts(nodes, accounts, RETRY_S_MAX)
        for number, account in enumerate(accounts):
            node = nodes.nodes[number % NODES]
            reply = call_until_ok([node], 0, lambda n: n.processing.Accrue(accrue_request(f"route-{account}", account),
                                                                           timeout=5), time.monotonic() + RETRY_S_MAX)
            assert reply is not None
            assert f"route-{account}" in statement_request_ids(node, account)  # the node reads its own write
        for account in accounts:
            wanted = balance(nodes.nodes[0], account)
            deadline_s = time.monotonic() + 5
            while {balance(node, account) for node in live(nodes)} != {wanted}:
                assert time.monotonic() < deadline_s, f"{account}: the nodes' copies disagree"
                time.sleep(0.05)


def in_partitions(prefix: str, first: int, second: int) -> tuple[str, str]:
    return (next(f"{prefix}{n}" for n in range(1000) if home_partition(f"{prefix}{n}", PARTITIONS) == first),
            next(f"{prefix}{n}" for n in range(1000) if home_partition(f"{prefix}{n}", PARTITIONS) == second))


def wait_on_every_node(nodes: KassaNodes, done, what: str) -> None:
    deadline_s = time.monotonic() + RELAYED_WITHIN_S
    for node in live(nodes):
        while not done(node):
            assert time.monotonic() < deadline_s, f"{node.address}: {what}"
            time.sleep(0.05)


class TestAcrossPartitions:
    """Work the single-node router does across partitions, each step committed by its partition's
    owner through its log (the outbox bookkeeping too: the last test compares every copy)."""

    def test_a_referral_credits_the_referrer_in_its_partition_once(self, cluster):
        _, nodes = cluster
        friend, referrer = in_partitions("REF", 0, 3)
        open_accounts(nodes, [friend, referrer], RETRY_S_MAX)
        request = processing_pb2.ProcessEventRequest(
            request_id="crm/ref/c1", event=customer_event(friend, "referral", related=by_account(referrer)))
        reply = call_until_ok(nodes.nodes, 1, lambda node: node.processing.ProcessEvent(request, timeout=5),
                              time.monotonic() + RETRY_S_MAX)
        assert reply.related_points == REFERRER_POINTS
        wait_on_every_node(nodes, lambda node: balance_of(node, referrer).active_points == REFERRER_POINTS,
                           "the referrer's share not relayed")
        related = [entry for entry in statement_entries(nodes.nodes[2], referrer)
                   if entry.request_id == "crm/ref/c1/related"]
        assert len(related) == 1

    def test_a_member_of_another_partition_moves_into_its_groups(self, cluster):
        _, nodes = cluster
        group, member = in_partitions("GRP", 1, 2)
        open_accounts(nodes, [group, member], RETRY_S_MAX)
        request = accounts_pb2.JoinGroupRequest(request_id="join/c1", account_id=member, parent_account_id=group)
        joined = call_until_ok(nodes.nodes, 2, lambda node: node.accounts.JoinGroup(request, timeout=5),
                               time.monotonic() + RETRY_S_MAX)
        assert joined.parent_account_id == group
        wait_on_every_node(nodes, lambda node: account_of(node, member).parent_account_id == group,
                           "the member's move not applied")


def balance_of(node, account: str):
    return node.accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account(account)), timeout=5).balance


def account_of(node, account: str):
    return node.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(account)), timeout=5)


def statement_entries(node, account: str) -> list:
    return list(node.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
        customer=by_account(account), page_size=100), timeout=5).transactions)


async def publish_events(urls: list[str], events: list[tuple[int, processing_pb2.Event]]) -> None:
    client = await nats.connect(servers=urls)
    try:
        js = client.jetstream(timeout=5)
        for subject_partition, billing_event in events:
            await js.publish(events_subject(subject_partition), billing_event.SerializeToString(),
                             stream=EVENTS_STREAM, headers={Header.MSG_ID: billing_event.event_id})
    finally:
        await client.close()


class TestJetStreamEvents:
    def test_each_partitions_subject_is_read_by_its_owner_and_applied_once(self, cluster):
        servers, nodes = cluster
        wait_spread(nodes)
        accounts = accounts_per_partition(1)
        open_accounts(nodes, accounts, RETRY_S_MAX)
        # Each subject carries events of customers of every partition: the subject need not be theirs.
        events = [(number % PARTITIONS, purchase_event(f"jsp-{number:03d}", accounts[number // PARTITIONS % PARTITIONS],
                                                       EVENT_PRICE_MINOR))
                  for number in range(EVENTS_PER_SUBJECT * PARTITIONS)]
        asyncio.run(publish_events(servers.urls, events))
        wanted = sorted(billing_event.event_id for _, billing_event in events)
        deadline_s = time.monotonic() + EVENTS_WAIT_S_MAX
        while True:
            recorded = sorted(request_id for account in accounts for request_id in
                              statement_request_ids(nodes.nodes[1], account) if request_id.startswith("jsp-"))
            if len(recorded) >= len(wanted) or time.monotonic() > deadline_s:
                break
            time.sleep(0.2)
        assert recorded == wanted  # every subject's events, each once


def node_report(node, since_ms: int) -> dict:
    """`node`'s report in `kassa cluster status`, the first one written after `since_ms`."""
    node_id = node.extra_env["KASSA_CLUSTER_NODE_ID"]
    deadline_s = time.monotonic() + REPORT_WAIT_S_MAX
    while True:
        report = next(report for report in cluster_status(node)["nodes"] if report["node_id"] == node_id)
        if report["reported_at_ms"] > since_ms:
            return report
        assert time.monotonic() < deadline_s, f"{node_id} wrote no report"
        time.sleep(0.2)


class TestCatchUp:
    def test_a_call_brings_up_to_date_only_the_partition_it_reads(self, cluster):
        _, nodes = cluster
        owners = wait_spread(nodes)
        node = next(node for node in live(nodes) if owners.count(node.extra_env["KASSA_CLUSTER_NODE_ID"]) == 1)
        owned = owners.index(node.extra_env["KASSA_CLUSTER_NODE_ID"])
        read = (owned + 1) % PARTITIONS  # a partition the node does not own; it owns none of the others either
        account = accounts_per_partition(1)[read]
        open_accounts(nodes, [account], RETRY_S_MAX)
        balance(node, account)  # the node places the account in its directory (a creation made elsewhere)
        before = node_report(node, time.time_ns() // 1_000_000)["catch_ups"]
        for number in range(CATCH_UP_CALLS):
            node.processing.Accrue(accrue_request(f"catch-up-{number}", account), timeout=5)
            balance(node, account)
        after = node_report(node, time.time_ns() // 1_000_000)["catch_ups"]
        grown = [then - now for now, then in zip(before, after)]
        assert grown[read] >= 1  # the reads caught its copy up (calls in a burst share one)
        assert [count for partition, count in enumerate(grown) if partition != read] == [0] * (PARTITIONS - 1)


class TestJoining:
    def test_a_new_node_restores_every_partitions_snapshot_and_takes_its_share(self, cluster):
        _, nodes = cluster
        account = accounts_per_partition(1)[-1]
        open_accounts(nodes, [account], RETRY_S_MAX)
        time.sleep(SNAPSHOT_INTERVAL_S * 1.5)  # every owner stored a snapshot since
        call_until_ok(nodes.nodes, 0, lambda node: node.processing.Accrue(accrue_request("join-after", account),
                                                                          timeout=5), time.monotonic() + RETRY_S_MAX)
        joining = nodes.nodes[NODES]
        joining.start()
        nodes.wait_serving([joining])
        restored = [line for line in joining.log_lines if "restored the partition's snapshot" in line]
        assert len(restored) == PARTITIONS
        assert "join-after" in statement_request_ids(joining, account)  # and the log after the snapshot
        owners = wait_spread(nodes)
        assert joining.extra_env["KASSA_CLUSTER_NODE_ID"] in owners


class TestKilledOwner:
    def test_kill9_of_a_node_moves_its_partitions_and_loses_nothing(self, cluster):
        servers, nodes = cluster
        owners = wait_spread(nodes)
        accounts = accounts_per_partition(3)
        open_accounts(nodes, accounts, RETRY_S_MAX)
        load = PurchaseLoad(nodes, accounts, RETRY_S_MAX)
        load.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        victim = next(node for node in nodes.nodes if owners.count(node.extra_env["KASSA_CLUSTER_NODE_ID"]) >= 1)
        victim_id = victim.extra_env["KASSA_CLUSTER_NODE_ID"]
        killed_s = time.monotonic()
        victim.kill9()
        time.sleep(LOAD_AFTER_KILL_S)
        load.stop()
        survivor = live(nodes)[0]
        moved = owners_by_partition(survivor)
        assert victim_id not in moved
        assert None not in moved
        assert failover.failover_after(load, killed_s) <= FAILOVER_S_MAX
        counted = audit(survivor, load)
        assert load.unacked == []
        assert counted["lost"] == 0
        assert counted["duplicated"] == 0
        victim.start()  # rejoins from its own copies, as a follower of every partition
        nodes.wait_serving(nodes.nodes)
        assert partition_digests_equal(nodes)


def partition_digests_equal(nodes: KassaNodes) -> bool:
    """Once every copy has applied every log's end, end the nodes at once (kill -9: a drained owner
    gives its leases up, and the next owner's marker group would reach only the nodes still up),
    then compare each partition's copies."""
    failover.converge(nodes, failover.node_config(nodes.nodes[0]).cluster)
    for node in nodes.nodes:
        node.kill9()
    digests = []
    for node in nodes.nodes:
        ledger = open_ledger(failover.node_config(node))
        try:
            digests.append([ledger_digest(part) for part in ledger.parts])
        finally:
            ledger.close()
    print(digests)
    return all(digest == digests[0] for digest in digests)


class TestRefusal:
    def test_ledger_partitions_other_than_the_clusters_is_refused_at_start(self, tmp_path):
        env = {"KASSA_CLUSTER_NODE_ID": "node-x", "KASSA_CLUSTER_ADVERTISE": "127.0.0.1:0",
               "KASSA_CLUSTER_NATS_URLS": "nats://127.0.0.1:1", "KASSA_CLUSTER_PARTITIONS": "4",
               "KASSA_LEDGER_PARTITIONS": "2"}
        server = KassaServer(tmp_path, env=env)
        with pytest.raises(RuntimeError) as caught:
            server.start()
        assert server.process.returncode == 2
        assert "ledger.partitions = 2 with [cluster]" in str(caught.value)
        assert "set ledger.partitions = 4" in str(caught.value)
