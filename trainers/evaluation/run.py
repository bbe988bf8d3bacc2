"""`editloop eval`'s work: resolve a version in the registry, evaluate it, store the result (records.py).

Each function returns (the stored record, the JSON file). Versions: an editor or instruct version name, `promoted`
(the served one: the promoted version, else the base) or `base` (the committed base model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from editloop.models.card import SamplingDefaults
from editloop.models.reward_kinds import kind_names, preference_names
from editloop.registry import editor_model_dir, fetch_model_dir, find_version, instruct_model_dir, promoted
from editloop.settings import Settings
from editloop.store.base import BlobStore
from trainers.evaluation.records import latest, samples_grid, save_evaluation


@dataclass(frozen=True)
class Subject:
    kind: str  # editor | instruct | a reward kind
    name: str
    version: str
    path: Path
    row_id: int | None  # None: a base model outside the registry


def resolve_editor(session: Session, store: BlobStore, settings: Settings, spec: str) -> Subject:
    from editloop.models.model_dir import model_version

    cache = settings.state_dir / "models"
    if spec == "base":
        return Subject("editor", "base-inpaint", model_version(settings.editor_model), settings.editor_model, None)
    name, version, path, row_id = editor_model_dir(session, store, settings.editor_model, cache,
                                                   None if spec == "promoted" else spec)
    return Subject("editor", name, version, path, row_id)


def resolve_instruct(session: Session, store: BlobStore, settings: Settings, spec: str) -> Subject:
    from editloop.models.model_dir import model_version

    cache = settings.state_dir / "models"
    if spec == "base":
        return Subject("instruct", "default-instruct", model_version(settings.instruct_model),
                       settings.instruct_model, None)
    got = instruct_model_dir(session, store, settings.instruct_model, cache, None if spec == "promoted" else spec)
    if got is None:
        raise ValueError(f"no instruction editor: no promoted instruct version and none at "
                         f"`{settings.instruct_model}`")
    return Subject("instruct", *got)


def resolve_reward(session: Session, store: BlobStore, settings: Settings, spec: str,
                   kinds: tuple[str, ...] | None = None) -> Subject:
    """A reward version by name, or `KIND` / `promoted:KIND` for the promoted version of a kind."""
    kinds = kinds or kind_names()
    kind = spec.removeprefix("promoted:")
    if kind in kinds:
        row = promoted(session, kind)
        if row is None:
            raise ValueError(f"no promoted {kind} reward; name a version (see `editloop models show {kind}`)")
    else:
        rows = [r for r in (_maybe(session, k, spec) for k in kinds) if r is not None]
        if not rows:
            raise ValueError(f"no reward version {spec!r} of kinds {list(kinds)} in the registry")
        row = rows[0]
    return Subject(row.kind, row.name, row.version, fetch_model_dir(store, row.checkpoint_key,
                                                                    settings.state_dir / "models"), row.id)


def _maybe(session: Session, kind: str, version: str):
    try:
        return find_version(session, kind, version)
    except ValueError:
        return None


def promoted_reward_models(sessions: sessionmaker[Session], store: BlobStore, settings: Settings):
    """Every promoted reward, loaded in process (an empty RewardModels when none is promoted)."""
    from trainers.feedback.rewards import load_rewards
    from trainers.feedback.run import promoted_reward_paths

    return load_rewards(*promoted_reward_paths(sessions, store, settings, kind_names(), required=False))


def evaluate_editor(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, which: str, spec: str,
                    suite_name: str = "world", n: int | None = None, clip: Path | None = None) -> tuple[dict, Path]:
    """Evaluate an inpainting editor (`which` = editor) or an instruction editor (`which` = instruct)."""
    from trainers.evaluation.editors import EVAL_SEED, measure, sample_inpaint, sample_instruct
    from trainers.evaluation.suites import resolve_suite

    with sessions() as s:
        subject = (resolve_editor if which == "editor" else resolve_instruct)(s, store, settings, spec)
    rewards = promoted_reward_models(sessions, store, settings)
    config = {"seed": EVAL_SEED, "model_name": subject.name, "path": str(subject.path),
              "rewards": rewards.versions, "clip": str(clip) if clip else None}
    if which == "editor":
        from editloop.models.zoo import load_pipeline, native_size

        defaults = SamplingDefaults.from_dir(subject.path)
        pipe = load_pipeline(subject.path, "inpaint", device=settings.device, dtype="fp32")
        suite = resolve_suite(suite_name, which, n, native_size(pipe))  # a folder suite at the model's size
        run = sample_inpaint(pipe, suite, defaults.steps, defaults.guidance)
        config |= {"steps": defaults.steps, "guidance": defaults.guidance}
    else:
        from editloop.models.instruct import load_instruct_editor

        editor = load_instruct_editor(subject.path, settings.device)
        suite = resolve_suite(suite_name, which, n, editor.native_size)
        run = sample_instruct(editor, suite)
        config |= {"steps": run.steps}
    config["size"] = int(suite.items[0].source.shape[0])
    result = measure(suite, run, rewards, clip)
    grid = samples_grid(suite.items, run.outputs, f"{subject.name} {subject.version}")
    return save_evaluation(sessions, store, settings.state_dir, subject=which, model_kind=subject.kind,
                           version=subject.version, model_version_id=subject.row_id, suite=suite.name,
                           config=config, result=result, grid=grid)


def evaluate_reward(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, spec: str,
                    n: int | None = None) -> tuple[dict, Path]:
    """A reward version on its kind's held-out data (its trainer's `held_out`, trainers/reward/kinds.py)."""
    from editloop.models.reward import load_reward
    from trainers.reward.kinds import kind_trainer

    with sessions() as s:
        subject = resolve_reward(s, store, settings, spec)
    kind, model, tokenizer = load_reward(subject.path, subject.kind)
    suite, metrics = kind_trainer(kind).held_out(model.eval(), tokenizer, sessions, store, settings, n)
    return save_evaluation(sessions, store, settings.state_dir, subject="reward", model_kind=kind,
                           version=subject.version, model_version_id=subject.row_id, suite=suite,
                           config={"n": n}, result={"metrics": metrics})


def reward_drift(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, spec: str,
                 editor: str = "promoted", n: int | None = None, taste: str = "default") -> tuple[dict, Path]:
    """A preference reward's accuracy on pairs of an editor's own samples, next to the base editor's."""
    from editloop.models.zoo import load_pipeline
    from trainers.evaluation.rewards import drift
    from trainers.evaluation.suites import world_editor_suite
    from trainers.feedback.rewards import load_rewards

    with sessions() as s:
        subject = resolve_reward(s, store, settings, spec, preference_names())
        tuned = resolve_editor(s, store, settings, editor)
        base = resolve_editor(s, store, settings, "base")
    rewards = load_rewards({subject.kind: subject.path}, {subject.kind: subject.version})
    suite = world_editor_suite(n or 48)
    out = {}
    for label, ed in (("editor", tuned), ("base", base)):
        if label == "base" and ed.version == tuned.version:
            out["base"] = out["editor"]
            continue
        d = SamplingDefaults.from_dir(ed.path)
        pipe = load_pipeline(ed.path, "inpaint", device=settings.device, dtype="fp32")
        out[label] = drift(subject.kind, rewards, pipe, suite, d.steps, d.guidance, taste)
    metrics = {"accuracy": out["editor"]["accuracy"], "pairs": out["editor"]["pairs"],
               "base_accuracy": out["base"]["accuracy"], "base_pairs": out["base"]["pairs"],
               "drift": (out["base"]["accuracy"] or 0) - (out["editor"]["accuracy"] or 0),
               "editor": f"{tuned.name} {tuned.version}", "taste": taste}
    per_item = {"id": [it.id for it in suite.items], "editor_pair_right": out["editor"]["per_pair"],
                "base_pair_right": out["base"]["per_pair"]}
    return save_evaluation(sessions, store, settings.state_dir, subject="reward-drift", model_kind=subject.kind,
                           version=subject.version, model_version_id=subject.row_id, suite=suite.name,
                           config={"editor": tuned.version, "editor_name": tuned.name, "taste": taste},
                           result={"metrics": metrics, "per_item": per_item})


