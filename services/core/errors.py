"""One place that maps domain errors to gRPC status codes."""

from __future__ import annotations

import logging
import uuid

import grpc

log = logging.getLogger("editloop.services")


class InvalidArgument(ValueError):
    """Bad input; the message names the field and the value."""


class NotFound(LookupError):
    """Unknown model, version or blob."""


class ResourceExhausted(RuntimeError):
    """A queue or size limit was hit; retry later."""


class Unavailable(RuntimeError):
    """The model is loading or the service is stopping."""


class Cancelled(RuntimeError):
    """The client went away; sampling stopped."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status and client-facing message; unexpected errors get INTERNAL with a request id only."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    request_id = uuid.uuid4().hex[:12]
    log.error("internal error, request id %s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    await context.abort(code, message)


class FailedPrecondition(RuntimeError):
    """The request is valid but this server cannot answer it (e.g. ScoreMap on a scalar reward)."""


_CODES.insert(0, (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION))
