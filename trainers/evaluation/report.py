"""`editloop report VERSION|RUN`: one static HTML page per version or run (index.html and its PNGs in a folder, no
server): the gate's decision and its numbers, training curves (the run's TensorBoard event files, else its
recorded history), before/after sample grids (the version's and its parent's stored evaluations on one suite), the
edit-by-edit comparison, GSB tables (side-by-side reviews), and lineage (labels, parent, rewards, base)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from editloop.db.models import Evaluation, ModelVersion, RunFile, TrainingRun
from editloop.registry import gate
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.evaluation.compare import compare_items
from trainers.evaluation.records import of_version
from trainers.runs import BOARD_DIR, numbers

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:.9em;
text-align:left}th{background:#f4f4f4}.pass{color:#176f2c;font-weight:bold}.fail{color:#a4161a;font-weight:bold}
img{max-width:100%;border:1px solid #ddd}figure{margin:.8em 0}figcaption{font-size:.85em;color:#555}
code{background:#f4f4f4;padding:0 3px}"""


@dataclass
class Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)

    def add(self, ident: str, heading: str, body: str) -> None:
        self.sections.append((ident, heading, body))

    def render(self) -> str:
        toc = " · ".join(f'<a href="#{i}">{html.escape(h)}</a>' for i, h, _ in self.sections)
        body = "\n".join(f'<section id="{i}"><h2>{html.escape(h)}</h2>\n{b}</section>' for i, h, b in self.sections)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1><p>{toc}</p>\n{body}"
                "</body></html>\n")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return f"<code>{html.escape(json.dumps(value)[:300])}</code>"
    return html.escape(str(value))


