"""kassa.v1.Processing: the checkout hot path.

Calculate, Accrue, ProcessBatch and StreamEvents take their request bytes and give their answer's
bytes: purchases are read and answered in C (server/wire.pyx), and whatever the fast path leaves is
decoded with protobuf and checked by server/convert.py as everywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import grpc

from kassa.core_ext.model import AccrueOp, Code, Outcome, RedeemResult, RollbackResult
from kassa.v1 import processing_pb2
from kassa.server import convert, errors, wire
from kassa.server.answer_bound import BatchAnswerBound
from kassa.server.caller import CALLER
from kassa.server.logs import event as log_event
from kassa.server.servicers.in_flight import InFlight, StreamHold
from kassa.server.servicers.respond import answer, as_caller, commit_one, commit_op, decoded, invalid

log = logging.getLogger("kassa.stream")

SERVICE = "kassa.v1.Processing"
BUILT = "built"  # a payload already decoded into its operation by server/wire.pyx
_BUILDERS = {
    "accrue": convert.accrue_op,
    "redeem": convert.redeem_op,
    "rollback": convert.rollback_op,
    "customer_event": convert.event_op,  # takes the whole Event: its request id is the event_id
}
_EVENT_PAYLOADS = {"purchase": "accrue", "redeem": "redeem", "rollback": "rollback", "customer_event": "customer_event"}
_EVENT_KINDS = ", ".join(_EVENT_PAYLOADS)
STREAM_DRAINED = "the server is shutting down; events not acked were not recorded: send them again on a new stream"


def other_result(body) -> tuple[int, bytes]:
    """OperationResult's field and bytes for a body wire.batch_response does not write itself."""
    if type(body) is RedeemResult:
        return 5, convert.redeem_response(body).SerializeToString()
    if type(body) is RollbackResult:
        return 6, convert.rollback_response(body).SerializeToString()
    raise TypeError(f"no OperationResult field for {type(body).__name__}")


