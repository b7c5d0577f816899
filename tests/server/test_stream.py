"""StreamEvents: a billing system streams batches of events and gets one ack per event, in order,
each after its durable commit; duplicates replay, bad events are refused one by one, a crash loses
no acked event, and a client that stops taking acks cannot make the server hold its traffic."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2
from kassa.server.servicers.in_flight import MEMORY_PER_REQUEST_BYTE
from tests.server.helpers import balance, by_account, line, open_account, receipt
from tests.server.stream_helpers import (
    MemoryWatch, NonReadingClient, StreamingClient, batches_of, earned_by, flat_acks, ledger_transactions,
    open_accounts, plan_purchases, points_statement, purchase_event, statements, stream_all, verify,
)

OK = common_pb2.CODE_OK


def redeem_event(event_id: str, account_id: str, points: int) -> processing_pb2.Event:
    return processing_pb2.Event(
        event_id=event_id,
        redeem=processing_pb2.RedeemRequest(customer=by_account(account_id), points=points, receipt_total_minor=10**9,
                                            mode=processing_pb2.REDEEM_MODE_IMMEDIATE),
    )


def cancel_event(event_id: str, original_event_id: str) -> processing_pb2.Event:
    return processing_pb2.Event(
        event_id=event_id, rollback=processing_pb2.RollbackRequest(original_request_id=original_event_id)
    )


def broken_purchase_event(event_id: str, account_id: str) -> processing_pb2.Event:
    """A purchase whose only line has a negative amount."""
    bad = common_pb2.Line(line_no=1, sku="SKU-1", category="grocery", qty_milli=1_000, price_minor=500, amount_minor=-500)
    return processing_pb2.Event(
        event_id=event_id,
        purchase=processing_pb2.AccrueRequest(customer=by_account(account_id), receipt=receipt(bad, receipt_no=event_id)),
    )


class TestAcks:
    def test_acks_come_in_order_one_per_event_with_status_points_and_transaction_id(self, kassa):
        accounts = [f"A-{n}" for n in range(5)]
        open_accounts(kassa, accounts)
        plan = plan_purchases("billing-1", accounts, 1_500)

        acks = flat_acks(stream_all(kassa, batches_of(plan, 250)))

        assert [ack.event_id for ack in acks] == [item.event_id for item in plan]
        assert [ack.code for ack in acks] == [OK] * len(plan)
        assert [ack.points for ack in acks] == [item.points for item in plan]
        assert all(ack.transaction_id for ack in acks)
        assert len({ack.transaction_id for ack in acks}) == len(plan)
        recorded = {t.request_id: t for entries in statements(kassa, accounts).values() for t in entries}
        for item, ack in zip(plan, acks):
            entry = recorded[item.event_id]  # the request_id is the event id
            assert (entry.transaction_id, entry.earned_points) == (ack.transaction_id, ack.points), item.event_id
        for account_id in accounts:
            expected = sum(item.points for item in plan if item.account_id == account_id)
            assert balance(kassa, account_id).active_points == expected

    def test_a_duplicate_event_is_acked_with_its_original_result_and_applied_once(self, kassa):
        open_account(kassa, "A-1")
        first = [purchase_event("ev-1", "A-1", 10_000), purchase_event("ev-2", "A-1", 4_000)]
        again = [purchase_event("ev-1", "A-1", 10_000), purchase_event("ev-3", "A-1", 6_000)]
        twice_in_one_batch = [purchase_event("ev-4", "A-1", 8_000), purchase_event("ev-4", "A-1", 8_000)]

        acks = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=events)
                                            for events in (first, again, twice_in_one_batch)]))

        assert [ack.event_id for ack in acks] == ["ev-1", "ev-2", "ev-1", "ev-3", "ev-4", "ev-4"]
        assert [ack.code for ack in acks] == [OK] * 6
        assert acks[2] == acks[0]  # ev-1 again: the original ack, transaction id and points
        assert acks[5] == acks[4]  # ev-4 twice in one batch
        assert acks[0].points == earned_by(10_000) and acks[4].points == earned_by(8_000)
        entries = points_statement(kassa, "A-1")
        assert sorted(t.request_id for t in entries) == ["ev-1", "ev-2", "ev-3", "ev-4"]
        assert balance(kassa, "A-1").active_points == earned_by(10_000 + 4_000 + 6_000 + 8_000)

        # On a new stream (a reconnect) too; and the same id with another payload is refused.
        replay = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=[
            purchase_event("ev-2", "A-1", 4_000), purchase_event("ev-2", "A-1", 4_001)])]))
        assert replay[0] == acks[1]
        assert replay[1].code == common_pb2.CODE_ALREADY_EXISTS and "ev-2" in replay[1].message
        assert (replay[1].transaction_id, replay[1].points) == (0, 0)
        assert len(points_statement(kassa, "A-1")) == 4
        assert balance(kassa, "A-1").active_points == earned_by(10_000 + 4_000 + 6_000 + 8_000)

    def test_bad_and_refused_events_get_their_own_ack_and_the_stream_goes_on(self, kassa):
        open_account(kassa, "A-1")
        batch_1 = [
            purchase_event("ev-1", "A-1", 20_000),          # OK, 1,000 points
            broken_purchase_event("ev-2", "A-1"),           # invalid: negative line amount
            processing_pb2.Event(event_id="", purchase=processing_pb2.AccrueRequest(
                customer=by_account("A-1"), receipt=receipt(line(1, 1_000)))),  # invalid: no event id
            processing_pb2.Event(event_id="ev-4"),          # invalid: no payload
            redeem_event("ev-5", "A-1", 5_000),             # refused: more than the 1,000 there are
            purchase_event("ev-6", "A-NOBODY", 1_000),      # unknown account
            redeem_event("ev-7", "A-1", 300),               # OK
        ]
        batch_2 = [purchase_event("ev-8", "A-1", 4_000), cancel_event("ev-9", "ev-8")]

        acks = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=batch_1),
                                            processing_pb2.EventBatch(events=batch_2)]))

        assert [ack.event_id for ack in acks] == ["ev-1", "ev-2", "", "ev-4", "ev-5", "ev-6", "ev-7", "ev-8", "ev-9"]
        codes = [common_pb2.Code.Name(ack.code) for ack in acks]
        assert codes == ["CODE_OK", "CODE_INVALID_ARGUMENT", "CODE_INVALID_ARGUMENT", "CODE_INVALID_ARGUMENT",
                         "CODE_FAILED_PRECONDITION", "CODE_NOT_FOUND", "CODE_OK", "CODE_OK", "CODE_OK"]
        assert "receipt.lines[0].amount_minor" in acks[1].message, acks[1].message
        assert "event_id" in acks[2].message, acks[2].message
        assert "purchase" in acks[3].message, acks[3].message
        assert acks[4].reason == common_pb2.REASON_INSUFFICIENT_POINTS
        assert "A-NOBODY" in acks[5].message
        for refused_ack in acks[1:6]:
            assert (refused_ack.transaction_id, refused_ack.points) == (0, 0)
        assert (acks[0].points, acks[6].points, acks[7].points, acks[8].points) == (1_000, 300, 200, 200)
        entries = points_statement(kassa, "A-1")
        assert sorted(t.request_id for t in entries) == ["ev-1", "ev-7", "ev-8", "ev-9"]
        assert balance(kassa, "A-1").active_points == 1_000 - 300

        # A refused event's id is free for a corrected event; a business refusal replays as it was.
        fixed = flat_acks(stream_all(kassa, [processing_pb2.EventBatch(events=[
            purchase_event("ev-2", "A-1", 2_000), redeem_event("ev-5", "A-1", 5_000)])]))
        assert [ack.code for ack in fixed] == [OK, common_pb2.CODE_FAILED_PRECONDITION]
        assert fixed[0].points == 100
        assert fixed[1] == acks[4]
        assert balance(kassa, "A-1").active_points == 1_000 - 300 + 100


class TestKillMidStream:
    EVENTS = 20_000
    BATCH = 250

    def test_every_acked_event_survives_kill_9_and_a_full_resend_applies_each_event_once(self, kassa):
        accounts = [f"A-{n:02d}" for n in range(40)]
        open_accounts(kassa, accounts)
        transactions_before = ledger_transactions(kassa)
        plan = plan_purchases("billing-7", accounts, self.EVENTS)
        batches = batches_of(plan, self.BATCH)

        client = StreamingClient(kassa.address, batches)
        client.start()
        client.wait_for_acks(1_000, timeout_s=30)
        offered_at_kill = client.batches_offered * self.BATCH
        kassa.kill9()
        assert client.finished.wait(15), "the stream did not end when the server died"
        acked = list(client.acked)

        assert client.error is not None, "the stream should have broken, not finished"
        assert 1_000 <= len(acked) < offered_at_kill <= self.EVENTS, (len(acked), offered_at_kill)
        assert [ack.event_id for ack in acked] == [item.event_id for item in plan[: len(acked)]]
        assert all(ack.code == OK for ack in acked)

        kassa.start()  # same ledger, same port

        recorded = {t.request_id: t for entries in statements(kassa, accounts).values() for t in entries}
        missing = [ack.event_id for ack in acked if ack.event_id not in recorded]
        assert not missing, f"{len(missing)} acked events lost by kill -9, e.g. {missing[:5]}"
        for ack in acked:
            assert recorded[ack.event_id].transaction_id == ack.transaction_id, ack.event_id
            assert recorded[ack.event_id].earned_points == ack.points, ack.event_id

        resent = flat_acks(stream_all(kassa, batches))

        assert [ack.event_id for ack in resent] == [item.event_id for item in plan]
        assert [ack.code for ack in resent] == [OK] * len(plan)
        assert [ack.points for ack in resent] == [item.points for item in plan]
        assert [ack.transaction_id for ack in resent[: len(acked)]] == [ack.transaction_id for ack in acked]
        assert len({ack.transaction_id for ack in resent}) == len(plan)
        for account_id, entries in statements(kassa, accounts).items():
            mine = [item for item in plan if item.account_id == account_id]
            ids = [t.request_id for t in entries]
            assert len(ids) == len(set(ids)), f"{account_id}: an event applied twice"
            assert set(ids) == {item.event_id for item in mine}, account_id
            assert balance(kassa, account_id).active_points == sum(item.points for item in mine), account_id
        assert ledger_transactions(kassa) == transactions_before + len(plan)
        verify(kassa)


STALL_WATCH_S = 7  # seconds the test watches a client that reads no acks
IN_FLIGHT_MAX = 200
SLOW_READER_ENV = {
    "KASSA_PROCESSING_STREAM_EVENTS_IN_FLIGHT_MAX": str(IN_FLIGHT_MAX),
}
MEMORY_GROWTH_MAX_BYTES = 32 * 1024 * 1024


def strangers_batch(number: int) -> processing_pb2.EventBatch:
    """200 purchases for customers the ledger does not know, with the longest ids allowed: each ack
    (event id and a message naming the account) is some 230 bytes, so a client's HTTP/2 receive
    window fills in a moment, and the ledger does not grow while the server's memory is measured."""
    return processing_pb2.EventBatch(events=[
        purchase_event(f"ev-{number}-{n}-".ljust(128, "x"), f"stranger-{number}-{n}-".ljust(64, "s"), 1_000)
        for n in range(IN_FLIGHT_MAX)
    ])


