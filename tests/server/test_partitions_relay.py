"""Partitions: an event whose related customer is in another partition (a referral), against a real
server at P = 2. The event's partition writes the referrer's share into its outbox with the event;
the relay credits the referrer's partition under `<request id>/related`, once however often it runs;
a rollback of the event reverses both sides; a ledger left between the two (the event committed, the
relay not yet run: what a crash leaves) is completed by the relay at start. The kill -9 round is in
tests/reliability/test_partitions_crash.py.
"""

from __future__ import annotations

import contextlib
import time

from kassa.core_ext import Program, load_program
from kassa.core_ext.model import Customer, EventOp, IdKind, RollbackOp
from kassa.core_ext.partitions import PartitionedLedger, home_partition
from kassa.server.relay import RELAY_INTERVAL_S, outbox_counts
from kassa.v1 import processing_pb2
from tests.kassa_harness import REPO
from tests.reliability import CALL_TIMEOUT_S, assert_verifies
from tests.server.helpers import balance, by_account, open_account, statement
from tests.server.test_process_event import FRIEND_POINTS, REFERRER_POINTS, customer_event

PARTITIONS = 2
RELAYED_WITHIN_S = 10 * RELAY_INTERVAL_S  # a relay runs right after the event and every RELAY_INTERVAL_S
LEDGER_MAP_SIZE_BYTES = 256 * 1024 * 1024  # as the harness's servers
HOLD_TTL_S = 900


def one_in_each(prefix: str) -> tuple[str, str]:
    """(an account id placed in partition 0, one placed in partition 1)."""
    first = next(f"{prefix}-{n}" for n in range(1000) if home_partition(f"{prefix}-{n}", PARTITIONS) == 0)
    second = next(f"{prefix}-{n}" for n in range(1000) if home_partition(f"{prefix}-{n}", PARTITIONS) == 1)
    return first, second


def start(start_kassa):
    return start_kassa(env={"KASSA_LEDGER_PARTITIONS": str(PARTITIONS)})


def refer(server, request_id: str, friend: str, referrer: str):
    request = processing_pb2.ProcessEventRequest(
        request_id=request_id, event=customer_event(friend, "referral", related=by_account(referrer)))
    return server.processing.ProcessEvent(request, timeout=CALL_TIMEOUT_S)


def wait_until(done) -> None:
    deadline = time.monotonic() + RELAYED_WITHIN_S
    while not done():
        assert time.monotonic() < deadline, f"not relayed within {RELAYED_WITHIN_S} s"
        time.sleep(0.05)


def wait_for_points(server, account_id: str, points: int) -> None:
    wait_until(lambda: balance(server, account_id).active_points == points)


@contextlib.contextmanager
def open_partitioned(server):
    """The stopped server's ledger, opened in this process (to leave it as a crash would)."""
    program = Program(load_program([REPO / "config" / "rules"]))
    ledger = PartitionedLedger(str(server.ledger_path), program, LEDGER_MAP_SIZE_BYTES, HOLD_TTL_S,
                               partitions=PARTITIONS)
    try:
        yield ledger
    finally:
        ledger.close()


def assert_relayed_cleanly(server) -> None:
    """No relay failed or was refused; verify passes."""
    assert not [line for line in server.log_lines if "outbox relay" in line]
    assert_verifies(server)


def entries(server, account_id: str, request_id: str) -> list:
    return [entry for entry in statement(server, account_id) if entry.request_id == request_id]


