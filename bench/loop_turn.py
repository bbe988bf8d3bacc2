"""Full turns of the loop, from the committed base, with a simulated panel of the reversed taste (issue 32).

    .venv/bin/python bench/loop_turn.py --out bench/results/loop_turn.json      # ~1-2 hours on this machine, alone

`editloop up --port 0` on a fresh state (embedded broker, SQLite, local blobs, Label Studio) serving the committed
base models; the loop's policy is set by the EDITLOOP_* values in LOOP_ENV (written into the result) and nothing is
typed after `up`. The bench is the annotators: whenever Label Studio has open tasks, the panel (three simulated
annotators of the reversed taste, temperatures 0.25 / 0.5 / 1.0) labels them through Label Studio's API, as people
would. It watches the platform's own records until the editor service answers with a new version (or --budget-s
runs out), and writes down:
- every label batch, reward run (with its floor and gate) and feedback stage, with wall times;
- the wall time from the last label the promoted reward saw to the editor service serving the new version, split
  into its parts (labels applied and the reward run queued; the reward run; the loop's check; the feedback round;
  the service's hot reload);
- how many labels it took before the served editor moved at all;
- the judged effect on held-out edits before and after (the committed base vs the served version, 20 steps,
  --eval fresh examples, seeds --eval-seed+): the promoted reward's own mean score, and the world's independent
  measures (the reversed-taste panel's GSB and mean utility, the world judge's edit success).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from feedback_quality import compare, measure  # noqa: E402

from editloop.db import ModelVersion, Preference, TrainingRun, make_engine, make_sessionmaker  # noqa: E402
from editloop.db.models import as_utc  # noqa: E402
from editloop.models.base import base_model_dir  # noqa: E402
from editloop.settings import Settings  # noqa: E402
from editloop.store import open_store  # noqa: E402
from editloop.world.annotators import reversed_weights  # noqa: E402
from services.editor.probe import served_version  # noqa: E402
from trainers.feedback.examples import feedback_examples  # noqa: E402

LOOP_ENV = {  # a CPU-sized turn; every other setting is the platform's default
    "EDITLOOP_LOOP_REWARDS": "aesthetic=1",  # the taste lives in the labels; the alignment reward learns the world
    # 48 sets a batch, made as the pool (1: no active selection, which did not cut labels on renders, BENCHMARKS
    # "Which sets to label", and would double the cost of a batch here); the first reward run at 300 labels
    # (at 104 its floor refused it: 11 of 19 held-out sets, p = 0.32; loop_turn_partial.json)
    "EDITLOOP_LOOP_LABEL_SETS": "48", "EDITLOOP_LOOP_LABEL_POOL": "1", "EDITLOOP_LOOP_LABEL_IMAGES": "4",
    "EDITLOOP_LOOP_LABEL_OVERLAP": "1", "EDITLOOP_LOOP_LABEL_GOLD": "2",
    # each edit of a set at its own guidance (the default since run 3; runs 1-2 had one guidance, 4.0, whose
    # near-twin sets left the first reward at chance: bench/experiments/label_signal.py)
    "EDITLOOP_LOOP_LABEL_GUIDANCES": "1.0,2.5,4.0,7.0",
    # a reward run every 300 new labels, at the platform's default 1500 steps (runs 1-3 had 300 steps, and run 3's
    # rewards peaked at their last step: under-trained; at 960 varied sets and 1500 steps the bench's reward beat
    # chance, BENCHMARKS "At GPU scale")
    "EDITLOOP_RETRAIN_LABEL_THRESHOLD": "300", "EDITLOOP_RETRAIN_DEBOUNCE_S": "0",
    "EDITLOOP_LOOP_FEEDBACK_STEPS": "60", "EDITLOOP_LOOP_EVAL_EXAMPLES": "48",
    "EDITLOOP_LOOP_INTERVAL_S": "10", "EDITLOOP_TRIGGER_INTERVAL_S": "10", "EDITLOOP_RELOAD_INTERVAL_S": "2",
}
TEMPERATURES = [0.25, 0.5, 1.0]


def up(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "editloop.cli.main", "up", "--port", "0"], env=env, cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def ready(state: Path, proc: subprocess.Popen, log: Path, timeout: float = 1200) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`editloop up` exited:\n{log.read_text()[-3000:]}")
        try:
            parts = json.loads((state / "stack.json").read_text()).get("parts", {})
        except (OSError, json.JSONDecodeError):
            parts = {}
        if parts and all(p["state"] == "ready" for p in parts.values()) and "label-studio" in parts:
            return parts
        time.sleep(2)
    raise SystemExit(f"not ready in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


_PANEL: dict = {}  # the joined labellers and when: their access tokens are short-lived, so rejoined every 4 min


def panel_labellers(url: str) -> list:
    from editloop.cli.annotation import simulated_labellers

    if time.monotonic() - _PANEL.get("at", float("-inf")) > 240:
        _PANEL.update(at=time.monotonic(), labellers=simulated_labellers(url, TEMPERATURES, 0, True))
    return _PANEL["labellers"]


def label_open_tasks(url: str, token: str, prefix: str) -> int:
    """The panel labels every open task of editloop's projects; labels made."""
    from label_studio_sdk import LabelStudio

    from annotation.simulate import label_project

    labellers = panel_labellers(url)
    made = 0
    for project in LabelStudio(base_url=url, api_key=token).projects.list():
        if project.title.startswith(prefix):
            made += sum(label_project(url, labellers, project.id).values())
    return made


