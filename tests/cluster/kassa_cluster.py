"""Real kassa nodes of one cluster (`[cluster]` set through KASSA_CLUSTER_* variables), each a
`kassa serve` process with its own ledger, port and clock file, on the NATS servers given. Used by
tests/cluster/test_kassa_failover.py and bench/failover.py.

A purchase load (`PurchaseLoad`) goes through every node, retrying a call that was not answered
OK with the same request_id on the next node, as a client of a cluster does; `audit` then reads
each account's statement and counts every acknowledged purchase (lost: missing; duplicated: more
than once).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kassa.v1 import accounts_pb2, processing_pb2
from tests.kassa_harness import KassaServer
from tests.server.helpers import by_account, line, receipt

NODE_READY_S_MAX = 60.0  # every node SERVING (an owner is known to all); 30 s was passed on a loaded 2-core machine
CALL_S_MAX = 5.0  # one call's deadline
HEALTH_CALL_S_MAX = 1.0  # one health check's deadline
RETRY_PAUSE_S = 0.05
POLL_S = 0.1
PRICE_MINOR = 10_000
# Answers after which a call may or may not have been recorded: sent again, same request_id.
# (CANCELLED: the harness closed its channel to a node it killed, with the call in flight.)
RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class KassaNodes:
    def __init__(self, root: Path, nats_urls: list[str], size: int, lease_ttl_ms: int, replicas: int,
                 extra_env: dict[str, str] | None = None):
        self.nodes: list[KassaServer] = []
        renew_ms = lease_ttl_ms // 4
        for index in range(size):
            workdir = root / f"node-{index}"
            workdir.mkdir(parents=True)
            # Port 0 in both: the node advertises the port it bound (one chosen here could be taken
            # by another connection before the node starts).
            env = {"KASSA_SERVER_LISTEN": "127.0.0.1:0", "KASSA_CLUSTER_NODE_ID": f"node-{index}",
                   "KASSA_CLUSTER_ADVERTISE": "127.0.0.1:0", "KASSA_CLUSTER_NATS_URLS": ",".join(nats_urls),
                   "KASSA_CLUSTER_REPLICAS": str(replicas), "KASSA_CLUSTER_LEASE_TTL_MS": str(lease_ttl_ms),
                   "KASSA_CLUSTER_LEASE_RENEW_INTERVAL_MS": str(renew_ms),
                   "KASSA_CLUSTER_LEASE_MARGIN_MS": str(renew_ms), "KASSA_LEDGER_SYNC": "false",
                   "KASSA_LOG_LEVEL": "info", **(extra_env or {})}
            self.nodes.append(KassaServer(workdir, env=env))

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_serving(self.nodes)

    def wait_serving(self, nodes) -> None:
        deadline_s = time.monotonic() + NODE_READY_S_MAX
        for node in nodes:
            while health(node) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline_s, not_serving_report(node)
                time.sleep(POLL_S)

    def owner(self) -> KassaServer | None:
        """The live node that last said it took the partition (and has not said it lost it since)."""
        found = None
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            said = [line for line in node.log_lines if '"partition taken"' in line or '"partition lost"' in line]
            if said and '"partition taken"' in said[-1]:
                found = node
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def health(node: KassaServer) -> int:
    try:
        reply = health_pb2_grpc.HealthStub(node.channel()).Check(health_pb2.HealthCheckRequest(),
                                                                 timeout=HEALTH_CALL_S_MAX)
    except grpc.RpcError:
        return health_pb2.HealthCheckResponse.UNKNOWN
    return reply.status


def health_answer(channel: grpc.Channel) -> str:
    """What a health check on `channel` answers: the status name, or the call's error code."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_CALL_S_MAX)
    except grpc.RpcError as error:
        return f"no answer ({error.code().name}: {error.details()})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def not_serving_report(node: KassaServer) -> str:
    """Which node did not report SERVING, what its health said (on the harness's channel and on a
    new one), whether the process still runs, and its last log lines."""
    node_id = node.extra_env.get("KASSA_CLUSTER_NODE_ID", "?")
    running = node.process is not None and node.process.poll() is None
    with grpc.insecure_channel(node.address) as fresh:
        on_new_channel = health_answer(fresh)
    return (f"{node_id} at {node.address} not SERVING in time: health "
            f"{health_answer(node.channel())} (a new channel: {on_new_channel}); process "
            f"{'running' if running else 'exited'}; last log lines:\n{''.join(node.log_lines[-20:])}")


