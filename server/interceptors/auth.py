"""Who is calling: API keys in metadata, each scoped to a merchant's stores, with a rate limit.

The key travels in the `x-api-key` metadata. The config keeps only its SHA-256, so a leaked config
file leaks no key. Admin RPCs (and manual adjustments) need a key with `admin = true`. The caller
found here is kept in a context variable (server/caller.py) for the servicers, which check the store of each operation
and stamp the caller on the journal entry it makes.
"""

from __future__ import annotations

import hashlib
import time

import grpc

from kassa.server import errors
from kassa.server.caller import CALLER, Caller

API_KEY_METADATA = "x-api-key"
KASSA_METHOD_PREFIX = "/kassa.v1."  # health and reflection stay open
ADMIN_METHODS = ("/kassa.v1.Admin/", "/kassa.v1.Accounts/Adjust")


class TokenBucket:
    """`rate_per_s` calls a second on average, up to `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate_per_s)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait_s(self) -> float:
        """How long until `take` can succeed, as of its last call."""
        return max(0.0, (1 - self._tokens) / self._rate_per_s)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str, reason: str,
             **options) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses (server/errors.py) and does nothing else."""
    status = errors.refusal_status(code, details, reason, **options)

    async def refuse(request_or_iterator, context):
        await context.abort_with_status(status)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth):
        self._callers: dict[str, Caller] = {}
        self._buckets: dict[str, TokenBucket] = {}
        for key in auth.keys:
            digest = key.key_sha256.lower()
            self._callers[digest] = Caller(key.name, frozenset(key.stores), key.admin)
            self._buckets[digest] = TokenBucket(key.rate_per_s or auth.rate_per_s, key.burst or auth.burst)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(KASSA_METHOD_PREFIX):
            return handler
        key = dict(handler_call_details.invocation_metadata or ()).get(API_KEY_METADATA, "")
        digest = hashlib.sha256(key.encode()).hexdigest()
        caller = self._callers.get(digest) if key else None
        if caller is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            f"missing or unknown API key (metadata '{API_KEY_METADATA}')",
                            errors.API_KEY_INVALID if key else errors.API_KEY_MISSING)
        if method.startswith(ADMIN_METHODS) and not caller.admin:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"'{caller.name}' is not an admin key",
                            errors.ADMIN_KEY_REQUIRED)
        bucket = self._buckets[digest]
        if not bucket.take():
            return _refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"rate limit for '{caller.name}' exceeded; slow down and retry", errors.RATE_LIMITED,
                            retry_delay_ms=errors.retry_delay_ms(bucket.wait_s()))
        CALLER.set(caller)
        return handler
