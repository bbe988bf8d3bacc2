"""Diffusion-DPO for the instruction editor (trainers/align/dpo.py): the world reads an instruction, instruction-edit
sets are made by an instruction editor version, a run reads only their labels, pins them, registers one instruct
version gated like an alignment round, and `editloop train dpo --instruct` resumes after a killed worker."""

import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import purge, run_killed_once, worker_state
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun
from editloop.db.models import CandidateSet
from editloop.labels.simulated import LabelPlan, render_candidate_sets, render_instruct_sets, simulate_labels
from editloop.world.annotators import SimulatedAnnotator, intended_scene
from editloop.world.edits import apply_instruction, sample_edit
from editloop.world.render import render
from editloop.world.scene import Scene, SceneObject, sample_scene
from trainers.align.dpo import instruct_labels
from trainers.align.tuning import run_instruct_dpo
from trainers.reward.data import NotEnoughLabels

TINY = {"steps": 3, "batch_size": 2, "checkpoint_every": 1, "eval_per_kind": 1}


def test_an_instruction_names_the_scene_it_asks_for():
    rng = np.random.default_rng(5)
    for k in range(300):
        edit = sample_edit(rng, sample_scene(rng))
        assert apply_instruction(edit.source, edit.instruction) == edit.target, edit.instruction
        if k < 30:  # read from the source image, as a person looking at the task would
            seen = intended_scene(edit.instruction, render(edit.source))
            assert seen.background == edit.target.background and set(seen.objects) == set(edit.target.objects)
    scene = Scene("white", (SceneObject("square", "blue", "small", "center"),))
    with pytest.raises(ValueError, match="names the red circle, which the scene does not hold"):
        apply_instruction(scene, "remove the red circle")
    with pytest.raises(ValueError, match="not an instruction of the Shapes World grammar"):
        apply_instruction(scene, "paint it black")
    assert intended_scene("paint it black", render(scene)) is None


def instruct_world(tmp_path, tiny_instruct, instruct_sets: int, edit_sets: int = 0, rabbitmq: bool = False):
    """A migrated state serving the tiny causal instruction editor, with simulated labels on `instruct_sets`
    instruction-edit sets and `edit_sets` inpainting sets (which the instruction editor's DPO must not read)."""
    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=rabbitmq)
    env["EDITLOOP_INSTRUCT_MODEL"] = str(tiny_instruct["causal"])
    settings = settings.model_copy(update={"instruct_model": tiny_instruct["causal"]})
    ids = render_instruct_sets(sessions, store, instruct_sets, 3, seed=1)
    others = render_candidate_sets(sessions, store, edit_sets, 3, seed=2, kind="inpaint") if edit_sets else []
    simulate_labels(sessions, store, ids + others, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=3)]))
    return env, settings, sessions, store, ids


def test_an_instruct_dpo_run_reads_instruction_labels_only_pins_them_and_is_gated_as_a_round(tmp_path,
                                                                                              tiny_instruct):
    _, settings, sessions, store, ids = instruct_world(tmp_path, tiny_instruct, 24, edit_sets=6)
    run_id = uuid.uuid4().hex
    out = run_instruct_dpo(run_id, sessions, store, settings, TINY)
    with sessions() as s:
        run = s.get(TrainingRun, run_id)
        assert run.kind == "align-dpo" and run.status == "succeeded"
        labels = instruct_labels(s)  # the 24 instruction-edit labels, none of the inpainting sets'
        assert set(run.inputs["labels"]) == {p.id for p in labels}
        assert sorted(p.candidate_set_id for p in labels) == sorted(ids)
        assert all(s.get(CandidateSet, cs).kind == "instruct" for cs in ids)
        (version,) = s.scalars(select(ModelVersion).where(ModelVersion.kind == "instruct")).all()
    assert version.version == out["version"] == f"dpo-{run_id[:12]}"
    metrics = version.metrics
    assert {"success", "preservation", "eval_score", "parent_eval_score", "implicit_accuracy"} <= set(metrics)
    assert metrics["steps_done"] == 3 and metrics["labels"] == 24 and metrics["pairs"] == 24 * 3
    assert version.config["lineage"]["method"] == "diffusion-dpo" and version.config["lineage"]["labels"] == 24
    assert version.config["lineage"]["start_version"].startswith("default-instruct:")
    # the gate: as an alignment round's, no worse than the served editor on the same held-out edits
    assert out["promoted"] == (metrics["eval_score"] >= metrics["parent_eval_score"])
    assert run_instruct_dpo(run_id, sessions, store, settings, TINY)["version"] == out["version"]  # done once


