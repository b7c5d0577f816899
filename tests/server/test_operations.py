"""Operating kassa: Prometheus metrics on their own port, `kassa stats`, the access log of refused
calls, and the audit trail (every journal entry names who made it)."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest

from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2
from tests.kassa_harness import KassaServer
from tests.server.helpers import (
    LIFETIME_DAYS, accrue, balance, by_account, earn, line, open_account, receipt, redeem, refused, rollback, statement,
)

ACCOUNTS = ("M-1", "M-2", "M-3")
LOG_WAIT_S = 5
GAUGE_WAIT_S = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, for every sample line of the exposition text."""
    found = {}
    for text_line in text.splitlines():
        if text_line and not text_line.startswith("#"):
            name, _, value = text_line.rpartition(" ")
            found[name] = float(value)
    return found


def grpc_labels(method: str, code: str | None = None) -> str:
    """prometheus_client's label order (sorted); `method` is "Service/Method" of kassa.v1."""
    service, name = method.split("/")
    code_label = f'grpc_code="{code}",' if code is not None else ""
    return f'{{{code_label}grpc_method="{name}",grpc_service="kassa.v1.{service}",grpc_type="UNARY"}}'


def calls(method: str, code: str) -> str:
    return "grpc_server_handled_total" + grpc_labels(method, code)


