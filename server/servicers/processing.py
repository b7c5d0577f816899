"""kassa.v1.Processing: the checkout hot path."""

from __future__ import annotations

import grpc

from server import convert
from server.servicers.respond import answer, invalid, unimplemented
from kassa.v1 import processing_pb2_grpc


class ProcessingServicer(processing_pb2_grpc.ProcessingServicer):
    def __init__(self, ledger, committer, clock):
        self._ledger = ledger
        self._committer = committer
        self._clock = clock

    async def _commit_one(self, context, build, request, render):
        try:
            op = build(request)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        (outcome,) = await self._committer.submit([op])
        return await answer(context, outcome, render)

    async def Calculate(self, request, context: grpc.aio.ServicerContext):
        try:
            query = convert.calculate_query(request)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        outcome = self._ledger.calculate(query, self._clock.now_ms())
        return await answer(context, outcome, convert.calculate_response)

    async def Accrue(self, request, context):
        return await self._commit_one(context, convert.accrue_op, request, convert.accrue_response)

    async def Redeem(self, request, context):
        return await self._commit_one(context, convert.redeem_op, request, convert.redeem_response)

    async def Rollback(self, request, context):
        return await self._commit_one(context, convert.rollback_op, request, convert.rollback_response)

    async def ProcessBatch(self, request, context):
        return await unimplemented(context, "Processing.ProcessBatch", "the throughput issue")

    async def StreamEvents(self, request_iterator, context):
        return await unimplemented(context, "Processing.StreamEvents", "the throughput issue")
