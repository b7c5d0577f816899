"""Partitions in a cluster (cluster.partitions = 2, 2 nodes): a shared budget and a promo code's
total uses are not stranded in the partition that does not spend them. Every customer lives in
partition 0; it spends its even share, then the units partition 1 releases through the escrow bank
(JetStream key-value entries), up to the cap and never past it; every node's copies end equal and
verify."""

from __future__ import annotations

import time

import pytest

from bench import failover
from kassa.core_ext.partitions import home_partition
from kassa.v1 import admin_pb2, common_pb2, processing_pb2
from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import KassaNodes, call_until_ok, open_accounts
from tests.cluster.nats_cluster import NatsCluster
from tests.server.helpers import by_account, line

PARTITIONS = 2
NODES = 2
LEASE_TTL_MS = 1_500
RETRY_S_MAX = 10.0
BUDGET_POINTS = 60  # an even share of 30 a partition
POINTS_PER_PURCHASE = 3
SPENT_WITHIN_S = 20.0  # the balancers move units every second: a few rounds
PURCHASE_PAUSE_S = 0.05
PURCHASES_PAST_CAP = 5  # after the cap is reached: none of these earns anything
CAMPAIGN = "budget-3"
PROMO_CAMPAIGN = "promo-5"
CODE = "SHARED-6"
CODE_USES = 6  # an even share of 3 a partition
PROGRAM = """
[program]
name = "escrow"
timezone = "UTC"
points_lifetime_days = 365
"""
CAMPAIGNS = f"""
[[campaigns]]
id = "{CAMPAIGN}"
when = {{ category_prefixes = ["budget/"] }}
effect = {{ kind = "earn_fixed", points = {POINTS_PER_PURCHASE} }}
limits = {{ budget_points = {BUDGET_POINTS} }}

[[campaigns]]
id = "{PROMO_CAMPAIGN}"
promo_code = true
when = {{ category_prefixes = ["promo/"] }}
effect = {{ kind = "earn_fixed", points = 5 }}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("kassa-escrow")
    rules = root / "rules"
    rules.mkdir()
    (rules / "program.toml").write_text(PROGRAM)
    (rules / "campaigns.toml").write_text(CAMPAIGNS)
    servers = NatsCluster(NATS_BINARY, root / "nats", 1)
    servers.start()
    env = {"KASSA_CLUSTER_PARTITIONS": str(PARTITIONS), "KASSA_LEDGER_PARTITIONS": str(PARTITIONS),
           "KASSA_RULES_PATHS": str(rules)}
    nodes = KassaNodes(root, servers.urls, NODES, LEASE_TTL_MS, replicas=1, extra_env=env)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        servers.stop()


def purchase(number: int, account: str) -> processing_pb2.AccrueRequest:
    request_id = f"escrow-{number}"
    return processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account),
        receipt=common_pb2.Receipt(store_id="store-1", terminal_id="term-1", receipt_no=request_id,
                                   lines=[line(1, 1_000, category="budget/x"), line(2, 1_000, category="promo/x")],
                                   promo_codes=[CODE]))


def earned(nodes: KassaNodes, number: int, account: str) -> tuple[int, int]:
    """(the budget's points, the code's uses) one purchase got."""
    request = purchase(number, account)
    reply = call_until_ok(nodes.nodes, number, lambda node: node.processing.Accrue(request, timeout=5),
                          time.monotonic() + RETRY_S_MAX)
    assert reply is not None, f"purchase {number} not acknowledged"
    points = sum(c.points for c in reply.calculation.campaigns if c.campaign_id == CAMPAIGN)
    return points, sum(code.accepted for code in reply.calculation.promo_codes)


class TestSharedBudget:
    def test_one_partition_spends_the_whole_budget_and_code_through_the_bank(self, cluster):
        nodes = cluster
        accounts = [f"E{n}" for n in range(200) if home_partition(f"E{n}", PARTITIONS) == 0][:3]
        open_accounts(nodes, accounts, RETRY_S_MAX)
        imported = call_until_ok(nodes.nodes, 0, lambda node: node.admin.ImportPromoCodes(
            admin_pb2.ImportPromoCodesRequest(request_id="codes-1", campaign_id=PROMO_CAMPAIGN, codes=[CODE],
                                              uses_total=CODE_USES), timeout=5), time.monotonic() + RETRY_S_MAX)
        assert imported is not None
        points, uses, number = 0, 0, 0
        deadline_s = time.monotonic() + SPENT_WITHIN_S
        while points < BUDGET_POINTS or uses < CODE_USES:
            assert time.monotonic() < deadline_s, (f"{points} of {BUDGET_POINTS} points, {uses} of {CODE_USES} "
                                                   "uses granted: the rest stranded")
            got_points, got_uses = earned(nodes, number, accounts[number % len(accounts)])
            points, uses, number = points + got_points, uses + got_uses, number + 1
            time.sleep(PURCHASE_PAUSE_S)
        assert points == BUDGET_POINTS
        assert uses == CODE_USES
        past = [earned(nodes, number + extra, accounts[0]) for extra in range(PURCHASES_PAST_CAP)]
        assert past == [(0, 0)] * PURCHASES_PAST_CAP
        logged = [line for node in nodes.nodes for line in node.log_lines if "escrow" in line]
        assert [line for line in logged if "escrow units released" in line]
        assert [line for line in logged if "failed" in line or "lost" in line] == []

    def test_every_copy_is_equal_and_verifies(self, cluster):
        nodes = cluster
        failover.converge(nodes, failover.node_config(nodes.nodes[0]).cluster)
        failover.end_all_at_once(nodes)
        verified, identical = failover.compare_partitions(nodes)
        assert verified
        assert identical == [True] * PARTITIONS
