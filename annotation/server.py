"""Label Studio's lifecycle: install into its own virtualenv, start on loopback, bootstrap a token, stop.

Label Studio pins its own Django stack, so it never shares editloop's environment: it lives in
`settings.label_studio_venv` (created on first use) and runs as a child process with its data
under `<state_dir>/label-studio`. The API token is a personal access token (a JWT refresh token,
`Authorization: Bearer` after the SDK exchanges it): legacy tokens are off by default for new
organizations since Label Studio 1.17, and personal access tokens can be revoked and expire.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from editloop.settings import Settings

LABEL_STUDIO_VERSION = "1.23.2"
ADMIN_EMAIL = "admin@editloop.local"


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed, started or reached."""


@dataclass(frozen=True)
class LabelStudioInfo:
    """What a client needs to reach a running Label Studio (kept in <state_dir>/label-studio.json)."""

    url: str
    token: str
    pid: int
    data_dir: str
    admin_email: str
    admin_password: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)  # holds the admin password and token
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabelStudioInfo:
        if not path.is_file():
            raise LabelStudioError(f"Label Studio is not up (no {path}); run `editloop annotation up`")
        return cls(**json.loads(path.read_text()))


def info_path(settings: Settings) -> Path:
    return settings.state_dir / "label-studio.json"


def label_studio_info(settings: Settings) -> LabelStudioInfo:
    """How to reach Label Studio: the external one the settings name (EDITLOOP_LABEL_STUDIO_URL and _TOKEN), else
    the one this state dir's `editloop up` / `annotation up` started."""
    if not settings.label_studio_url:
        return LabelStudioInfo.load(info_path(settings))
    token = settings.label_studio_token.get_secret_value()
    if not token:
        raise LabelStudioError("EDITLOOP_LABEL_STUDIO_URL is set but EDITLOOP_LABEL_STUDIO_TOKEN is empty: give the "
                               "personal access token of a Label Studio user (Account & Settings -> Personal Access "
                               "Token)")
    return LabelStudioInfo(url=settings.label_studio_url.rstrip("/"), token=token, pid=0, data_dir="",
                           admin_email="", admin_password="")


def executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def ensure_installed(venv: Path, version: str = LABEL_STUDIO_VERSION) -> Path:
    """Create the virtualenv and install Label Studio into it if it is not there; returns the executable."""
    exe = executable(venv)
    if exe.is_file():
        return exe
    print(f"installing label-studio=={version} into {venv} (once; a few minutes)", flush=True)
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    result = subprocess.run([*pip, f"label-studio=={version}"], capture_output=True, text=True)
    if result.returncode != 0 or not exe.is_file():
        raise LabelStudioError(f"installing label-studio into {venv} failed:\n{result.stderr[-3000:]}")
    return exe


def server_env(data_dir: Path, email: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LABEL_STUDIO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": email,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",  # simulated annotators sign up like people
        # The webhook receiver and the image endpoint are editloop processes on loopback; Label Studio's
        # SSRF guard refuses local addresses by default. Everything here listens on 127.0.0.1 only.
        "SSRF_PROTECTION_ENABLED": "false",
        "WEBHOOK_TIMEOUT": "5",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **TELEMETRY_OFF,
    })
    return env


# Label Studio reaches outside when it starts and runs (usage analytics, error reports, the newest-version
# check on the package index); editloop's runs on loopback and asks for none of it.
TELEMETRY_OFF = {
    "COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "SENTRY_RATE": "0",
    "LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "VERSIONS_CHECK_TIME": "0",
}


def start_command(venv: Path, data_dir: Path, port: int) -> list[str]:
    """The command line that starts Label Studio on 127.0.0.1:port (credentials go by environment)."""
    return [str(executable(venv)), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)]


