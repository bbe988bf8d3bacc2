"""Client channels as settings say: TLS when EDITLOOP_TLS_CA is set, the token (EDITLOOP_TOKEN) on every call.

Every client of the services (the CLI's commands, the demo, `status`) opens its channel here, so TLS and tokens
work the same everywhere.
"""

from __future__ import annotations

import collections

import grpc

from editloop.settings import Settings
from services.core.tls import channel_credentials


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def _with_token(metadata: object, token: str) -> list[tuple[str, str]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


class _Token(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a sync channel."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        return _Details(d.method, d.timeout, _with_token(d.metadata, self.token), d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _AioToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """The same for grpc.aio channels."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(details._replace(metadata=_with_token(details.metadata, self.token)), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(details._replace(metadata=_with_token(details.metadata, self.token)), request)


def client_token(settings: Settings) -> str:
    """EDITLOOP_TOKEN (a SecretStr; a plain str where a copy of the settings was given one)."""
    token = settings.token
    return token.get_secret_value() if hasattr(token, "get_secret_value") else str(token or "")


def open_channel(address: str, settings: Settings, options: list | None = None) -> grpc.Channel:
    """A sync channel to `address` with the settings' TLS and token (use it as a context manager)."""
    opts = [*channel_options(settings.max_message_mb), *(options or [])]
    creds = channel_credentials(settings)
    channel = grpc.secure_channel(address, creds, opts) if creds else grpc.insecure_channel(address, opts)
    token = client_token(settings)
    return grpc.intercept_channel(channel, _Token(token)) if token else channel


def open_aio_channel(address: str, settings: Settings, options: list | None = None) -> grpc.aio.Channel:
    opts = [*channel_options(settings.max_message_mb), *(options or [])]
    creds = channel_credentials(settings)
    token = client_token(settings)
    interceptors = [_AioToken(token)] if token else None
    if creds:
        return grpc.aio.secure_channel(address, creds, opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, opts, interceptors=interceptors)