def test_too_few_instruction_labels_stop_the_run_with_the_count_and_the_minimum(tmp_path, tiny_instruct):
    _, settings, sessions, store, _ = instruct_world(tmp_path, tiny_instruct, 5, edit_sets=30)
    run_id = uuid.uuid4().hex
    with pytest.raises(NotEnoughLabels, match="at least 20 valid best/worst labels on instruction-edit sets; 5 usable"):
        run_instruct_dpo(run_id, sessions, store, settings, TINY)
    with sessions() as s:
        assert s.get(TrainingRun, run_id).status == "failed"
        assert not s.scalars(select(ModelVersion)).all()


def test_the_cli_refuses_bad_instruct_dpo_flags_before_queueing(tmp_path):
    env, *_ = worker_state(tmp_path)
    for flags, text in ((["--instruct", "--rewards", "aesthetic=1"], "`--rewards` does not apply to --instruct"),
                        (["--instruct", "--eval-per-kind", "0"], "`eval_per_kind` must be an integer in 1..256, got 0"),
                        (["--instruct", "--beta", "-1"], "`dpo_beta` must be a finite number > 0, got -1.0"),
                        (["--eval-per-kind", "2"], "`--eval-per-kind` applies to --instruct runs")):
        done = subprocess.run([sys.executable, "-m", "editloop.cli.main", "train", "dpo", *flags], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and text in done.stderr, (flags, done.stderr[-800:])


def test_editloop_train_dpo_instruct_resumes_after_a_killed_worker_into_one_version(tmp_path, tiny_instruct):
    """`editloop train dpo --instruct` on RabbitMQ; the worker is SIGKILLed once the run has a checkpoint; the next
    worker gets the unacknowledged ALIGN_ROUND message again, resumes from the checkpoint, registers one version."""
    from trainers.celery_app import make_celery

    env, settings, sessions, _, _ = instruct_world(tmp_path, tiny_instruct, 24, rabbitmq=True)
    purge(make_celery(settings))
    code, stdout, stderr, killed_at, _ = run_killed_once(env, settings, "gpu", "idpo", [
        "train", "dpo", "--instruct", "--steps", "8", "--checkpoint-every", "2", "--batch-size", "2",
        "--eval-per-kind", "1", "--wait"])
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert killed_at < 8
    with sessions() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.kind == "align-dpo" and run.status == "succeeded"
        assert run.outputs["metrics"]["steps_done"] == 8 and len(run.inputs["labels"]) == 24
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "instruct")).all()
        assert [v.version for v in versions] == [f"dpo-{run.id[:12]}"]
    assert f"queued instruct dpo run {run.id}" in stdout


