"""Realistic traffic for a running kassa server: cashiers at checkout and billing systems streaming.

    .venv/bin/locust -f loadtest/locustfile.py --headless --users 16 --spawn-rate 16 --run-time 30s \
        --host 127.0.0.1:50051 --html bench/results/locust.html --csv bench/results/locust

Cashier         a POS terminal: Calculate -> Redeem (hold) -> Accrue capturing the hold; a few percent
                of its purchases come back later as a partial return (Rollback with return_lines).
BillingSystem   a billing system: one Processing.StreamEvents stream per user, batches of purchase
                events; each batch is reported with the time until its acks arrived (acks follow the
                durable commit).

Every user creates its own accounts on start (uuid-based ids), so runs never collide with each
other or with an earlier run on the same ledger. Each call is reported to locust as request type
"grpc", named after the RPC. A business refusal is a failure: under this traffic there should be none.
"""

from __future__ import annotations

import collections
import random
import time
import uuid

import gevent
import gevent.queue
from locust import User, between, events, task

import grpc
import grpc.experimental.gevent

# grpc's sync stubs block in C; this makes them yield to gevent instead. Before any channel exists.
grpc.experimental.gevent.init_gevent()

from kassa.v1 import (  # noqa: E402  (generated code; imported after the gevent hook on purpose)
    accounts_pb2,
    accounts_pb2_grpc,
    common_pb2,
    processing_pb2,
    processing_pb2_grpc,
)

CALL_TIMEOUT_S = 10  # seconds, per unary call
ACK_TIMEOUT_S = 30  # seconds to wait for one batch's acks
CUSTOMERS_PER_CASHIER = 5  # accounts each cashier serves
CUSTOMERS_PER_BILLING = 50  # accounts each billing system's events are spread over
RETURNABLE_PURCHASES_MAX = 50  # recent purchases a cashier remembers for later returns
REASON_METADATA_KEY = "kassa-reason"
CATEGORIES = ("grocery/dairy/milk", "grocery/bakery", "pharmacy/vitamins", "flowers/roses", "home/kitchen")


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("kassa")
    group.add_argument("--events-per-batch", type=int, default=100, help="purchase events per EventBatch")
    group.add_argument("--return-percent", type=float, default=3.0, help="cashier purchases returned later, in %%")


def _receipt(rng: random.Random, receipt_no: str, lines_max: int = 5) -> common_pb2.Receipt:
    """A receipt of 1..lines_max lines whose amounts are qty x price, as a POS sends them."""
    lines = []
    for line_no in range(1, rng.randint(1, lines_max) + 1):
        qty_milli = rng.choice((1000, 1000, 1000, 2000, 3000, 1500, 250))
        price_minor = rng.randint(50, 50_000)
        lines.append(common_pb2.Line(
            line_no=line_no, sku=f"SKU-{rng.randint(1, 5000)}", category=rng.choice(CATEGORIES),
            qty_milli=qty_milli, price_minor=price_minor, amount_minor=qty_milli * price_minor // 1000,
        ))
    return common_pb2.Receipt(store_id=f"store-{rng.randint(1, 2000)}", terminal_id="lt", receipt_no=receipt_no,
                              lines=lines)


class KassaUser(User):
    """Holds one channel to the server (`--host host:port`) and reports each call to locust."""

    abstract = True
    host = "127.0.0.1:50051"  # `make run`'s address; --host overrides it
    channel: grpc.Channel | None = None  # None until on_start: locust calls on_stop even if on_start was cut short

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host.removeprefix("http://"))
        self.accounts = accounts_pb2_grpc.AccountsStub(self.channel)
        self.processing = processing_pb2_grpc.ProcessingStub(self.channel)
        self.run_id = uuid.uuid4().hex[:12]
        self.sequence = 0
        self.rng = random.Random(self.run_id)

    def on_stop(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def request_id(self, what: str) -> str:
        self.sequence += 1
        return f"lt-{self.run_id}/{what}-{self.sequence}"

    def call(self, name: str, method, request):
        """One unary call, reported as `name`; returns the response, or None when it failed."""
        started = time.perf_counter()
        response, error = None, None
        try:
            response = method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as rpc_error:
            error = _describe(rpc_error)
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0, exception=error, context={},
        )
        return response

    def open_account(self, number: int) -> str:
        account_id = f"lt-{self.run_id}-{number}"
        self.call("Accounts.CreateAccount", self.accounts.CreateAccount, accounts_pb2.CreateAccountRequest(
            request_id=self.request_id("create"), account_id=account_id))
        return account_id


def _describe(error: grpc.RpcError) -> Exception:
    reason = dict(error.trailing_metadata() or ()).get(REASON_METADATA_KEY, "")
    return Exception(f"{error.code().name}{' ' + reason if reason else ''}: {error.details()}")