def snapshot(sessions, last_labels: bool = False) -> dict:
    """The platform's records now; `last_labels` adds each reward run's newest label (the final snapshots: it reads
    every reward version's lineage, which the 5-second polls do not need)."""
    with sessions() as s:
        runs = s.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all()
        out = [{"id": r.id[:12], "kind": r.kind, "status": r.status, "trigger": (r.inputs or {}).get("trigger"),
                "created": as_utc(r.created_at).timestamp(), "updated": as_utc(r.updated_at).timestamp(),
                "error": r.error, "outputs": _brief(r.kind, r.outputs or {}),
                **(_last_label(s, r) if last_labels else {})} for r in runs]
        labels = s.scalar(select(func.count()).select_from(Preference).where(Preference.status == "valid")) or 0
        editor = s.scalars(select(ModelVersion).where(ModelVersion.kind == "editor",
                                                      ModelVersion.status == "promoted")).first()
        return {"runs": out, "valid_labels": labels, "promoted_editor": editor.version if editor else None,
                "promoted_at": as_utc(editor.promoted_at).timestamp() if editor and editor.promoted_at else None}


def _last_label(s, run: TrainingRun) -> dict:
    """A reward run's newest label (its lineage's max label id): {"last_label": when it was submitted in Label
    Studio, "labels": how many it trained and held out on}; {} for other runs."""
    version = (run.outputs or {}).get("version")
    if not run.kind.startswith("reward-") or not version:
        return {}
    row = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    lineage = ((row.config or {}).get("lineage") or {}) if row else {}
    label = s.get(Preference, lineage["max_label_id"]) if "max_label_id" in lineage else None
    if label is None:
        return {}
    return {"last_label": as_utc(label.ls_updated_at or label.created_at).timestamp(), "labels": lineage.get("labels")}


def _brief(kind: str, outputs: dict) -> dict:
    if kind == "label-sets":
        return {"chosen": len(outputs.get("chosen", [])), "gold": len(outputs.get("gold", []))}
    keep = ("version", "promoted", "refused", "metrics", "labels", "floor", "gate")
    return {k: v for k, v in outputs.items() if k in keep}


def judge(settings: Settings, sessions, examples: int, seed: int) -> dict:
    """Base vs the served editor on fresh held-out edits, by the promoted reward and by the world."""
    from services.editor.reload import resolve_editor
    from trainers.feedback.run import promoted_rewards

    store = open_store(settings)
    version, _, path = resolve_editor(settings, sessions, store)
    rewards = promoted_rewards(sessions, store, settings, ["aesthetic"])
    held_out = feedback_examples(examples, seed)
    weights = reversed_weights()
    base = measure(base_model_dir("inpaint"), 20, held_out, seed, rewards, weights)
    tuned = measure(path, 20, held_out, seed, rewards, weights)
    tasks = [e.task for e in held_out]
    rows = [compare("base", base, base, weights, tasks), compare(version, tuned, base, weights, tasks)]
    return {"examples": examples, "seed": seed, "rows": rows}