def add_to_server(servicer: "ProcessingServicer", server) -> None:
    """Register the service: the hot methods with bytes in and out, the others as generated."""
    handlers = {
        "Calculate": grpc.unary_unary_rpc_method_handler(servicer.Calculate),
        "Accrue": grpc.unary_unary_rpc_method_handler(servicer.Accrue),
        "ProcessBatch": grpc.unary_unary_rpc_method_handler(servicer.ProcessBatch),
        "StreamEvents": grpc.stream_stream_rpc_method_handler(servicer.StreamEvents),
        "Redeem": grpc.unary_unary_rpc_method_handler(
            servicer.Redeem, processing_pb2.RedeemRequest.FromString, processing_pb2.RedeemResponse.SerializeToString
        ),
        "Rollback": grpc.unary_unary_rpc_method_handler(
            servicer.Rollback, processing_pb2.RollbackRequest.FromString,
            processing_pb2.RollbackResponse.SerializeToString,
        ),
        "ProcessEvent": grpc.unary_unary_rpc_method_handler(
            servicer.ProcessEvent, processing_pb2.ProcessEventRequest.FromString,
            processing_pb2.ProcessEventResponse.SerializeToString,
        ),
    }
    missing = set(processing_pb2.DESCRIPTOR.services_by_name["Processing"].methods_by_name) - set(handlers)
    if missing:
        raise RuntimeError(f"{SERVICE}: no handler for {', '.join(sorted(missing))}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def count_operations(metrics, grpc_method: str, payloads: list, outcomes: list[Outcome]) -> None:
    """kassa_operations_total by kind and outcome code (a purchase server/wire.pyx decoded is an accrue)."""
    if metrics is None:
        return
    counted = Counter(zip([kind for kind, _, _ in payloads], [outcome.code for outcome in outcomes]))
    for (kind, code), count in counted.items():
        metrics.count_operations(grpc_method, "accrue" if kind is BUILT else kind or "unset", code, count)


class ProcessingServicer:
    def __init__(self, ledger, committer, clock, limits, response_bytes_max: int, metrics=None):
        self._metrics = metrics
        self._ledger = ledger
        self._committer = committer
        self._clock = clock
        self._response_bytes_max = response_bytes_max  # server.message_bytes_max: the most a response may be
        self._answer_bound: BatchAnswerBound | None = None  # of the ruleset serving; see _batch_answer_bound
        self._batch_operations_max = limits.batch_operations_max
        self._ack_write_timeout_s = limits.stream_ack_write_timeout_s
        self._in_flight = InFlight(
            limits.stream_events_in_flight_max, limits.stream_bytes_in_flight_max, limits.streams_bytes_in_flight_max
        )
        self._streams_max = limits.streams_max
        self.streams_open = 0
        self._readers: set[asyncio.Task] = set()  # each open stream's reader
        self._draining = False

    async def Calculate(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        query = wire.calculate_query(data)
        if query is None:
            request = await decoded(context, f"/{SERVICE}/Calculate", processing_pb2.CalculateRequest, data)
            try:
                query = convert.calculate_query(request)
            except convert.InvalidArgument as error:
                return await invalid(context, error)
        refusal = CALLER.get().store_refusal(query.receipt.store_id)
        if refusal is not None:
            await errors.refuse(context, grpc.StatusCode.PERMISSION_DENIED, refusal, errors.STORE_NOT_ALLOWED)
        outcome = self._ledger.calculate(query, self._clock.now_ms())
        return await answer(context, outcome, wire.calculate_response)

    async def Accrue(self, data: bytes, context) -> bytes:
        op = wire.accrue_op(data)
        if op is not None:
            return await commit_op(self._committer, context, op, wire.accrue_response)
        request = await decoded(context, f"/{SERVICE}/Accrue", processing_pb2.AccrueRequest, data)
        return await commit_one(self._committer, context, convert.accrue_op, request, wire.accrue_response)

    async def Redeem(self, request, context):
        return await commit_one(self._committer, context, convert.redeem_op, request, convert.redeem_response)

    async def Rollback(self, request, context):
        return await commit_one(self._committer, context, convert.rollback_op, request, convert.rollback_response)

    async def ProcessEvent(self, request, context):
        """One customer event: the operation a streamed `customer_event` makes, through the same commit."""
        return await commit_one(
            self._committer, context, convert.process_event_op, request, convert.process_event_response
        )

    # -- many operations per call -----------------------------------------------------------------

    async def _commit_many(self, payloads: list, abort_in_flight: bool = True) -> list[Outcome]:
        """`payloads` holds (kind, request message, where it is in the call, e.g. "operations[3].accrue"),
        or (BUILT, operation, None) for one server/wire.pyx decoded (valid: no field to name); invalid
        ones are answered INVALID_ARGUMENT naming the field in place, the rest committed together, in
        order."""
        return await self._commit_checked(*self._checked(payloads), abort_in_flight)

    def _checked(self, payloads: list) -> tuple[list, list, list]:
        """(outcomes, with those of refused payloads in place and None elsewhere; the operations
        to commit; their positions)."""
        outcomes: list[Outcome | None] = [None] * len(payloads)
        ops, positions = [], []
        for position, (kind, message, where) in enumerate(payloads):
            if kind is BUILT:
                op = message
            elif kind is None:
                outcomes[position] = Outcome(Code.INVALID_ARGUMENT, message=where)
                continue
            else:
                try:
                    op = _BUILDERS[kind](message)
                except convert.InvalidArgument as error:
                    outcomes[position] = Outcome(Code.INVALID_ARGUMENT, message=f"{where}.{error}")
                    continue
            op, refusal = as_caller(op)
            if refusal is not None:
                outcomes[position] = refusal
                continue
            ops.append(op)
            positions.append(position)
        return outcomes, ops, positions

    async def _commit_checked(self, outcomes: list, ops: list, positions: list,
                              abort_in_flight: bool) -> list[Outcome]:
        """Commit the checked `ops` together and put their outcomes in their `positions`."""
        if ops:
            for position, outcome in zip(positions, await self._committer.submit(ops, abort_in_flight)):
                outcomes[position] = outcome
        return outcomes  # type: ignore[return-value]

    async def ProcessBatch(self, data: bytes, context) -> bytes:
        # Decode while no commit of ours runs: the commit thread shares this process's GIL and holds
        # LMDB's writer lock, so decoding beside it would slow every worker's commits.
        await self._committer.idle.wait()
        method = f"/{SERVICE}/ProcessBatch"
        operations = wire.batch_operations(data)
        if operations is None:
            operations = (await decoded(context, method, processing_pb2.ProcessBatchRequest, data)).operations
        count = len(operations)
        if count > self._batch_operations_max:
            await errors.refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"operations: {count} operations, more than the limit of {self._batch_operations_max}",
                errors.BATCH_TOO_LARGE,
            )
        payloads = []
        for index, operation in enumerate(operations):
            if type(operation) is AccrueOp:
                payloads.append((BUILT, operation, None))
                continue
            if type(operation) is bytes:
                operation = await decoded(context, method, processing_pb2.Operation, operation)
            kind = operation.WhichOneof("op")
            if kind is None:
                payloads.append((None, None, f"operations[{index}]: set one of accrue, redeem, rollback"))
            else:
                payloads.append((kind, getattr(operation, kind), f"operations[{index}].{kind}"))
        outcomes, ops, positions = self._checked(payloads)
        refusal = self._answer_overflow(outcomes, positions, ops)
        if refusal is not None:
            await errors.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, refusal, errors.RESPONSE_TOO_LARGE)
        outcomes = await self._commit_checked(outcomes, ops, positions, True)
        count_operations(self._metrics, "ProcessBatch", payloads, outcomes)
        return wire.batch_response(outcomes, other_result)

    def _batch_answer_bound(self) -> BatchAnswerBound:
        spec = self._ledger.program.spec
        if self._answer_bound is None or self._answer_bound.ruleset_version != spec.version:
            self._answer_bound = BatchAnswerBound(spec)
        return self._answer_bound

    def _answer_overflow(self, outcomes: list, positions: list, ops: list) -> str | None:
        """Why the answer to this batch might not fit a response, or None when it will: such a batch is
        refused before anything of it is committed, since its answer could never be sent."""
        bound = self._batch_answer_bound()
        sizes = [bound.error_bytes] * len(outcomes)  # a refused operation: a message, no body
        operation_bytes = bound.operation_bytes
        for position, op in zip(positions, ops):
            sizes[position] = operation_bytes(op)
        total = sum(sizes)
        if total <= self._response_bytes_max:
            return None
        fit, used = 0, 0
        for size in sizes:
            used += size
            if used > self._response_bytes_max:
                break
            fit += 1
        return (
            f"operations: the answer to these {len(outcomes)} operations could take up to {total} bytes, more "
            f"than the server's message limit of {self._response_bytes_max} bytes (server.message_bytes_max); "
            f"the first {fit} fit in one answer: send the operations in smaller batches. Nothing was committed"
        )

    def stop_reading_streams(self) -> None:
        """The drain: no stream reads another message, and none opens. What they read is committed
        and acked; then each ends UNAVAILABLE, and the client sends the rest on a new stream."""
        self._draining = True
        for reader in self._readers:
            reader.cancel()

    async def StreamEvents(self, request_iterator, context):
        """Acks go out in the order events came in, each after its durable commit. A stream holds
        what it read and has not acked within its limits and the worker's (server/servicers/
        in_flight.py): a client that stops reading acks stops being read, so server memory stays
        bounded, and the stream lasts until the client's deadline or the connection's keepalive
        ends it (grpc.aio has no server-side cancel: a status cannot be sent past acks the client
        does not take). What it sent is committed: the client re-sends what was not acked and gets
        the original results."""
        if self._draining:
            await errors.refuse(context, grpc.StatusCode.UNAVAILABLE, STREAM_DRAINED, errors.SHUTTING_DOWN)
        if self.streams_open >= self._streams_max:
            await errors.refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.streams_open} event streams open, the limit (processing.streams_max) is {self._streams_max}",
                errors.STREAMS_EXHAUSTED,
            )
        self.streams_open += 1
        hold = StreamHold()
        try:
            await self._stream_events(request_iterator, context, hold)
        finally:
            self.streams_open -= 1
            self._in_flight.give(hold, hold.events, hold.bytes)  # what was not acked

    async def _read_events(self, request_iterator, context, hold: StreamHold, acks: asyncio.Queue) -> None:
        """Take each message's share (server/servicers/in_flight.py), decode it, start its commit."""
        method = f"/{SERVICE}/StreamEvents"
        async for data in request_iterator:
            await self._in_flight.take(hold, 0, len(data))  # before decoding: bytes bound memory
            events = wire.event_batch(data)
            if events is None:
                events = (await decoded(context, method, processing_pb2.EventBatch, data)).events
            if len(events) > self._batch_operations_max:  # one message is one commit and one ack
                await errors.refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT,
                    f"events: {len(events)} events in one message, the limit (processing.batch_operations_max) "
                    f"is {self._batch_operations_max}; the events acked so far are recorded, this message's are not",
                    errors.BATCH_TOO_LARGE,
                )
            events = [
                await decoded(context, method, processing_pb2.Event, event) if type(event) is bytes else event
                for event in events
            ]
            await self._in_flight.take(hold, len(events), 0)
            acks.put_nowait((len(events), len(data), asyncio.ensure_future(self._events(events))))

    async def _stream_events(self, request_iterator, context, hold: StreamHold):
        acks: asyncio.Queue = asyncio.Queue()
        reader = asyncio.ensure_future(self._read_events(request_iterator, context, hold, acks))
        # The writer stops once the reader ends, however it ends: also when the drain cancels it
        # before it ran (a `finally` inside it would not run then); `await reader` then raises.
        reader.add_done_callback(lambda _: acks.put_nowait(None))
        self._readers.add(reader)
        try:
            while True:
                item = await acks.get()
                if item is None:
                    break
                events, size_bytes, pending = item
                ack = await pending
                if self._committer.refusing:  # past the drain's deadline: not committed, not acked
                    break
                try:
                    await asyncio.wait_for(context.write(ack), self._ack_write_timeout_s)
                except grpc.aio.InternalError:  # the call is gone: the client left, or the drain ended it
                    self._stream_closed(hold)
                    # end as grpc ends a call its client cancelled: one debug line, no error
                    raise asyncio.CancelledError from None
                except TimeoutError:  # the client takes no acks: what it holds is given back
                    log_event(log, "stream ended: the client reads no acks", events_not_acked=hold.events,
                          ack_write_timeout_s=self._ack_write_timeout_s)
                    raise asyncio.CancelledError from None  # a status could not pass the unread acks
                self._in_flight.give(hold, events, size_bytes)
            if reader.cancelled() or self._committer.refusing:
                await errors.refuse(context, grpc.StatusCode.UNAVAILABLE, STREAM_DRAINED, errors.SHUTTING_DOWN)
            await reader
        finally:
            self._readers.discard(reader)
            reader.cancel()

    def _stream_closed(self, hold: StreamHold) -> None:
        """A stream whose call ended under it is no error: the client re-sends what was not acked."""
        reason = "the server is draining" if self._draining else "the client went away"
        log_event(log, f"stream closed: {reason}", events_not_acked=hold.events)

    async def process_events(self, events: list) -> bytes:
        """Events from elsewhere than a stream (a cluster's JetStream consumer): as StreamEvents."""
        return await self._events(events)

    async def _events(self, events: list) -> bytes:
        """One ack per event, in order. `events` holds (event_id, AccrueOp) for each purchase
        server/wire.pyx decoded and the protobuf Event for any other."""
        await self._committer.idle.wait()  # as in ProcessBatch: convert while no commit of ours runs
        payloads = []
        event_ids = []
        for index, event in enumerate(events):
            if type(event) is tuple:
                event_id, op = event
                event_ids.append(event_id)
                payloads.append((BUILT, op, None))
                continue
            event_ids.append(event.event_id)  # sent back as it came, so that each ack names its event
            try:
                convert.event_id(event.event_id, f"events[{index}].event_id")
            except convert.InvalidArgument as error:
                payloads.append((None, None, str(error)))
                continue
            kind = event.WhichOneof("payload")
            if kind is None:
                payloads.append((None, None, f"events[{index}]: set one of {_EVENT_KINDS}"))
            elif kind == "customer_event":
                payloads.append((kind, event, f"events[{index}]"))
            else:
                message = getattr(event, kind)
                if not message.request_id:
                    message.request_id = event.event_id
                payloads.append((_EVENT_PAYLOADS[kind], message, f"events[{index}].{kind}"))
        outcomes = await self._commit_many(payloads, abort_in_flight=False)
        count_operations(self._metrics, "StreamEvents", payloads, outcomes)
        return wire.ack_batch(event_ids, outcomes)
