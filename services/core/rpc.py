"""Decorators for servicer methods: metrics, and the one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.core import metrics
from services.core.decoding import Undecodable
from services.core.errors import InvalidArgument, status_for


@contextlib.asynccontextmanager
async def observed(service: str, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Count and time one RPC; map any exception to its status (never a traceback to the client)."""
    start, code = time.perf_counter(), grpc.StatusCode.OK
    try:
        yield
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:  # mapped to a status
        code, message = status_for(exc)
        await context.abort(code, message)
    finally:
        metrics.REQUESTS.labels(service, method, code.name).inc()
        metrics.LATENCY.labels(service, method).observe(time.perf_counter() - start)


def parsed(request: Any) -> Any:
    """The request, or InvalidArgument when its bytes did not parse (services.core.decoding)."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.error())
    return request


def unary(service: str) -> Callable:
    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with observed(service, fn.__name__, context):
                return await fn(self, parsed(request), context)

        return handler

    return wrap


def stream(service: str) -> Callable:
    def wrap(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with observed(service, fn.__name__, context):
                async for message in fn(self, parsed(request), context):
                    yield message

        return handler

    return wrap
