"""Supervised child processes: start, wait until ready, restart with back-off when one dies, stop them all.

One `Supervisor` owns a set of `Part`s. Each part is a command line; it is ready when a line of its
output says so (`ready_line`) or when its probe answers (`probe`), after which `after_ready` may finish
its set-up (e.g. Label Studio's token). Children run in their own process groups (a part's own children
are stopped with it) and get SIGTERM if the supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG; every
child is started from the supervisor's main thread, whose exit that signal follows).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Own process group (stopped as one) and SIGTERM when the supervisor dies."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Part:
    """One supervised child. `ready_line(line)` returns True when a line of its output says it is ready;
    `probe()` is asked instead (about once a second) when given. `after_ready()` runs once per start."""

    name: str
    command: list[str]
    address: str = ""
    metrics_port: int | None = None
    env: dict[str, str] | None = None
    ready_line: Callable[[str], bool] | None = None
    probe: Callable[[], bool] | None = None
    after_ready: Callable[[Part], None] | None = None
    optional: bool = False  # the stack is up without it (Label Studio): a failed start is reported, not fatal
    start_timeout: float | None = None  # an optional part not ready this long after a start is given up
    stall_s: float | None = None  # ... and sooner when it printed nothing for this long while starting
    # state, owned by the supervisor
    proc: subprocess.Popen | None = None
    state: str = "stopped"  # starting | ready | restarting | failed | stopped
    restarts: int = 0
    started_at: float = 0.0
    last_output: float = 0.0
    last_exit: int | None = None
    note: str = ""
    _ready: threading.Event = field(default_factory=threading.Event)
    _failures_in_a_row: int = 0
    _restart_at: float | None = None

    def row(self) -> dict[str, object]:
        """This part as a row of the stack table."""
        return {"address": self.address, "metrics_port": self.metrics_port, "state": self.state,
                "pid": self.proc.pid if self.proc and self.proc.poll() is None else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "note": self.note}


class Supervisor:
    """Runs `parts` until `stop()`; `on_change()` is called (from the main thread or a pump thread) whenever a
    part's state changes, e.g. to rewrite the stack table."""

    def __init__(self, parts: list[Part], log_path: Path, echo: bool = True, backoff_max: float = 30.0,
                 stable_s: float = 60.0, on_change: Callable[[], None] | None = None) -> None:
        self.parts = parts
        self.log_path = log_path
        self.echo = echo and os.environ.get("EDITLOOP_QUIET_LOGS") != "1"
        self.backoff_max, self.stable_s = backoff_max, stable_s
        self.on_change = on_change or (lambda: None)
        self.stopping = False
        self._grace = 20.0
        self._log: IO[str] = open(log_path, "a", buffering=1)
        self._lock = threading.Lock()

    # -- logging -------------------------------------------------------------------------------------
    def say(self, name: str, text: str) -> None:
        line = f"[{name:17}] {text.rstrip()}\n"
        with self._lock:
            if self._log.closed:
                return
            self._log.write(line)
            if self.echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    # -- one child -----------------------------------------------------------------------------------
    def _spawn(self, part: Part) -> None:
        part._ready.clear()
        part.state, part.started_at, part.note = "starting", time.monotonic(), ""
        part.last_output = part.started_at
        part.proc = subprocess.Popen(part.command, env=part.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1, errors="replace",
                                     preexec_fn=_child_setup)
        threading.Thread(target=self._pump, args=(part, part.proc), daemon=True, name=f"pump-{part.name}").start()
        if part.probe is not None:
            threading.Thread(target=self._probe, args=(part, part.proc), daemon=True,
                             name=f"probe-{part.name}").start()
        self.on_change()

    def _became_ready(self, part: Part, proc: subprocess.Popen) -> None:
        if part.after_ready is not None:
            try:
                part.after_ready(part)
            except Exception as exc:  # reported; the supervisor restarts the part
                part.note = f"set-up after start failed: {exc}"
                self.say("supervisor", f"{part.name}: {part.note}; stopping it for a restart")
                _signal_group(proc, signal.SIGTERM)
                return
        if proc is part.proc and proc.poll() is None:
            part.state = "ready"
            part._ready.set()
            self.say("supervisor", f"{part.name} is ready" + (f" at {part.address}" if part.address else ""))
            self.on_change()

    def _pump(self, part: Part, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            part.last_output = time.monotonic()
            self.say(part.name, line)
            if line.startswith("METRICS ") and line.split()[-1].rpartition(":")[2].isdigit():
                part.metrics_port = int(line.split()[-1].rpartition(":")[2])  # the port it really bound
            if part.ready_line is not None and not part._ready.is_set() and part.ready_line(line):
                threading.Thread(target=self._became_ready, args=(part, proc), daemon=True).start()

    def _probe(self, part: Part, proc: subprocess.Popen) -> None:
        while proc.poll() is None and not self.stopping and proc is part.proc:
            try:
                if part.probe():
                    self._became_ready(part, proc)
                    return
            except Exception:  # not up yet
                pass
            time.sleep(1.0)

    # -- the whole -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every part and supervise them from one thread until `stop()`: the thread that starts a child
        is the one whose end PR_SET_PDEATHSIG follows, so it lives exactly as long as the children."""
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="supervisor", daemon=True)
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        try:
            for part in self.parts:
                self._spawn(part)
        finally:
            started.set()
        while not self.stopping:
            try:
                self.poll()
            except Exception as exc:  # the supervisor must outlive any one part's trouble
                self.say("supervisor", f"supervision error: {exc}")
            time.sleep(0.25)
        self._terminate(self._grace)

    def wait_ready(self, timeout: float, tick: Callable[[list[Part]], None] | None = None) -> list[Part]:
        """Wait until every part is ready (restarts included); returns the parts still not ready at `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = [p for p in self.parts if p.state != "ready" and not (p.optional and p.state == "failed")]
            if not waiting:
                return []
            if tick is not None:
                tick(waiting)
            time.sleep(0.5)
        return [p for p in self.parts if p.state != "ready"]

    def _give_up_start(self, part: Part, now: float) -> bool:
        """An optional part that is not ready within its limits is stopped and left failed (not restarted)."""
        if part.state != "starting" or not part.optional:
            return False
        waited, quiet = now - part.started_at, now - part.last_output
        if part.start_timeout is not None and waited > part.start_timeout:
            why = f"not ready {waited:.0f}s after its start (limit {part.start_timeout:.0f}s)"
        elif part.stall_s is not None and quiet > part.stall_s:
            why = f"printed nothing and was not ready for {quiet:.0f}s while starting (limit {part.stall_s:.0f}s)"
        else:
            return False
        part.state, part.note = "failed", why
        self.say("supervisor", f"{part.name}: {why}; stopped, the rest of the stack runs without it")
        _signal_group(part.proc, signal.SIGTERM)
        try:
            part.proc.wait(10)
        except subprocess.TimeoutExpired:
            _signal_group(part.proc, signal.SIGKILL)
            part.proc.wait()
        self.on_change()
        return True

    def poll(self) -> None:
        """Notice children that died and restart them when their back-off has passed (the supervisor thread)."""
        now = time.monotonic()
        for part in self.parts:
            if part.proc is None or self.stopping or part.state == "failed" or self._give_up_start(part, now):
                continue
            code = part.proc.poll()
            if code is not None and part._restart_at is None:
                part.last_exit, part._ready = code, threading.Event()
                lived = now - part.started_at
                part._failures_in_a_row = 1 if lived > self.stable_s else part._failures_in_a_row + 1
                delay = min(self.backoff_max, 2.0 ** (part._failures_in_a_row - 1))
                part._restart_at, part.state = now + delay, "restarting"
                self.say("supervisor", f"{part.name} exited with code {code} after {lived:.0f}s; "
                                       f"restart #{part.restarts + 1} in {delay:.0f}s")
                self.on_change()
            elif part._restart_at is not None and now >= part._restart_at:
                part._restart_at = None
                part.restarts += 1
                self._spawn(part)

    def stop(self, grace: float = 20.0) -> None:
        """Stop supervising; SIGTERM every child's group, SIGKILL what is left after `grace` seconds."""
        self._grace = grace
        self.stopping = True
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join()
        self._log.close()

    def _terminate(self, grace: float) -> None:
        running = [p for p in self.parts if p.proc is not None and p.proc.poll() is None]
        for part in running:
            _signal_group(part.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for part in running:
            try:
                part.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.say("supervisor", f"{part.name} did not stop within {grace:.0f}s; killing it")
                _signal_group(part.proc, signal.SIGKILL)
                part.proc.wait()
            _signal_group(part.proc, signal.SIGKILL)  # anything its group left behind
        for part in self.parts:
            part.state = "stopped"
        self.on_change()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