class TestClientThatStopsReading:
    def test_the_server_stops_reading_its_memory_stays_bounded_and_it_serves_others(self, start_kassa):
        """The stream itself ends with the client's deadline (the next test) or its connection."""
        server = start_kassa(env=SLOW_READER_ENV)
        progress = []  # (seconds since the stream began, bytes gRPC took from the client)

        with MemoryWatch(server.process.pid) as memory:
            client = NonReadingClient(server.address, strangers_batch)
            try:
                limit = client.started_at + STALL_WATCH_S
                while not client.ended.is_set() and time.monotonic() < limit:
                    progress.append((time.monotonic() - client.started_at, client.offered_bytes))
                    time.sleep(0.05)
                assert not client.ended.is_set(), (client.call.code(), client.call.details())
                # While that stream stalls, the server goes on serving.
                open_account(server, "A-1")
                assert flat_acks(stream_all(server, [processing_pb2.EventBatch(events=[
                    purchase_event("after", "A-1", 2_000)])]))[0].points == 100
            finally:
                client.close()

        last_growth_at = max((at for at, offered in progress if offered < progress[-1][1]), default=0.0)
        assert progress[-1][0] - last_growth_at >= 1.0, (
            f"the server kept taking events from a client that reads no acks: {progress[-1][1]} bytes, still "
            f"growing at {last_growth_at:.1f}s")
        assert memory.growth_bytes < MEMORY_GROWTH_MAX_BYTES, (
            f"server memory grew {memory.growth_bytes / 1e6:.1f} MB; the client offered {client.offered_bytes / 1e6:.1f} MB")

    def test_a_client_deadline_closes_the_stream_and_what_it_left_is_committed_once(self, start_kassa):
        server = start_kassa(env=SLOW_READER_ENV)
        accounts = [f"A-{n}" for n in range(10)]
        open_accounts(server, accounts)
        transactions_before = ledger_transactions(server)
        offered: list = []

        def purchases(number: int) -> processing_pb2.EventBatch:
            batch = plan_purchases(f"late-{number}", accounts, 100)
            offered.extend(batch)
            time.sleep(0.02)  # a steady billing feed, not a flood
            return batches_of(batch, 100)[0]

        with MemoryWatch(server.process.pid) as memory:
            client = NonReadingClient(server.address, purchases, timeout_s=2)
            try:
                assert client.ended.wait(2 + 3), "the client's deadline did not end the stream"
                assert client.call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert client.ended_at - client.started_at < 2 + 2.5
            finally:
                client.close()
        assert memory.growth_bytes < MEMORY_GROWTH_MAX_BYTES, memory.growth_bytes

        time.sleep(0.5)
        committed = ledger_transactions(server)
        time.sleep(1.0)
        assert ledger_transactions(server) == committed, "the server went on committing a closed stream's events"
        assert committed > transactions_before, "the stream committed nothing before its deadline"

        resent = flat_acks(stream_all(server, batches_of(offered, 500)))

        assert [ack.code for ack in resent] == [OK] * len(offered)
        assert [ack.points for ack in resent] == [item.points for item in offered]
        assert ledger_transactions(server) == transactions_before + len(offered)
        for account_id in accounts:
            expected = sum(item.points for item in offered if item.account_id == account_id)
            assert balance(server, account_id).active_points == expected, account_id
        verify(server)


