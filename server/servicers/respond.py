"""Turning a core `Outcome` into a gRPC answer: the body, or a status with the reason attached."""

from __future__ import annotations

import grpc

from core_ext.model import Code, Outcome, Reason
from server.convert import InvalidArgument

REASON_METADATA_KEY = "kassa-reason"  # trailing metadata naming the business reason of a refusal
STATUS_CODES = {int(code): grpc.StatusCode[code.name] for code in Code}


async def answer(context: grpc.aio.ServicerContext, outcome: Outcome, render):
    if outcome.code == Code.OK:
        return render(outcome.body)
    metadata = ((REASON_METADATA_KEY, Reason(outcome.reason).name),) if outcome.reason else ()
    await context.abort(STATUS_CODES[outcome.code], outcome.message, trailing_metadata=metadata)


async def commit_one(committer, context: grpc.aio.ServicerContext, build, request, render):
    """The unary mutating call: check and convert, commit in the next group, answer."""
    try:
        op = build(request)
    except InvalidArgument as error:
        return await invalid(context, error)
    (outcome,) = await committer.submit([op])
    return await answer(context, outcome, render)


async def invalid(context: grpc.aio.ServicerContext, error: InvalidArgument):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


async def unimplemented(context: grpc.aio.ServicerContext, method: str, issue: str):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet ({issue})")
