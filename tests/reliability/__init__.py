"""Fault-injection tests against a real kassa server process (DESIGN §4 invariants, §7 operations).

One module per fault, one class per fault: crash (kill -9 at a random moment), LMDB map full,
disk full (a small tmpfs), stale and exhausted LMDB readers, double spend under concurrency,
hostile input, client deadlines mid-commit and graceful drain on SIGTERM. Every test injects its
fault and then checks the invariants with `kassa verify` plus the promise specific to the fault.

The helpers here are shared by those modules: ledger verification, fresh channels (load threads
never share the harness's channel: `kill9()` closes it under them), request builders with known
effects (5 % base earn, no bonus) and readers of what the ledger holds per request id.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kassa.v1 import accounts_pb2, accounts_pb2_grpc, common_pb2, processing_pb2, processing_pb2_grpc
from tests.server.helpers import BASE_EARN_BPS, by_account, line, receipt, statement

CALL_TIMEOUT_S = 30  # a call that takes longer than this on a loaded 2-core machine is stuck
BUSINESS_REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION,)  # final answers, replayed on retry


def verify(server) -> tuple[int, dict, str]:
    """`kassa verify` over the server's ledger: (exit code, its JSON summary, its whole output)."""
    result = server.run_cli("verify", "--config", str(server.config_path()))
    output = result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return result.returncode, summary, output


def assert_verifies(server) -> dict:
    code, summary, output = verify(server)
    assert code == 0, f"kassa verify exited {code}:\n{output}"
    assert summary.get("ok") is True and summary.get("violations") == 0, output
    return summary


@contextlib.contextmanager
def fresh_channel(server, **options):
    """A channel of its own to the server, connected before use and closed after."""
    channel = grpc.insecure_channel(server.address, options=list(options.items()))
    try:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        yield channel
    finally:
        channel.close()


def processing_stub(channel) -> processing_pb2_grpc.ProcessingStub:
    return processing_pb2_grpc.ProcessingStub(channel)


def accounts_stub(channel) -> accounts_pb2_grpc.AccountsStub:
    return accounts_pb2_grpc.AccountsStub(channel)


def health_status(address: str, timeout_s: float = 2.0):
    """The overall health status on a new connection, or the status code of the refused call."""
    channel = grpc.insecure_channel(address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return reply.status
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


# -- requests with known effects -------------------------------------------------------------------


def purchase(account_id: str, request_id: str, points: int, redeem_points: int = 0) -> processing_pb2.AccrueRequest:
    """An Accrue that earns exactly `points` (one line at the 5 % base rate, below the big-basket bonus)
    and redeems `redeem_points` in the same transaction."""
    price = points * 10_000 // BASE_EARN_BPS
    assert price < 300_000 and price * BASE_EARN_BPS // 10_000 == points
    assert redeem_points * 2 <= price, "at most 50 % of a receipt may be paid with points"
    return processing_pb2.AccrueRequest(
        request_id=request_id,
        customer=by_account(account_id),
        receipt=receipt(line(1, price), receipt_no=request_id),
        redeem_points=redeem_points,
    )


def spend(account_id: str, request_id: str, points: int, hold: bool = False) -> processing_pb2.RedeemRequest:
    return processing_pb2.RedeemRequest(
        request_id=request_id,
        customer=by_account(account_id),
        points=points,
        receipt_total_minor=10**9,
        mode=processing_pb2.REDEEM_MODE_HOLD if hold else processing_pb2.REDEEM_MODE_IMMEDIATE,
    )


def no_earn_purchase(account_id: str, request_id: str, redeem_points: int) -> processing_pb2.AccrueRequest:
    """A purchase that earns nothing and pays `redeem_points` with points."""
    return processing_pb2.AccrueRequest(
        request_id=request_id,
        customer=by_account(account_id),
        receipt=common_pb2.Receipt(
            store_id="store-1", terminal_id="term-1", receipt_no=request_id,
            lines=[line(1, redeem_points * 4, no_earn=True)],
        ),
        redeem_points=redeem_points,
    )


def create_account(stub: accounts_pb2_grpc.AccountsStub, account_id: str) -> None:
    stub.CreateAccount(
        accounts_pb2.CreateAccountRequest(request_id=f"create/{account_id}", account_id=account_id),
        timeout=CALL_TIMEOUT_S,
    )


def transactions_by_request(server, account_id: str) -> dict[str, list]:
    """request_id -> the statement's transactions carrying it (a list, to see duplicates)."""
    found: dict[str, list] = {}
    for transaction in statement(server, account_id):
        found.setdefault(transaction.request_id, []).append(transaction)
    return found


def call_until_answered(method, request, attempts: int = 200):
    """Call until the server answers something other than ABORTED (same request id in flight):
    the reply, or the RpcError of a final refusal."""
    for _ in range(attempts):
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                return error
        time.sleep(0.02)
    raise AssertionError(f"request {request.request_id} stayed ABORTED (in flight) for {attempts} attempts")


class Barrier(threading.Barrier):
    """A barrier whose wait cannot hang a test forever."""

    def wait(self, timeout=None):
        return super().wait(CALL_TIMEOUT_S if timeout is None else timeout)
