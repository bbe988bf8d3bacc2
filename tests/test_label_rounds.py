"""The loop's last leg: a batch of candidate sets per served editor (recorded with its trigger, once, under the
loop's lock), chosen by active selection, and the policy's bad values refused by name."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from editloop.db import TrainingRun, make_engine, make_sessionmaker, upgrade
from editloop.registry import promote, register_candidate
from editloop.settings import Settings
from trainers.autoloop import set_paused
from trainers.label_rounds import KIND, SEED_STRIDE, check_label_sets, decide_label_sets, label_policy
from trainers.label_selection import choose_sets, diversity, pair_uncertainty, set_priorities


def _state(db_url, tmp_path, **kw):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, broker_url="", result_backend="",
                        loop_label_sets=4, **kw)
    return sessions, settings


def _check(sessions, settings, send=lambda run_id: None, source="schedule"):
    return check_label_sets(sessions, settings, send, source, down=lambda settings: None)  # Label Studio "up"


def _finish(sessions, run_id: str, status: str = "succeeded", age_s: float = 0) -> None:
    with sessions.begin() as s:
        run = s.get(TrainingRun, run_id)
        run.status, run.error = status, ("ConnectionError: Label Studio down" if status == "failed" else None)
        run.created_at = datetime.now(UTC) - timedelta(seconds=age_s)


def test_one_batch_per_served_editor_recorded_with_its_trigger(db_url, tmp_path):
    sessions, settings = _state(db_url, tmp_path)
    sent = []
    first = _check(sessions, settings, sent.append, "test")
    assert first.start and first.reason == "editor base served" and sent == [first.run_id]
    with sessions() as s:
        run = s.get(TrainingRun, first.run_id)
        assert run.kind == KIND and run.status == "queued" and run.inputs["editor"] == "base"
        assert run.inputs["trigger"] == "loop (test): editor base served"
        assert run.inputs["config"] == {"sets": 4, "images": 4, "pool": 2, "selection": "active", "overlap": 2,
                                        "interval_s": 0.0, "gold": 2, "when_done": True,
                                        "guidances": [1.0, 2.5, 4.0, 7.0]}
    assert "debounced" in _check(sessions, settings, sent.append).reason  # queued: nothing new
    _finish(sessions, first.run_id)
    assert _check(sessions, settings, sent.append).reason.startswith("editor base's sets were made")
    with sessions.begin() as s:  # a promoted editor is served now: its own batch, on examples never shown before
        register_candidate(s, "editor", "editor", "pefl-1", "key", {"eval_score": 1.0}, {}, None)
        promote(s, "editor", "pefl-1")
    second = _check(sessions, settings, sent.append, "editor pefl-1 promoted")
    assert second.start and second.reason == "editor pefl-1 served" and len(sent) == 2
    with sessions() as s:
        seeds = [s.get(TrainingRun, r).inputs["seed"] for r in (first.run_id, second.run_id)]
    assert seeds[1] - seeds[0] == SEED_STRIDE * 2  # past the first batch's whole pool
    _finish(sessions, second.run_id, "failed")  # Label Studio was down: tried again, but not at once
    later = _check(sessions, settings, sent.append).reason
    assert "failed (ConnectionError: Label Studio down); tried again later" in later
    _finish(sessions, second.run_id, "failed", age_s=11 * settings.loop_interval_s)
    assert _check(sessions, settings, sent.append).start and len(sent) == 3


def test_a_fully_labelled_batch_brings_the_next_one_for_the_same_editor(db_url, tmp_path):
    from editloop.db import Preference
    from editloop.labels.gold import make_gold_sets
    from editloop.store import open_store

    sessions, settings = _state(db_url, tmp_path)
    first = _check(sessions, settings)
    with sessions.begin() as s:
        pushed = make_gold_sets(s, open_store(settings), 3, 3, seed=11)  # any real sets stand for the batch's
        s.get(TrainingRun, first.run_id).outputs = {"chosen": pushed[:2], "gold": pushed[2:]}
    _finish(sessions, first.run_id)

    def answer(set_ids, who):
        with sessions.begin() as s:
            s.add_all(Preference(candidate_set_id=i, annotator=who) for i in set_ids)

    answer(pushed, "a")
    answer(pushed[:2], "b")  # overlap 2: the gold set has one answer only
    assert _check(sessions, settings).reason.startswith("editor base's sets were made")
    with sessions.begin() as s:  # a feedback round is on its way: the editor may change, its own batch follows
        s.add(TrainingRun(id="f" * 32, kind="feedback-pefl", status="running", inputs={}))
    answer(pushed[2:], "b")
    assert not _check(sessions, settings).start
    with sessions.begin() as s:
        s.get(TrainingRun, "f" * 32).status = "failed"
    assert not _check(sessions, settings.model_copy(update={"loop_label_when_done": False})).start
    second = _check(sessions, settings)
    assert second.start
    assert second.reason == f"editor base served; batch {first.run_id[:12]} labelled (6 answers on 3 sets)"


def test_paused_off_and_scheduled(db_url, tmp_path):
    sessions, settings = _state(db_url, tmp_path, loop_label_interval_s=60)
    with sessions.begin() as s:
        set_paused(s, True, "audit")
    assert _check(sessions, settings).reason == "paused (audit); `editloop loop resume` turns it on"
    with sessions.begin() as s:
        set_paused(s, False, "")
    off = settings.model_copy(update={"loop_label_sets": 0})
    assert _check(sessions, off).reason == "off (EDITLOOP_LOOP_LABEL_SETS=0)"
    assert check_label_sets(sessions, settings, lambda r: None).reason.startswith(  # the real check: none started
        "waiting for Label Studio: Label Studio is not up (no ")
    first = _check(sessions, settings)
    _finish(sessions, first.run_id, age_s=30)
    with sessions() as s:
        assert not decide_label_sets(s, label_policy(settings), 120).start  # 30 s old: not yet
    _finish(sessions, first.run_id, age_s=90)
    again = _check(sessions, settings)
    assert again.start and again.reason == "editor base served (schedule)"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("loop_label_sets", 1001, "`EDITLOOP_LOOP_LABEL_SETS` must be in 0..1000, got 1001"),
    ("loop_label_images", 1, "`EDITLOOP_LOOP_LABEL_IMAGES` must be in 2..16, got 1"),
    ("loop_label_pool", 0, "`EDITLOOP_LOOP_LABEL_POOL` must be in 1..10, got 0"),
    ("loop_label_gold", -1, "`EDITLOOP_LOOP_LABEL_GOLD` must be in 0..100, got -1"),
    ("loop_label_selection", "smart", "`EDITLOOP_LOOP_LABEL_SELECTION` must be one of random, active, got 'smart'"),
    ("loop_label_interval_s", -1.0, "`EDITLOOP_LOOP_LABEL_INTERVAL_S` must be >= 0"),
])
def test_a_bad_policy_is_refused_by_name(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        label_policy(Settings(state_dir=tmp_path, **{field: value}))



def test_active_selection_prefers_sets_the_reward_cannot_tell_apart_and_that_differ():
    assert pair_uncertainty(np.zeros(3)) == 1.0 and pair_uncertainty(np.array([0.0, 20.0])) < 1e-6
    twins = np.full((3, 8, 8, 3), 100, np.uint8)
    assert diversity(twins) == 0.0
    apart = twins.copy()
    apart[1] = 0
    apart[2] = 255
    assert diversity(apart) > 0.3
    prios = set_priorities([twins, apart], ["a", "b"])  # no reward yet: diversity alone ranks
    assert prios[0]["uncertainty"] is None and prios[1]["priority"] > prios[0]["priority"]
    assert choose_sets(prios, 1, "active", 0) == [1]
    draw = choose_sets([{"priority": 0.0}] * 10, 4, "random", 7)
    assert draw == choose_sets([{"priority": 0.0}] * 10, 4, "random", 7) and len(set(draw)) == 4
    with pytest.raises(ValueError, match="`selection` must be one of random, active, got 'best'"):
        choose_sets(prios, 1, "best", 0)
