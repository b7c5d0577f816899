"""Turning a core `Outcome` into a gRPC answer: the body, or a status with the reason attached."""

from __future__ import annotations

import grpc
import msgspec
from google.protobuf.message import DecodeError

from kassa.core_ext.model import AccrueOp, Code, Outcome, Reason, RollbackOp, store_of
from kassa.server import errors
from kassa.server.convert import InvalidArgument
from kassa.server.interceptors.decode import refuse_undecodable
from kassa.server.caller import CALLER

STATUS_CODES = {int(code): grpc.StatusCode[code.name] for code in Code}
REUSED_PREFIX = "request_id '"  # an ALREADY_EXISTS about the request_id itself, not what it creates


def outcome_reason(code: grpc.StatusCode, outcome: Outcome) -> str:
    """ErrorInfo.reason of a refused outcome: its kassa.v1.Reason name, else one by situation."""
    if outcome.reason:
        return Reason(outcome.reason).name
    if code == grpc.StatusCode.ALREADY_EXISTS and outcome.message.startswith(REUSED_PREFIX):
        return errors.REQUEST_ID_REUSED
    return errors.REASON_OF_CODE.get(code, code.name)


async def answer(context: grpc.aio.ServicerContext, outcome: Outcome, render):
    if outcome.code == Code.OK:
        return render(outcome.body)
    code = STATUS_CODES[outcome.code]
    await errors.refuse(context, code, outcome.message, outcome_reason(code, outcome), business=bool(outcome.reason))


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
    await errors.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), errors.INVALID_FIELD)


async def decoded(context: grpc.aio.ServicerContext, method: str, message_type, data: bytes):
    """Request bytes as `message_type`, for a method that takes its bytes (server/wire.pyx) and
    leaves a request it does not read to protobuf; bytes that are no such message are refused."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        await refuse_undecodable(context, method, error)
