"""`editloop status [--json]`: the platform at a glance.

Per part: state, address and health (gRPC health for the services, HTTP /health for the annotation endpoint
and Label Studio, the process for workers and beat). Per model kind: the version served (reward services say
it through ModelInfo) and what the registry holds as promoted and candidate. Queue depths per queue, label
events pending, labels per day and agreement, the last runs of every kind (state, progress, trigger, gate
decision), and what the retraining triggers would decide now and why.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from editloop.models.reward_kinds import kind_names
from editloop.settings import Settings

MODEL_KINDS = ("t2i", "inpaint", "editor", "instruct", *kind_names())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="every part's health and address, models, queues, labels, runs, triggers")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--runs", type=int, default=3, help="last runs shown per kind (default 3)")
    p.set_defaults(func=_status)
    p = sub.add_parser("health", help="exit 0 when the gRPC service at ADDRESS answers SERVING (container and "
                                      "Kubernetes health checks)")
    p.add_argument("address", help="host:port of a generator, editor or reward service")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    p.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    state = _grpc_health(args.address, Settings(), args.timeout)
    print(state)
    return 0 if state == "SERVING" else 1


def _grpc_health(address: str, settings: Settings, timeout: float = 2.0) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.core.channels import open_channel

    with open_channel(address, settings) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _reward_info(address: str, settings: Settings, timeout: float = 2.0) -> str | None:
    import grpc

    from services.core.channels import open_channel
    from services.gen.editloop.v1 import reward_pb2, reward_pb2_grpc

    with open_channel(address, settings) as ch:
        try:
            info = reward_pb2_grpc.RewardStub(ch).ModelInfo(reward_pb2.ModelInfoRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
    return info.model.version


def _http_health(address: str) -> str:
    import requests

    try:
        return "SERVING" if requests.get(f"http://{address}/health", timeout=2).status_code == 200 else "NOT_SERVING"
    except requests.RequestException:
        return "unreachable"


def part_health(name: str, row: dict[str, Any], settings: Settings) -> str:
    if row.get("state") in ("failed", "stopped", "restarting"):
        return row["state"]
    if name in ("generator", "editor") or name.startswith("reward-"):
        return _grpc_health(row["address"], settings)
    if name in ("annotation-web", "label-studio"):
        return _http_health(row["address"])
    return "running" if row.get("pid") else "not running"


def parts_status(settings: Settings) -> dict[str, Any]:
    from annotation.server import executable
    from editloop.cli.stack import read_stack

    stack = read_stack(settings)
    if stack is None:
        return {"running": False, "parts": {}}
    parts = {name: {**row, "health": part_health(name, row, settings)} for name, row in stack["parts"].items()}
    if "label-studio" not in parts:
        installed = executable(settings.label_studio_venv.resolve()).is_file()
        parts["label-studio"] = {"state": "off", "health": "not started with this stack"
                                 + ("" if installed else " (not installed)")}
    return {"running": True, "pid": stack["pid"], "log": stack.get("log"), "parts": parts}


def models_status(session, parts: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from sqlalchemy import select

    from editloop.db import ModelVersion

    out: dict[str, Any] = {}
    for kind in MODEL_KINDS:
        rows = session.scalars(select(ModelVersion).where(ModelVersion.kind == kind)
                               .order_by(ModelVersion.created_at.desc())).all()
        entry: dict[str, Any] = {
            "promoted": next((r.version for r in rows if r.status == "promoted"), None),
            "candidates": [r.version for r in rows if r.status == "candidate"][:3],
            "versions": len(rows)}
        part = parts.get(f"reward-{kind}")
        if part and part.get("health") == "SERVING":
            entry["served"] = _reward_info(part["address"], settings)
        out[kind] = entry
    return out


def served_records(settings: Settings, parts: dict[str, Any]) -> dict[str, str]:
    """What the running generator and editor serve ({label: version}), from the records they keep."""
    out: dict[str, str] = {}
    for part in ("generator", "editor"):
        path = settings.state_dir / "served" / f"{part}.json"
        if parts.get(part, {}).get("health") != "SERVING" or not path.is_file():
            continue
        try:
            for label, model in json.loads(path.read_text()).items():
                out[label] = model.get("version", "")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return out


def queues_status(settings: Settings) -> dict[str, Any]:
    from trainers.queues import QUEUES, queue_depth

    try:
        return {queue: queue_depth(settings.resolved_broker_url(), queue) for queue in QUEUES}
    except Exception as exc:  # the broker is down: say so
        return {"error": f"broker unreachable: {type(exc).__name__}"}


def labels_status(session) -> dict[str, Any]:
    from sqlalchemy import func, select

    from editloop.db.models import LabelEvent
    from editloop.labels.stats import label_stats

    stats = label_stats(session)
    pending = session.scalar(select(func.count()).select_from(LabelEvent).where(LabelEvent.applied_at.is_(None)))
    return {"pending_events": pending or 0, "status": stats.status, "per_day": stats.per_day,
            "agreement_best": stats.agreement_best, "alpha_best": stats.alpha_best}


def runs_status(session, per_kind: int) -> dict[str, list[dict[str, Any]]]:
    from sqlalchemy import select

    from editloop.db import TrainingRun

    out: dict[str, list[dict[str, Any]]] = {}
    for run in session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(200)):
        rows = out.setdefault(run.kind, [])
        if len(rows) >= per_kind:
            continue
        outputs = run.outputs or {}
        gate = ("promoted" if outputs.get("promoted") else outputs.get("refused") or
                ("not promoted" if "promoted" in outputs else None))
        rows.append({"id": run.id, "status": run.status, "progress": round(run.progress or 0.0, 3),
                     "trigger": (run.inputs or {}).get("trigger"), "gate": gate, "error": run.error,
                     "updated_at": run.updated_at.isoformat() if run.updated_at else None})
    return out


def triggers_status(session, settings: Settings) -> dict[str, Any]:
    from trainers.triggers import decide

    decision = decide(session, settings, datetime.now(UTC))
    return {decision.kind: {"would_start": decision.start, "reason": decision.reason}}


def collect(settings: Settings, per_kind: int = 3) -> dict[str, Any]:
    from editloop.state import open_sessions

    report: dict[str, Any] = {"state_dir": str(settings.state_dir.resolve()), "stack": parts_status(settings)}
    with open_sessions(settings)() as session:
        report["models"] = models_status(session, report["stack"]["parts"], settings)
        for label, version in served_records(settings, report["stack"]["parts"]).items():
            report["models"].setdefault(label, {"promoted": None, "candidates": [], "versions": 0})["served"] = version
        report["labels"] = labels_status(session)
        report["runs"] = runs_status(session, per_kind)
        report["triggers"] = triggers_status(session, settings)
        from editloop.cli.loop import loop_report

        report["loop"] = loop_report(settings, session)
    report["queues"] = queues_status(settings)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"state dir {r['state_dir']}"]
    stack = r["stack"]
    lines.append(f"stack: {'running (pid ' + str(stack['pid']) + ')' if stack['running'] else 'not running'}")
    for name, p in stack["parts"].items():
        lines.append(f"  {name:18} {p.get('health', ''):22} {p.get('address') or '-':22} "
                     f"restarts {p.get('restarts', 0)}" + (f"  {p['note']}" if p.get("note") else ""))
    lines.append("models (served / promoted / candidates):")
    for kind, m in r["models"].items():
        served = m.get("served", "-")
        lines.append(f"  {kind:10} served {served or '-':22} promoted {m['promoted'] or '-':24} "
                     f"candidates {', '.join(m['candidates']) or '-'}")
    q = r["queues"]
    lines.append("queues: " + (q["error"] if "error" in q else ", ".join(f"{k} {v}" for k, v in q.items())))
    lab = r["labels"]
    agreement = "-" if lab["agreement_best"] is None else f"{lab['agreement_best']:.2f}"
    lines.append(f"labels: {json.dumps(lab['status'])}; pending events {lab['pending_events']}; "
                 f"agreement on best {agreement}; per day {json.dumps(lab['per_day'])}")
    lines.append("runs:" if r["runs"] else "runs: none yet")
    for kind, runs in r["runs"].items():
        for run in runs:
            extra = "; ".join(x for x in (run["trigger"] and f"trigger: {run['trigger']}",
                                          run["gate"] and f"gate: {run['gate']}",
                                          run["error"] and f"error: {run['error']}") if x)
            lines.append(f"  {kind:20} {run['id'][:12]} {run['status']:10} {run['progress']:6.1%}  {extra}")
    loop = r["loop"]
    state = "off" if not loop["enabled"] else "paused" if loop["paused"] else "on"
    lines.append(f"loop: {state}; would {'START a feedback round' if loop['would_start'] else 'not start'} now: "
                 f"{loop['why']}")
    ls = loop["label_sets"]
    lines.append(f"label sets: would {'START a batch' if ls['would_start'] else 'not start'} now: {ls['why']}")
    al = loop["align"]
    lines.append(f"alignment rounds: would {'START a chain' if al['would_start'] else 'not start'} now: {al['why']}")
    dpo = loop["instruct_dpo"]
    lines.append(f"instruct DPO: would {'START a run' if dpo['would_start'] else 'not start'} now: {dpo['why']}")
    for kind, t in r["triggers"].items():
        lines.append(f"triggers: {kind} reward would {'START' if t['would_start'] else 'not start'} now: "
                     f"{t['reason']}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise ValueError(f"`--runs` must be >= 1, got {args.runs}")
    report = collect(Settings(), args.runs)
    print(json.dumps(report, indent=1, default=str) if args.json else format_report(report))
    return 0
