"""Counts and times every call by method and status (server/interceptors/access_log.py logs them)."""

from __future__ import annotations

import time

import grpc


def _code_name(context) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metrics = self._metrics

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary_unary(request, context):
                start = time.perf_counter()
                try:
                    return await behavior(request, context)
                finally:
                    metrics.observe_call(method, _code_name(context), time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            behavior = handler.stream_stream

            async def stream_stream(request_iterator, context):
                start = time.perf_counter()
                try:
                    result = behavior(request_iterator, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                finally:
                    metrics.observe_call(method, _code_name(context), time.perf_counter() - start)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
