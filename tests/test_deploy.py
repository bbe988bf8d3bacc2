"""The deployments: infra/compose (one node) and infra/k8s (a cluster), checked against the code they run.

Every command a container runs must parse with the CLI it names (editloop's argparse, Celery's click commands,
annotation.web's parser); every EDITLOOP_* variable must be a setting the code reads; no secret is written in a
file; every part of `editloop up` is there with a health check. The Kubernetes manifests are rendered with
`kubectl kustomize` (the resources listed in kustomization.yaml when kubectl is absent) and validated against the
Kubernetes 1.32 API schemas by kubernetes-validate (strict: unknown fields are errors).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from editloop.cli.main import build_parser
from editloop.cli.stack import ALL_PARTS, SERVICES, configured_addresses
from editloop.settings import Settings

INFRA = Path(__file__).resolve().parents[1] / "infra"
COMPOSE = INFRA / "compose" / "compose.yml"
K8S = INFRA / "k8s"
K8S_VERSION = "1.32.0"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PASS")
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def option(cmd: list[str], name: str) -> str:
    """The value given to `name` in an argv list."""
    return cmd[cmd.index(name) + 1]


# -- what a command may be -------------------------------------------------------------------------------------
def check_command(cmd: list[str]) -> None:
    """Parse `cmd` with the CLI it runs; pytest fails naming the command when it does not."""
    if cmd[0] == "editloop":
        try:
            build_parser().parse_args(cmd[1:])
        except SystemExit:
            pytest.fail(f"`{' '.join(cmd)}` is not a valid editloop command")
    elif cmd[0] == "celery":
        check_celery(cmd)
    elif cmd[:3] == ["python", "-m", "annotation.web"]:
        from annotation.web import build_parser as web_parser

        web_parser().parse_args(cmd[3:])
    elif cmd[:2] == ["kill", "-0"]:
        assert re.fullmatch(r"\$\(cat /\S+\.pid\)", " ".join(cmd[2:])), cmd  # a process named by its pid file
    elif cmd[0] == "sh":
        check_command(cmd[2].split())  # sh -c "celery ... inspect ping -d $queue@$POD_NAME"
    else:
        pytest.fail(f"unknown program in {cmd}")


def check_celery(cmd: list[str]) -> None:
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    from trainers.celery_app import app

    assert cmd[1:3] == ["-A", "trainers.celery_app"], cmd
    celery_cli.commands.setdefault("flower", _flower_command())
    name, args = cmd[3], cmd[4:]
    assert name in celery_cli.commands, f"celery has no command {name!r}"
    command = celery_cli.commands[name]
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    ctx = command.make_context(name, list(args), obj=obj)
    if name == "worker":
        queues = set(ctx.params["queues"])
        known = {q.name for q in app.conf.task_queues}
        assert queues <= known, f"worker consumes {queues - known}, the app routes to {known}"
        solo = ctx.params["pool"].__module__ == "celery.concurrency.solo"
        assert solo, "one task per GPU process: a solo pool (prefork and CUDA do not mix)"


def _flower_command():
    from flower.command import flower

    return flower


def check_settings(names: list[str], where: str) -> None:
    unknown = [n for n in names if n.startswith("EDITLOOP_")
               and n.removeprefix("EDITLOOP_").lower() not in Settings.model_fields]
    assert not unknown, f"{where} sets {unknown}, which editloop/settings.py does not read"


def check_no_secret_literal(env: dict[str, str], where: str) -> None:
    for key, value in env.items():
        value = str(value)
        if any(w in key for w in SECRET_WORDS) and value:
            assert INTERPOLATED.match(value), f"{where}: {key} holds a literal secret; take it from the environment"
        for password in re.findall(r"://[^:/@]+:([^@]+)@", value):
            assert INTERPOLATED.match(password), f"{where}: {key} has a literal password in its URL"


# -- compose -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_every_part_after_the_migration(compose: dict) -> None:
    services = compose["services"]
    assert set(ALL_PARTS) <= set(services), f"missing parts: {set(ALL_PARTS) - set(services)}"
    assert {"postgres", "rabbitmq", "redis", "minio", "migrate", "prometheus", "flower"} <= set(services)
    assert services["migrate"]["command"] == ["editloop", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name, svc in services.items():
        if name != "migrate":
            assert "healthcheck" in svc, f"{name} has no health check"
        if svc.get("image", "").startswith("editloop") and name != "migrate":
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    for name in SERVICES:
        port = option(services[name]["command"], "--port")
        assert services[name]["healthcheck"]["test"] == ["CMD", "editloop", "health", f"127.0.0.1:{port}"], name


def test_compose_commands_and_settings_are_the_codes(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("editloop"):
            check_command(svc["command"])
            check_settings(list(svc["environment"]), f"compose service {name}")
            test = svc["healthcheck"]["test"] if "healthcheck" in svc else None
            if test and test[0] == "CMD" and test[1] == "editloop":
                check_command(test[1:])
        check_no_secret_literal(svc.get("environment", {}), f"compose service {name}")
    env = compose["services"]["generator"]["environment"]
    addresses = configured_addresses(Settings(service_addresses=env["EDITLOOP_SERVICE_ADDRESSES"]))
    assert set(addresses) == set(SERVICES)
    for part, address in addresses.items():
        assert address.split(":")[0] == part and f"--port {address.split(':')[1]}" in " ".join(
            compose["services"][part]["command"]), f"{part}: {address} is not where it listens"


def test_prometheus_scrapes_every_service(compose: dict) -> None:
    config = yaml.safe_load((INFRA / "compose" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    for name in SERVICES:
        port = option(compose["services"][name]["command"], "--metrics-port")
        assert f"{name}:{port}" in targets, f"prometheus does not scrape {name}'s metrics"
    assert {"flower:5555", "rabbitmq:15692", "minio:9000"} <= targets


def test_compose_needs_every_secret_from_the_environment() -> None:
    """Each ${VAR:?...} in the file is in env.example, and the file has no default for any of them."""
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = {line.split("=", 1)[0] for line in (INFRA / "compose" / "env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example, f"env.example lacks {required - example}"
    assert ".env" in (INFRA.parent / ".gitignore").read_text()


def test_compose_config_with_podman_compose(tmp_path: Path) -> None:
    """podman-compose (PyPI) with Debian's podman resolves the file: anchors, merges, every ${VAR:?} given."""
    exe = Path(sys.executable).with_name("podman-compose")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **{k: "x" * 8 for k in (
        "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "S3_SECRET_KEY", "LINK_SECRET", "LABEL_STUDIO_ADMIN_PASSWORD")}}
    out = subprocess.run([str(exe), "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    resolved = yaml.safe_load(out.stdout)["services"]
    assert set(ALL_PARTS) <= set(resolved)
    assert resolved["worker-gpu"]["environment"]["EDITLOOP_DATABASE_URL"] == \
        "postgresql+psycopg2://editloop:xxxxxxxx@postgres:5432/editloop"
    del env["S3_SECRET_KEY"]
    out = subprocess.run([str(exe), "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode != 0 and "S3_SECRET_KEY" in out.stdout + out.stderr, "a missing secret must stop compose"


# -- kubernetes ----------------------------------------------------------------------------------------------------
def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`; without kubectl, the resources kustomization.yaml lists, in its namespace."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = [d for r in spec["resources"] for d in yaml.safe_load_all((directory / r).read_text()) if d]
    for d in docs:
        if d["kind"] != "Namespace":
            d["metadata"]["namespace"] = spec["namespace"]
    return docs


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return render(K8S)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_manifests_are_valid_kubernetes(manifests: list[dict]) -> None:
    for doc in manifests:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(by_kind(manifests, "Deployment")["editor"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50052}}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_manifests_deploy_every_part(manifests: list[dict]) -> None:
    deployments, services = by_kind(manifests, "Deployment"), by_kind(manifests, "Service")
    assert set(ALL_PARTS) <= set(deployments), f"missing: {set(ALL_PARTS) - set(deployments)}"
    job = by_kind(manifests, "Job")["editloop-migrate"]
    check_command(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert {d["metadata"].get("namespace") for d in manifests if d["kind"] != "Namespace"} == {"editloop"}
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    for name in SERVICES:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        port = int(option(container["command"], "--port"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name} {probe} is not on its gRPC health"
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            assert c["resources"]["limits"].get("memory"), f"{name} has no memory limit"
            assert "livenessProbe" in c, f"{name} has no liveness probe"
            if c["image"].startswith("editloop"):
                check_command(c["command"])
                check_command(c["livenessProbe"]["exec"]["command"]) if "exec" in c["livenessProbe"] else None
        gpu = "nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"]
        assert gpu == (name in ("generator", "editor", "worker-gpu")), name
        if gpu:
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    beat = deployments["beat"]["spec"]["template"]["spec"]["containers"][0]
    pidfile = option(beat["command"], "--pidfile")
    assert beat["livenessProbe"]["exec"]["command"][2] == f"kill -0 $(cat {pidfile})"
    assert deployments["beat"]["spec"]["replicas"] == 1 and deployments["beat"]["spec"]["strategy"]["type"] == \
        "Recreate"


def test_manifests_read_settings_and_secrets_from_their_places(manifests: list[dict]) -> None:
    config = by_kind(manifests, "ConfigMap")["editloop-config"]["data"]
    check_settings(list(config), "the ConfigMap")
    assert not [k for k in config if any(w in k for w in SECRET_WORDS)], "a secret in the ConfigMap"
    assert not by_kind(manifests, "Secret"), "the Secret is made by hand (secrets.example.env), never committed"
    secret_keys = [line.split("=", 1)[0] for line in (K8S / "secrets.example.env").read_text().splitlines()
                   if line and not line.startswith("#")]
    check_settings(secret_keys, "secrets.example.env")
    assert set(configured_addresses(Settings(service_addresses=config["EDITLOOP_SERVICE_ADDRESSES"]))) == set(SERVICES)
    for dep in by_kind(manifests, "Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["key"] in secret_keys, f"{var['name']} reads a key secrets.example.env lacks"


def test_keda_scales_the_workers_on_their_queues() -> None:
    from trainers.celery_app import app

    docs = render(K8S / "keda")
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == {"worker-gpu", "worker-cpu"}
    queues = {q.name for q in app.conf.task_queues}
    for name, obj in scaled.items():
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] in queues
        assert obj["spec"]["scaleTargetRef"]["name"] == name


def test_service_addresses_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="EDITLOOP_SERVICE_ADDRESSES entry 'editor=nohost'"):
        configured_addresses(Settings(service_addresses="editor=nohost"))
    with pytest.raises(ValueError, match="PART=HOST:PORT"):
        configured_addresses(Settings(service_addresses="painter=a:1"))
    assert configured_addresses(Settings(service_addresses=" editor=e:50052, generator=g:1 ")) == {
        "editor": "e:50052", "generator": "g:1"}
