"""Faults (issue 33, item 6), each through the real part that fails.

The database restarted under a running service: a private PostgreSQL cluster (initdb, pg_ctl) is stopped and
started again while the generator records its results; the requests in between answer UNAVAILABLE naming the
database and record nothing, the service stays up, and once it is back recording works again.

The disk under a training run fills up while it writes a checkpoint: a real small filesystem (tmpfs of 20 MiB,
mounted for the test) holds the run directories and the blob store; the database lives elsewhere. A reward run
fills it at its second checkpoint: the run fails with the cause in its row, the failed write leaves no temporary
file and the previous checkpoint intact, and once there is room again the same run resumes from that checkpoint
and registers exactly one version.
"""

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest
import torch
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun
from editloop.settings import Settings
from editloop.state import open_state
from trainers.reward.run import RewardTrainConfig, train_reward


class PrivatePostgres:
    """A PostgreSQL cluster of its own (trust auth, loopback, a free port), run as the postgres user."""

    def __init__(self) -> None:
        from conftest import free_port

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if os.geteuid() != 0 or not bins or shutil.which("runuser") is None:
            pytest.skip("needs root, runuser and Debian's PostgreSQL binaries to run a private cluster")
        self.bin = Path(bins[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="editloop-pg-", dir="/tmp"))  # reachable by the postgres user
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(self.bin / "initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._as_postgres(self.bin / "pg_ctl", "-D", self.dir / "data", "-o", opts, "-l", self.dir / "log", "-w",
                          "start")

    def stop(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres():
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(pg.bin / "pg_ctl"), "-D", str(pg.dir / "data"),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(pg.dir, ignore_errors=True)


def test_postgres_restarted_under_a_running_service(tmp_path, tiny_models, private_postgres):
    from sqlalchemy import func

    from editloop.db import Generation
    from services.app import start_service
    from services.gen.editloop.v1 import common_pb2, generator_pb2, generator_pb2_grpc

    settings = Settings(state_dir=tmp_path / "state", database_url=private_postgres.url)

    def request(record: bool):
        return generator_pb2.GenerateRequest(prompt="a small red circle at the center on a white background",
                                             record=record, params=common_pb2.SamplingParams(steps=2, seed=1))

    async def go():
        running = await start_service("generator", settings, tiny_models / "t2i")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = generator_pb2_grpc.GeneratorStub(ch)
                first = await stub.Generate(request(True))
                await asyncio.to_thread(private_postgres.stop)
                with pytest.raises(grpc.aio.AioRpcError) as down:
                    await stub.Generate(request(True))
                unrecorded = await stub.Generate(request(False))  # the service itself stays up
                await asyncio.to_thread(private_postgres.start)
                again = await stub.Generate(request(True))
                return first, down.value, unrecorded, again
        finally:
            await running.stop(0)

    first, down, unrecorded, again = asyncio.run(go())
    assert down.code() == grpc.StatusCode.UNAVAILABLE
    assert down.details().startswith("the database cannot be reached to record the result (OperationalError); "
                                     "nothing was recorded"), down.details()
    assert "postgres" not in down.details()  # no address or credentials of the database
    assert len(unrecorded.images) == 1 and first.generation_id and again.generation_id
    sessions, _ = open_state(settings)
    with sessions() as s:
        ids = set(s.scalars(select(Generation.id)))
        assert ids == {first.generation_id, again.generation_id}  # nothing half-recorded in between
        assert s.scalar(select(func.count()).select_from(Generation)) == 2


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run_fails_it_by_name_keeps_the_last_checkpoint_and_the_rerun_resumes(tmp_path, small_disk):
    settings = Settings(state_dir=small_disk / "state", blob_dir=small_disk / "blobs",
                        database_url=f"sqlite:///{tmp_path / 'editloop.db'}", broker_url="", result_backend="")
    sessions, store = open_state(settings)
    cfg = RewardTrainConfig(steps=40, eval_every=10, batch_size=16, alignment_train=200, alignment_eval=100,
                            auto_promote=False)
    run_id = uuid.uuid4().hex
    # the checkpoint (11 MB) and best model (3.6 MB) of step 10 fit; step 20's new files do not
    with pytest.raises(OSError, match="No space left on device"):
        train_reward("alignment", run_id, sessions, store, settings, cfg)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == "failed" and "No space left on device" in run.error, run.error
    run_dir = settings.state_dir / "runs" / run_id
    assert not list(run_dir.glob("*.tmp")) and not list((small_disk / "blobs").rglob(".tmp-*"))
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # intact, where the run got to
    assert saved["state"]["step"] == 10

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # room again
    out = train_reward("alignment", run_id, sessions, store, settings, cfg)
    assert out["metrics"]["steps_done"] == 40
    assert [h["step"] for h in out["history"]] == [10, 20, 30, 40]  # step 10 from the checkpoint, then on
    with sessions() as s:
        assert s.get(TrainingRun, run_id).status == "succeeded"
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "alignment")).all()
        assert [v.version for v in versions] == [f"alignment-{run_id[:12]}"]


def test_the_broker_restarted_mid_round_loses_and_doubles_nothing(tmp_path):
    """RabbitMQ (the machine's) stops and starts while a real worker trains a reward run it took from it: the
    worker reconnects, the run ends succeeded with exactly one registered version, and nothing runs twice into
    a second version (acks_late redelivery meets an idempotent run)."""
    import time

    from conftest import start_worker, stop_worker

    from editloop.cli.train import enqueue_reward_run

    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        pytest.skip("needs root and rabbitmqctl to restart the machine's RabbitMQ")
    vhost = f"editloop-test-{uuid.uuid4().hex[:8]}"  # queues of its own: no other test's message, none left over
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=120)
    subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=120)
    settings = Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'editloop.db'}",
                        broker_url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                        result_backend="redis://127.0.0.1:6379/7")
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(settings.state_dir), "EDITLOOP_DATABASE_URL": settings.database_url,
           "EDITLOOP_BROKER_URL": settings.broker_url, "EDITLOOP_RESULT_BACKEND": settings.result_backend,
           "EDITLOOP_DEVICE": "cpu"}
    sessions, _ = open_state(settings)
    worker = start_worker("gpu", "broker-restart", env)
    try:
        config = {"steps": 80, "eval_every": 40, "batch_size": 16, "alignment_train": 300, "alignment_eval": 100,
                  "auto_promote": False}
        run_id = enqueue_reward_run(settings, "alignment", config, "test: broker restart")

        def run_row():
            with sessions() as s:
                return s.get(TrainingRun, run_id)

        deadline = time.monotonic() + 300
        while (row := run_row()).status != "running" or row.progress < 0.1:
            assert time.monotonic() < deadline and row.status != "failed", (row.status, row.error)
            time.sleep(0.5)
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
        time.sleep(3)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 600
        while (row := run_row()).status != "succeeded":
            assert time.monotonic() < deadline and row.status != "failed", (row.status, row.error)
            assert worker.poll() is None, "the worker died with the broker"
            time.sleep(1)
        assert row.outputs["metrics"]["steps_done"] == 80
        time.sleep(5)  # a redelivered message, if any, runs now: it must find the run done
        with sessions() as s:
            versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "alignment")).all()
            assert [v.version for v in versions] == [f"alignment-{run_id[:12]}"]
            assert s.get(TrainingRun, run_id).status == "succeeded"
    finally:
        subprocess.run([*ctl, "start_app"], capture_output=True, timeout=120)
        stop_worker(worker)
        subprocess.run([*ctl, "delete_vhost", vhost], capture_output=True, timeout=120)
