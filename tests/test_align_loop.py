"""The loop's SeedEdit leg: a promoted alignment reward starts alignment rounds on the instruct editor (once,
recorded with its trigger, continuing the promoted instruct version), the schedule too, and a bad policy is named."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from editloop.db import ModelVersion, TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.registry import promote, register_candidate
from editloop.settings import Settings
from trainers.align_loop import align_policy, check_align
from trainers.autoloop import set_paused

SURE = {"units": 400, "unit": "held-out examples", "wins": 240, "p_value": 3e-5}


def _promote(sessions, kind: str, version: str, floor: dict | None = SURE) -> None:
    with sessions.begin() as s:
        register_candidate(s, kind, kind, version, f"key-{version}", {"eval_score": 0.6, "floor": floor}, {}, None)
        promote(s, kind, version, force=True)


def _finish(sessions, run_ids, age_s: float = 0) -> None:
    with sessions.begin() as s:
        for run_id in run_ids:
            run = s.get(TrainingRun, run_id)
            run.status, run.created_at = "succeeded", datetime.now(UTC) - timedelta(seconds=age_s)


def test_a_promoted_alignment_reward_starts_rounds_that_continue_the_promoted_editor(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path, database_url=db_url, loop_align_rounds=2,
                        loop_align_config='{"pairs": 64}')
    sent = []

    def check(source="test"):
        return check_align(sessions, settings, lambda ids, config, start: sent.append((ids, config, start)), source)

    assert check().reason == "waiting for a promoted alignment reward (the rounds' agreement filter)"
    _promote(sessions, "alignment", "weak", {"units": 100, "unit": "held-out examples", "wins": 52, "p_value": 0.38})
    assert "does not surely beat chance" in check().reason and not sent  # a bad reward drives nothing
    _promote(sessions, "alignment", "al-1")
    _promote(sessions, "instruct", "round-3")
    first = check("alignment reward promoted")
    assert first.start and len(first.run_ids) == 2 and sent == [(list(first.run_ids), {"pairs": 64}, "round-3")]
    with sessions() as s:
        rows = [s.get(TrainingRun, r) for r in first.run_ids]
    assert all(r.kind == "align" and r.status == "queued" for r in rows)
    assert rows[0].inputs["trigger"] == "loop (alignment reward promoted): alignment reward al-1 promoted"
    assert rows[0].inputs["first"] == {"version": "round-3"} and rows[0].inputs["chain"] == list(first.run_ids)
    assert check().reason.startswith("debounced: alignment round")
    _finish(sessions, first.run_ids)
    assert check().reason.startswith("no alignment reward promoted since the last round")
    with sessions.begin() as s:
        set_paused(s, True, "GPU busy")
    _promote(sessions, "alignment", "al-2")
    assert check().reason == "paused (GPU busy); `editloop loop resume` turns it on"
    with sessions.begin() as s:
        set_paused(s, False, "")
    assert check().reason == "alignment reward al-2 promoted" and len(sent) == 2


def test_the_schedule_starts_a_chain_and_off_means_off(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path, database_url=db_url, loop_align_interval_s=3600)
    _promote(sessions, "alignment", "al-1")
    with sessions.begin() as s:  # promoted long ago (before the round below, which is backdated)
        s.scalars(select(ModelVersion)).one().promoted_at = datetime.now(UTC) - timedelta(days=1)
    first = check_align(sessions, settings, lambda *a: None)
    _finish(sessions, first.run_ids, age_s=1800)
    assert not check_align(sessions, settings, lambda *a: None).start  # half an hour: not yet
    _finish(sessions, first.run_ids, age_s=3700)
    again = check_align(sessions, settings, lambda *a: None)
    assert again.start and again.reason.startswith("schedule: the last alignment round started over 3600s ago")
    off = settings.model_copy(update={"loop_align_rounds": 0})
    assert check_align(sessions, off, lambda *a: None).reason == "off (EDITLOOP_LOOP_ALIGN_ROUNDS=0)"


def test_method_grpo_starts_one_instruct_grpo_run_instead_of_rounds(db_url, tmp_path):
    """EDITLOOP_LOOP_ALIGN_METHOD=grpo: a promoted alignment reward starts one instruct GRPO run (kind align-grpo,
    recorded with its trigger and the promoted instruct version it continues), sent once, debounced while it runs."""
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path, database_url=db_url, loop_align_method="grpo",
                        loop_align_config='{"steps": 50, "grpo": {"group": 4}}')
    chains, runs = [], []

    def check(source="test"):
        return check_align(sessions, settings, lambda *a: chains.append(a), source, lambda *a: runs.append(a))

    _promote(sessions, "alignment", "al-1")
    _promote(sessions, "instruct", "round-2")
    first = check("alignment reward promoted")
    assert first.start and len(first.run_ids) == 1 and not chains
    assert runs == [(first.run_ids[0], {"steps": 50, "grpo": {"group": 4}}, "round-2")]
    with sessions() as s:
        run = s.get(TrainingRun, first.run_ids[0])
    assert run.kind == "align-grpo" and run.status == "queued" and run.inputs["first"] == {"version": "round-2"}
    assert run.inputs["trigger"] == "loop (alignment reward promoted): alignment reward al-1 promoted"
    assert check().reason.startswith("debounced: instruct GRPO run")
    _finish(sessions, first.run_ids)
    assert check().reason.startswith("no alignment reward promoted since the last round") and len(runs) == 1
    with pytest.raises(ValueError, match="`EDITLOOP_LOOP_ALIGN_METHOD` grpo needs a sender"):
        check_align(sessions, settings, lambda *a: None)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("loop_align_method", "ppo", "`EDITLOOP_LOOP_ALIGN_METHOD` must be one of \\['rounds', 'grpo'\\], got 'ppo'"),
    ("loop_align_rounds", 11, "`EDITLOOP_LOOP_ALIGN_ROUNDS` must be in 0..10"),
    ("loop_align_interval_s", -5.0, "`EDITLOOP_LOOP_ALIGN_INTERVAL_S` must be >= 0"),
    ("loop_align_config", "{pairs: 3", "`EDITLOOP_LOOP_ALIGN_CONFIG` must be a JSON object of round settings"),
    ("loop_align_config", "[1]", "`EDITLOOP_LOOP_ALIGN_CONFIG` must be a JSON object, got '\\[1\\]'"),
    ("loop_align_config", '{"pears": 3}', "`EDITLOOP_LOOP_ALIGN_CONFIG`: .*pears"),
])
def test_a_bad_align_policy_is_named(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        align_policy(Settings(state_dir=tmp_path, **{field: value}))
    with pytest.raises(ValueError, match=r"`EDITLOOP_LOOP_ALIGN_CONFIG`: `batch_size` \(8\) must be a multiple of "):
        align_policy(Settings(state_dir=tmp_path, loop_align_method="grpo", loop_align_config='{"grpo": {"group": 3}}'))
