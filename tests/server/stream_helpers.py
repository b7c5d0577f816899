"""Builders and clients for the throughput tests: purchase events, batches, streams, memory readings.

A purchase of `price_minor` on one plain line earns 5 % of it (floor) under the sample program,
as long as it stays under the big-basket bonus (3,000.00).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import psutil

from kassa.v1 import accounts_pb2, admin_pb2, processing_pb2, processing_pb2_grpc
from tests.server.helpers import BASE_EARN_BPS, by_account, line, receipt, statement

BIG_BASKET_MINOR = 300_000  # from here the sample program adds a fixed bonus


def earned_by(price_minor: int) -> int:
    """Points one plain line of `price_minor` earns at the base rate."""
    assert price_minor < BIG_BASKET_MINOR
    return price_minor * BASE_EARN_BPS // 10_000


def purchase_request(request_id: str, account_id: str, price_minor: int, receipt_no: str = "") -> processing_pb2.AccrueRequest:
    return processing_pb2.AccrueRequest(
        request_id=request_id,
        customer=by_account(account_id),
        receipt=receipt(line(1, price_minor), receipt_no=receipt_no or request_id[-60:]),
    )


def purchase_event(event_id: str, account_id: str, price_minor: int) -> processing_pb2.Event:
    """A purchase event whose request_id is taken from the event id (left empty on the wire)."""
    request = purchase_request("", account_id, price_minor, receipt_no=event_id[-60:])
    return processing_pb2.Event(event_id=event_id, purchase=request)


@dataclass
class PlannedPurchase:
    event_id: str
    account_id: str
    price_minor: int

    @property
    def points(self) -> int:
        return earned_by(self.price_minor)

    def event(self) -> processing_pb2.Event:
        return purchase_event(self.event_id, self.account_id, self.price_minor)


def plan_purchases(prefix: str, accounts: list[str], count: int) -> list[PlannedPurchase]:
    """`count` purchases spread round-robin over `accounts`, each with its own price (so its points)."""
    return [
        PlannedPurchase(f"{prefix}/{n:06d}", accounts[n % len(accounts)], 2_000 + (n * 37) % 50_000)
        for n in range(count)
    ]


def batches_of(plan: list[PlannedPurchase], size: int) -> list[processing_pb2.EventBatch]:
    return [
        processing_pb2.EventBatch(events=[item.event() for item in plan[start : start + size]])
        for start in range(0, len(plan), size)
    ]


def stream_all(server, batches) -> list[processing_pb2.AckBatch]:
    """Send every batch on one stream, read every ack batch, on a channel of its own."""
    with grpc.insecure_channel(server.address) as channel:
        stub = processing_pb2_grpc.ProcessingStub(channel)
        return list(stub.StreamEvents(iter(batches), timeout=120))


def flat_acks(ack_batches) -> list[processing_pb2.EventAck]:
    return [ack for batch in ack_batches for ack in batch.acks]


def open_accounts(server, account_ids) -> None:
    for account_id in account_ids:
        server.accounts.CreateAccount(
            accounts_pb2.CreateAccountRequest(request_id=f"create/{account_id}", account_id=account_id)
        )


def ledger_transactions(server) -> int:
    return server.admin.GetStats(admin_pb2.GetStatsRequest()).transactions


POINTS_KINDS = {  # statement entries that move points (not the opening of the account, cards, ...)
    accounts_pb2.TRANSACTION_KIND_ACCRUE, accounts_pb2.TRANSACTION_KIND_REDEEM, accounts_pb2.TRANSACTION_KIND_HOLD,
    accounts_pb2.TRANSACTION_KIND_ROLLBACK, accounts_pb2.TRANSACTION_KIND_ADJUST, accounts_pb2.TRANSACTION_KIND_EXPIRE,
}


def points_statement(server, account_id: str) -> list:
    """The account's statement, newest first, without the entries that move no points."""
    return [entry for entry in statement(server, account_id) if entry.kind in POINTS_KINDS]


def statements(server, account_ids) -> dict[str, list]:
    return {account_id: points_statement(server, account_id) for account_id in account_ids}


def verify(server) -> None:
    """`kassa verify` over the server's ledger exits 0."""
    result = server.run_cli("verify", "--config", str(server.config_path()))
    assert result.returncode == 0, result.stdout + result.stderr


