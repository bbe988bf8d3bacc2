"""Tokens, scopes and TLS on a real reward service through real gRPC channels (issue 33, items 2 and 3).

EDITLOOP_AUTH=required: no token or a bad one -> UNAUTHENTICATED, a token outside its scopes -> PERMISSION_DENIED,
revocation seen within the cache time, health and reflection open, refusals counted, only hashes stored. TLS and
mTLS with certificates the test makes itself. A public address without auth is refused before any model loads.
"""

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from editloop.auth import create_token, revoke_token
from editloop.db import ApiToken, make_engine, make_sessionmaker, upgrade
from editloop.models.reward import save_reward, tiny_reward
from editloop.settings import Settings
from services.app import start_service
from services.core import metrics
from services.core.channels import open_aio_channel, open_channel
from services.gen.editloop.v1 import reward_pb2, reward_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    save_reward(tiny_reward("aesthetic", seed=1), "aesthetic", root / "aesthetic", extra={"trained": False})
    return root / "aesthetic"


def serve(settings: Settings, model: Path, body, host: str = "127.0.0.1"):
    async def go():
        running = await start_service("reward", settings, model, host=host, reward_kind="aesthetic")
        try:
            return await body(running.port)
        finally:
            await running.stop(0)

    return asyncio.run(go())


async def info(port: int, settings: Settings, metadata=None):
    async with open_aio_channel(f"127.0.0.1:{port}", settings) as ch:
        return await reward_pb2_grpc.RewardStub(ch).ModelInfo(reward_pb2.ModelInfoRequest(), timeout=30,
                                                               metadata=metadata)


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def sync_kind(port: int, settings: Settings) -> str:
    with open_channel(f"127.0.0.1:{port}", settings) as ch:
        return reward_pb2_grpc.RewardStub(ch).ModelInfo(reward_pb2.ModelInfoRequest(), timeout=30).kind


def refused(code: str) -> float:
    return metrics.REQUESTS.labels("editloop.v1.Reward", "ModelInfo", code)._value.get()


