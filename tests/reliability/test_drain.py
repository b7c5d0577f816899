"""Graceful drain on SIGTERM (DESIGN §7): stop taking calls, finish and commit what is in flight.

Under load, SIGTERM: health turns NOT_SERVING (or new connections are refused), new calls are
refused, the process exits 0 within server.grace_s plus a margin, and after a restart every call
that was answered OK is in the ledger. Calls already queued for a commit when SIGTERM arrives are
answered OK and committed, not dropped.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from kassa.v1 import common_pb2, processing_pb2
from kassa.server.app import DRAIN_OVERRUN_S_MAX
from tests.reliability import (
    CALL_TIMEOUT_S, assert_verifies, call_until_answered, fresh_channel, health_status, processing_stub, purchase,
    transactions_by_request,
)
from tests.server.helpers import balance, open_account
from tests.server.stream_helpers import FloodingClient, TemplateBatches, flat_acks, open_accounts, stream_all

GRACE_S = 3
EXIT_MARGIN_S = 10  # a loaded 2-core machine
HEALTH_CHECK_S_MAX = 1.0  # one health check during the drain
POINTS = 10
THREADS = 6
ACCOUNT = "DRAIN-1"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
# What a new call may get once the drain began: NOT_SERVING from health; UNAVAILABLE when nothing
# listens any more; CANCELLED for a call the transport took just as the listener closed.
DRAINING = (NOT_SERVING, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def sigterm_and_watch(server) -> tuple[float, object, float]:
    """SIGTERM; poll health on new connections until it is no longer SERVING.
    Returns (time of the signal, the first non-SERVING answer, seconds it took). A check the server
    did not answer within its deadline says nothing either way (a worker busy committing the calls in
    flight on a loaded machine: seen once in CI): it is made again, within the same bound."""
    sent_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    while time.monotonic() - sent_at < GRACE_S + EXIT_MARGIN_S:
        status = health_status(server.address, timeout_s=HEALTH_CHECK_S_MAX)
        if status not in (SERVING, grpc.StatusCode.DEADLINE_EXCEEDED):
            return sent_at, status, time.monotonic() - sent_at
        time.sleep(0.01)
    raise AssertionError(f"health still SERVING (or unanswered) {GRACE_S + EXIT_MARGIN_S}s after SIGTERM")


def wait_exit(server, sent_at: float) -> tuple[int, float]:
    code = server.process.wait(GRACE_S + EXIT_MARGIN_S + 20)
    took = time.monotonic() - sent_at
    server._reap()  # join the harness's log reader and close the pipe
    return code, took


def assert_new_calls_refused(server) -> grpc.StatusCode:
    """A new call after the drain began is not taken (nothing listens, or the server turns it away)."""
    channel = grpc.insecure_channel(server.address)
    try:
        processing_stub(channel).Accrue(purchase(ACCOUNT, "after-sigterm", POINTS), timeout=2)
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (
            f"a new call during the drain: {error.code().name} {error.details()}"
        )
        return error.code()
    else:
        raise AssertionError("a new call made after health went NOT_SERVING was taken")
    finally:
        channel.close()


class TestGracefulDrain:
    def test_sigterm_under_load_exits_0_in_grace_and_keeps_every_acknowledged_call(self, start_kassa):
        server = start_kassa(env={"KASSA_SERVER_GRACE_S": str(GRACE_S)})
        open_account(server, ACCOUNT)
        stop = threading.Event()
        sent: dict[str, object] = {}  # request_id -> request
        acked: dict[str, object] = {}  # request_id -> OK reply
        unexpected: list[str] = []

        def load(worker: int) -> None:
            with fresh_channel(server) as channel:
                processing = processing_stub(channel)
                for number in range(10**9):
                    if stop.is_set():
                        return
                    request = purchase(ACCOUNT, f"drain/{worker}/{number}", POINTS)
                    sent[request.request_id] = request
                    try:
                        acked[request.request_id] = processing.Accrue(request, timeout=CALL_TIMEOUT_S)
                    except grpc.RpcError as error:
                        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                            unexpected.append(f"{request.request_id}: {error.code().name} {error.details()}")
                        return

        threads = [threading.Thread(target=load, args=(worker,), daemon=True) for worker in range(THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        acked_before_signal = len(acked)

        sent_at, status, took = sigterm_and_watch(server)
        assert status in DRAINING, f"health answered {status} during the drain"
        late_call = assert_new_calls_refused(server) if server.process.poll() is None else None
        code, exit_s = wait_exit(server, sent_at)
        stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S)
            assert not thread.is_alive()

        assert code == 0, f"exit code {code} after SIGTERM"
        assert exit_s <= GRACE_S + EXIT_MARGIN_S, f"took {exit_s:.1f}s to exit, grace_s is {GRACE_S}"
        assert not unexpected, unexpected[:5]
        assert acked_before_signal > 0, "the load had not started"

        server.start()
        found = transactions_by_request(server, ACCOUNT)
        lost = [request_id for request_id in acked if len(found.get(request_id, [])) != 1]
        assert not lost, f"{len(lost)} calls answered OK before the drain are not in the ledger once: {lost[:5]}"
        for request_id, reply in acked.items():
            assert found[request_id][0].transaction_id == reply.transaction_id
        # the client re-sends what it had no answer for; then the balance is exact
        for request_id, request in sent.items():
            if request_id not in acked:
                reply = call_until_answered(server.processing.Accrue, request)
                assert not isinstance(reply, grpc.RpcError), f"{request_id}: {reply.code().name} {reply.details()}"
        late = transactions_by_request(server, ACCOUNT).get("after-sigterm", [])
        if late_call == grpc.StatusCode.UNAVAILABLE:
            assert not late, "a call refused UNAVAILABLE during the drain was committed"
        assert balance(server, ACCOUNT).active_points == POINTS * (len(sent) + len(late))
        assert_verifies(server)

    def test_calls_waiting_for_their_commit_at_sigterm_are_answered_ok_and_committed(self, start_kassa):
        # Each group waits a whole second before it commits: the calls are certainly in flight.
        server = start_kassa(env={"KASSA_SERVER_GRACE_S": str(GRACE_S), "KASSA_COMMIT_WAIT_US_MAX": "1000000"})
        open_account(server, ACCOUNT)
        requests = [purchase(ACCOUNT, f"in-flight/{n}", POINTS) for n in range(16)]
        with fresh_channel(server) as channel:
            processing = processing_stub(channel)
            calls = [processing.Accrue.future(request, timeout=CALL_TIMEOUT_S) for request in requests]
            time.sleep(0.3)  # they reached the server and wait in the committer
            assert not any(call.done() for call in calls), "the calls were answered before SIGTERM"

            sent_at, status, _ = sigterm_and_watch(server)
            replies = []
            for request, call in zip(requests, calls):
                try:
                    replies.append(call.result())
                except grpc.RpcError as error:
                    raise AssertionError(
                        f"{request.request_id}, in flight at SIGTERM: {error.code().name} {error.details()}"
                    ) from None
        code, exit_s = wait_exit(server, sent_at)

        assert status in DRAINING, f"health answered {status} during the drain"
        assert code == 0 and exit_s <= GRACE_S + EXIT_MARGIN_S, (code, exit_s)
        server.start()
        found = transactions_by_request(server, ACCOUNT)
        for request, reply in zip(requests, replies):
            assert [t.transaction_id for t in found.get(request.request_id, [])] == [reply.transaction_id]
        assert balance(server, ACCOUNT).active_points == POINTS * len(requests)
        assert_verifies(server)


STREAM_GRACE_S = 2
STREAMS = 8
STREAM_BATCH = 250
STREAM_ACCOUNTS = [f"DRAIN-S-{n:02d}" for n in range(20)]
# Groups of 100 purchases, each with its own fsync: what the server has queued when the grace ends
# takes seconds to commit, as 32 streams of 20,000 events each did at the default group size.
SLOW_COMMIT_ENV = {
    "KASSA_SERVER_GRACE_S": str(STREAM_GRACE_S),
    "KASSA_COMMIT_BATCH_MAX": "100",
    "KASSA_PROCESSING_STREAM_EVENTS_IN_FLIGHT_MAX": "5000",
}


def recorded_by_event(server) -> dict[str, list]:
    """event id (the request id of its purchase) -> its journal entries."""
    found: dict[str, list] = {}
    for account_id in STREAM_ACCOUNTS:
        for request_id, entries in transactions_by_request(server, account_id).items():
            if request_id.startswith("drain-stream/"):
                found.setdefault(request_id, []).extend(entries)
    return found


def batch_number(event_id: str) -> int:
    return int(event_id.split("/")[2])


def send_the_rest_again(server, number: int, client, template, recorded: dict) -> list:
    """Stream `number` sends again what it has no ack for, up to one batch past what the ledger
    recorded of it (what the server never read was never recorded); all it planned up to there."""
    mine = [event_id for event_id in recorded if event_id.startswith(f"drain-stream/{number}/")]
    last = max(map(batch_number, mine), default=-1)
    resend = [template.planned(batch) for batch in range(len(client.acked) // STREAM_BATCH, last + 2)]
    replies = flat_acks(stream_all(server, [processing_pb2.EventBatch(events=[item.event() for item in batch])
                                            for batch in resend]))
    assert [reply.code for reply in replies] == [common_pb2.CODE_OK] * len(replies)
    return [item for batch in range(last + 2) for item in template.planned(batch)]


class TestDrainWithFullStreams:
    def test_sigterm_with_full_stream_windows_exits_within_grace_and_no_acked_event_is_lost(self, start_kassa):
        """Clients keep sending until the stream ends. Past the grace nothing more is committed:
        what was not committed is not acked, and the clients send it again after the restart."""
        server = start_kassa(env=SLOW_COMMIT_ENV)
        open_accounts(server, STREAM_ACCOUNTS)
        templates = [TemplateBatches(f"drain-stream/{number}", STREAM_ACCOUNTS, STREAM_BATCH) for number in range(STREAMS)]
        clients = [FloodingClient(server.address, template.batch) for template in templates]
        for client in clients:
            client.start()
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while not all(client.acked for client in clients):  # every stream flows, its window fills
            assert time.monotonic() < deadline, [len(client.acked) for client in clients]
            time.sleep(0.05)
        time.sleep(1)

        sent_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(STREAM_GRACE_S + EXIT_MARGIN_S + 20)
        exit_s = time.monotonic() - sent_at
        server._reap()
        for client in clients:
            assert client.finished.wait(CALL_TIMEOUT_S), "a stream outlived its server"

        assert code == 0, f"exit code {code} after SIGTERM"
        assert exit_s <= STREAM_GRACE_S + DRAIN_OVERRUN_S_MAX, f"took {exit_s:.1f}s to exit, grace_s is {STREAM_GRACE_S}"
        ended = [client.error.code() if client.error else "OK" for client in clients]
        assert ended == [grpc.StatusCode.UNAVAILABLE] * STREAMS, "a stream cut by the drain must say: send again"
        acked = {ack.event_id: ack for client in clients for ack in client.acked}
        assert all(ack.code == common_pb2.CODE_OK for ack in acked.values()), "an event was acked without its commit"

        server.extra_env = {}  # default group size, to send the rest at full speed
        server.start()
        recorded = recorded_by_event(server)
        lost = [event_id for event_id, ack in acked.items()
                if [entry.transaction_id for entry in recorded.get(event_id, [])] != [ack.transaction_id]]
        assert not lost, f"{len(lost)} acked events are not in the ledger once, with their ack's transaction: {lost[:5]}"

        planned = []
        for number, (client, template) in enumerate(zip(clients, templates)):
            planned.extend(send_the_rest_again(server, number, client, template, recorded))
        recorded = recorded_by_event(server)
        assert sorted(recorded) == sorted(item.event_id for item in planned)
        assert all(len(entries) == 1 for entries in recorded.values()), "an event applied twice"
        for account_id in STREAM_ACCOUNTS:
            points = sum(item.points for item in planned if item.account_id == account_id)
            assert balance(server, account_id).active_points == points, account_id
        assert_verifies(server)