class Cashier(KassaUser):
    """A checkout: preview, reserve points as a hold, commit the purchase capturing the hold."""

    weight = 3
    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        super().on_start()
        self.customers = []
        for number in range(CUSTOMERS_PER_CASHIER):
            account_id = self.open_account(number)
            card = f"{account_id}-card"
            self.call("Accounts.IssueCard", self.accounts.IssueCard, accounts_pb2.IssueCardRequest(
                request_id=self.request_id("card"), account_id=account_id, card=card))
            customer = common_pb2.Customer(card=card)
            # A first purchase, so the customer has points to hold.
            self.call("Processing.Accrue", self.processing.Accrue, processing_pb2.AccrueRequest(
                request_id=self.request_id("welcome"), customer=customer,
                receipt=_receipt(self.rng, f"{self.run_id}-welcome-{number}")))
            self.customers.append(customer)
        self.purchases = collections.deque(maxlen=RETURNABLE_PURCHASES_MAX)  # (request_id, receipt), oldest first
        options = self.environment.parsed_options
        self.return_share = (options.return_percent if options else 3.0) / 100

    @task
    def checkout(self) -> None:
        customer = self.rng.choice(self.customers)
        receipt = _receipt(self.rng, self.request_id("receipt"))
        preview = self.call("Processing.Calculate", self.processing.Calculate,
                            processing_pb2.CalculateRequest(customer=customer, receipt=receipt))
        if preview is None:
            return
        capture = []
        points = min(preview.calculation.redeemable_points, preview.balance.available_points) // 2
        if points > 0:  # 0 when a return left the account in debt
            hold = self.call("Processing.Redeem[hold]", self.processing.Redeem, processing_pb2.RedeemRequest(
                request_id=self.request_id("hold"), customer=customer, points=points,
                receipt_total_minor=preview.calculation.payable_minor, mode=processing_pb2.REDEEM_MODE_HOLD,
                store_id=receipt.store_id, terminal_id=receipt.terminal_id))
            if hold is None:
                return
            capture.append(hold.transaction_id)
        request_id = self.request_id("buy")
        bought = self.call("Processing.Accrue[capture]" if capture else "Processing.Accrue", self.processing.Accrue,
                           processing_pb2.AccrueRequest(request_id=request_id, customer=customer, receipt=receipt,
                                                        capture_hold_ids=capture))
        if bought is None:
            return
        if self.purchases and self.rng.random() < self.return_share:
            self.give_back(*self.purchases.popleft())
        self.purchases.append((request_id, receipt))

    def give_back(self, request_id: str, receipt: common_pb2.Receipt) -> None:
        """A customer returns part of an earlier purchase: one line, all or half of its quantity."""
        line = self.rng.choice(receipt.lines)
        qty_milli = self.rng.choice((line.qty_milli, max(1, line.qty_milli // 2)))
        self.call("Processing.Rollback[return]", self.processing.Rollback, processing_pb2.RollbackRequest(
            request_id=self.request_id("return"), original_request_id=request_id,
            return_lines=[processing_pb2.ReturnLine(line_no=line.line_no, qty_milli=qty_milli)],
            store_id=receipt.store_id, terminal_id=receipt.terminal_id))


class BillingSystem(KassaUser):
    """One StreamEvents stream; each task sends a batch of purchase events and waits for its acks."""

    weight = 1
    wait_time = between(0.05, 0.2)
    stream = None  # the StreamEvents call, once open
    awaiting_acks = False  # a read of the ack stream is in progress

    def on_start(self) -> None:
        super().on_start()
        self.customers = [common_pb2.Customer(account_id=self.open_account(n)) for n in range(CUSTOMERS_PER_BILLING)]
        options = self.environment.parsed_options
        self.batch_size = options.events_per_batch if options else 100
        self.open_stream()

    def open_stream(self) -> None:
        self.outbox: gevent.queue.Queue = gevent.queue.Queue()  # EventBatch messages; None ends the stream
        self.stream = self.processing.StreamEvents(iter(self.outbox.get, None))
        self.awaiting_acks = False

    def on_stop(self) -> None:
        if self.stream is None:
            pass
        elif self.awaiting_acks:  # stopped while waiting for acks: that read cannot be resumed
            self.stream.cancel()
        else:
            self.outbox.put(None)  # ends the request stream; the server then ends the ack stream
            try:
                with gevent.Timeout(ACK_TIMEOUT_S):
                    for _ in self.stream:
                        pass
            except (grpc.RpcError, gevent.Timeout):
                self.stream.cancel()
        super().on_stop()

    @task
    def send_batch(self) -> None:
        batch = processing_pb2.EventBatch(events=[
            processing_pb2.Event(
                event_id=self.request_id("event"),
                purchase=processing_pb2.AccrueRequest(
                    customer=self.rng.choice(self.customers),
                    receipt=_receipt(self.rng, str(self.sequence), lines_max=3),
                ),
            )
            for _ in range(self.batch_size)
        ])
        started = time.perf_counter()
        self.outbox.put(batch)
        acks, error = None, None
        try:
            with gevent.Timeout(ACK_TIMEOUT_S, TimeoutError(f"no acks within {ACK_TIMEOUT_S} s")):
                self.awaiting_acks = True
                acks = next(self.stream)
                self.awaiting_acks = False
        except grpc.RpcError as rpc_error:
            error = _describe(rpc_error)
        except (StopIteration, TimeoutError) as stream_error:
            error = Exception(f"stream ended: {stream_error!r}")
        if acks is not None:
            refused = [ack for ack in acks.acks if ack.code != common_pb2.CODE_OK]
            if len(acks.acks) != len(batch.events):
                error = Exception(f"{len(acks.acks)} acks for {len(batch.events)} events")
            elif refused:
                first = refused[0]
                error = Exception(f"{len(refused)} events refused, first: {common_pb2.Code.Name(first.code)} "
                                  f"{common_pb2.Reason.Name(first.reason)}: {first.message}")
        self.environment.events.request.fire(
            request_type="grpc", name=f"Processing.StreamEvents[{self.batch_size} events]",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=acks.ByteSize() if acks is not None else 0, exception=error, context={},
        )
        if acks is None:  # acks are matched to batches by order: after a lost one, start a fresh stream
            self.stream.cancel()
            self.open_stream()
