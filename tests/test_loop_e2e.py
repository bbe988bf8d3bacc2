"""The loop turns with no command typed after `editloop up` and the labelling, through every real part: the
served editor's candidate sets appear in Label Studio by themselves -> annotators label them through Label
Studio's API -> the webhook and beat apply the labels -> the aesthetic reward retrains and is promoted -> a
feedback round runs against it, is gated and promoted -> the editor service serves the new version (its
responses name it) -> the new editor's own candidate sets appear in Label Studio.

Kept small for CI: tiny models, a 10-step reward run, a 6-step PeFL stage (learning rate 1e-3) on 4 held-out
examples. The floors (promotion and loop) are off here: 12 labelled sets cannot show a reward beating chance
surely, and the floors have their own tests (test_reward_training, test_autoloop); the gate's feedback-score
comparison stays on."""

import re
import time
from pathlib import Path

from label_studio_sdk import LabelStudio
from sqlalchemy import select
from test_platform import platform_env, start_up, stop_up, wait_all_ready

from annotation.client import iter_tasks
from editloop.cli.stack import ALL_PARTS
from editloop.db import CandidateSet, Generation, LabelTask, ModelVersion, TrainingRun, make_engine, make_sessionmaker
from editloop.labels.gold import gold_accuracy
from services.editor.probe import served_version

LOOP_ENV = {
    "EDITLOOP_LOOP_INTERVAL_S": "5", "EDITLOOP_TRIGGER_INTERVAL_S": "5", "EDITLOOP_RELOAD_INTERVAL_S": "1",
    "EDITLOOP_LOOP_LABEL_SETS": "12", "EDITLOOP_LOOP_LABEL_POOL": "2", "EDITLOOP_LOOP_LABEL_IMAGES": "3",
    "EDITLOOP_LOOP_LABEL_GOLD": "2",
    "EDITLOOP_LOOP_LABEL_WHEN_DONE": "false",  # one batch per served editor here, so the test can count them
    "EDITLOOP_RETRAIN_LABEL_THRESHOLD": "20", "EDITLOOP_RETRAIN_DEBOUNCE_S": "0", "EDITLOOP_REWARD_TRAIN_STEPS": "10",
    "EDITLOOP_LOOP_REWARDS": "aesthetic=1", "EDITLOOP_LOOP_FEEDBACK_STEPS": "6", "EDITLOOP_LOOP_BATCH_SIZE": "2",
    "EDITLOOP_LOOP_FEEDBACK_LR": "1e-3",  # a few steps must move the tiny editor past the gate's feedback score
    "EDITLOOP_LOOP_EVAL_EXAMPLES": "4", "EDITLOOP_LOOP_KL_WEIGHT": "0", "EDITLOOP_LOOP_SUCCESS_TOLERANCE": "1",
    "EDITLOOP_PROMOTION_FLOOR_ALPHA": "1", "EDITLOOP_LOOP_FLOOR_ALPHA": "1",
}


