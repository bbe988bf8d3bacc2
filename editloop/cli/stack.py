"""`editloop up`: every service and a worker as child processes, one log view, clean shutdown."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from editloop.settings import Settings

DEFAULT_PORTS = {"generator": 50051, "editor": 50052}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if editloop itself dies: no orphans even after a SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    address: str | None = None


def _pump(child: Child, log_file, echo: bool) -> None:  # noqa: ANN001
    assert child.proc.stdout is not None
    for line in child.proc.stdout:
        if line.startswith("READY "):
            child.address = line.split()[-1]
            child.ready.set()
        if "ready." in line and child.name == "worker":
            child.ready.set()
        text = f"[{child.name:9}] {line}"
        log_file.write(text)
        log_file.flush()
        if echo and os.environ.get("EDITLOOP_QUIET_LOGS") != "1":
            sys.stdout.write(text)
            sys.stdout.flush()
    child.ready.set()


def stack_file(settings: Settings) -> Path:
    return settings.state_dir / "stack.json"


def service_address(settings: Settings, kind: str) -> str:
    """The running stack's address for `kind`, else the default port."""
    path = stack_file(settings)
    if path.is_file():
        data = json.loads(path.read_text())
        if kind in data:
            return data[kind]
    return f"127.0.0.1:{DEFAULT_PORTS[kind]}"


@contextmanager
def running_stack(settings: Settings, ports: dict[str, int] | None = None, worker: bool = True,
                  timeout: float = 180, echo: bool = True) -> Iterator[dict[str, str]]:
    """Start the stack, wait until every part is ready, yield addresses; stop everything on exit."""
    from editloop.db.session import upgrade

    ports = {**DEFAULT_PORTS, **(ports or {})}
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())  # once, before the children (they upgrade too, under a lock)
    log_path = settings.state_dir / "stack.log"
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(settings.state_dir.resolve())}
    py = sys.executable
    commands = {kind: [py, "-m", "editloop.cli.main", "serve", kind, "--port", str(ports[kind])]
                for kind in ("generator", "editor")}
    if worker:
        commands["worker"] = [py, "-m", "celery", "-A", "trainers.celery_app", "worker", "-Q", "gpu,cpu",
                              "--pool", "solo", "--loglevel", "INFO", "-n", "embedded@%h"]
    children: list[Child] = []
    with open(log_path, "a") as log_file:
        try:
            for name, cmd in commands.items():
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1, preexec_fn=_die_with_parent)
                child = Child(name, proc)
                threading.Thread(target=_pump, args=(child, log_file, echo), daemon=True).start()
                children.append(child)
            deadline = time.time() + timeout
            for child in children:
                if not child.ready.wait(max(deadline - time.time(), 0.1)) or child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} did not become ready; see {log_path}")
            addresses = {c.name: c.address for c in children if c.address}
            stack_file(settings).write_text(json.dumps(addresses))
            yield addresses
        finally:
            stack_file(settings).unlink(missing_ok=True)
            for child in children:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()


def run_up(settings: Settings) -> int:
    with running_stack(settings) as addresses:
        print(f"editloop is up: {json.dumps(addresses)} (logs: {settings.state_dir / 'stack.log'}); Ctrl-C stops it")
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
    print("stopped")
    return 0