def test_the_loop_starts_one_instruct_dpo_run_on_enough_new_instruction_labels(tmp_path, tiny_instruct):
    """EDITLOOP_LOOP_INSTRUCT_DPO_LABELS: two checks at once start one run (recorded with its trigger, sent once);
    the labels a run pinned are not new again; a bad policy is named; a paused loop starts nothing."""
    import threading

    from trainers.autoloop import set_paused
    from trainers.instruct_dpo_loop import check_instruct_dpo

    _, settings, sessions, _, _ = instruct_world(tmp_path, tiny_instruct, 24, edit_sets=30)
    off = check_instruct_dpo(sessions, settings, lambda *a: None)
    assert not off.start and off.reason == "off (EDITLOOP_LOOP_INSTRUCT_DPO_LABELS=0)"
    settings = settings.model_copy(update={"loop_instruct_dpo_labels": 20,
                                           "loop_instruct_dpo_config": '{"steps": 2, "eval_per_kind": 1}'})
    sent, results, barrier = [], [], threading.Barrier(2)

    def racer() -> None:
        barrier.wait()
        results.append(check_instruct_dpo(sessions, settings, lambda *args: sent.append(args), "test"))

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (started,) = [d for d in results if d.start]
    assert started.reason == "new instruction-edit labels: 24 >= 20"  # the 30 inpainting labels do not count
    assert "debounced: instruct DPO run" in next(d for d in results if not d.start).reason
    assert sent == [(started.run_id, {"steps": 2, "eval_per_kind": 1}, None)]  # from the committed editor
    with sessions.begin() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.kind == "align-dpo" and run.inputs["trigger"] == "loop (test): new instruction-edit labels: 24 >= 20"
        run.status, run.inputs = "succeeded", {**run.inputs, "labels": [p.id for p in instruct_labels(s)]}
    assert check_instruct_dpo(sessions, settings, lambda *a: None).reason == "0 new instruction-edit labels of 20"
    with sessions.begin() as s:
        set_paused(s, True, "looking at the labels")
    assert check_instruct_dpo(sessions, settings, lambda *a: None).reason.startswith("paused (looking at the labels)")
    for update, text in (({"loop_instruct_dpo_labels": 5}, "`EDITLOOP_LOOP_INSTRUCT_DPO_LABELS` must be 0 (off) or "
                                                           "in 20..1000000"),
                         ({"loop_instruct_dpo_config": '{"steps": 0}'}, "`EDITLOOP_LOOP_INSTRUCT_DPO_CONFIG`: "),
                         ({"loop_instruct_dpo_config": '{"reward_weights": {"aesthetic": 1}}'},
                          "`reward_weights` does not apply to an instruction editor's DPO run"),
                         ({"loop_instruct_dpo_config": "[1]"}, "must be a JSON object")):
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
            check_instruct_dpo(sessions, settings.model_copy(update=update), lambda *a: None)


def test_instruction_edit_sets_are_made_by_the_instruction_editor_asked_for(tmp_path, tiny_instruct):
    """`editloop annotation candidates --instruct`'s specs, made as the worker makes them: the committed ("base")
    or a registered instruct version, one set per world edit, recorded with the model that made it; idempotent."""
    from editloop.db.models import Generation
    from editloop.registry import register_candidate, store_model_dir
    from editloop.world.instructions import check_instruction
    from trainers import candidates
    from trainers.edit_sets import EditSetsRequest, edit_set_specs, resolve_editor

    _, settings, sessions, store = worker_state(tmp_path)
    settings = settings.model_copy(update={"instruct_model": tiny_instruct["causal"]})
    with sessions.begin() as s:
        register_candidate(s, "instruct", "instruct", "tiny-i2", store_model_dir(store, tiny_instruct["concat"]),
                           {"eval_score": 0.5}, {}, None)
        assert resolve_editor(s, "served", "instruct") == "base"  # nothing promoted
        with pytest.raises(ValueError, match="`editor` 'nope'"):
            resolve_editor(s, "nope", "instruct")

    def made(editor: str) -> list[int]:
        specs = edit_set_specs(EditSetsRequest(editor=editor, sets=3, images=2, steps=2, instruct=True), editor, store)
        with sessions.begin() as s:
            return [candidates.run(candidates.CandidateSpec(**spec), s, store, settings) for spec in specs]

    base_ids, version_ids = made("base"), made("tiny-i2")
    assert made("base") == base_ids  # the same sets again
    with sessions() as s:
        for set_id, (name, version) in [*((i, ("default-instruct", "tiny-causal")) for i in base_ids),
                                        *((i, ("instruct", "tiny-i2")) for i in version_ids)]:
            cs = s.get(CandidateSet, set_id)
            gen = s.get(Generation, cs.generation_id)
            assert cs.kind == gen.kind == "instruct" and cs.source_image_id and cs.mask_key is None
            assert len(cs.items) == 2 and (gen.model_name, gen.model_version, gen.steps) == (name, version, 2)
            assert check_instruction(cs.prompt.text) == cs.prompt.text  # the world edit's instruction
    for spec, text in ((dict(prompt="paint it black", kind="instruct", source_key="k"), "not an instruction"),
                       (dict(prompt="remove the red circle", kind="instruct", source_key="k", mask_key="m"),
                        "takes `source_key` \\(the image to edit\\) and no `mask_key`")):
        with pytest.raises(ValueError, match=text):
            candidates.CandidateSpec(**spec).check()