def wait_for(what: str, check, timeout: float, proc, log: Path, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s\n{log.read_text()[-4000:]}")


def ls_tasks(ls: LabelStudio, prefix: str) -> dict[int, dict]:
    """Every task of editloop's projects in Label Studio, by id (read through Label Studio's own API)."""
    out = {}
    for project in ls.projects.list():
        if project.title.startswith(prefix):
            out.update({t.id: t.data for t in iter_tasks(ls, project.id)})
    return out


def test_the_loop_turns_with_no_command_after_up_and_the_labelling(tmp_path, tiny_models, tiny_instruct):
    from annotation.server import LabelStudioInfo
    from annotation.simulate import label_project
    from editloop.cli.annotation import simulated_labellers

    env = {**platform_env(tmp_path, tiny_models, tiny_instruct, "loop"), **LOOP_ENV,
           "EDITLOOP_ANNOTATION_PROJECT_PREFIX": "e2e"}
    state = Path(env["EDITLOOP_STATE_DIR"])
    log = tmp_path / "up.log"
    proc = start_up(env, "--port", "0", log=log)
    try:
        rows = wait_all_ready(env, proc, ALL_PARTS, log)
        sessions = make_sessionmaker(make_engine(f"sqlite:///{state / 'editloop.db'}"))
        info = LabelStudioInfo.load(state / "label-studio.json")
        ls = LabelStudio(base_url=info.url, api_key=info.token)

        # 1. the base editor's sets reach Label Studio by themselves (beat -> loop check -> label-sets run)
        def first_batch() -> dict | None:
            tasks = ls_tasks(ls, "e2e")
            return tasks if len(tasks) >= 14 else None

        first = wait_for("the base editor's 12 candidate sets and 2 gold sets in Label Studio", first_batch, 600,
                         proc, log)
        with sessions() as s:
            run = s.scalars(select(TrainingRun).where(TrainingRun.kind == "label-sets")).one()
            assert run.status == "succeeded" and run.inputs["editor"] == "base", run.error
            assert run.inputs["trigger"].startswith("loop (schedule): editor base served")
            assert len(run.outputs["made"]) == 24 and len(run.outputs["chosen"]) == 12  # pool 2, active selection
            assert len(run.outputs["gold"]) == 2 and run.outputs["pushed"]["created"] == 14
        # 2. the labelling: simulated annotators answer through Label Studio's API (overlap 2)
        labellers = simulated_labellers(info.url, [0.25, 0.5], 0, False)
        for project_id in _project_ids(ls, "e2e"):
            label_project(info.url, labellers, project_id)

        # 3. nothing typed: labels applied, reward retrained and promoted, a round gated and promoted, served
        def served_new_editor() -> str | None:
            with sessions() as s:
                editor = s.scalars(select(ModelVersion).where(ModelVersion.kind == "editor",
                                                              ModelVersion.status == "promoted")).first()
                failed = s.scalars(select(TrainingRun).where(TrainingRun.status == "failed")).all()
                assert not failed, [(r.kind, r.error) for r in failed]
                refused = s.scalars(select(TrainingRun).where(TrainingRun.kind.like("feedback-%"),
                                                              TrainingRun.status == "succeeded")).all()
                assert not any(r.outputs.get("refused") for r in refused), [r.outputs["refused"] for r in refused]
            if editor is None:
                return None
            version = served_version(rows["editor"]["address"])
            return version if version == editor.version else None

        version = wait_for("a promoted editor served by the editor service", served_new_editor, 900, proc, log,
                           every=3)
        with sessions() as s:
            reward = s.scalars(select(TrainingRun).where(TrainingRun.kind == "reward-aesthetic")).one()
            assert reward.inputs["trigger"].startswith(("new labels applied", "schedule")) and reward.outputs[
                "promoted"], reward.outputs
            feedback = s.scalars(select(TrainingRun).where(TrainingRun.kind == "feedback-pefl")).one()
            # the reward run's promotion sends the check at once; beat's may come first (both are the loop)
            assert re.fullmatch(rf"loop \((aesthetic reward promoted|schedule)\): aesthetic reward "
                                rf"{reward.outputs['version']} promoted", feedback.inputs["trigger"])
            assert feedback.outputs["version"] == version

        # 4. the new editor's own sets appear in Label Studio, chosen by the promoted reward's uncertainty
        def new_sets() -> list[int] | None:
            with sessions() as s:
                ids = s.scalars(select(LabelTask.candidate_set_id).join(
                    CandidateSet, CandidateSet.id == LabelTask.candidate_set_id).join(
                    Generation, Generation.id == CandidateSet.generation_id).where(
                    Generation.model_version == version)).all()
            return ids if len(ids) >= 12 else None

        wait_for(f"editor {version}'s candidate sets in Label Studio", new_sets, 600, proc, log)
        assert len(ls_tasks(ls, "e2e")) == len(first) + 14  # counted in Label Studio itself (2 gold sets again)
        with sessions() as s:
            second = s.scalars(select(TrainingRun).where(TrainingRun.kind == "label-sets")
                               .order_by(TrainingRun.created_at.desc())).first()
            assert re.fullmatch(rf"loop \((editor {version} promoted|schedule)\): editor {version} served",
                                second.inputs["trigger"])
            assert all(p["uncertainty"] is not None for p in second.outputs["priorities"].values())
            gold = gold_accuracy(s)  # every labeller was measured on the first batch's gold sets
            assert set(gold) == {f"ls:{u.id}" for u in ls.users.list() if "annotators" in u.email}
            assert all(g["gold_labels"] >= 1 and 0 <= g["both"] <= 1 for g in gold.values())
    finally:
        stop_up(proc)


def _project_ids(ls: LabelStudio, prefix: str) -> list[int]:
    return [p.id for p in ls.projects.list() if p.title.startswith(prefix)]
