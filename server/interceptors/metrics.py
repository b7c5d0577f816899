"""Counts and times every call by service, method and status code (as go-grpc-prometheus names
them); server/interceptors/access_log.py logs them."""

from __future__ import annotations

import asyncio
import time

import grpc


def code_name(context, failure: BaseException | None) -> str:
    """The status the call ends with: set by the handler (abort), or what grpc answers for an
    exception: CANCELLED when the client went away, UNKNOWN for anything else."""
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else str(code)
    if failure is None:
        return "OK"
    return "CANCELLED" if isinstance(failure, (asyncio.CancelledError, GeneratorExit)) else "UNKNOWN"


def _grpc_type(handler) -> str:
    if handler.request_streaming:
        return "BIDI_STREAM" if handler.response_streaming else "CLIENT_STREAM"
    return "SERVER_STREAM" if handler.response_streaming else "UNARY"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:  # no service has the method: grpc answers UNIMPLEMENTED
            self._metrics.unknown_method()
            return handler
        method = handler_call_details.method
        calls = self._metrics.method(method, _grpc_type(handler))

        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def one_response(request, context):
                calls.started()
                start = time.perf_counter()
                failure = None
                try:
                    return await behavior(request, context)
                except BaseException as error:
                    failure = error
                    raise
                finally:
                    calls.handled(code_name(context, failure), time.perf_counter() - start)

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(one_response, handler.request_deserializer, handler.response_serializer)

        behavior = handler.unary_stream or handler.stream_stream

        async def responses(request, context):
            calls.started()
            start = time.perf_counter()
            failure = None
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # the handler writes with context.write
                    await result
            except BaseException as error:
                failure = error
                raise
            finally:
                calls.handled(code_name(context, failure), time.perf_counter() - start)

        make = grpc.stream_stream_rpc_method_handler if handler.stream_stream else grpc.unary_stream_rpc_method_handler
        return make(responses, handler.request_deserializer, handler.response_serializer)
