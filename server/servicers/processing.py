"""kassa.v1.Processing: the checkout hot path."""

from __future__ import annotations

import asyncio

import grpc

from core_ext.model import AccrueResult, Code, EventResult, Outcome, RedeemResult, RollbackResult
from kassa.v1 import common_pb2, processing_pb2, processing_pb2_grpc
from server import convert
from server.interceptors.auth import CALLER
from server.servicers.respond import answer, as_caller, commit_one, invalid

_BUILDERS = {
    "accrue": convert.accrue_op,
    "redeem": convert.redeem_op,
    "rollback": convert.rollback_op,
    "customer_event": convert.event_op,  # takes the whole Event: its request id is the event_id
}
_RENDERERS = {
    AccrueResult: ("accrue", convert.accrue_response),
    RedeemResult: ("redeem", convert.redeem_response),
    RollbackResult: ("rollback", convert.rollback_response),
}
_EVENT_PAYLOADS = {"purchase": "accrue", "redeem": "redeem", "rollback": "rollback", "customer_event": "customer_event"}
_EVENT_KINDS = ", ".join(_EVENT_PAYLOADS)


def _points(body) -> int:
    if type(body) is AccrueResult:
        return body.calculation.earned_points
    if type(body) is RedeemResult:
        return body.redeemed_points or body.held_points
    if type(body) is RollbackResult:
        return body.clawed_back_points
    if type(body) is EventResult:
        return body.points
    return 0


class ProcessingServicer(processing_pb2_grpc.ProcessingServicer):
    def __init__(self, ledger, committer, clock, limits):
        self._ledger = ledger
        self._committer = committer
        self._clock = clock
        self._batch_operations_max = limits.batch_operations_max
        self._stream_events_in_flight_max = limits.stream_events_in_flight_max
        self._streams_max = limits.streams_max
        self.streams_open = 0

    async def Calculate(self, request, context: grpc.aio.ServicerContext):
        try:
            query = convert.calculate_query(request)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        refusal = CALLER.get().store_refusal(query.receipt.store_id)
        if refusal is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        outcome = self._ledger.calculate(query, self._clock.now_ms())
        return await answer(context, outcome, convert.calculate_response)

    async def Accrue(self, request, context):
        return await commit_one(self._committer, context, convert.accrue_op, request, convert.accrue_response)

    async def Redeem(self, request, context):
        return await commit_one(self._committer, context, convert.redeem_op, request, convert.redeem_response)

    async def Rollback(self, request, context):
        return await commit_one(self._committer, context, convert.rollback_op, request, convert.rollback_response)

    # -- many operations per call -----------------------------------------------------------------

    async def _commit_many(self, payloads: list, abort_in_flight: bool = True) -> list[Outcome]:
        """`payloads` holds (kind, request message, where it is in the call, e.g. "operations[3].accrue");
        invalid ones are answered INVALID_ARGUMENT naming the field in place, the rest committed
        together, in order."""
        # Decode while no commit of ours runs: the commit thread shares this process's GIL and holds
        # LMDB's writer lock, so decoding beside it would slow every worker's commits.
        await self._committer.idle.wait()
        outcomes: list[Outcome | None] = [None] * len(payloads)
        ops, positions = [], []
        for position, (kind, message, where) in enumerate(payloads):
            if kind is None:
                outcomes[position] = Outcome(Code.INVALID_ARGUMENT, message=where)
                continue
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
        if ops:
            for position, outcome in zip(positions, await self._committer.submit(ops, abort_in_flight)):
                outcomes[position] = outcome
        return outcomes  # type: ignore[return-value]

    async def ProcessBatch(self, request, context):
        count = len(request.operations)
        if count > self._batch_operations_max:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"operations: {count} operations, more than the limit of {self._batch_operations_max}",
            )
        payloads = []
        for index, operation in enumerate(request.operations):
            kind = operation.WhichOneof("op")
            if kind is None:
                payloads.append((None, None, f"operations[{index}]: set one of accrue, redeem, rollback"))
            else:
                payloads.append((kind, getattr(operation, kind), f"operations[{index}].{kind}"))
        results = []
        for outcome in await self._commit_many(payloads):
            result = processing_pb2.OperationResult(code=outcome.code, reason=outcome.reason, message=outcome.message)
            if type(outcome.body) is AccrueResult:
                convert.fill_accrue_response(result.accrue, outcome.body)  # the common case, filled in place
            elif outcome.body is not None:
                field, render = _RENDERERS[type(outcome.body)]
                getattr(result, field).CopyFrom(render(outcome.body))
            results.append(result)
        return processing_pb2.ProcessBatchResponse(results=results)

    async def StreamEvents(self, request_iterator, context):
        """Acks go out in the order events came in, each after its durable commit. At most
        `stream_events_in_flight_max` events are read and not yet acked: a client that stops
        reading acks stops being read, so server memory stays bounded, and the stream lasts until
        the client's deadline or the connection's keepalive ends it (grpc.aio has no server-side
        cancel: a status cannot be sent past acks the client does not take). What it sent is
        committed: the client re-sends what was not acked and gets the original results."""
        if self.streams_open >= self._streams_max:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.streams_open} event streams open, the limit (processing.streams_max) is {self._streams_max}",
            )
        self.streams_open += 1
        try:
            await self._stream_events(request_iterator, context)
        finally:
            self.streams_open -= 1

    async def _stream_events(self, request_iterator, context):
        in_flight = 0
        room = asyncio.Condition()
        acks: asyncio.Queue = asyncio.Queue()
        limit = self._stream_events_in_flight_max

        async def read() -> None:
            nonlocal in_flight
            try:
                async for batch in request_iterator:
                    size = len(batch.events)
                    async with room:
                        await room.wait_for(lambda: in_flight == 0 or in_flight + size <= limit)
                        in_flight += size
                    await acks.put((size, asyncio.ensure_future(self._events(batch.events))))
            finally:
                acks.put_nowait(None)  # also when reading failed: the writer stops, `await reader` raises

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await acks.get()
                if item is None:
                    break
                size, pending = item
                await context.write(await pending)
                async with room:
                    in_flight -= size
                    room.notify_all()
            await reader
        finally:
            reader.cancel()

    async def _events(self, events) -> processing_pb2.AckBatch:
        """One ack per event, in order, built in place (no per-ack message copied into the batch)."""
        payloads = []
        for index, event in enumerate(events):
            kind = event.WhichOneof("payload")
            if not event.event_id:
                payloads.append((None, None, f"events[{index}].event_id: must not be empty"))
            elif kind is None:
                payloads.append((None, None, f"events[{index}]: set one of {_EVENT_KINDS}"))
            elif kind == "customer_event":
                payloads.append((kind, event, f"events[{index}]"))
            else:
                message = getattr(event, kind)
                if not message.request_id:
                    message.request_id = event.event_id
                payloads.append((_EVENT_PAYLOADS[kind], message, f"events[{index}].{kind}"))
        outcomes = await self._commit_many(payloads, abort_in_flight=False)
        batch = processing_pb2.AckBatch()
        add = batch.acks.add
        for event, outcome in zip(events, outcomes):
            body = outcome.body
            if outcome.code:
                add(event_id=event.event_id, code=outcome.code, reason=outcome.reason, message=outcome.message)
            else:
                add(event_id=event.event_id, transaction_id=getattr(body, "transaction_id", 0), points=_points(body))
        return batch