def turns(result: dict) -> list[dict]:
    """Every aesthetic reward run of a result (times in seconds from `up`): the labels it saw, its held-out score and
    floor, its verdict, and for a promoted one the feedback stages it started, their verdicts, and the wall time from
    the last label it saw to the loop's verdict on the editor (and to the service serving it, when it did). Works on
    a saved result too (`--summarize`), whether the editor moved or not."""
    runs, batches = result.get("runs", []), result.get("label_batches", [])
    served, served_at = result.get("served"), result.get("served_at_s")
    out = []
    for reward in (r for r in runs if r["kind"] == "reward-aesthetic" and r["status"] == "succeeded"):
        metrics, version = reward["outputs"].get("metrics", {}), reward["outputs"].get("version")
        seen = [b for b in batches if b["at_s"] <= reward["created"]]
        last_label = reward.get("last_label", seen[-1]["at_s"] if seen else None)
        row = {"reward": version, "labels": reward.get("labels", sum(b["labels"] for b in seen)),
               "last_label_s": last_label, "queued_s": reward["created"],
               "run_s": round(reward["updated"] - reward["created"], 1),
               "held_out": metrics.get("pairwise_accuracy"), "best_step": metrics.get("best_step"),
               "steps_done": metrics.get("steps_done"), "floor": metrics.get("floor"),
               "promoted": bool(reward["outputs"].get("promoted")), "refused": reward["outputs"].get("refused")}
        stages = [r for r in runs if r["kind"].startswith("feedback-") and version and version in (r["trigger"] or "")]
        if stages:
            verdict_at = max(r["updated"] for r in stages)
            row["stages"] = [{"kind": r["kind"], "status": r["status"], "run_s": round(r["updated"] - r["created"], 1),
                              "version": r["outputs"].get("version"), "promoted": r["outputs"].get("promoted"),
                              "refused": r["outputs"].get("refused"), "error": r["error"]} for r in stages]
            row["reward_done_to_round_queued_s"] = round(min(r["created"] for r in stages) - reward["updated"], 1)
            if last_label is not None:
                row["last_label_to_editor_verdict_s"] = round(verdict_at - last_label, 1)
            if last_label is not None and served_at is not None and served in [r["version"] for r in row["stages"]]:
                row["verdict_to_served_s"] = round(served_at - verdict_at, 1)
                row["last_label_to_served_s"] = round(served_at - last_label, 1)
        out.append(row)
    return out