def table(rows: list[list[Any]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def figure(src: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"><figcaption>' \
           f"{html.escape(caption)}</figcaption></figure>"


def board_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's TensorBoard event files (empty when it has none)."""
    board = run_dir / BOARD_DIR
    if not board.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(board), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def restore_board(sessions: sessionmaker[Session], store: BlobStore, run_id: str, run_dir: Path) -> None:
    """The run's event files from the blob store (the run mirror's copy) when this host lacks them."""
    if (run_dir / BOARD_DIR).is_dir():
        return
    with sessions() as s:
        files = s.scalars(select(RunFile).where(RunFile.run_id == run_id,
                                                RunFile.name.startswith(f"{BOARD_DIR}/"))).all()
        for f in files:
            dest = run_dir / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.get(f.key))


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = sorted(series)
    cols = min(3, len(tags))
    rows = (len(tags) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        steps, values = zip(*series[tag])
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def history_series(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for i, rec in enumerate(history):
        for k, v in numbers(rec).items():
            out.setdefault(k, []).append((int(rec.get("step", i)), v))
    return out


def run_of(session: Session, row: ModelVersion) -> TrainingRun | None:
    run_id = row.config.get("run_id") or (row.config.get("lineage") or {}).get("run_id")
    return session.get(TrainingRun, run_id) if run_id else None


def curves_section(page: Page, sessions, store, settings: Settings, run: TrainingRun, out: Path,
                   curves_key: str | None) -> None:
    run_dir = settings.state_dir / "runs" / run.id
    restore_board(sessions, store, run.id, run_dir)
    series, source = board_scalars(run_dir), f"TensorBoard event files in {run_dir / BOARD_DIR}"
    if not series and run.outputs.get("history"):
        series, source = history_series(run.outputs["history"]), "the run's recorded history"
    parts = [f"<p>run <code>{run.id}</code> ({html.escape(run.kind)}): {html.escape(run.status)}, progress "
             f"{run.progress:.0%}" + (f", error: {html.escape(run.error)}" if run.error else "") + "</p>"]
    if series:
        plot_curves(series, out / "curves.png", f"run {run.id[:12]} {run.kind}")
        parts.append(figure("curves.png", f"training curves from {source}"))
    if curves_key and store.exists(curves_key):
        (out / "run-curves.png").write_bytes(store.get(curves_key))
        parts.append(figure("run-curves.png", "the run's own plot of its losses and rewards"))
    if not series and not curves_key:
        parts.append("<p>no curves recorded for this run</p>")
    page.add("curves", "Training curves", "\n".join(parts))


def gate_section(page: Page, row: ModelVersion, settings: Settings) -> None:
    m = row.metrics
    why = gate(row, floor_alpha=settings.promotion_floor_alpha)
    verdict = '<p class="pass">passes the gate</p>' if why is None else \
        f'<p class="fail">refused by the gate: {html.escape(why)}</p>'
    numbers = [[k, m[k]] for k in ("eval_score", "parent_eval_score", "success", "preservation", "l1_outside",
                                   "feedback_score", "reference_version", "steps_done") if k in m]
    floor = m.get("floor")
    if floor:
        numbers.append(["chance floor", f"{floor['wins']} of {floor['units']} {floor['unit']} right, "
                                        f"p = {floor['p_value']:.3g}"])
    guards = "".join(f"<li>{html.escape(g)}</li>" for g in m.get("guard_failures") or [])
    page.add("gate", "The gate", f"<p>status: <b>{html.escape(row.status)}</b></p>{verdict}"
             + table(numbers, ["measure", "value"]) + (f"<p>guard failures:</p><ul>{guards}</ul>" if guards else ""))


def gsb_section(page: Page, row: ModelVersion) -> None:
    rows = []
    for label, rec in (("review", row.metrics.get("review")),):
        if isinstance(rec, dict) and "good" in rec:
            rows.append([label, rec.get("by", ""), rec["good"], rec["same"], rec["bad"], rec.get("superiority"),
                         rec.get("p_value"), rec.get("test", "")])
    body = table(rows, ["review", "by", "good", "same", "bad", "GSB superiority (G+S)/(B+S)", "p", "test"]) \
        if rows else "<p>no side-by-side review recorded for this version</p>"
    page.add("gsb", "Side by side (GSB)", body)


def evaluations_section(page: Page, session: Session, store: BlobStore, row_version: str,
                        parent_version: str | None, out: Path) -> None:
    mine = of_version(session, row_version)
    parts = []
    if not mine:
        parts.append("<p>no stored evaluation; run <code>editloop eval editor|instruct|reward "
                     f"{html.escape(row_version)}</code> (or <code>editloop report --evaluate</code>)</p>")
    for ev in mine:
        parts.append(f"<h3>evaluation {ev.id}: {html.escape(ev.subject)} on {html.escape(ev.suite)}</h3>")
        flat = [[k, v] for k, v in ev.metrics.items() if not isinstance(v, dict)]
        parts.append(table(flat, ["metric", "value"]))
        per_task = ev.metrics.get("per_task") or {}
        if per_task:
            keys = sorted({k for r in per_task.values() for k in r})
            parts.append(table([[t, *[r.get(k, "") for k in keys]] for t, r in per_task.items()], ["task", *keys]))
        parent_ev = _parent_evaluation(session, parent_version, ev)
        for label, e in (("before (parent " + str(parent_version) + ")", parent_ev), ("after (this version)", ev)):
            if e is not None and e.samples_key and store.exists(e.samples_key):
                name = f"samples-{e.id}.png"
                (out / name).write_bytes(store.get(e.samples_key))
                parts.append(figure(name, f"{label}: evaluation {e.id}, first items of {e.suite}"))
        if parent_ev is not None:
            cmp = compare_items(parent_ev.per_item, ev.per_item)
            if cmp["verdicts"]:
                parts.append("<p>edit by edit against the parent (exact McNemar test):</p>" + table(
                    [[m, f"{r['a']}/{r['n']}", f"{r['b']}/{r['n']}", r["gained"], r["lost"], r["p"]]
                     for m, r in cmp["verdicts"].items()], ["verdict", "parent", "this", "gained", "lost", "p"]))
    page.add("evaluations", "Evaluations and samples", "\n".join(parts))


def _parent_evaluation(session: Session, parent_version: str | None, ev: Evaluation) -> Evaluation | None:
    if not parent_version:
        return None
    return session.scalars(select(Evaluation).where(Evaluation.version == parent_version,
                                                    Evaluation.subject == ev.subject, Evaluation.suite == ev.suite)
                           .order_by(Evaluation.id.desc())).first()


def lineage_section(page: Page, row: ModelVersion, parent: ModelVersion | None) -> None:
    lineage = row.config.get("lineage") or {}
    rows = [["kind", row.kind], ["name", row.name], ["version", row.version], ["created", row.created_at],
            ["promoted at", row.promoted_at or "never"], ["checkpoint", row.checkpoint_key],
            ["parent", f"{parent.kind} {parent.version} ({parent.status})" if parent else "none (the first version, "
                                                                                          "or started from the base)"]]
    rows += [[k, v] for k, v in lineage.items()]
    page.add("lineage", "Lineage", table(rows, ["", ""]))


def version_report(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, row_id: int, out: Path
                   ) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with sessions() as s:
        row = s.get(ModelVersion, row_id)
        parent = s.get(ModelVersion, row.parent_id) if row.parent_id else None
        parent_version = parent.version if parent else (row.config.get("lineage") or {}).get("start_version")
        page = Page(f"{row.kind} {row.version}")
        gate_section(page, row, settings)
        run = run_of(s, row)
        if run is not None:
            curves_section(page, sessions, store, settings, run, out, row.config.get("curves_key"))
        evaluations_section(page, s, store, row.version, parent_version, out)
        gsb_section(page, row)
        lineage_section(page, row, parent)
        extra = [[k, v] for k, v in row.metrics.items() if k not in ("guard_failures", "floor", "review")]
        page.add("metrics", "Every recorded metric", table(extra, ["metric", "value"]))
    (out / "index.html").write_text(page.render())
    return out / "index.html"


def run_report(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, run_id: str, out: Path
               ) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        page = Page(f"run {run.id} ({run.kind})")
        curves_section(page, sessions, store, settings, run, out, run.outputs.get("curves_key"))
        page.add("inputs", "Inputs", table([[k, v] for k, v in run.inputs.items()], ["", ""]))
        page.add("outputs", "Outputs", table([[k, v] for k, v in run.outputs.items() if k != "history"], ["", ""]))
    (out / "index.html").write_text(page.render())
    return out / "index.html"


def find_subject(session: Session, name: str) -> tuple[str, int | str]:
    """("version", registry id) or ("run", run id) for a version name or a run id (or a unique prefix of one)."""
    rows = session.scalars(select(ModelVersion).where(ModelVersion.version == name)).all()
    if len(rows) == 1:
        return "version", rows[0].id
    if len(rows) > 1:
        raise ValueError(f"version {name!r} names {len(rows)} models ({[r.kind for r in rows]}); "
                         "report on the run instead")
    runs = session.scalars(select(TrainingRun.id).where(TrainingRun.id.startswith(name))).all() if len(name) >= 6 \
        else []
    if len(runs) == 1:
        return "run", runs[0]
    raise ValueError(f"no version or run {name!r} in the registry (see `editloop models show KIND` and "
                     "`editloop status`)" if not runs else f"run prefix {name!r} is ambiguous ({len(runs)} runs)")


def make_report(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, name: str,
                out: Path | None = None) -> Path:
    with sessions() as s:
        what, ident = find_subject(s, name)
    out = out or settings.state_dir / "reports" / name
    if what == "version":
        return version_report(sessions, store, settings, int(ident), out)
    return run_report(sessions, store, settings, str(ident), out)