def compare_versions(sessions: sessionmaker[Session], store: BlobStore, settings: Settings, a: str, b: str,
                     suite: str | None = None, which: str = "editor") -> dict:
    """The newest stored evaluations of versions `a` and `b` (of the same subject, on one suite), item by item.
    `base` and `promoted` name the `which` editor's base and served versions."""
    from trainers.evaluation.compare import compare_items

    resolve = resolve_editor if which == "editor" else resolve_instruct
    with sessions() as s:
        a, b = (resolve(s, store, settings, v).version if v in ("base", "promoted") else v for v in (a, b))
        ra = latest(s, a, None, suite)
        if ra is None:
            raise ValueError(f"no stored evaluation of {a!r}" + (f" on suite {suite!r}" if suite else "")
                             + "; run `editloop eval editor|instruct` first")
        rb = latest(s, b, ra.subject, ra.suite)
        if rb is None:
            raise ValueError(f"no stored {ra.subject} evaluation of {b!r} on suite {ra.suite!r} (where {a!r} was "
                             f"evaluated); run `editloop eval {ra.subject} {b} --suite ...` with the same suite")
        return {"a": {"version": a, "evaluation": ra.id}, "b": {"version": b, "evaluation": rb.id},
                "subject": ra.subject, "suite": ra.suite, **compare_items(ra.per_item, rb.per_item)}
