"""Turning a core `Outcome` into a gRPC answer: the body, or a status with the reason attached."""

from __future__ import annotations

import grpc
import msgspec
from google.protobuf.message import DecodeError

from core_ext.model import AccrueOp, Code, Outcome, Reason, RedeemOp, RollbackOp
from server.convert import InvalidArgument
from server.interceptors.decode import refuse_details
from server.interceptors.auth import CALLER

REASON_METADATA_KEY = "kassa-reason"  # trailing metadata naming the business reason of a refusal
STATUS_CODES = {int(code): grpc.StatusCode[code.name] for code in Code}


async def answer(context: grpc.aio.ServicerContext, outcome: Outcome, render):
    if outcome.code == Code.OK:
        return render(outcome.body)
    metadata = ((REASON_METADATA_KEY, Reason(outcome.reason).name),) if outcome.reason else ()
    await context.abort(STATUS_CODES[outcome.code], outcome.message, trailing_metadata=metadata)


def store_of(op) -> str | None:
    """The store an operation acts for; None for operations that belong to no store."""
    kind = type(op)
    if kind is AccrueOp:
        return op.receipt.store_id
    if kind is RedeemOp or kind is RollbackOp:
        return op.store_id
    return None


def as_caller(op):
    """`op` stamped with the caller, or the reason the caller may not do it."""
    caller = CALLER.get()
    if not caller.stores:  # may act for any store
        return (op if caller.name == op.actor else msgspec.structs.replace(op, actor=caller.name)), None
    store_id = store_of(op)
    refusal = None if store_id is None else caller.store_refusal(store_id)
    if refusal is not None:
        return None, Outcome(Code.PERMISSION_DENIED, message=refusal)
    if type(op) is RollbackOp or type(op) is AccrueOp:
        # The ledger checks the store of what a rollback or a capture reaches back to.
        return msgspec.structs.replace(op, actor=caller.name, stores=tuple(sorted(caller.stores))), None
    return msgspec.structs.replace(op, actor=caller.name), None


async def commit_one(committer, context: grpc.aio.ServicerContext, build, request, render):
    """The unary mutating call: check and convert, check the caller's scope, commit, answer."""
    try:
        op = build(request)
    except InvalidArgument as error:
        return await invalid(context, error)
    return await commit_op(committer, context, op, render)


async def commit_op(committer, context: grpc.aio.ServicerContext, op, render):
    """A checked operation: check the caller's scope, commit, answer."""
    op, refusal = as_caller(op)
    if refusal is not None:
        return await answer(context, refusal, render)
    (outcome,) = await committer.submit([op])
    return await answer(context, outcome, render)


async def invalid(context: grpc.aio.ServicerContext, error: InvalidArgument):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


async def decoded(context: grpc.aio.ServicerContext, method: str, message_type, data: bytes):
    """Request bytes as `message_type`, for a method that takes its bytes (server/wire.pyx) and
    leaves a request it does not read to protobuf; bytes that are no such message are refused."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refuse_details(method, error))
