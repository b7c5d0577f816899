"""One log line per call: refused calls at info, answered ones at debug; the request id on every line.

The request id is the request's own `request_id` when it has one, else the `x-request-id` metadata.
It is kept in a context variable (server/logs.py REQUEST_ID) for the whole call, so every line
logged while the call is served carries it.
"""

from __future__ import annotations

import logging
import time

import grpc

from kassa.server import wire
from kassa.server.interceptors.metrics import code_name
from kassa.server.logs import REQUEST_ID

log = logging.getLogger("kassa.access")

REQUEST_ID_METADATA = "x-request-id"  # a request id for calls whose request has none (streams, batches)
ACCRUE_METHOD = "/kassa.v1.Processing/Accrue"  # takes its bytes, request_id first (server/wire.pyx)


def _request_id(method: str, request) -> str:
    if type(request) is bytes:
        return wire.request_id(request) if method == ACCRUE_METHOD else ""
    return getattr(request, "request_id", "")


def _metadata_request_id(handler_call_details) -> str:
    for key, value in handler_call_details.invocation_metadata or ():
        if key == REQUEST_ID_METADATA:
            return value
    return ""


def _log_call(method: str, context, start_s: float, error: BaseException | None) -> None:
    code = code_name(context, error)
    duration_ms = round((time.perf_counter() - start_s) * 1000, 3)
    if code != "OK":
        log.info("refused", extra={"fields": {
            "method": method, "code": code, "duration_ms": duration_ms, "details": context.details() or ""}})
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("answered", extra={"fields": {"method": method, "code": code, "duration_ms": duration_ms}})


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        header_request_id = _metadata_request_id(handler_call_details)

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary_unary(request, context):
                REQUEST_ID.set(_request_id(method, request) or header_request_id)
                start_s = time.perf_counter()
                error = None
                try:
                    return await behavior(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    _log_call(method, context, start_s, error)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            behavior = handler.stream_stream

            async def stream_stream(request_iterator, context):
                REQUEST_ID.set(header_request_id)
                start_s = time.perf_counter()
                error = None
                try:
                    result = behavior(request_iterator, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    _log_call(method, context, start_s, error)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
