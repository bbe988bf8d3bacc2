"""`editloop up`: the whole platform as supervised child processes on one machine.

Parts: the generator, the editor (inpainting + instruction editing), one reward service per kind, a Celery
worker per queue (gpu, cpu), Celery beat, the annotation endpoint (webhooks + signed image links) and Label
Studio. Every part takes its port from a flag or a setting, 0 meaning any free port (chosen once at start
and kept across restarts). The stack table (every part's address, metrics port, state, pid and restarts)
is printed and kept in <state_dir>/stack.json, where every client command finds the running stack; a lock
on <state_dir>/stack.lock keeps a second stack off the same state.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from editloop.cli.supervisor import Part, Supervisor
from editloop.settings import Settings

REWARD_KINDS = ("aesthetic", "alignment", "coherence")
SERVICES = ("generator", "editor", *(f"reward-{k}" for k in REWARD_KINDS))
WORKERS = ("worker-gpu", "worker-cpu")
ALL_PARTS = (*SERVICES, *WORKERS, "beat", "annotation-web", "label-studio")
CORE_PARTS = ("generator", "editor", "worker-gpu", "worker-cpu")  # what the demo and quick tests need
_PORT_SETTING = {"generator": "generator_port", "editor": "editor_port", "reward-aesthetic": "aesthetic_port",
                 "reward-alignment": "alignment_port", "reward-coherence": "coherence_port",
                 "annotation-web": "annotation_web_port", "label-studio": "label_studio_port"}


class StackError(RuntimeError):
    """The stack cannot start: a port in use, a state dir held by another stack, a part that never came up."""


def stack_file(settings: Settings) -> Path:
    return settings.state_dir / "stack.json"


def read_stack(settings: Settings) -> dict | None:
    """The running stack's table, or None when no stack runs on this state dir."""
    path = stack_file(settings)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def configured_addresses(settings: Settings) -> dict[str, str]:
    """EDITLOOP_SERVICE_ADDRESSES as {part: host:port}; ValueError naming the entry that is not PART=HOST:PORT."""
    from editloop.addresses import parse_named_addresses

    items = [x.strip() for x in settings.service_addresses.split(",") if x.strip()]
    return parse_named_addresses(items, "EDITLOOP_SERVICE_ADDRESSES", SERVICES, "PART=HOST:PORT")


def service_address(settings: Settings, part: str) -> str:
    """The running stack's address of `part` (e.g. "generator", "reward-aesthetic"), else EDITLOOP_SERVICE_ADDRESSES',
    else its configured port on loopback."""
    stack = read_stack(settings)
    if stack and stack["parts"].get(part, {}).get("address"):
        return stack["parts"][part]["address"]
    return configured_addresses(settings).get(part) or f"127.0.0.1:{getattr(settings, _PORT_SETTING[part])}"


def stack_settings(settings: Settings) -> Settings:
    """`settings` as the running stack has them: the annotation endpoint's and Label Studio's ports it chose."""
    stack = read_stack(settings)
    if not stack:
        return settings
    update = {}
    for part, name in (("annotation-web", "annotation_web_port"), ("label-studio", "label_studio_port")):
        address = stack["parts"].get(part, {}).get("address")
        if address:
            update[name] = int(address.rsplit(":", 1)[1])
    return settings.model_copy(update=update)


# -- ports ---------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free now and not in `avoid` (ports already chosen for other parts of the same stack: the kernel may
    hand out a just-closed port again, and two parts on one port would restart each other forever)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise StackError(f"no free port on {host} apart from the {len(avoid)} already chosen")


