import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_RESULTS_URL = "redis://127.0.0.1:6379/7"
PG_ADMIN_URL = os.environ.get("EDITLOOP_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url():
    """A fresh database on this machine's PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"editloop_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on the embedded SQLite and on the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'editloop.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto in server mode) on a loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Untrained tiny t2i and inpainting models in diffusers format (same classes as the real ones)."""
    from editloop.models.zoo import make_pipeline, tiny_components

    root = tmp_path_factory.mktemp("models")
    make_pipeline(tiny_components(seed=0)).save_pretrained(root / "t2i")
    make_pipeline(tiny_components(seed=0, inpainting=True)).save_pretrained(root / "inpaint")
    return root


@pytest.fixture(scope="session")
def tiny_instruct(tiny_models):
    """Untrained tiny instruction editors (causal and concat) built from the tiny t2i model."""
    from editloop.models.zoo import load_pipeline
    from trainers.align.editor_train import editor_from_t2i

    for arch in ("causal", "concat"):
        pipe = load_pipeline(tiny_models / "t2i", "t2i", device="cpu", dtype="fp32")
        editor_from_t2i(pipe, arch).save(tiny_models / f"instruct-{arch}", {"version": f"tiny-{arch}"})
    return {arch: tiny_models / f"instruct-{arch}" for arch in ("causal", "concat")}


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio (installed once into its own virtualenv) on a free loopback port."""
    from pathlib import Path

    from annotation.server import start, stop_process

    venv = Path(os.environ.get("EDITLOOP_LABEL_STUDIO_VENV", ".venv-label-studio")).resolve()
    root = tmp_path_factory.mktemp("label-studio")
    info = start(venv, root / "data", free_port(), root / "label-studio.log")
    yield info
    stop_process(info.pid)


def worker_state(tmp_path, rabbitmq: bool = False):
    """(env, settings, sessions, store) for a test that drives real worker processes: the embedded broker
    under tmp_path, or this machine's RabbitMQ with Redis results. The database is migrated."""
    from editloop.db import make_engine, make_sessionmaker, upgrade
    from editloop.settings import Settings
    from editloop.store.local import LocalBlobStore

    broker, backend = (RABBITMQ_URL, REDIS_RESULTS_URL) if rabbitmq else ("", "")
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / "state"), "EDITLOOP_BROKER_URL": broker,
           "EDITLOOP_RESULT_BACKEND": backend, "EDITLOOP_DEVICE": "cpu"}
    settings = Settings(state_dir=tmp_path / "state", broker_url=broker, result_backend=backend, device="cpu")
    url = settings.resolved_database_url()
    upgrade(url)
    return env, settings, make_sessionmaker(make_engine(url)), LocalBlobStore(settings.resolved_blob_dir())


def wait_for_checkpoint(runs_dir: Path, pattern: str, timeout: float = 600) -> Path:
    """The first file matching runs_dir/<run>/`pattern` once a worker has written it (AssertionError at `timeout`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(runs_dir.glob(f"*/{pattern}")) if runs_dir.is_dir() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no worker wrote {runs_dir}/*/{pattern} within {timeout:.0f}s")


def stop_worker(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Warm shutdown (SIGTERM); a worker still busy after `timeout` is killed, so none outlives its test."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def start_worker(queues: str, name: str, env: dict | None = None) -> subprocess.Popen:
    """A real Celery worker (solo pool) on `queues`, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "trainers.celery_app", "worker", "-Q", queues, "--pool", "solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def purge(app) -> None:
    """Empty the app's queues on the shared broker (nothing left over from other tests); a connection the broker
    resets under a loaded machine is tried again."""
    for attempt in range(4):
        try:
            app.control.purge()
            return
        except OSError:
            if attempt == 3:
                raise
            time.sleep(2)


def promote_rewards(sessions, store, reward_dirs, kinds=("aesthetic", "alignment", "coherence")) -> None:
    """Register the test's untrained reward models (reward_dirs/<kind>, version "<kind>-test") and promote them:
    what feedback and DPO runs are gated with."""
    from editloop.registry import promote, register_candidate, store_model_dir

    for kind in kinds:
        with sessions.begin() as s:
            register_candidate(s, kind, kind, f"{kind}-test", store_model_dir(store, reward_dirs / kind),
                               {"eval_score": 0.5}, {}, None)
            promote(s, kind, f"{kind}-test")


def run_killed_once(env: dict, settings, queue: str, name: str, command: list[str]
                    ) -> tuple[int, str, str, int, Path]:
    """Run the CLI `command` (a `train ... --wait`) against a real worker on `queue`; SIGKILL that worker once the
    run has written its first checkpoint, start another, and wait for the command. Returns (exit status, stdout,
    stderr, the checkpoint's step when the worker was killed, the checkpoint's path); no worker outlives the call."""
    import torch

    first = start_worker(queue, name, env)
    cli = subprocess.Popen([sys.executable, "-m", "editloop.cli.main", *command], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        checkpoint = wait_for_checkpoint(settings.state_dir / "runs", "checkpoint.pt")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = torch.load(checkpoint, weights_only=False)["step"]
        second = start_worker(queue, name, env)
        stdout, stderr = cli.communicate(timeout=1200)
    finally:
        cli.kill()
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                stop_worker(worker)
    return cli.returncode, stdout, stderr, killed_at, checkpoint