def test_tokens_scopes_revocation_and_the_open_health_check(db_url, tmp_path, reward_dir):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions.begin() as s:
        scorer = create_token(s, "scorer", ["score"])
        painter = create_token(s, "painter", ["generate", "edit"])
        admin = create_token(s, "root", ["admin"])
    with sessions() as s:  # only hashes are stored
        rows = s.scalars(select(ApiToken)).all()
        assert {r.name for r in rows} == {"scorer", "painter", "root"}
        assert all(len(r.token_hash) == 64 and r.token_hash not in (scorer, painter, admin) for r in rows)
        assert not any(t in repr([(r.name, r.token_hash, r.scopes) for r in rows]) for t in (scorer, painter, admin))
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, auth="required", auth_cache_s=0.5)
    as_ = {name: settings.model_copy(update={"token": t}) for name, t in
           (("scorer", scorer), ("painter", painter), ("root", admin), ("nobody", ""), ("guess", "elt_" + "x" * 43))}

    async def body(port):
        before = refused("UNAUTHENTICATED")
        code, text = await code_of(info(port, as_["nobody"]))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer <token>" in text
        code, text = await code_of(info(port, as_["guess"]))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in text and "x" * 20 not in text
        code, _ = await code_of(info(port, settings, metadata=(("authorization", "Basic abc"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert refused("UNAUTHENTICATED") == before + 3  # refusals are counted like every request
        code, text = await code_of(info(port, as_["painter"]))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert text == ("token 'painter' has scopes ['edit', 'generate']; editloop.v1.Reward/ModelInfo needs 'score' "
                        "(or 'admin')")
        assert (await info(port, as_["scorer"])).kind == "aesthetic"
        assert (await info(port, as_["root"])).kind == "aesthetic"
        assert await asyncio.to_thread(sync_kind, port, as_["scorer"]) == "aesthetic"  # the CLI's sync channel
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # health stays open, without a token
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with sessions.begin() as s:
            revoke_token(s, "scorer")
        await asyncio.sleep(0.8)  # past EDITLOOP_AUTH_CACHE_S
        code, _ = await code_of(info(port, as_["scorer"]))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        return True

    assert serve(settings, reward_dir, body)


def test_reflection_stays_open_under_auth(db_url, tmp_path, reward_dir):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, auth="required")

    async def body(port):
        def names():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                return set(ProtoReflectionDescriptorDatabase(ch).get_services())

        return await asyncio.to_thread(names)

    assert "editloop.v1.Reward" in serve(settings, reward_dir, body)


def test_a_public_address_without_auth_is_refused_before_anything_loads(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    with pytest.raises(ValueError, match=r"`--host` '0.0.0.0' is not a loopback address and EDITLOOP_AUTH is 'off'"):
        asyncio.run(start_service("reward", settings, tmp_path / "no-such-model", host="0.0.0.0",
                                  reward_kind="aesthetic"))
    out = subprocess.run([sys.executable, "-m", "editloop.cli.main", "serve", "reward", "--kind", "aesthetic",
                          "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"EDITLOOP_STATE_DIR": str(tmp_path / "cli"), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "--insecure-public" in out.stderr and "Traceback" not in out.stderr


def test_insecure_public_binds_every_address(tmp_path, reward_dir):
    settings = Settings(state_dir=tmp_path / "state", insecure_public=True)

    async def body(port):
        return (await info(port, settings)).kind

    assert serve(settings, reward_dir, body, host="0.0.0.0") == "aesthetic"


# --- TLS ---


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name: str, issuer_key, ca: bool, sans=()):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert, key=None) -> tuple[Path, Path | None]:
    from cryptography.hazmat.primitives import serialization

    path.mkdir(parents=True, exist_ok=True)
    (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return path / "cert.pem", None
    (path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return path / "cert.pem", path / "key.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("editloop test CA", ca_key, "editloop test CA", ca_key, ca=True)
    other_ca = _cert("someone else", other_key, "someone else", other_key, ca=True)
    server_key, client_key = _key(), _key()
    out = {"ca": _write(root / "ca", ca)[0], "other_ca": _write(root / "other", other_ca)[0]}
    out["server"] = _write(root / "server", _cert("localhost", server_key, "editloop test CA", ca_key, False, True),
                           server_key)
    out["client"] = _write(root / "client", _cert("a client", client_key, "editloop test CA", ca_key, False),
                           client_key)
    return out


def test_tls_and_mutual_tls(tmp_path, reward_dir, pki):
    cert, key = pki["server"]
    tls = Settings(state_dir=tmp_path / "state", tls_cert=cert, tls_key=key)
    client = Settings(state_dir=tmp_path / "state", tls_ca=pki["ca"])

    async def plain_tls(port):
        assert (await info(port, client)).kind == "aesthetic"  # verified against the CA
        plaintext, _ = await code_of(info(port, Settings(state_dir=tmp_path / "state")))
        stranger, _ = await code_of(info(port, Settings(state_dir=tmp_path / "state", tls_ca=pki["other_ca"])))
        return plaintext, stranger

    assert serve(tls, reward_dir, plain_tls) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)

    mtls = tls.model_copy(update={"tls_client_ca": pki["ca"]})
    with_cert = client.model_copy(update={"tls_client_cert": pki["client"][0], "tls_client_key": pki["client"][1]})

    async def mutual(port):
        without, _ = await code_of(info(port, client))
        return without, (await info(port, with_cert)).kind

    assert serve(mtls, reward_dir, mutual) == (grpc.StatusCode.UNAVAILABLE, "aesthetic")

    async def cli_channel(port):  # the CLI's channel (sync) with the same settings
        return await asyncio.to_thread(sync_kind, port, with_cert)

    assert serve(mtls, reward_dir, cli_channel) == "aesthetic"


@pytest.mark.parametrize(("update", "message"), [
    ({"tls_cert": "server"}, "`EDITLOOP_TLS_CERT` is set but `EDITLOOP_TLS_KEY` is not; TLS needs both"),
    ({"tls_client_ca": "ca"}, "`EDITLOOP_TLS_CLIENT_CA` needs `EDITLOOP_TLS_CERT` and `EDITLOOP_TLS_KEY`"),
    ({"tls_cert": "missing", "tls_key": "missing"}, "`EDITLOOP_TLS_KEY` = '/nonexistent/key.pem' cannot be read"),
    ({"tls_cert": "not-pem", "tls_key": "not-pem"}, "is not a PEM file"),
])
def test_bad_tls_settings_are_refused_by_name(tmp_path, pki, update, message):
    from services.core.tls import server_credentials

    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    paths = {"server": pki["server"][0], "ca": pki["ca"], "missing": Path("/nonexistent/key.pem"), "not-pem": junk}
    settings = Settings(state_dir=tmp_path, **{k: paths[v] for k, v in update.items()})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        server_credentials(settings)
