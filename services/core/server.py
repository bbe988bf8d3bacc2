"""Server bootstrap shared by every service: grpc.aio server with health, reflection,
message size limits, Prometheus metrics and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.core.decoding import register as tolerant_register

log = logging.getLogger("editloop.services")


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


async def create_server(
    register: Sequence[tuple[Callable, object, str]], port: int = 0, host: str = "127.0.0.1",
    max_message_mb: int = 32,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Build and start a server; `register` holds (add_XServicer_to_server, servicer, full name)."""
    server = grpc.aio.server(options=channel_options(max_message_mb))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    for add, servicer, name in register:
        tolerant_register(add, servicer, server)  # undecodable bytes: INVALID_ARGUMENT, not UNKNOWN
        names.append(name)
    enable_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    for _, _, name in register:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(names: list[str], server: grpc.aio.Server) -> None:
    """Server reflection under both names clients ask for: v1alpha (grpcio-reflection's) and v1 (grpcurl and
    current clients). The two protocols' messages are the same on the wire (only the package differs), so the one
    servicer answers both."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer([*names, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, v1),))


async def serve_until_stopped(server: grpc.aio.Server, health: HealthServicer,
                              on_stop: Callable[[], Awaitable[None]] | None = None, grace: float = 10.0,
                              drain_s: float = 0.0) -> None:
    """Run until SIGTERM / SIGINT; then report NOT_SERVING for `drain_s` seconds with the port still open (a load
    balancer's health check sees it and takes the instance out), finish in-flight RPCs, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(server.wait_for_termination())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: finishing in-flight requests (grace %.0fs)", grace)
    await health.enter_graceful_shutdown()
    if drain_s > 0:
        log.info("draining: health says NOT_SERVING for %.1fs before the port closes", drain_s)
        await asyncio.sleep(drain_s)
    await server.stop(grace)
    if on_stop is not None:
        await on_stop()
    stopper.cancel()