class TestStreamLimit:
    def test_streams_past_the_limit_are_refused_and_a_closed_one_frees_its_place(self, start_kassa):
        server = start_kassa(env={"KASSA_PROCESSING_STREAMS_MAX": "2"})
        open_account(server, "A-1")
        channel = grpc.insecure_channel(server.address)
        try:
            method = channel.stream_stream(
                "/kassa.v1.Processing/StreamEvents",
                request_serializer=processing_pb2.EventBatch.SerializeToString,
                response_deserializer=processing_pb2.AckBatch.FromString,
            )
            held = []
            for number in range(2):
                outbox: list = [processing_pb2.EventBatch(events=[purchase_event(f"held-{number}", "A-1", 2_000)])]
                release = threading.Event()

                def requests(outbox=outbox, release=release):
                    yield from outbox
                    release.wait(30)  # keep the stream open until the test lets go

                call = method(requests(), timeout=30)
                assert next(call).acks[0].code == OK  # open and served
                held.append((call, release))

            with pytest.raises(grpc.RpcError) as refused:
                list(method(iter([processing_pb2.EventBatch(events=[purchase_event("third", "A-1", 2_000)])]), timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "streams_max" in refused.value.details()

            call, release = held.pop()
            release.set()
            assert list(call) == []  # the client finished; its place is free
            replies = list(method(iter([processing_pb2.EventBatch(events=[purchase_event("fourth", "A-1", 2_000)])]),
                                  timeout=10))
            assert replies[0].acks[0].code == OK
            for call, release in held:
                release.set()
                list(call)
        finally:
            channel.close()
        assert balance(server, "A-1").active_points == 3 * earned_by(2_000)


def error_lines(server) -> list[str]:
    """Server log lines at level error or above, and any that carry a traceback."""
    found = []
    for text in list(server.log_lines):
        try:
            level = json.loads(text).get("level", "")
        except ValueError:
            level = ""
        if level in ("error", "critical") or "Traceback" in text:
            found.append(text)
    return found


class TestClientGoesAway:
    def test_a_client_that_leaves_mid_stream_is_one_info_line_not_an_error(self, start_kassa):
        """The client cancels while the server waits to write acks it does not take: an ordinary
        disconnect, which grpc reports as a failed write (ExecuteBatchError)."""
        server = start_kassa(env=SLOW_READER_ENV)
        for _ in range(2):
            client = NonReadingClient(server.address, strangers_batch)
            try:
                stall_started_at = time.monotonic()
                while time.monotonic() - stall_started_at < STALL_WAIT_S and not stalled(client):
                    time.sleep(0.05)
                assert not client.ended.is_set(), (client.call.code(), client.call.details())
            finally:
                client.close()
        # Each stream's end is in the access log. A client that leaves while the server writes its
        # acks also makes a failed write: an error with a traceback before, one info line now. (One
        # that leaves between two writes makes none.)
        wait_for(lambda: len(stream_ends(server)) >= 2, LOG_WAIT_S, lambda: "".join(server.log_lines))
        wait_for(lambda: len(closed_lines(server) + error_lines(server)) >= 1, LOG_WAIT_S,
                 lambda: "".join(server.log_lines))
        time.sleep(QUIET_AFTER_END_S)  # a failed write of the other stream, if any, is logged by now

        assert error_lines(server) == []
        closed = [json.loads(text) for text in closed_lines(server)]
        assert {record["level"] for record in closed} == {"info"}
        assert all(record["events_not_acked"] > 0 for record in closed), closed


STALL_WAIT_S = 10  # a client that reads no acks fills its windows within this
LOG_WAIT_S = 5
QUIET_AFTER_END_S = 0.5  # seconds for a last log line to reach the test after the stream's end


def stream_ends(server) -> list[str]:
    """Access-log lines of StreamEvents calls that ended without an OK."""
    return [text for text in list(server.log_lines)
            if '"kassa.access"' in text and "/kassa.v1.Processing/StreamEvents" in text]


def stalled(client: NonReadingClient, quiet_s: float = 0.5) -> bool:
    """The server took nothing more from the client for `quiet_s`."""
    offered = client.offered_bytes
    time.sleep(quiet_s)
    return client.offered_bytes == offered


def closed_lines(server) -> list[str]:
    return [text for text in list(server.log_lines) if '"stream closed: the client went away"' in text]


def wait_for(predicate, timeout_s: float, describe) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.05)


STREAM_BYTES_MAX = 256 * 1024
STREAMS_BYTES_MAX = 1024 * 1024
MESSAGE_BYTES_MAX = 256 * 1024
WINDOW_BYTES = 256 * 1024
BYTE_LIMITS_ENV = {
    "KASSA_PROCESSING_STREAM_BYTES_IN_FLIGHT_MAX": str(STREAM_BYTES_MAX),
    "KASSA_PROCESSING_STREAMS_BYTES_IN_FLIGHT_MAX": str(STREAMS_BYTES_MAX),
    "KASSA_SERVER_MESSAGE_BYTES_MAX": str(MESSAGE_BYTES_MAX),
    "KASSA_SERVER_STREAM_WINDOW_BYTES": str(WINDOW_BYTES),
}
NON_READERS = 3
# What a server's resident memory grows by from serving a few streams at all, whatever they hold:
# grpc's per-connection and per-call state, allocator arenas, first-use caches.
RSS_NOISE_BYTES = 16 * 1024 * 1024
# A client that reads no acks buffers few of them itself, so the server has to stop early.
SMALL_CLIENT_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 * 1024))
BYTE_WATCH_S = 5  # seconds the test watches the server with clients that read no acks


