"""Four hosts on one machine (network namespaces, tests/netns.py): PostgreSQL, the broker (Redis) and the S3 server
(moto) on `data`, a worker on each of `w1` and `w2` (each its own state dir: nothing shared but the network), beat
and a reward service on `svc`. The host that took a reward training run is killed (every process, SIGKILL) after
its first mirrored checkpoint: the reaper re-queues the run, the other host restores the checkpoint from S3 and
finishes it; one version results, no label or checkpoint is lost, and the service answers throughout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from netns import Hosts, wait_for_port
from sqlalchemy import func, select
from test_reward_training import labelled

from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.db.models import ModelVersion, Preference, RunFile, TrainingRun
from editloop.settings import Settings
from editloop.store.base import open_store

PG_BIN = Path("/usr/lib/postgresql") / (sorted(os.listdir("/usr/lib/postgresql"))[-1] if Path(
    "/usr/lib/postgresql").is_dir() else "none") / "bin"
STEPS, EVAL_EVERY = 48, 6
RESTORED = re.compile(r"restored .*checkpoint\.pt.* from the blob store")


@pytest.fixture
def hosts():
    h = Hosts()
    try:
        yield h
    finally:
        h.close()


def start_postgres(hosts: Hosts, data_dir: Path, log: Path) -> str:
    """A PostgreSQL of its own on host `data`, trusting the hosts' subnet; returns its URL."""
    subprocess.run(["chown", "postgres", str(data_dir)], check=True)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data_dir / "db"), "-A",
                    "trust", "-U", "postgres", "--no-sync"], check=True, capture_output=True, timeout=120)
    with open(data_dir / "db" / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {hosts.prefix}.0/24 trust\n")
    address = hosts.addresses["data"]
    hosts.start("data", ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data_dir / "db"),
                         "-h", address, "-p", "5432", "-k", str(data_dir), "-c", "fsync=off"], dict(os.environ), log)
    wait_for_port(address, 5432, "PostgreSQL")
    return f"postgresql+psycopg2://postgres@{address}:5432/postgres"


def probe_service(address: str, stop: threading.Event, failures: list[str], answered: list[float]) -> None:
    """gRPC health of the reward service every 0.2 s until `stop`; every failure is recorded."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    failures.append(f"status {status}")
                answered.append(time.time())
            except grpc.RpcError as exc:
                failures.append(exc.code().name)
            stop.wait(0.2)


def busy_host(states: dict[str, Path], sessions, timeout: float = 600) -> tuple[str, str]:
    """(host, run id) once a worker's checkpoint of the run is mirrored into the store."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for host, state in states.items():
            for ckpt in (state / "runs").glob("*/checkpoint.pt") if (state / "runs").is_dir() else []:
                run_id = ckpt.parent.name
                with sessions() as s:
                    if s.get(RunFile, (run_id, "checkpoint.pt")) is not None:
                        return host, run_id
        time.sleep(0.2)
    raise AssertionError(f"no worker checkpointed a run within {timeout:.0f}s")


def mirrored_files(sessions, run_id: str, wanted: set[str], timeout: float = 60) -> dict[str, str]:
    """The run's mirrored files once `wanted` are all named (or the timeout passes): the run is marked succeeded
    inside its task, and the task's last push (history.json, written just before the gate) follows on its way out."""
    deadline = time.time() + timeout
    while True:
        with sessions() as s:
            files = {f.name: f.key for f in s.scalars(select(RunFile).where(RunFile.run_id == run_id))}
        if wanted <= set(files) or time.time() > deadline:
            return files
        time.sleep(0.5)


