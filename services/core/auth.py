"""Token authentication for the model services (EDITLOOP_AUTH=required): a grpc.aio server interceptor.

Every RPC of the Generator, Editor and Reward services needs `authorization: Bearer <token>` in its metadata, a
live token (editloop.auth) whose scopes include the service's (`generate`, `edit`, `score`; `admin` takes all):
UNAUTHENTICATED without one, PERMISSION_DENIED outside its scopes. Health and reflection stay open (load
balancers and tools call them without a token). Lookups run off the event loop and are cached for
`cache_s` seconds (bounded), so a revoked token stops working within that time. A refused request is answered
before its message is parsed, counted in the metrics like every other, and its text never holds the token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from editloop.auth import TokenInfo
from services.core import metrics

SERVICE_SCOPES = {"editloop.v1.Generator": "generate", "editloop.v1.Editor": "edit", "editloop.v1.Reward": "score"}
CACHE_MAX = 4096


def bearer(metadata: tuple | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, else None."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, lookup: Callable[[str], TokenInfo | None], cache_s: float = 2.0) -> None:
        self.lookup = lookup  # blocking (a database query): run in a thread
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, TokenInfo | None]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = details.method.lstrip("/").partition("/")
        scope = SERVICE_SCOPES.get(service)
        handler = await continuation(details)
        if scope is None or handler is None:  # health, reflection, an unknown method (UNIMPLEMENTED)
            return handler
        token = bearer(details.invocation_metadata)
        if token is None:
            return refusal(handler, service, method, grpc.StatusCode.UNAUTHENTICATED,
                           "this service needs `authorization: Bearer <token>` metadata (EDITLOOP_AUTH=required; "
                           "`editloop auth create-token` makes one)")
        try:
            info = await self.cached(token)
        except Exception as exc:  # the token store is down: say so, no traceback
            return refusal(handler, service, method, grpc.StatusCode.UNAVAILABLE,
                           f"the token store cannot be reached ({type(exc).__name__}); try again")
        if info is None:
            return refusal(handler, service, method, grpc.StatusCode.UNAUTHENTICATED,
                           "the token is not valid (unknown, revoked or malformed)")
        if not info.allows(scope):
            return refusal(handler, service, method, grpc.StatusCode.PERMISSION_DENIED,
                           f"token {info.name!r} has scopes {sorted(info.scopes)}; {service}/{method} needs "
                           f"{scope!r} (or 'admin')")
        return handler

    async def cached(self, token: str) -> TokenInfo | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        info = await asyncio.to_thread(self.lookup, token)
        if len(self._cache) >= CACHE_MAX:  # many distinct tokens (a guessing client): start over, stay bounded
            self._cache.clear()
        self._cache[token] = (now + self.cache_s, info)
        return info


def refusal(handler: grpc.RpcMethodHandler, service: str, method: str, code: grpc.StatusCode,
            message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `code` without parsing the request."""

    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        metrics.REQUESTS.labels(service, method, code.name).inc()
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, response_serializer=handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, response_serializer=handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(abort, response_serializer=handler.response_serializer)
