"""LMDB map full: a write that does not fit is refused whole, with a hint, and reads go on.

The server starts with the smallest map the config allows (server/config.py LIMITS: 1 MiB), its
maximum too (`ledger.map_size_bytes_max`: the map may not grow, tests/reliability/test_map_growth.py
has it grow), and takes purchases until one is answered RESOURCE_EXHAUSTED naming
`ledger.map_size_bytes_max`. Then no
transaction is half applied (`kassa verify` exits 0; the refused request, retried, is refused
again or applied whole, never half; a batch refused for space leaves no trace), every acknowledged
purchase is there, reads keep working, and a restart with a larger maximum lets writes resume.
"""

from __future__ import annotations

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2
from tests.reliability import CALL_TIMEOUT_S, assert_verifies, purchase, transactions_by_request
from tests.server.helpers import balance, by_account, line, open_account, receipt, statement

MAP_SIZE_MIN_BYTES = 1024**2  # server/config.py LIMITS ("ledger", "map_size_bytes")
BATCH = 100  # purchases per ProcessBatch while filling
POINTS = 10  # earned by each purchase
ACCOUNT = "MAP-1"


class Filled:
    """What the filling left: acknowledged request ids and the first refused request."""

    def __init__(self):
        self.acked: list[str] = []
        self.refused_request: processing_pb2.AccrueRequest | None = None
        self.refusal: grpc.RpcError | None = None


def fill(server, prefix: str = "fill") -> Filled:
    """Batches of purchases until a batch is refused, then single ones until one is refused."""
    filled = Filled()
    number = 0
    while True:
        requests = [purchase(ACCOUNT, f"{prefix}/{number + n}", POINTS) for n in range(BATCH)]
        number += BATCH
        reply = server.processing.ProcessBatch(
            processing_pb2.ProcessBatchRequest(operations=[processing_pb2.Operation(accrue=r) for r in requests]),
            timeout=CALL_TIMEOUT_S,
        )
        codes = {result.code for result in reply.results}
        if codes != {common_pb2.CODE_OK}:
            break
        filled.acked.extend(request.request_id for request in requests)
        assert number < 100_000, "a 1 MiB map took 100,000 purchases without filling up"
    while filled.refusal is None:
        request = purchase(ACCOUNT, f"{prefix}/{number}", POINTS)
        number += 1
        try:
            server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
            filled.acked.append(request.request_id)
        except grpc.RpcError as error:
            filled.refused_request, filled.refusal = request, error
        assert number < 100_000
    return filled


@pytest.fixture
def tiny_map(start_kassa):
    server = start_kassa(env={"KASSA_LEDGER_MAP_SIZE_BYTES": str(MAP_SIZE_MIN_BYTES),
                              "KASSA_LEDGER_MAP_SIZE_BYTES_MAX": str(MAP_SIZE_MIN_BYTES)})
    open_account(server, ACCOUNT)
    return server


def assert_acknowledged_all_there(server, filled: Filled, applied_late=()):
    found = transactions_by_request(server, ACCOUNT)
    for request_id in (*filled.acked, *applied_late):
        times = len(found.get(request_id, []))
        assert times == 1, f"acknowledged {request_id} is in the ledger {times} times"
    expected = POINTS * (len(filled.acked) + len(applied_late))
    now = balance(server, ACCOUNT)
    assert now.active_points == expected, f"balance {now.active_points}, acknowledged purchases earned {expected}"
    return found


class TestMapFull:
    def test_full_map_refuses_the_write_whole_with_a_hint_and_reads_go_on(self, tiny_map):
        filled = fill(tiny_map)

        assert filled.refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"{filled.refusal.code().name}: {filled.refusal.details()}"
        )
        assert "map_size_bytes_max" in filled.refusal.details(), filled.refusal.details()
        assert filled.acked, "the map filled up before the first purchase"

        # the refused request, retried: refused again (nothing fits) or applied whole, never half
        retried_ok = []
        for _ in range(3):
            try:
                tiny_map.processing.Accrue(filled.refused_request, timeout=CALL_TIMEOUT_S)
                retried_ok.append(filled.refused_request.request_id)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error.code().name}: {error.details()}"
        found = assert_acknowledged_all_there(tiny_map, filled, retried_ok)
        if not retried_ok:
            assert filled.refused_request.request_id not in found, "a refused purchase left a transaction"

        # reads keep working on a full map
        assert tiny_map.accounts.GetBalance(
            accounts_pb2.GetBalanceRequest(customer=by_account(ACCOUNT)), timeout=CALL_TIMEOUT_S
        ).account_id == ACCOUNT
        preview = tiny_map.processing.Calculate(
            processing_pb2.CalculateRequest(customer=by_account(ACCOUNT), receipt=receipt(line(1, 2_000))),
            timeout=CALL_TIMEOUT_S,
        )
        assert preview.calculation.earned_points == 100
        assert tiny_map.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(ACCOUNT))).account_id
        assert len(statement(tiny_map, ACCOUNT)) >= len(filled.acked)
        assert_verifies(tiny_map)

    def test_a_batch_refused_for_space_leaves_no_trace(self, tiny_map):
        filled = fill(tiny_map)
        before = balance(tiny_map, ACCOUNT)
        requests = [purchase(ACCOUNT, f"late-batch/{n}", POINTS) for n in range(50)]

        reply = tiny_map.processing.ProcessBatch(
            processing_pb2.ProcessBatchRequest(operations=[processing_pb2.Operation(accrue=r) for r in requests]),
            timeout=CALL_TIMEOUT_S,
        )

        assert len(reply.results) == len(requests)
        found = transactions_by_request(tiny_map, ACCOUNT)
        applied = []
        for request, result in zip(requests, reply.results):
            assert result.code in (common_pb2.CODE_OK, common_pb2.CODE_RESOURCE_EXHAUSTED), result
            if result.code == common_pb2.CODE_OK:
                applied.append(request.request_id)
                assert len(found.get(request.request_id, [])) == 1
            else:
                assert "map_size_bytes_max" in result.message, result.message
                assert request.request_id not in found, f"refused {request.request_id} left a transaction"
        assert balance(tiny_map, ACCOUNT).active_points == before.active_points + POINTS * len(applied)
        assert_acknowledged_all_there(tiny_map, filled, applied)
        assert_verifies(tiny_map)

    def test_writes_resume_after_a_restart_with_a_larger_maximum(self, tiny_map):
        filled = fill(tiny_map)
        assert filled.refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        assert tiny_map.stop() == 0
        assert_verifies(tiny_map)
        tiny_map.extra_env["KASSA_LEDGER_MAP_SIZE_BYTES_MAX"] = str(4 * MAP_SIZE_MIN_BYTES)  # it grows into it
        tiny_map.start()

        reply = tiny_map.processing.Accrue(filled.refused_request, timeout=CALL_TIMEOUT_S)
        again = tiny_map.processing.Accrue(filled.refused_request, timeout=CALL_TIMEOUT_S)
        assert again.transaction_id == reply.transaction_id
        tiny_map.processing.Accrue(purchase(ACCOUNT, "after-growth", POINTS), timeout=CALL_TIMEOUT_S)
        assert_acknowledged_all_there(tiny_map, filled, [filled.refused_request.request_id, "after-growth"])
        assert_verifies(tiny_map)