def admin_password(data_dir: Path) -> str:
    """The admin's password, made once and kept (mode 600) in the data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password_file = data_dir / "editloop-admin-password"
    if not password_file.is_file():
        password_file.write_text(secrets.token_hex(16))
        password_file.chmod(0o600)
    return password_file.read_text().strip()


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 900,
                 log_path: Path | None = None, stall: float = 180, tick: Callable[[float], None] | None = None
                 ) -> None:
    """Wait for `url`/health while Label Studio makes progress: give up after `timeout` seconds, or sooner when
    its log (`log_path`) has not grown for `stall` seconds, or when it exits. `tick(elapsed)` about once a second."""
    t0 = time.monotonic()
    last_size, last_growth = -1, t0
    while True:
        now = time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with code {proc.returncode} while starting"
                                   + (f"; see {log_path}" if log_path else ""))
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        size = log_path.stat().st_size if log_path is not None and log_path.is_file() else 0
        if size != last_size:
            last_size, last_growth = size, now
        if now - t0 > timeout:
            where = f"; see {log_path}" if log_path else ""
            raise LabelStudioError(f"Label Studio did not answer {url}/health within {timeout:.0f}s "
                                   f"(EDITLOOP_LABEL_STUDIO_START_TIMEOUT_S){where}")
        if log_path is not None and now - last_growth > stall:
            raise LabelStudioError(f"Label Studio wrote nothing to {log_path} and did not answer {url}/health for "
                                   f"{now - last_growth:.0f}s (EDITLOOP_LABEL_STUDIO_STALL_S)")
        if tick is not None:
            tick(now - t0)
        time.sleep(1)


def login_session(url: str, email: str, password: str) -> requests.Session:
    """A browser-like session: GET the login form for the CSRF cookie, POST the credentials."""
    session = requests.Session()
    session.get(f"{url}/user/login/", timeout=30)
    csrf = session.cookies.get("csrftoken", "")
    resp = session.post(f"{url}/user/login/", data={"email": email, "password": password,
                                                    "csrfmiddlewaretoken": csrf},
                        headers={"Referer": f"{url}/user/login/"}, timeout=30, allow_redirects=False)
    if resp.status_code not in (302, 303) or "sessionid" not in session.cookies:
        raise LabelStudioError(f"logging in to Label Studio as {email} failed (HTTP {resp.status_code})")
    session.headers["X-CSRFToken"] = session.cookies.get("csrftoken", "")
    session.headers["Referer"] = url
    return session


def personal_access_token(url: str, email: str, password: str) -> str:
    """Log in and create a personal access token for this user; when one exists already (HTTP 409: one token per
    user), revoke it and create a new one, so the token handed out is always fresh (we never keep the old)."""
    session = login_session(url, email, password)
    resp = session.post(f"{url}/api/token/", timeout=30)
    if resp.status_code == 409:
        for old in session.get(f"{url}/api/token/", timeout=30).json() or []:
            session.post(f"{url}/api/token/blacklist/", json={"refresh": old["token"]}, timeout=30)
        resp = session.post(f"{url}/api/token/", timeout=30)
    if resp.status_code in (200, 201):
        return resp.json()["token"]
    raise LabelStudioError(f"could not create an API token for {email}: HTTP {resp.status_code} {resp.text[:300]}")


def signup(url: str, email: str, password: str) -> None:
    """Create a user through the signup form (what a person does); an existing user is left as is."""
    session = requests.Session()
    session.get(f"{url}/user/signup/", timeout=30)
    csrf = session.cookies.get("csrftoken", "")
    resp = session.post(f"{url}/user/signup/", data={"email": email, "password": password,
                                                     "csrfmiddlewaretoken": csrf},
                        headers={"Referer": f"{url}/user/signup/"}, timeout=30, allow_redirects=False)
    if resp.status_code in (302, 303):
        return
    if "already exists" in resp.text:
        return
    raise LabelStudioError(f"signing up {email} failed (HTTP {resp.status_code})")


def start(venv: Path, data_dir: Path, port: int, log_path: Path, timeout: float = 900, stall: float = 180
          ) -> LabelStudioInfo:
    """Start Label Studio on 127.0.0.1:port (installing it first if needed), wait for health while it makes
    progress (a status line on a terminal), make a token. On any failure the process is stopped again."""
    exe = ensure_installed(venv)
    password = admin_password(data_dir)
    url = f"http://127.0.0.1:{port}"
    log = open(log_path, "ab")
    proc = subprocess.Popen(start_command(venv, data_dir, port), env=server_env(data_dir, ADMIN_EMAIL, password),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    del exe

    def tick(elapsed: float) -> None:
        if sys.stdout.isatty():
            print(f"\r  waiting for Label Studio at {url}/health: {elapsed:.0f}s (log {log_path})", end="", flush=True)

    try:
        wait_healthy(url, proc, timeout, log_path, stall, tick)
        token = personal_access_token(url, ADMIN_EMAIL, password)
    except BaseException:
        stop_process(proc.pid)
        raise
    finally:
        if sys.stdout.isatty():
            print("\r" + " " * 100 + "\r", end="", flush=True)
    return LabelStudioInfo(url=url, token=token, pid=proc.pid, data_dir=str(data_dir), admin_email=ADMIN_EMAIL,
                           admin_password=password)


def stop_process(pid: int, timeout: float = 20) -> bool:
    """SIGTERM the process group Label Studio leads, SIGKILL after `timeout`; False if it was not running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def is_running(info: LabelStudioInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    try:
        return requests.get(f"{info.url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def web_pid_path(settings: Settings) -> Path:
    return settings.state_dir / "annotation-web.pid"


def web_running(settings: Settings) -> bool:
    try:
        return requests.get(f"{settings.resolved_annotation_web_url()}/health", timeout=2).ok
    except requests.RequestException:
        return False


def start_web(settings: Settings, timeout: float = 60) -> int | None:
    """Start editloop's image endpoint and webhook receiver (`python -m annotation.web`) unless it answers.

    Returns the pid it started, or None if one was already answering."""
    url = settings.resolved_annotation_web_url()
    if web_running(settings):
        return None
    env = {**os.environ, "EDITLOOP_STATE_DIR": str(settings.state_dir.resolve())}
    with open(settings.state_dir / "annotation-web.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "annotation.web"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioError(f"the annotation web endpoint exited with code {proc.returncode}; "
                                   f"see {settings.state_dir / 'annotation-web.log'}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                web_pid_path(settings).write_text(str(proc.pid))
                return proc.pid
        except requests.RequestException:
            time.sleep(0.3)
    stop_process(proc.pid)
    raise LabelStudioError(f"the annotation web endpoint did not answer at {url} within {timeout:.0f}s")


def running_info(settings: Settings) -> LabelStudioInfo | None:
    """The Label Studio recorded in the state dir, if it answers."""
    path = info_path(settings)
    if path.is_file():
        info = LabelStudioInfo.load(path)
        if is_running(info):
            return info
    return None


def up(settings: Settings, port: int | None = None) -> LabelStudioInfo:
    """`editloop annotation up`: Label Studio (unless the one recorded in the state dir runs) and the web endpoint.
    When Label Studio fails to start, the endpoint this call started is stopped again."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    web_pid = start_web(settings)
    path = info_path(settings)
    info = running_info(settings)
    if info is not None:
        return info
    try:
        info = start(settings.label_studio_venv.resolve(), settings.state_dir.resolve() / "label-studio",
                     port or settings.label_studio_port, settings.state_dir / "label-studio.log",
                     settings.label_studio_start_timeout_s, settings.label_studio_stall_s)
    except BaseException:
        if web_pid is not None:
            stop_web(settings)
        raise
    info.save(path)
    return info


def stop_web(settings: Settings) -> bool:
    path = web_pid_path(settings)
    if not path.is_file():
        return False
    stopped = stop_process(int(path.read_text()))
    path.unlink(missing_ok=True)
    return stopped


def stop_label_studio(settings: Settings) -> bool:
    path = info_path(settings)
    if not path.is_file():
        return False
    stopped = stop_process(LabelStudioInfo.load(path).pid)
    path.unlink(missing_ok=True)
    return stopped


def down(settings: Settings) -> bool:
    """Stop Label Studio and the web endpoint; False if neither was recorded as running."""
    web = stop_web(settings)
    return stop_label_studio(settings) or web
