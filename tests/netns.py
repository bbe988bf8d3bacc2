"""Hosts for multi-host tests: Linux network namespaces on one bridge (needs root and iproute2).

Each host has its own network stack and address (10.<a>.<b>.<n>/24); this machine's root namespace reaches them all
through the bridge's address (.254). Processes started on a host run inside its namespace; `kill` ends every one
of them at once (SIGKILL), as a host that loses power would. Everything is removed on `close`.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


class Hosts:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("multi-host tests make network namespaces: run them as root")
        self.tag = f"{random.randrange(16**4):04x}"
        self.prefix = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.bridge = f"elbr{self.tag}"
        self.addresses: dict[str, str] = {}
        self.procs: dict[str, list[subprocess.Popen]] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def ns(self, name: str) -> str:
        return f"el{self.tag}-{name}"

    def add(self, name: str) -> str:
        """A new host; returns its address."""
        index = len(self.addresses) + 1
        ns, outside, inside = self.ns(name), f"el{self.tag}v{index}", f"el{self.tag}p{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge, "up")
        address = f"{self.prefix}.{index}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.addresses[name] = address
        self.procs[name] = []
        return address

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Run `cmd` on host `name`, its output appended to `log`."""
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name].append(proc)
        return proc

    def pids(self, name: str) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.ns(name)], capture_output=True, text=True, timeout=30)
        return [int(p) for p in done.stdout.split()]

    def kill(self, name: str) -> None:
        """Every process on host `name` SIGKILLed at once; returns when none is left."""
        deadline = time.time() + 30
        while (pids := self.pids(name)) and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for proc in self.procs[name]:
            proc.wait(timeout=30)
        if self.pids(name):
            raise RuntimeError(f"host {name} still runs {self.pids(name)} after SIGKILL")

    def close(self) -> None:
        for name in list(self.addresses):
            try:
                self.kill(name)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)


def wait_for_port(address: str, port: int, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((address, port), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{what} did not listen on {address}:{port} within {timeout:.0f}s")