class StreamingClient(threading.Thread):
    """A billing system: streams `batches` on its own channel and records every ack it reads.

    `acked` holds the acks read so far, in order; `error` the RpcError that ended the stream, if any."""

    def __init__(self, address: str, batches, pace_s: float = 0.0):
        super().__init__(daemon=True)
        self.address = address
        self.batches = batches
        self.pace_s = pace_s
        self.acked: list[processing_pb2.EventAck] = []
        self.batches_offered = 0
        self.error: grpc.RpcError | None = None
        self.finished = threading.Event()

    def _requests(self):
        for batch in self.batches:
            self.batches_offered += 1
            yield batch
            if self.pace_s:
                time.sleep(self.pace_s)

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = processing_pb2_grpc.ProcessingStub(channel)
                try:
                    for reply in stub.StreamEvents(self._requests(), timeout=120):
                        self.acked.extend(reply.acks)
                except grpc.RpcError as error:
                    self.error = error
        finally:
            self.finished.set()

    def wait_for_acks(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count:
            assert not self.finished.is_set(), f"the stream ended after {len(self.acked)} acks: {self.error}"
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks within {timeout_s}s"
            time.sleep(0.005)


class NonReadingClient:
    """A stream client that writes batches as fast as the transport takes them and never reads an
    ack. `offered_bytes` counts what gRPC took from it; `ended` is set when the call ends."""

    def __init__(self, address: str, make_batch, timeout_s: float | None = None, options=()):
        self.channel = grpc.insecure_channel(address, options=list(options))
        self.make_batch = make_batch
        self.offered_bytes = 0
        self.offered_batches = 0
        self.started_at = time.monotonic()
        self.ended = threading.Event()
        self.ended_at: float | None = None
        stub = processing_pb2_grpc.ProcessingStub(self.channel)
        self.call = stub.StreamEvents(self._requests(), timeout=timeout_s)
        self.call.add_done_callback(self._done)

    def _requests(self):
        while True:
            batch = self.make_batch(self.offered_batches)
            self.offered_batches += 1
            self.offered_bytes += batch.ByteSize()
            yield batch

    def _done(self, _call) -> None:
        self.ended_at = time.monotonic()
        self.ended.set()

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


class MemoryWatch:
    """Samples a process's resident memory until stopped."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.samples: list[int] = []
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_bytes(self) -> int:
        return max(self.samples, default=self.baseline) - self.baseline


class TemplateBatches:
    """Purchase batches for one stream, each with ids of its own, made in microseconds: one batch is
    serialised once with a placeholder where the batch number goes, and each batch patches it in
    (building the events anew costs some 40 us each, more than a server takes to commit them)."""

    PLACEHOLDER = b"########"  # as wide as the batch number

    def __init__(self, prefix: str, accounts: list[str], size: int):
        mark = self.PLACEHOLDER.decode()
        self.events = [
            PlannedPurchase(f"{prefix}/{mark}/{n:04d}", accounts[n % len(accounts)], 2_000 + (n * 37) % 50_000)
            for n in range(size)
        ]
        self.template = processing_pb2.EventBatch(events=[item.event() for item in self.events]).SerializeToString()

    def batch(self, number: int) -> bytes:
        return self.template.replace(self.PLACEHOLDER, f"{number:08d}".encode())

    def planned(self, number: int) -> list[PlannedPurchase]:
        mark, numbered = self.PLACEHOLDER.decode(), f"{number:08d}"
        return [PlannedPurchase(item.event_id.replace(mark, numbered), item.account_id, item.price_minor)
                for item in self.events]


class FloodingClient(threading.Thread):
    """A billing system with a backlog: sends serialised batches `make_batch(0)`, `make_batch(1)`, ...
    for as long as the stream lasts, and records every ack it reads."""

    def __init__(self, address: str, make_batch):
        super().__init__(daemon=True)
        self.address = address
        self.make_batch = make_batch
        self.batches_offered = 0
        self.acked: list[processing_pb2.EventAck] = []
        self.error: grpc.RpcError | None = None
        self.finished = threading.Event()

    def _requests(self):
        while True:
            batch = self.make_batch(self.batches_offered)
            self.batches_offered += 1
            yield batch

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                method = channel.stream_stream(
                    "/kassa.v1.Processing/StreamEvents", response_deserializer=processing_pb2.AckBatch.FromString
                )
                try:
                    for reply in method(self._requests(), timeout=120):
                        self.acked.extend(reply.acks)
                except grpc.RpcError as error:
                    self.error = error
        finally:
            self.finished.set()
