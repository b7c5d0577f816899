"""Request bytes that are not a valid message are the caller's mistake: INVALID_ARGUMENT, not UNKNOWN.

grpc.aio answers UNKNOWN when a request deserializer raises. This interceptor decodes instead, and
hands the handler a marker for undecodable bytes, which it answers INVALID_ARGUMENT. The hot methods
take their request bytes (server/wire.pyx) and answer undecodable ones the same way themselves.
"""

from __future__ import annotations

import grpc

from kassa.server import errors


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def refuse_details(method: str, error: Exception) -> str:
    return f"request: not a valid message for {method} ({type(error).__name__})"


async def refuse_undecodable(context, method: str, error: Exception):
    """INVALID_ARGUMENT for bytes that are no message: no field of it to name."""
    await errors.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, refuse_details(method, error),
                        errors.MALFORMED_REQUEST, violations=[])


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = handler.request_deserializer

        def decode_or_mark(data: bytes):
            try:
                return decode(data)
            except Exception as error:  # protobuf's DecodeError and friends
                return _Undecodable(error)

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary_unary(request, context):
                if type(request) is _Undecodable:
                    await refuse_undecodable(context, method, request.error)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode_or_mark, handler.response_serializer)
        if handler.stream_stream:
            behavior = handler.stream_stream

            async def checked(request_iterator, context):
                async for request in request_iterator:
                    if type(request) is _Undecodable:
                        await refuse_undecodable(context, method, request.error)
                    yield request

            async def stream_stream(request_iterator, context):
                result = behavior(checked(request_iterator, context), context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result

            return grpc.stream_stream_rpc_method_handler(stream_stream, decode_or_mark, handler.response_serializer)
        return handler