def wait_for_log(server, predicate) -> dict:
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        for text_line in list(server.log_lines):
            try:
                record = json.loads(text_line)
            except ValueError:
                continue
            if predicate(record):
                return record
        assert time.monotonic() < deadline, "no such log line:\n" + "".join(server.log_lines)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with metrics on, after a known mix of calls: (server, metrics address)."""
    metrics_address = f"127.0.0.1:{free_port()}"
    server = KassaServer(tmp_path_factory.mktemp("operations"), env={"KASSA_METRICS_LISTEN": metrics_address}).start()
    try:
        for account_id in ACCOUNTS:                                     # CreateAccount OK x3: 3 commits
            open_account(server, account_id)
        earn(server, "M-1", 500, request_id="m/buy-1")                  # Accrue OK x2: 2 commits
        earn(server, "M-2", 200, request_id="m/buy-2")
        with refused(grpc.StatusCode.NOT_FOUND):                        # Accrue NOT_FOUND: 1 commit
            accrue(server, "M-NOBODY", receipt(line(1, 1_000)), request_id="m/buy-nobody")
        with refused(grpc.StatusCode.INVALID_ARGUMENT):                 # Accrue INVALID_ARGUMENT: no commit
            accrue(server, "M-1", receipt(line(1, 1_000)), request_id="")
        with refused(grpc.StatusCode.FAILED_PRECONDITION):              # Redeem FAILED_PRECONDITION: 1 commit
            redeem(server, "M-3", 1_000, request_id="m/spend-too-much")
        balance(server, "M-1")                                          # GetBalance OK x2
        balance(server, "M-2")
        with refused(grpc.StatusCode.NOT_FOUND):                        # GetBalance NOT_FOUND x1
            balance(server, "M-NOBODY")
        Op = processing_pb2.Operation                                   # ProcessBatch OK x1: 1 commit of 3
        results = server.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=[
            Op(accrue=processing_pb2.AccrueRequest(
                request_id=f"m/batch-{n}", customer=by_account("M-3"),
                receipt=receipt(line(1, 2_000), receipt_no=f"m/batch-{n}")))
            for n in range(3)
        ])).results
        assert [result.code for result in results] == [common_pb2.CODE_OK] * 3
        yield server, metrics_address
    finally:
        server.stop()


EXPECTED_CALLS = {
    ("Accounts/CreateAccount", "OK"): 3,
    ("Processing/Accrue", "OK"): 2,
    ("Processing/Accrue", "NOT_FOUND"): 1,
    ("Processing/Accrue", "INVALID_ARGUMENT"): 1,
    ("Processing/Redeem", "FAILED_PRECONDITION"): 1,
    ("Accounts/GetBalance", "OK"): 2,
    ("Accounts/GetBalance", "NOT_FOUND"): 1,
    ("Processing/ProcessBatch", "OK"): 1,
}
COMMITS = 3 + 2 + 1 + 1 + 1  # one group per unary mutating call (sequential), one for the batch
OPS_COMMITTED = 3 + 2 + 1 + 1 + 3


class TestMetrics:
    def test_calls_are_counted_by_method_and_code(self, served):
        server, address = served
        found = samples(scrape(address))
        counted = {key: value for key, value in found.items() if key.startswith("grpc_server_handled_total{")}
        assert counted == {calls(method, code): count for (method, code), count in EXPECTED_CALLS.items()}
        for method in ("Processing/Accrue", "Accounts/GetBalance", "Accounts/CreateAccount"):
            total = sum(count for (m, _), count in EXPECTED_CALLS.items() if m == method)
            labels = grpc_labels(method)
            assert found[f"grpc_server_started_total{labels}"] == total
            assert found[f"grpc_server_handling_seconds_count{labels}"] == total
            assert found[f'grpc_server_handling_seconds_bucket{labels[:-1]},le="+Inf"}}'] == total
            assert found[f"grpc_server_handling_seconds_sum{labels}"] > 0

    def test_commit_histograms_count_the_commits(self, served):
        _, address = served
        found = samples(scrape(address))
        assert found["kassa_commit_operations_count"] == COMMITS
        assert found["kassa_commit_operations_sum"] == OPS_COMMITTED
        assert found['kassa_commit_operations_bucket{le="1.0"}'] == COMMITS - 1  # all but the batch
        assert found['kassa_commit_operations_bucket{le="2.0"}'] == COMMITS - 1
        assert found['kassa_commit_operations_bucket{le="5.0"}'] == COMMITS
        assert found['kassa_commit_operations_bucket{le="+Inf"}'] == COMMITS
        assert found["kassa_commit_duration_seconds_count"] == COMMITS
        assert found['kassa_commit_duration_seconds_bucket{le="+Inf"}'] == COMMITS
        assert found["kassa_commit_duration_seconds_sum"] > 0

    def test_histogram_buckets_are_cumulative(self, served):
        _, address = served
        text = scrape(address)
        series: dict[str, list[float]] = {}
        for name, labels, value in re.findall(r'^(\w+)_bucket\{(.*?)le="[^"]+"\} (\S+)$', text, re.M):
            series.setdefault(name + labels, []).append(float(value))
        assert series
        for counts in series.values():
            assert counts == sorted(counts)

    def test_gauges_show_the_ledger(self, served):
        server, address = served
        stats = server.admin.GetStats(admin_pb2.GetStatsRequest())
        deadline = time.monotonic() + GAUGE_WAIT_S  # the worker writes its gauges every second
        while (found := samples(scrape(address)))["kassa_transactions"] != stats.transactions:
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        assert found["kassa_accounts"] == len(ACCOUNTS) == stats.accounts
        assert found["kassa_transactions"] == stats.transactions
        assert found["kassa_transactions"] == sum(len(statement(server, account)) for account in ACCOUNTS)
        assert found["kassa_ledger_bytes"] == stats.ledger_bytes > 0
        assert found["kassa_ledger_map_bytes"] == 256 * 1024 * 1024
        assert found["kassa_streams_open"] == 0

    def test_only_metrics_is_served(self, served):
        _, address = served
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://{address}/other", timeout=10)
        assert caught.value.code == 404
        caught.value.close()

    def test_kassa_stats_prints_the_figures_and_the_calls(self, served):
        server, address = served
        result = server.run_cli("stats", "--config", str(server.config_path()))
        assert result.returncode == 0, result.stdout + result.stderr
        printed = {}
        for text_line in result.stdout.splitlines():
            label, _, value = text_line.rstrip().rpartition(" ")
            printed[" ".join(label.split())] = float(value.replace(",", ""))
        assert printed["accounts"] == len(ACCOUNTS)
        assert printed["commits"] == COMMITS
        assert printed["operations committed"] == OPS_COMMITTED
        assert printed["streams open"] == 0
        assert printed["ledger bytes"] > 0
        for (method, code), count in EXPECTED_CALLS.items():
            assert printed[f"kassa.v1.{method} {code}"] == count

    def test_kassa_stats_without_metrics_says_so(self, tmp_path):
        server = KassaServer(tmp_path)  # not started: the command only reads the config
        result = server.run_cli("stats", "--config", str(server.config_path()))
        assert result.returncode == 2
        assert "metrics.listen" in result.stderr


class TestLedgerUnavailable:
    def test_a_server_that_cannot_open_its_ledger_says_why_in_one_line_and_exits_2(self, tmp_path):
        server = KassaServer(tmp_path)
        server.ledger_path.write_text("not a ledger directory")
        with pytest.raises(RuntimeError) as caught:
            server.start()
        assert server.process.returncode == 2
        printed = str(caught.value)
        assert f"kassa: cannot open the ledger at {server.ledger_path}: " in printed, printed
        assert "Traceback" not in printed, printed


class TestAccessLog:
    def test_a_refused_call_is_logged_with_its_request_id(self, served):
        server, _ = served
        record = wait_for_log(server, lambda r: r.get("msg") == "refused" and r.get("request_id") == "m/buy-nobody")
        assert record["method"] == "/kassa.v1.Processing/Accrue"
        assert record["code"] == "NOT_FOUND"
        assert record["details"]
        assert record["logger"] == "kassa.access"
        record = wait_for_log(server, lambda r: r.get("msg") == "refused" and r.get("request_id") == "m/spend-too-much")
        assert (record["method"], record["code"]) == ("/kassa.v1.Processing/Redeem", "FAILED_PRECONDITION")

    def test_successful_calls_are_not_logged(self, served):
        server, _ = served
        wait_for_log(server, lambda r: r.get("request_id") == "m/spend-too-much")
        logged = [json.loads(text_line) for text_line in list(server.log_lines) if text_line.startswith("{")]
        assert not [r for r in logged if r.get("request_id") in ("m/buy-1", "m/buy-2", "m/batch-0", "create/M-1")]
        refused_lines = [r for r in logged if r.get("msg") == "refused"]
        assert len(refused_lines) == sum(count for (_, code), count in EXPECTED_CALLS.items() if code != "OK")


class TestAudit:
    def test_every_entry_made_through_the_api_names_its_actor(self, kassa):
        open_account(kassa, "P-1", card="C-1")
        open_account(kassa, "P-2")
        kassa.accounts.SetAttributes(accounts_pb2.SetAttributesRequest(
            request_id="p/attrs", customer=by_account("P-1"), segments=["vip"]))
        bought = earn(kassa, "P-1", 1_000, request_id="p/buy-1")
        redeem(kassa, "P-1", 100, request_id="p/spend-1")
        hold = redeem(kassa, "P-1", 200, request_id="p/hold-1", hold=True)
        rollback(kassa, "p/void-1", transaction_id=hold.transaction_id)
        redeem(kassa, "P-1", 50, request_id="p/hold-2", hold=True)  # left to lapse
        rollback(kassa, "p/return-1", transaction_id=bought.transaction_id, returns=[(1, 500)])
        kassa.accounts.Adjust(accounts_pb2.AdjustRequest(
            request_id="p/adjust", customer=by_account("P-2"), points=300, reason="goodwill", operator_id="alice"))
        kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=[
            processing_pb2.Operation(accrue=processing_pb2.AccrueRequest(
                request_id="p/batch-buy", customer=by_account("P-2"), receipt=receipt(line(1, 2_000), receipt_no="B")))]))
        events = processing_pb2.EventBatch(events=[processing_pb2.Event(
            event_id="p/event-buy", purchase=processing_pb2.AccrueRequest(
                customer=by_account("P-2"), receipt=receipt(line(1, 2_000), receipt_no="E")))])
        acks = [ack for batch in kassa.processing.StreamEvents(iter([events]), timeout=30) for ack in batch.acks]
        assert [ack.code for ack in acks] == [common_pb2.CODE_OK]
        kassa.accounts.BlockCard(accounts_pb2.BlockCardRequest(request_id="p/block", card="C-1"))
        kassa.clock.advance(days=LIFETIME_DAYS + 1)  # every lot and the hold run out
        assert kassa.admin.ExpirePoints(admin_pb2.ExpirePointsRequest()).expired_points > 0

        entries = statement(kassa, "P-1") + statement(kassa, "P-2")
        by_api = [t for t in entries if t.kind != accounts_pb2.TRANSACTION_KIND_EXPIRE]
        expired = [t for t in entries if t.kind == accounts_pb2.TRANSACTION_KIND_EXPIRE]
        made = {t.request_id for t in by_api}
        assert {"create/P-1", "card/C-1", "create/P-2", "p/attrs", "p/buy-1", "p/spend-1", "p/hold-1", "p/void-1",
                "p/hold-2", "p/return-1", "p/adjust", "p/batch-buy", "p/event-buy", "p/block"} <= made
        assert [(t.request_id, t.actor) for t in by_api if t.actor != "anonymous"] == []
        assert {t.actor for t in expired} == {"system"}  # what time did, not a caller
        assert {t.request_id for t in expired} == {""}
        assert len(expired) == 2  # one per account whose points expired