def test_a_worker_host_dies_mid_run_and_the_other_finishes_it_from_the_mirrored_checkpoint(hosts, tmp_path):
    for name in ("data", "w1", "w2", "svc"):
        hosts.add(name)
    data = hosts.addresses["data"]
    scratch = Path(tempfile.mkdtemp(prefix="editloop-multihost-"))
    scratch.chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        db_url = start_postgres(hosts, scratch, logs / "postgres.log")
        hosts.start("data", ["redis-server", "--bind", data, "--port", "6379", "--save", "", "--appendonly", "no",
                             "--requirepass", "multihost"],
                    dict(os.environ), logs / "redis.log")
        hosts.start("data", [str(Path(sys.executable).with_name("moto_server")), "-H", data, "-p", "9000"],
                    dict(os.environ), logs / "s3.log")
        wait_for_port(data, 6379, "Redis")
        wait_for_port(data, 9000, "the S3 server")

        common = {"EDITLOOP_DATABASE_URL": db_url, "EDITLOOP_BROKER_URL": f"redis://:multihost@{data}:6379/0",
                  "EDITLOOP_RESULT_BACKEND": f"redis://:multihost@{data}:6379/1", "EDITLOOP_BLOB_BACKEND": "s3",
                  "EDITLOOP_S3_ENDPOINT": f"{data}:9000", "EDITLOOP_S3_ACCESS_KEY": "testing",
                  "EDITLOOP_S3_SECRET_KEY": "testing", "EDITLOOP_S3_BUCKET": "editloop", "EDITLOOP_DEVICE": "cpu",
                  "EDITLOOP_RUN_HEARTBEAT_S": "1", "EDITLOOP_RUN_STALE_S": "8", "EDITLOOP_RUN_REAP_INTERVAL_S": "2",
                  "EDITLOOP_RUN_MIRROR_S": "1", "EDITLOOP_PROMOTION_FLOOR_ALPHA": "1",
                  "EDITLOOP_LOOP_ENABLED": "false", "EDITLOOP_TRIGGER_INTERVAL_S": "3600"}

        def env(host: str) -> dict[str, str]:
            return {**os.environ, **common, "EDITLOOP_STATE_DIR": str(tmp_path / host / "state")}

        settings = Settings(**{k.removeprefix("EDITLOOP_").lower(): v for k, v in env("root").items()
                               if k.startswith("EDITLOOP_")})
        upgrade(db_url)
        sessions, store = make_sessionmaker(make_engine(db_url)), open_store(settings)
        labelled((settings, sessions, store), n_sets=40, seed=7)
        with sessions() as s:
            labels_before = s.scalar(select(func.count()).select_from(Preference))

        for w in ("w1", "w2"):
            hosts.start(w, [sys.executable, "-m", "celery", "-A", "trainers.celery_app", "worker", "-Q", "gpu,cpu",
                            "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                            "-n", f"{w}@%h"], env(w), logs / f"{w}.log")
        hosts.start("svc", [sys.executable, "-m", "celery", "-A", "trainers.celery_app", "beat", "--loglevel",
                            "INFO", "-s", str(tmp_path / "beat-schedule")], env("svc"), logs / "beat.log")
        reward_dir = tmp_path / "reward"
        subprocess.run([sys.executable, "-m", "editloop.cli.main", "models", "init-reward", "--kind", "aesthetic",
                        "--out", str(reward_dir)], check=True, env=env("root"), capture_output=True, timeout=300)
        svc = hosts.addresses["svc"]
        hosts.start("svc", [sys.executable, "-m", "editloop.cli.main", "serve", "reward", "--kind", "aesthetic",
                            "--model", str(reward_dir), "--host", svc, "--port", "50053", "--insecure-public"],
                    env("svc"), logs / "reward.log")
        wait_for_port(svc, 50053, "the reward service", timeout=300)
        stop, failures, answered = threading.Event(), [], []
        prober = threading.Thread(target=probe_service, args=(f"{svc}:50053", stop, failures, answered))
        prober.start()

        enqueue = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "reward", "--kind",
                                  "aesthetic", "--steps", str(STEPS), "--batch-size", "16", "--eval-every",
                                  str(EVAL_EVERY)], env=env("root"), capture_output=True, text=True, timeout=120)
        assert enqueue.returncode == 0, enqueue.stdout + enqueue.stderr
        states = {w: tmp_path / w / "state" for w in ("w1", "w2")}
        victim, run_id = busy_host(states, sessions)
        survivor = "w2" if victim == "w1" else "w1"
        killed_at = time.time()
        hosts.kill(victim)

        deadline, resumed_at = time.time() + 900, None
        while time.time() < deadline:
            with sessions() as s:
                run = s.get(TrainingRun, run_id)
                if run.status in ("succeeded", "failed"):
                    break
            if resumed_at is None and RESTORED.search((logs / f"{survivor}.log").read_text()):
                resumed_at = time.time()
            time.sleep(0.5)
        done_at = time.time()
        stop.set()
        prober.join(timeout=30)

        survivor_log = (logs / f"{survivor}.log").read_text()
        assert run.status == "succeeded", f"{run.status}: {run.error}\n{survivor_log[-3000:]}"
        assert run.inputs.get("requeues") == 1, run.inputs
        assert RESTORED.search(survivor_log), "the survivor did not resume from the mirrored checkpoint"
        resumed_ckpt = torch.load(states[survivor] / "runs" / run_id / "checkpoint.pt", weights_only=False)
        metrics = run.outputs["metrics"]  # the run ends at STEPS, or early when its choosing score stops improving
        assert resumed_ckpt["state"]["step"] == metrics["steps_done"], metrics
        assert metrics["steps_done"] == STEPS or metrics["stopped_early"], metrics
        with sessions() as s:
            versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "aesthetic")).all()
            assert [v.version for v in versions] == [run.outputs["version"]]
            assert s.scalar(select(func.count()).select_from(Preference)) == labels_before
        files = mirrored_files(sessions, run_id, {"checkpoint.pt", "best.pt", "history.json"})
        assert {"checkpoint.pt", "best.pt", "history.json"} <= set(files)
        assert all(store.exists(key) for key in files.values())
        assert not failures, f"the reward service failed {len(failures)} probes: {failures[:5]}"
        assert answered and max(answered) > done_at - 5, "the service stopped answering"
        recovery = {"kill_to_resume_s": round(resumed_at - killed_at, 1) if resumed_at else None,
                    "kill_to_done_s": round(done_at - killed_at, 1), "probes": len(answered),
                    "stale_s": 8, "reap_interval_s": 2}
        print("RECOVERY " + json.dumps(recovery))
    finally:
        hosts.close()
        shutil.rmtree(scratch, ignore_errors=True)
