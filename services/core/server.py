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

from services.core.channels import channel_options
from services.core.decoding import register as tolerant_register

log = logging.getLogger("editloop.services")


LOOPBACK = ("127.0.0.1", "::1", "localhost", "[::1]")


def check_exposure(host: str, auth: str, tls: bool, insecure_public: bool) -> None:
    """Refuse to listen beyond loopback with no authentication unless told explicitly (--insecure-public)."""
    if host in LOOPBACK or host.startswith("127.") or auth == "required" or insecure_public:
        return
    raise ValueError(f"`--host` {host[:64]!r} is not a loopback address and EDITLOOP_AUTH is {auth!r}: anyone who can "
                     f"reach the port could call every RPC. Set EDITLOOP_AUTH=required (and tokens: `editloop auth "
                     f"create-token`){'' if tls else ', ideally with TLS (EDITLOOP_TLS_CERT / EDITLOOP_TLS_KEY)'}, "
                     f"or pass --insecure-public (EDITLOOP_INSECURE_PUBLIC=true) to do it anyway")


async def create_server(
    register: Sequence[tuple[Callable, object, str]], port: int = 0, host: str = "127.0.0.1",
    max_message_mb: int = 32, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Build and start a server; `register` holds (add_XServicer_to_server, servicer, full name). With
    `credentials` the port speaks TLS (mTLS when they require client certificates)."""
    server = grpc.aio.server(options=channel_options(max_message_mb), interceptors=list(interceptors))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    for add, servicer, name in register:
        tolerant_register(add, servicer, server)  # undecodable bytes: INVALID_ARGUMENT, not UNKNOWN
        names.append(name)
    enable_reflection(names, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
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
