"""Any node takes every kassa.v1 call: the partition's owner serves it, another node forwards it.

`ForwardInterceptor` sits after authentication: a call for a partition this node does not own goes
to the owner's advertised address as raw bytes (no decoding here), with the caller's metadata and
the time left of its deadline, and the owner's answer (message or status, with its details) is
returned unchanged. A forwarded call carries `kassa-forwarded-by`, so that it is forwarded at most
once: a node that gets one for a partition it does not own (the lease moved meanwhile) refuses it.
While no owner is known (a failover under way) a call is refused UNAVAILABLE with a retry delay.
"""

from __future__ import annotations

import grpc

from kassa.server import errors
from kassa.server.cluster.node import partition_of

FORWARDED_BY_KEY = "kassa-forwarded-by"
FORWARDED_SERVICES = "/kassa.v1."  # health and reflection answer for the node itself
FORWARD_DEADLINE_S_MAX = 30.0  # a forwarded call without a deadline of its own waits at most this
NO_OWNER_RETRY_DELAY_MS = 1_000  # about the time a follower takes over a lapsed lease
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # where a kassa refusal carries its details
# Metadata grpc sets itself on every call: not copied onto the forwarded one.
OWN_METADATA_PREFIXES = (":", "grpc-")
OWN_METADATA_KEYS = ("user-agent", "content-type", "te")


class ForwardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, node, message_bytes_max: int):
        self._node = node
        self._options = [("grpc.max_receive_message_length", message_bytes_max),
                         ("grpc.max_send_message_length", message_bytes_max)]
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(FORWARDED_SERVICES) or self._node.serves_here():
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        address = self._node.owner_address
        partition = partition_of(method, self._node.settings.partitions)
        if address is None or any(key == FORWARDED_BY_KEY for key, _ in metadata):
            return _handler_like(handler, _refusal(partition))
        copied = tuple((key, value) for key, value in metadata
                       if not key.startswith(OWN_METADATA_PREFIXES) and key not in OWN_METADATA_KEYS)
        return _handler_like(handler, _Forward(self._channel(address), method,
                                               (*copied, (FORWARDED_BY_KEY, self._node.node_id))))

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:  # one per owner address seen; a node's address does not change
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def _timeout_s(context) -> float:
    remaining = context.time_remaining()
    return FORWARD_DEADLINE_S_MAX if remaining is None else max(0.0, min(remaining, FORWARD_DEADLINE_S_MAX))


async def _pass_status(context, error: grpc.aio.AioRpcError):
    """The owner's refusal as it gave it: code, message and details (in the trailing metadata).
    UNAVAILABLE without kassa's details is grpc's own: the owner cannot be reached (it died and its
    lease has not lapsed yet): the caller gets the no-owner refusal, with its retry delay."""
    trailing = error.trailing_metadata() or ()
    if error.code() == grpc.StatusCode.UNAVAILABLE and not any(key == STATUS_DETAILS_KEY for key, _ in trailing):
        await _Refusal(f"the partition's owner cannot be reached ({error.details()}); this may or may not "
                       "have been recorded: send it again with the same request_id, which replays it if it "
                       "was")._refuse(context)
    context.set_trailing_metadata(trailing)
    await context.abort(error.code(), error.details() or "")


class _Forward:
    """The four call shapes, each passing bytes to the owner and its answer back."""

    def __init__(self, channel, method: str, metadata: tuple):
        self._channel = channel
        self._method = method
        self._metadata = metadata

    async def unary_unary(self, request: bytes, context):
        call = self._channel.unary_unary(self._method)(request, timeout=_timeout_s(context), metadata=self._metadata)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            await _pass_status(context, error)
        context.set_trailing_metadata(await call.trailing_metadata() or ())
        return response

    async def unary_stream(self, request: bytes, context):
        call = self._channel.unary_stream(self._method)(request, timeout=_timeout_s(context), metadata=self._metadata)
        async for response in self._relay(call, context):
            yield response

    async def stream_unary(self, request_iterator, context):
        call = self._channel.stream_unary(self._method)(request_iterator, timeout=_timeout_s(context),
                                                        metadata=self._metadata)
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            await _pass_status(context, error)

    async def stream_stream(self, request_iterator, context):
        call = self._channel.stream_stream(self._method)(request_iterator, timeout=_timeout_s(context),
                                                         metadata=self._metadata)
        async for response in self._relay(call, context):
            yield response

    @staticmethod
    async def _relay(call, context):
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            await _pass_status(context, error)


class _Refusal:
    def __init__(self, message: str):
        self._message = message

    async def _refuse(self, context):
        await errors.refuse(context, grpc.StatusCode.UNAVAILABLE, self._message, errors.NO_PARTITION_OWNER,
                            retry_delay_ms=NO_OWNER_RETRY_DELAY_MS)

    async def unary_unary(self, request, context):
        await self._refuse(context)

    async def stream_unary(self, request_iterator, context):
        await self._refuse(context)

    async def unary_stream(self, request, context):
        await self._refuse(context)
        yield b""  # never reached: makes this an async generator, like the call it stands for

    async def stream_stream(self, request_iterator, context):
        await self._refuse(context)
        yield b""  # never reached


def _refusal(partition: int) -> _Refusal:
    return _Refusal(f"partition {partition} has no owner this node can reach (a failover is under way, or this "
                    "node lost the NATS servers); this was not recorded: send it again, with the same request_id")


def _handler_like(handler, behaviors):
    """A handler of the same shape as the servicer's, taking and giving raw bytes."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviors.stream_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviors.stream_unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviors.unary_stream)
    return grpc.unary_unary_rpc_method_handler(behaviors.unary_unary)
