"""`editloop up` as the whole platform: every part ready, `status`, a killed child comes back, two stacks side by
side, clear refusals (a port in use, a state dir another stack holds), nothing left behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from editloop.cli.stack import ALL_PARTS, SERVICES

ROOT = Path(__file__).resolve().parents[1]


def platform_env(tmp_path: Path, tiny_models: Path, tiny_instruct: dict, name: str) -> dict[str, str]:
    return {**os.environ, "EDITLOOP_STATE_DIR": str(tmp_path / name), "EDITLOOP_DEVICE": "cpu",
            "EDITLOOP_GENERATOR_MODEL": str(tiny_models / "t2i"), "EDITLOOP_EDITOR_MODEL": str(tiny_models / "inpaint"),
            "EDITLOOP_INSTRUCT_MODEL": str(tiny_instruct["causal"]), "EDITLOOP_BROKER_URL": "",
            "EDITLOOP_RESULT_BACKEND": "", "EDITLOOP_RESTART_BACKOFF_MAX_S": "2",
            "EDITLOOP_LOOP_LABEL_SETS": "0",  # no candidate sets made at start here: the loop has its own tests
            "EDITLOOP_LABEL_STUDIO_VENV": os.environ.get("EDITLOOP_LABEL_STUDIO_VENV",
                                                         str(ROOT / ".venv-label-studio"))}


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editloop.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def start_up(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "up", *args], env=env, cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def table(env: dict[str, str]) -> dict:
    path = Path(env["EDITLOOP_STATE_DIR"]) / "stack.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_all_ready(env: dict[str, str], proc: subprocess.Popen, parts: tuple[str, ...], log: Path,
                   timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        rows = table(env).get("parts", {})
        if set(parts) <= set(rows) and all(rows[p]["state"] == "ready" for p in parts):
            return rows
        time.sleep(1)
    raise AssertionError(f"not ready in {timeout}s: {table(env)}\n{log.read_text()[-3000:]}")


def stop_up(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGTERM `editloop up`; returns its descendants as they were (to check that none outlives it)."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    return kids


def gone(procs: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)


def test_up_runs_every_part_restarts_a_killed_child_and_status_shows_it(tmp_path, tiny_models, tiny_instruct):
    env = platform_env(tmp_path, tiny_models, tiny_instruct, "stack")
    log = tmp_path / "up.log"
    proc = start_up(env, "--port", "0", log=log)
    try:
        rows = wait_all_ready(env, proc, ALL_PARTS, log)
        assert len({r["address"] for r in rows.values() if r["address"]}) == len(SERVICES) + 2  # all distinct
        report = json.loads(cli(env, "status", "--json").stdout)
        parts = report["stack"]["parts"]
        for name in SERVICES:  # the standard gRPC health check on every model service
            assert parts[name]["health"] == "SERVING", parts[name]
        assert parts["annotation-web"]["health"] == parts["label-studio"]["health"] == "SERVING"
        assert parts["worker-gpu"]["health"] == parts["beat"]["health"] == "running"
        for kind in ("aesthetic", "alignment", "coherence"):  # a fresh state serves the initial, untrained reward
            assert report["models"][kind]["served"] == "initial-untrained"
        assert report["models"]["t2i"]["served"] == report["models"]["t2i"]["promoted"]  # registered, promoted
        assert report["models"]["instruct"]["served"] == "tiny-causal" and report["models"]["editor"]["served"]
        assert set(report["queues"]) == {"gpu", "cpu"} and report["triggers"]["aesthetic"]["would_start"] is False
        assert "label-studio.json" in os.listdir(env["EDITLOOP_STATE_DIR"])  # the annotation commands find it
        text = cli(env, "status").stdout
        assert "reward-coherence" in text and "SERVING" in text and "would not start" in text

        before = table(env)["parts"]
        for name in ALL_PARTS:  # kill every child (its whole process group); each comes back at the same address
            os.killpg(before[name]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            now = table(env)["parts"]
            if all(now[n]["restarts"] == 1 and now[n]["state"] == "ready" for n in ALL_PARTS):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"not every part came back: {table(env)['parts']}")
        for name in ALL_PARTS:
            assert now[name]["address"] == before[name]["address"] and now[name]["pid"] != before[name]["pid"]
            assert now[name]["last_exit"] == -signal.SIGKILL
        assert f"{'generator':17}] " in log.read_text() and "restart #1" in log.read_text()
        assert cli(env, "status", "--json").returncode == 0
    finally:
        kids = stop_up(proc) if proc.poll() is None else []
    assert gone(kids)
    assert not (Path(env["EDITLOOP_STATE_DIR"]) / "stack.json").exists()


LIGHT = "generator,reward-coherence,worker-cpu,beat,annotation-web"


def test_two_stacks_side_by_side_and_clear_refusals(tmp_path, tiny_models, tiny_instruct):
    envs = [platform_env(tmp_path, tiny_models, tiny_instruct, f"stack{i}") for i in (1, 2)]
    logs = [tmp_path / f"up{i}.log" for i in (1, 2)]
    procs = [start_up(env, "--port", "0", "--only", LIGHT, log=log) for env, log in zip(envs, logs)]
    try:
        rows = [wait_all_ready(env, p, tuple(LIGHT.split(",")), log) for env, p, log in zip(envs, procs, logs)]
        assert rows[0]["generator"]["address"] != rows[1]["generator"]["address"]
        for env in envs:  # each client finds its own stack
            out = cli(env, "generate", "a small red circle at the center on a white background", "--steps", "2",
                      "--out", str(Path(env["EDITLOOP_STATE_DIR"]) / "g"))
            assert out.returncode == 0, out.stderr
        again = cli(envs[0], "up", "--port", "0", "--only", "generator")  # the same state dir: refused, named
        assert again.returncode == 2 and "is held by another editloop stack" in again.stderr
        assert envs[0]["EDITLOOP_STATE_DIR"] in again.stderr
    finally:
        kids = [k for p in procs if p.poll() is None for k in stop_up(p)]
    assert gone(kids)


def test_a_port_in_use_is_refused_naming_the_part(tmp_path, tiny_models, tiny_instruct):
    env = platform_env(tmp_path, tiny_models, tiny_instruct, "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli(env, "up", "--only", "generator,editor", "--part-port", f"editor={port}")
    assert out.returncode == 2
    assert f"port {port} for editor on 127.0.0.1 is in use" in out.stderr and "Traceback" not in out.stderr
    bad = cli(env, "up", "--only", "generator,tea-maker")
    assert bad.returncode == 2 and "unknown parts ['tea-maker']" in bad.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--train-size", "0", "`--train-size` must be >= 1, got 0"),
    ("--eval-every", "-5", "`--eval-every` must be >= 1, got -5"),
    ("--epochs", "0", "`--epochs` must be > 0 and <= 10000, got 0.0"),
    ("--epochs", "inf", "`--epochs` must be > 0 and <= 10000, got inf"),
])
def test_train_reward_takes_the_data_size_and_names_bad_values(tmp_path, flag, value, message):
    from editloop.cli.main import build_parser
    from editloop.cli.train import reward_config

    args = build_parser().parse_args(["train", "reward", "--kind", "alignment", "--steps", "30", "--train-size",
                                      "256", "--eval-size", "64"])
    assert reward_config(args) == {"auto_promote": True, "steps": 30, "alignment_train": 256, "alignment_eval": 64}
    bad = build_parser().parse_args(["train", "reward", "--kind", "coherence", flag, value])
    with pytest.raises(ValueError, match=message.replace("`", ".").replace("-", ".")):
        reward_config(bad)
    aesthetic = build_parser().parse_args(["train", "reward", "--kind", "aesthetic", "--train-size", "10"])
    with pytest.raises(ValueError, match="trains on the valid labels"):
        reward_config(aesthetic)
    sized = build_parser().parse_args(["train", "reward", "--kind", "aesthetic", "--epochs", "2.5"])
    assert reward_config(sized) == {"auto_promote": True, "epochs": 2.5}


def test_an_annotator_with_a_token_gets_a_fresh_one_and_the_old_one_stops_working(label_studio):
    import uuid

    import requests

    from annotation.server import personal_access_token, signup

    email, password = f"rotate-{uuid.uuid4().hex[:8]}@annotators.editloop.local", uuid.uuid4().hex
    signup(label_studio.url, email, password)  # not the admin: the session's token must stay valid for others
    first = personal_access_token(label_studio.url, email, password)
    second = personal_access_token(label_studio.url, email, password)
    assert first != second

    def works(token: str) -> bool:
        resp = requests.post(f"{label_studio.url}/api/token/refresh/", json={"refresh": token}, timeout=30)
        return resp.status_code == 200

    assert works(second) and not works(first)


def test_label_studio_start_gives_up_when_it_stalls_and_leaves_nothing_running(tmp_path):
    from annotation.server import LabelStudioError, wait_healthy

    log = tmp_path / "ls.log"
    log.write_text("starting\n")
    quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(LabelStudioError, match=r"wrote nothing to .* and did not answer .*/health for \d+s"):
            wait_healthy(f"http://127.0.0.1:{_closed_port()}", quiet, timeout=30, log_path=log, stall=2)
        with pytest.raises(LabelStudioError, match=r"did not answer .*/health within 1s"):
            wait_healthy(f"http://127.0.0.1:{_closed_port()}", quiet, timeout=1, log_path=None)
    finally:
        quiet.kill()
        quiet.wait()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
