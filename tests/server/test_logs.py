"""The server's log: every line names its worker and pid; at log level debug every answered call
has a line; every line about a call carries its request id (the request's, else x-request-id)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from kassa.v1 import accounts_pb2, processing_pb2
from tests.server.helpers import by_account, line, open_account, receipt, redeem

LOG_WAIT_S = 5  # seconds for a line to reach the test after the call


def records(server) -> list[dict]:
    found = []
    for text_line in list(server.log_lines):
        try:
            found.append(json.loads(text_line))
        except ValueError:
            continue
    return found


def wait_for_record(server, predicate) -> dict:
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        for record in records(server):
            if predicate(record):
                return record
        assert time.monotonic() < deadline, "no such log line:\n" + "".join(server.log_lines)
        time.sleep(0.05)


def buy(server, request_id: str) -> None:
    server.processing.Accrue(processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account("A-1"), receipt=receipt(line(1, 2_000), receipt_no=request_id)))


def refuse_a_redeem(server, request_id: str) -> None:
    with pytest.raises(grpc.RpcError):
        redeem(server, "A-1", 1_000_000, request_id=request_id)


class TestAccessLog:
    def test_at_debug_an_answered_call_is_logged_with_its_request_id_and_worker(self, start_kassa):
        server = start_kassa(env={"KASSA_LOG_LEVEL": "debug"})
        open_account(server, "A-1")
        buy(server, "log/buy-1")

        record = wait_for_record(server, lambda r: r.get("request_id") == "log/buy-1")
        assert (record["msg"], record["level"]) == ("answered", "debug")
        assert (record["method"], record["code"]) == ("/kassa.v1.Processing/Accrue", "OK")
        assert record["duration_ms"] >= 0
        assert (record["worker"], record["pid"]) == (0, server.process.pid)

    def test_at_info_answered_calls_are_not_logged_and_refused_ones_are(self, kassa):
        open_account(kassa, "A-1")
        buy(kassa, "log/buy-1")
        refuse_a_redeem(kassa, "log/spend-1")

        refused = wait_for_record(kassa, lambda r: r.get("request_id") == "log/spend-1")  # logged after the buy
        assert (refused["msg"], refused["level"], refused["code"]) == ("refused", "info", "FAILED_PRECONDITION")
        assert (refused["worker"], refused["pid"]) == (0, kassa.process.pid)
        assert not [r for r in records(kassa) if r.get("request_id") == "log/buy-1"]

    def test_a_call_without_a_request_id_takes_the_x_request_id_metadata(self, kassa):
        missing = accounts_pb2.GetBalanceRequest(customer=by_account("A-9"))
        with pytest.raises(grpc.RpcError):
            kassa.accounts.GetBalance(missing, metadata=(("x-request-id", "pos-7/lookup-3"),))

        record = wait_for_record(kassa, lambda r: r.get("request_id") == "pos-7/lookup-3")
        assert (record["msg"], record["code"]) == ("refused", "NOT_FOUND")
        assert record["method"] == "/kassa.v1.Accounts/GetBalance"


class TestWorkers:
    def test_every_line_of_every_worker_names_its_worker_and_pid(self, start_kassa):
        server = start_kassa(env={"KASSA_SERVER_WORKERS": "2", "KASSA_LOG_LEVEL": "debug"})
        deadline = time.monotonic() + LOG_WAIT_S
        while sum(r.get("msg") == "serving" for r in records(server)) < 2:  # both workers up
            assert time.monotonic() < deadline, "".join(server.log_lines)
            time.sleep(0.05)
        open_account(server, "A-1")
        buy(server, "log/buy-1")
        answered = wait_for_record(server, lambda r: r.get("request_id") == "log/buy-1")

        logged = records(server)
        pids = {r["worker"]: r["pid"] for r in logged if r.get("msg") == "serving"}
        assert set(pids) == {0, 1}
        assert len(set(pids.values())) == 2
        assert server.process.pid not in pids.values()  # the supervisor serves nothing itself
        assert answered["pid"] == pids[answered["worker"]]
        of_workers = [r for r in logged if not r.get("supervisor")]
        assert [r for r in of_workers if pids.get(r.get("worker")) != r["pid"]] == []
        assert [r for r in logged if r.get("supervisor") and r["pid"] != server.process.pid] == []