def accrue_request(request_id: str, account_id: str) -> processing_pb2.AccrueRequest:
    return processing_pb2.AccrueRequest(request_id=request_id, customer=by_account(account_id),
                                        receipt=receipt(line(1, PRICE_MINOR), receipt_no=request_id[-60:]))


def call_until_ok(nodes: list[KassaServer], first: int, send, deadline_s: float):
    """`send(node)` on node `first`, then the next ones, until one answers; None past the deadline.
    A call answered with one of RETRIED_CODES may or may not have been recorded: it is sent again
    with the same request_id, which replays it if it was."""
    index = first
    while time.monotonic() < deadline_s:
        node = nodes[index % len(nodes)]
        index += 1
        if node.process is None or node.process.poll() is not None:
            continue
        try:
            return send(node)
        except grpc.RpcError as error:
            if error.code() not in RETRIED_CODES:
                raise
        time.sleep(RETRY_PAUSE_S)
    return None


class PurchaseLoad:
    """One thread per node, each sending purchases to its node (then the next, on a refusal)."""

    def __init__(self, cluster: KassaNodes, accounts: list[str], retry_s_max: float):
        self.cluster = cluster
        self.accounts = accounts
        self.retry_s_max = retry_s_max
        self.acked: list[tuple[str, str]] = []  # (request_id, account_id)
        self.unacked: list[str] = []
        self.ack_times: list[tuple[float, float]] = []  # (first sent, acknowledged), time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for index in range(len(self.cluster.nodes)):
            thread = threading.Thread(target=self._drive, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _drive(self, index: int) -> None:
        nodes = self.cluster.nodes
        number = 0
        while not self._stop.is_set():
            account = self.accounts[(index + number * len(nodes)) % len(self.accounts)]
            request_id = f"buy-{index}-{number}"
            request = accrue_request(request_id, account)
            sent_s = time.monotonic()
            reply = call_until_ok(nodes, index, lambda node: node.processing.Accrue(request, timeout=CALL_S_MAX),
                                  sent_s + self.retry_s_max)
            with self._lock:
                if reply is None:
                    self.unacked.append(request_id)
                else:
                    self.acked.append((request_id, account))
                    self.ack_times.append((sent_s, time.monotonic()))
            number += 1


def open_accounts(cluster: KassaNodes, accounts: list[str], retry_s_max: float) -> None:
    for number, account in enumerate(accounts):
        request = accounts_pb2.CreateAccountRequest(request_id=f"create-{account}", account_id=account)
        reply = call_until_ok(cluster.nodes, number,
                              lambda node: node.accounts.CreateAccount(request, timeout=CALL_S_MAX),
                              time.monotonic() + retry_s_max)
        assert reply is not None, f"account {account} not created"


def statement_request_ids(node: KassaServer, account: str) -> list[str]:
    """Every accrue's request id on the account's statement, all pages."""
    found, token = [], ""
    while True:
        page = node.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
            customer=by_account(account), page_size=500, page_token=token), timeout=CALL_S_MAX)
        found += [entry.request_id for entry in page.transactions
                  if entry.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE]
        token = page.next_page_token
        if not token:
            return found


def audit(node: KassaServer, load: PurchaseLoad) -> dict:
    """{"lost": acknowledged and missing, "duplicated": recorded more than once}, read through `node`."""
    recorded: dict[str, int] = {}
    for account in load.accounts:
        for request_id in statement_request_ids(node, account):
            recorded[request_id] = recorded.get(request_id, 0) + 1
    lost = sum(1 for request_id, _ in load.acked if request_id not in recorded)
    duplicated = sum(1 for count in recorded.values() if count > 1)
    return {"lost": lost, "duplicated": duplicated, "recorded": len(recorded)}


def cluster_status(node: KassaServer) -> dict:
    completed = node.run_cli("cluster", "status", "--config", str(node.config_path()))
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)