def memory_bound_bytes(streams: int) -> int:
    """docs: what `streams` streams may cost a worker under BYTE_LIMITS_ENV, plus the noise."""
    held_bytes = min(STREAMS_BYTES_MAX, streams * max(STREAM_BYTES_MAX, MESSAGE_BYTES_MAX))
    return MEMORY_PER_REQUEST_BYTE * held_bytes + streams * (MESSAGE_BYTES_MAX + WINDOW_BYTES) + RSS_NOISE_BYTES


class TestStreamByteLimits:
    def test_streams_that_read_no_acks_hold_bounded_memory_and_a_reading_stream_goes_on(self, start_kassa):
        """The default event limit lets each of these streams read 20,000 events (some 5 MB of
        requests, ten times that decoded); the byte limits hold each to STREAM_BYTES_MAX."""
        server = start_kassa(env=BYTE_LIMITS_ENV)
        open_account(server, "A-1")
        paced = (processing_pb2.EventBatch(events=[purchase_event(f"paced-{n}-{k}", "A-1", 2_000) for k in range(50)])
                 for n in range(10**6))
        with MemoryWatch(server.process.pid, every_s=0.05) as memory:
            stalled_clients = [NonReadingClient(server.address, strangers_batch, options=SMALL_CLIENT_WINDOW)
                               for _ in range(NON_READERS)]
            reader = StreamingClient(server.address, paced, pace_s=0.1)
            reader.start()
            try:
                time.sleep(BYTE_WATCH_S)
                acked_before = len(reader.acked)
                reader.wait_for_acks(acked_before + 200, timeout_s=10)  # still going, beside the stalled ones
                for client in stalled_clients:
                    assert not client.ended.is_set(), (client.call.code(), client.call.details())
            finally:
                for client in stalled_clients:
                    client.close()
        bound = memory_bound_bytes(NON_READERS + 1)
        assert acked_before > 0, "the reading stream got no acks"
        assert memory.growth_bytes < bound, (
            f"server memory grew {memory.growth_bytes / 2**20:.1f} MiB, over the bound {bound / 2**20:.1f} MiB")