def label_signal(settings: Settings, sessions) -> dict:
    """How much the labels say: per labelled set, the spread of the panel's own utility over its images; per label,
    whether its best has a higher utility than its worst (ties half): the annotators' ceiling on these sets."""
    import numpy as np
    from sqlalchemy.orm import selectinload

    from editloop.db.models import CandidateSet
    from editloop.world.annotators import intended_scene, utility
    from editloop.world.io import from_png

    store, weights = open_store(settings), reversed_weights()
    spreads, agree = [], []
    with sessions() as s:
        labels = s.scalars(select(Preference).where(Preference.status == "valid")).all()
        sets = {cs.id: cs for cs in s.scalars(select(CandidateSet).options(selectinload(CandidateSet.items)).where(
            CandidateSet.id.in_({p.candidate_set_id for p in labels})))}
        utilities = {}
        for set_id, cs in sets.items():
            images = [from_png(store.get(item.image.blob_key)) for item in cs.items]
            u = [utility(im, intended_scene(cs.prompt.text), weights) for im in images]
            utilities[set_id] = {item.image_id: value for item, value in zip(cs.items, u)}
            spreads.append(max(u) - min(u))
        for p in labels:
            u = utilities[p.candidate_set_id]
            diff = u[p.best_image_id] - u[p.worst_image_id]
            agree.append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    return {"labels": len(agree), "sets": len(spreads), "best_above_worst": float(np.mean(agree)),
            "utility_spread_median": float(np.median(spreads)), "utility_spread_mean": float(np.mean(spreads)),
            "spread_over_0_5": float(np.mean(np.array(spreads) > 0.5))}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, default=ROOT / ".editloop/bench/loop_turn")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/loop_turn.json")
    p.add_argument("--budget-s", type=float, default=7200, help="give up when the editor has not moved by then")
    p.add_argument("--eval", type=int, default=96, help="held-out edits judged before/after")
    p.add_argument("--eval-seed", type=int, default=960_000)
    p.add_argument("--summarize", type=Path, help="only add `turns` to this saved result and print them")
    p.add_argument("--set", action="append", default=[], metavar="EDITLOOP_X=VALUE",
                   help="override a LOOP_ENV setting (repeatable; written into the result's env)")
    p.add_argument("--resume", action="store_true",
                   help="start `up` again on the state a stopped run left (its labels, runs and tasks kept)")
    args = p.parse_args()
    if bad := [kv for kv in args.set if "=" not in kv or not kv.startswith("EDITLOOP_")]:
        raise SystemExit(f"--set takes EDITLOOP_X=VALUE, got {bad}")
    policy = {**LOOP_ENV, **dict(kv.split("=", 1) for kv in args.set)}
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        # a run stopped by hand kept its platform's records as a snapshot, times in seconds since the epoch (and
        # its label batches' times relative to its start): a turn's durations are differences, so they still hold
        saved["turns"] = turns(saved if "runs" in saved else {"runs": saved["snapshot"]["runs"], "label_batches": []})
        args.summarize.write_text(json.dumps(saved, indent=1))
        print(json.dumps(saved["turns"], indent=1))
        return
    if not args.resume:
        shutil.rmtree(args.state, ignore_errors=True)
    args.state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **policy, "EDITLOOP_STATE_DIR": str(args.state), "EDITLOOP_DEVICE": "cpu",
           "EDITLOOP_BROKER_URL": "", "EDITLOOP_RESULT_BACKEND": "", "EDITLOOP_DATABASE_URL": "",
           "EDITLOOP_LABEL_STUDIO_VENV": str(ROOT / ".venv-label-studio"),
           "EDITLOOP_ANNOTATION_PROJECT_PREFIX": "turn"}
    log = args.state.parent / ("loop_turn-up-resumed.log" if args.resume else "loop_turn-up.log")
    (args.state / "stack.json").unlink(missing_ok=True)  # a stopped run's table says "ready" for parts long gone
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped bench stops its platform too (the finally below)
    t0 = time.time()
    proc = up(env, log)
    result: dict = {"env": policy, "panel": {"taste": "reversed", "temperatures": TEMPERATURES},
                    "resumed": args.resume}
    try:
        parts = ready(args.state, proc, log)
        result["ready_s"] = round(time.time() - t0, 1)
        print(f"platform ready in {result['ready_s']:.0f}s", flush=True)
        settings = Settings(state_dir=args.state, device="cpu", broker_url="", result_backend="")
        sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
        studio = json.loads((args.state / "label-studio.json").read_text())
        editor = parts["editor"]["address"]
        labelled, served_at, moved = [], None, None
        while time.time() - t0 < args.budget_s:
            made = label_open_tasks(studio["url"], studio["token"], "turn")
            if made:
                labelled.append({"done": time.time(), "labels": made})
                print(f"[{time.time() - t0:6.0f}s] the panel labelled {made} tasks "
                      f"({sum(b['labels'] for b in labelled)} in all)", flush=True)
            snap = snapshot(sessions)
            if snap["promoted_editor"] and (moved := served_version(editor)) == snap["promoted_editor"]:
                served_at = time.time()
                break
            time.sleep(5)
        snap = snapshot(sessions, last_labels=True)
        result.update({"wall_s": round(time.time() - t0, 1), "served": moved if served_at else None,
                       "served_at_s": round(served_at - t0, 1) if served_at else None,
                       "labels_given": sum(b["labels"] for b in labelled), "valid_labels": snap["valid_labels"],
                       "label_batches": [{"at_s": round(b["done"] - t0, 1), "labels": b["labels"]} for b in labelled],
                       "runs": [{**r, **{k: round(r[k] - t0, 1) for k in ("created", "updated", "last_label")
                                             if k in r}} for r in snap["runs"]]})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    except KeyboardInterrupt:  # stopped by hand: keep what the records say so far
        if "sessions" in locals():
            result.update(interrupted_at_s=round(time.time() - t0, 1), snapshot=snapshot(sessions, last_labels=True),
                          label_batches=[{"at_s": round(b["done"] - t0, 1), "labels": b["labels"]} for b in labelled],
                          label_signal=label_signal(settings, sessions))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, default=str))
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    result["label_signal"] = label_signal(settings, sessions)
    result["turns"] = turns(result)
    if served_at is not None:
        result["judged"] = judge(settings, sessions, args.eval, args.eval_seed)
        for row in result["judged"]["rows"]:
            print(f"  {row['model']}: superiority {row['superiority']:.3f} gsb {row['gsb']} utility "
                  f"{row['mean_utility']:.3f} success {row['success']:.3f} feedback score "
                  f"{row['feedback_score']:.4f}", flush=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["turns"], indent=1))


if __name__ == "__main__":
    main()
