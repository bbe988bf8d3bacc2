"""TLS and mutual TLS for the services and their clients, from PEM files named in settings.

Server: EDITLOOP_TLS_CERT + EDITLOOP_TLS_KEY serve TLS; EDITLOOP_TLS_CLIENT_CA also demands a client certificate
signed by that CA (mTLS). Clients: EDITLOOP_TLS_CA verifies the server (TLS on); EDITLOOP_TLS_CLIENT_CERT +
EDITLOOP_TLS_CLIENT_KEY present a client certificate. A missing or unreadable file is refused by its setting's name.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from editloop.settings import Settings


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"`{setting}` = {str(path)[:200]!r} cannot be read ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"`{setting}` = {str(path)[:200]!r} is not a PEM file")
    return data


def _pair(cert: Path | None, key: Path | None, cert_name: str, key_name: str) -> tuple[bytes, bytes] | None:
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if cert is not None else (key_name, cert_name)
        raise ValueError(f"`{given}` is set but `{missing}` is not; TLS needs both")
    if cert is None:
        return None
    return _read(key, key_name), _read(cert, cert_name)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS server credentials (client certificates required when a client CA is set), or None (plaintext)."""
    pair = _pair(settings.tls_cert, settings.tls_key, "EDITLOOP_TLS_CERT", "EDITLOOP_TLS_KEY")
    client_ca = _read(settings.tls_client_ca, "EDITLOOP_TLS_CLIENT_CA")
    if pair is None:
        if client_ca is not None:
            raise ValueError("`EDITLOOP_TLS_CLIENT_CA` needs `EDITLOOP_TLS_CERT` and `EDITLOOP_TLS_KEY` (mTLS is TLS "
                             "with client certificates)")
        return None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS channel credentials (with a client certificate when one is set), or None (plaintext)."""
    ca = _read(settings.tls_ca, "EDITLOOP_TLS_CA")
    pair = _pair(settings.tls_client_cert, settings.tls_client_key, "EDITLOOP_TLS_CLIENT_CERT",
                 "EDITLOOP_TLS_CLIENT_KEY")
    if ca is None:
        if pair is not None:
            raise ValueError("`EDITLOOP_TLS_CLIENT_CERT` needs `EDITLOOP_TLS_CA` (the CA that signed the server)")
        return None
    key, cert = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
