"""Request bytes that do not parse as the method's message: INVALID_ARGUMENT from the handler, not UNKNOWN.

grpc's own deserialization failure answers UNKNOWN ("Unexpected DecodeError") and logs a traceback per request.
`register` adds a generated servicer (add_XServicer_to_server) with every request deserializer wrapped: bytes
that fail to parse (garbage, invalid UTF-8 in a string field, a truncated field) become an `Undecodable` the
handler decorators (services.core.rpc) turn into INVALID_ARGUMENT naming the message type, counted in the metrics
like any other request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """What a request that did not parse is handed to its handler as."""

    size: int
    message: str  # the expected message type's name

    def error(self) -> str:
        return f"the request ({self.size} bytes) is not a valid {self.message} message"


def tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    name = getattr(getattr(parse, "__self__", None), "__name__", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError, UnicodeDecodeError):
            return Undecodable(len(data), name)

    return deserialize


class _Tolerant:
    """Stands in for the server while a generated add_XServicer_to_server registers its handlers."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers, wrapped there

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {name: h._replace(request_deserializer=tolerant(h.request_deserializer))
                   if h.request_deserializer is not None else h for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)


def register(add: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server) -> None:
    """`add(servicer, server)` (a generated add_XServicer_to_server) with tolerant request deserializers."""
    add(servicer, _Tolerant(server))