class TestReferralAcrossPartitions:
    def test_each_side_is_credited_once_and_a_retry_changes_nothing(self, start_kassa):
        server = start(start_kassa)
        friend, referrer = one_in_each("REL")
        open_account(server, friend)
        open_account(server, referrer)

        reply = refer(server, "crm/ref/x1", friend, referrer)
        wait_for_points(server, referrer, REFERRER_POINTS)
        again = refer(server, "crm/ref/x1", friend, referrer)
        time.sleep(2 * RELAY_INTERVAL_S)  # relays after the retry have run

        assert (reply.points, reply.related_points) == (FRIEND_POINTS, REFERRER_POINTS)
        assert reply.related_account_id == referrer
        assert again.SerializeToString(deterministic=True) == reply.SerializeToString(deterministic=True)
        assert balance(server, friend).active_points == FRIEND_POINTS
        assert balance(server, referrer).active_points == REFERRER_POINTS
        assert len(entries(server, friend, "crm/ref/x1")) == 1
        assert len(entries(server, referrer, "crm/ref/x1/related")) == 1
        assert_relayed_cleanly(server)

    def test_a_rollback_of_the_event_reverses_both_sides(self, start_kassa):
        server = start(start_kassa)
        friend, referrer = one_in_each("RB")
        open_account(server, friend)
        open_account(server, referrer)
        refer(server, "crm/ref/r1", friend, referrer)
        wait_for_points(server, referrer, REFERRER_POINTS)

        server.processing.Rollback(processing_pb2.RollbackRequest(
            request_id="undo/r1", original_request_id="crm/ref/r1"), timeout=CALL_TIMEOUT_S)
        wait_for_points(server, referrer, 0)

        assert balance(server, friend).active_points == 0
        assert len(entries(server, referrer, "crm/ref/r1/related/rollback")) == 1
        assert_relayed_cleanly(server)

    def test_a_rollback_before_the_relay_leaves_nothing_credited(self, start_kassa, tmp_path):
        """The event committed, the server gone before its relay, then a rollback of it: the credit,
        relayed after its rollback, is refused by the tombstone the rollback left."""
        server = start(start_kassa)
        friend, referrer = one_in_each("RR")
        open_account(server, friend)
        open_account(server, referrer)
        server.stop()
        commit_event_without_relay(server, "crm/ref/rr1", friend, referrer, then_roll_back=True)
        server.start()
        time.sleep(2 * RELAY_INTERVAL_S)

        assert balance(server, friend).active_points == 0
        assert balance(server, referrer).active_points == 0
        assert entries(server, referrer, "crm/ref/rr1/related") == []
        assert_relayed_cleanly(server)


def commit_event_without_relay(server, request_id: str, friend: str, referrer: str, then_roll_back=False) -> None:
    """What a crash right after the event's commit leaves: the event and its outbox record in the
    friend's partition, nothing yet in the referrer's (the server is stopped meanwhile)."""
    with open_partitioned(server) as ledger:
        op = EventOp(request_id, b"direct", Customer(IdKind.ACCOUNT, friend), "referral",
                     related=Customer(IdKind.ACCOUNT, referrer), related_elsewhere=True)
        (outcome,) = ledger.writers[0].apply([op], int(server.clock.path.read_text()))
        assert outcome.code == 0, outcome.message
        if then_roll_back:
            undo = RollbackOp(f"undo/{request_id}", b"undo", original_request_id=request_id)
            (outcome,) = ledger.writers[0].apply([undo], int(server.clock.path.read_text()))
            assert outcome.code == 0, outcome.message
        assert outbox_counts(ledger.parts[0]) == (1, 0)


def test_the_relay_at_start_completes_an_event_a_crash_left_half_done(start_kassa):
    server = start(start_kassa)
    friend, referrer = one_in_each("HALF")
    open_account(server, friend)
    open_account(server, referrer)
    server.stop()
    commit_event_without_relay(server, "crm/ref/h1", friend, referrer)

    server.start()
    wait_for_points(server, referrer, REFERRER_POINTS)
    server.restart()  # a relay of every start: nothing more
    time.sleep(2 * RELAY_INTERVAL_S)

    assert balance(server, friend).active_points == FRIEND_POINTS
    assert balance(server, referrer).active_points == REFERRER_POINTS
    assert len(entries(server, referrer, "crm/ref/h1/related")) == 1
    assert_relayed_cleanly(server)