def check_port(part: str, port: int, host: str = "127.0.0.1") -> None:
    """Raise StackError naming the part when `port` cannot be bound."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            setting = _PORT_SETTING.get(part, "metrics_port")
            raise StackError(f"port {port} for {part} on {host} is in use ({exc.strerror}); choose another with "
                             f"EDITLOOP_{setting.upper()} or `editloop up --port 0` (any free port)") from None


def plan_ports(settings: Settings, parts: tuple[str, ...], base: int | None = None,
               overrides: dict[str, int] | None = None, host: str = "127.0.0.1") -> dict[str, int]:
    """Every part's port: an override, else `base` (0: any free port; N: N, N+1, ... in part order), else its
    setting; 0 becomes a free port now. Ports asked for explicitly are checked free (StackError otherwise)."""
    ports: dict[str, int] = {}
    numbered = [p for p in parts if p in _PORT_SETTING]
    for i, part in enumerate(numbered):
        if overrides and part in overrides:
            port = overrides[part]
        elif base is not None:
            port = 0 if base == 0 else base + i
        else:
            port = getattr(settings, _PORT_SETTING[part])
        if port < 0 or port > 65535:
            raise StackError(f"port for {part} must be in 0..65535, got {port}")
        if port:
            check_port(part, port, host)
        ports[part] = port or free_port(host, set(ports.values()))
    return ports


def plan_metrics(settings: Settings, services: list[str], base: int | None, host: str = "127.0.0.1",
                 taken: Collection[int] = ()) -> dict[str, int]:
    first = settings.metrics_port if base is None else base
    out: dict[str, int] = {}
    for i, part in enumerate(services):
        port = first + i if first else free_port(host, {*taken, *out.values()})
        if first:
            check_port(f"{part} metrics", port, host)
        out[part] = port
    return out


# -- the parts -----------------------------------------------------------------------------------------
def _serve_command(part: str, port: int, metrics: int, host: str) -> list[str]:
    cmd = [sys.executable, "-m", "editloop.cli.main", "serve"]
    cmd += ["reward", "--kind", part.removeprefix("reward-")] if part.startswith("reward-") else [part]
    return [*cmd, "--host", host, "--port", str(port), "--metrics-port", str(metrics)]


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "trainers.celery_app", *args]


def build_parts(settings: Settings, names: tuple[str, ...], ports: dict[str, int], metrics: dict[str, int],
                host: str = "127.0.0.1", env_extra: dict[str, str] | None = None) -> list[Part]:
    state = settings.state_dir.resolve()
    env = {**os.environ, **(env_extra or {}), "EDITLOOP_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1",
           "EDITLOOP_ANNOTATION_WEB_PORT": str(ports.get("annotation-web", settings.annotation_web_port))}
    tag = f"{os.getpid()}"
    parts: list[Part] = []
    for name in names:
        if name in SERVICES:
            parts.append(Part(name, _serve_command(name, ports[name], metrics[name], host),
                              address=f"{host}:{ports[name]}", metrics_port=metrics[name], env=env,
                              ready_line=lambda line: line.startswith("READY ")))
        elif name in WORKERS:
            queue = name.removeprefix("worker-")
            parts.append(Part(name, _celery("worker", "-Q", queue, "--pool", "solo", "--loglevel", "INFO",
                                            "--without-gossip", "--without-mingle", "-n", f"{queue}-{tag}@%h"),
                              env=env, ready_line=lambda line: " ready." in line))
        elif name == "beat":
            parts.append(Part(name, _celery("beat", "--loglevel", "INFO", "-s", str(state / "celerybeat-schedule"),
                                            "--pidfile", str(state / "celerybeat.pid")),
                              env=env, ready_line=lambda line: "beat: Starting" in line))
        elif name == "annotation-web":
            parts.append(Part(name, [sys.executable, "-m", "annotation.web", "--host", host, "--port",
                                     str(ports[name])], address=f"{host}:{ports[name]}", env=env,
                              ready_line=lambda line: line.startswith("READY ")))
        elif name == "label-studio":
            parts.append(_label_studio_part(settings, ports[name]))
        else:
            raise StackError(f"unknown part {name!r}; parts are {', '.join(ALL_PARTS)}")
    return parts


def _label_studio_part(settings: Settings, port: int) -> Part:
    """Label Studio as a supervised part: healthy when /health answers; then its token is made (rotated when
    one exists) and <state_dir>/label-studio.json written for the annotation commands."""
    from annotation import server

    venv, data_dir = settings.label_studio_venv.resolve(), settings.state_dir.resolve() / "label-studio"
    password = server.admin_password(data_dir)
    url = f"http://127.0.0.1:{port}"

    def probe() -> bool:
        import requests

        return requests.get(f"{url}/health", timeout=2).status_code == 200

    def after_ready(part: Part) -> None:
        token = server.personal_access_token(url, server.ADMIN_EMAIL, password)
        server.LabelStudioInfo(url=url, token=token, pid=part.proc.pid, data_dir=str(data_dir),
                               admin_email=server.ADMIN_EMAIL, admin_password=password
                               ).save(server.info_path(settings))

    return Part("label-studio", server.start_command(venv, data_dir, port), address=f"127.0.0.1:{port}",
                env=server.server_env(data_dir, server.ADMIN_EMAIL, password), probe=probe,
                after_ready=after_ready, optional=True, start_timeout=settings.label_studio_start_timeout_s,
                stall_s=settings.label_studio_stall_s)


# -- the lock and the table ----------------------------------------------------------------------------
def hold_state_dir(settings: Settings) -> IO[str]:
    """Lock <state_dir>/stack.lock for this process; StackError naming the holder if another stack has it."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.state_dir / "stack.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StackError(f"state dir {settings.state_dir.resolve()} is held by another editloop stack (pid "
                         f"{holder}); stop it (Ctrl-C there) or give this one its own EDITLOOP_STATE_DIR") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def write_table(settings: Settings, parts: list[Part], started: float) -> None:
    table = {"pid": os.getpid(), "started_at": started, "state_dir": str(settings.state_dir.resolve()),
             "log": str((settings.state_dir / "stack.log").resolve()),
             "parts": {p.name: p.row() for p in parts}}
    path = stack_file(settings)
    tmp = path.with_name(f".stack.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)


def format_table(parts: list[Part]) -> str:
    lines = [f"{'part':18} {'state':10} {'address':22} {'metrics':8} restarts"]
    for p in parts:
        lines.append(f"{p.name:18} {p.state:10} {p.address or '-':22} {p.metrics_port or '-'!s:8} {p.restarts}"
                     + (f"  {p.note}" if p.note else ""))
    return "\n".join(lines)


def _status_line(waiting: list[Part], t0: float) -> None:
    if sys.stdout.isatty():
        names = ", ".join(p.name for p in waiting)
        sys.stdout.write(f"\r  starting ({time.monotonic() - t0:4.0f}s): waiting for {names}"[:150].ljust(150))
        sys.stdout.flush()


@contextmanager
def running_stack(settings: Settings, parts: tuple[str, ...] = CORE_PARTS, base_port: int | None = 0,
                  overrides: dict[str, int] | None = None, metrics_base: int | None = None, timeout: float = 600,
                  echo: bool = True, host: str = "127.0.0.1", env_extra: dict[str, str] | None = None
                  ) -> Iterator[dict[str, str]]:
    """Start `parts`, wait until each is ready, yield {part: address}; stop everything on exit. A part that dies
    meanwhile is restarted (with back-off) by the supervisor's thread."""
    from editloop.db.session import upgrade

    lock = hold_state_dir(settings)
    main_thread = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    sup: Supervisor | None = None
    try:
        _sigterm_unwinds()
        ports = plan_ports(settings, parts, base_port, overrides, host)
        metrics = plan_metrics(settings, [p for p in parts if p in SERVICES], metrics_base, host, ports.values())
        upgrade(settings.resolved_database_url())  # once, before the children (they upgrade too, under a lock)
        built = build_parts(settings, parts, ports, metrics, host, env_extra)
        started = time.time()
        sup = Supervisor(built, settings.state_dir / "stack.log", echo=echo,
                         backoff_max=settings.restart_backoff_max_s,
                         on_change=lambda: write_table(settings, built, started))
        sup.start()
        _wait(sup, settings, timeout)
        _Running.current = sup
        yield {p.name: p.address for p in built if p.address}
    finally:
        _Running.current = None
        if main_thread and sup is not None:  # a second Ctrl-C must not cut the stop short
            print("stopping every part ...", flush=True)
            for s in saved:
                signal.signal(s, signal.SIG_IGN)
        try:
            if sup is not None:
                sup.stop()
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
            stack_file(settings).unlink(missing_ok=True)
            lock.close()


def _sigterm_unwinds() -> None:
    """In the main thread, SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the stack is stopped by its
    `finally` and no part outlives the process (a worker in a task would only warm-stop on PDEATHSIG's SIGTERM)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # (running_stack restores it)
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _Running:
    current: Supervisor | None = None


def _wait(sup: Supervisor, settings: Settings, timeout: float) -> None:
    t0 = time.monotonic()
    required = [p for p in sup.parts if not p.optional]
    left = sup.wait_ready(timeout, lambda waiting: _status_line(waiting, t0))
    if sys.stdout.isatty():
        sys.stdout.write("\r" + " " * 150 + "\r")
    missing = [p for p in left if p in required]
    if missing:
        raise StackError(f"{', '.join(p.name for p in missing)} did not become ready within {timeout:.0f}s; see "
                         f"{settings.state_dir / 'stack.log'}")


def run_up(settings: Settings, parts: tuple[str, ...], base_port: int | None, overrides: dict[str, int],
           metrics_base: int | None, timeout: float, host: str) -> int:
    """`editloop up`: start, print the table, supervise until Ctrl-C / SIGTERM (also while starting), stop
    everything."""
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running_stack(settings, parts, base_port, overrides, metrics_base, timeout, echo=True, host=host):
            sup = _Running.current
            print(format_table(sup.parts), flush=True)
            print(f"editloop is up (table in {stack_file(settings)}, logs in {settings.state_dir / 'stack.log'}); "
                  f"`editloop status` shows it; Ctrl-C stops it", flush=True)
            while True:
                time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("stopped")
    return 0