STALLED_STREAMS = 6  # more than STREAMS_BYTES_MAX / STREAM_BYTES_MAX: together they fill the worker's share
ACK_WRITE_TIMEOUT_S = 1
STALL_END_WAIT_S = 20  # for every stalled stream to be ended, on a loaded machine


class TestStreamsThatReadNoAcks:
    def test_they_are_ended_and_the_worker_serves_a_reading_stream_again(self, start_kassa):
        """Clients that keep their connection but never read an ack hold the worker's byte share
        (answered pings keep the connection alive): past stream_ack_write_timeout_s their streams are
        ended and what they held is given back, so a stream that reads its acks is served."""
        server = start_kassa(env={**BYTE_LIMITS_ENV,
                                  "KASSA_PROCESSING_STREAM_ACK_WRITE_TIMEOUT_S": str(ACK_WRITE_TIMEOUT_S)})
        open_account(server, "A-1")
        stalled_clients = [NonReadingClient(server.address, strangers_batch, options=SMALL_CLIENT_WINDOW)
                           for _ in range(STALLED_STREAMS)]
        paced = (processing_pb2.EventBatch(events=[purchase_event(f"late-{n}-{k}", "A-1", 2_000) for k in range(50)])
                 for n in range(10**6))
        reader = StreamingClient(server.address, paced, pace_s=0.1)
        try:
            # the server ends each of them: its log says so (the client, reading nothing, may not know yet)
            wait_for(lambda: len(no_ack_lines(server)) >= STALLED_STREAMS, STALL_END_WAIT_S,
                     lambda: "".join(server.log_lines))
            reader.start()
            reader.wait_for_acks(200, timeout_s=STALL_END_WAIT_S)
        finally:
            for client in stalled_clients:
                client.close()
        assert len(no_ack_lines(server)) == STALLED_STREAMS
        assert error_lines(server) == []


def no_ack_lines(server) -> list[str]:
    return [text for text in list(server.log_lines) if '"stream ended: the client reads no acks"' in text]


EVENTS_PER_MESSAGE_MAX = 5  # processing.batch_operations_max for the test below


class TestEventsPerMessage:
    def test_a_message_of_more_events_than_a_batch_may_hold_is_refused_and_nothing_of_it_recorded(
            self, start_kassa):
        """One message is one commit and one ack: more events than processing.batch_operations_max in
        one message would hold the writer lock and could make an ack too large to send."""
        server = start_kassa(env={"KASSA_PROCESSING_BATCH_OPERATIONS_MAX": str(EVENTS_PER_MESSAGE_MAX)})
        open_account(server, "A-1")
        fits = processing_pb2.EventBatch(events=[purchase_event(f"fits-{k}", "A-1", 2_000) for k in range(5)])
        too_many = processing_pb2.EventBatch(events=[purchase_event(f"many-{k}", "A-1", 2_000) for k in range(6)])

        acks = []
        with pytest.raises(grpc.RpcError) as refused:
            for ack_batch in server.processing.StreamEvents(iter([fits, too_many]), timeout=30):
                acks.extend(ack_batch.acks)

        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("events: 6 events in one message")
        assert {ack.code for ack in acks} <= {OK}  # the first message's acks, if written before the refusal
        statement = server.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
            customer=common_pb2.Customer(account_id="A-1"), page_size=100))
        recorded = {entry.request_id for entry in statement.transactions}
        assert not {request_id for request_id in recorded if request_id.startswith("many-")}
        assert {ack.event_id for ack in acks} <= recorded
