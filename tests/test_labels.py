"""The label sync's kernel on real databases: parsing, events, exactly-once apply, statistics."""

import pytest
from sqlalchemy import func, select

from editloop.db import make_engine, make_sessionmaker, upgrade
from editloop.db.models import CandidateItem, ComparisonPair, LabelEvent, LabelTask, Preference
from editloop.labels.apply import apply_pending
from editloop.labels.events import BadPayload, events_from_webhook, record_events
from editloop.labels.results import InvalidLabel, parse_best_worst, parse_side_by_side
from editloop.labels.simulated import render_candidate_sets
from editloop.labels.stats import GSB, krippendorff_alpha_nominal, label_stats, pairwise_agreement
from editloop.store.local import LocalBlobStore


def choices(best=None, worst=None):
    out = []
    for name, value in (("best", best), ("worst", worst)):
        if value is not None:
            out.append({"from_name": name, "to_name": "img1", "type": "choices", "value": {"choices": [value]}})
    return out


def annotation(ann_id, task_id, result, updated="2026-11-23T10:00:00Z", user=7, cancelled=False):
    return {"id": ann_id, "task": task_id, "result": result, "completed_by": user, "updated_at": updated,
            "was_cancelled": cancelled}


@pytest.mark.parametrize("result, reason", [
    (choices("2", "2"), "best equals worst"),
    (choices("2"), "missing answer: worst"),
    (choices("9", "1"), "unknown image"),
    (choices("x", "1"), "unknown image"),
    ("nope", "malformed result"),
    ([{"from_name": "best"}], "malformed result item"),
])
def test_invalid_best_worst_answers_name_the_reason(result, reason):
    with pytest.raises(InvalidLabel, match=reason):
        parse_best_worst(result, 4)


def test_parsers_read_good_answers_and_ignore_foreign_controls():
    extra = {"from_name": "comment", "to_name": "img1", "type": "textarea", "value": {"text": ["hi"]}}
    assert parse_best_worst([*choices("3", "1"), extra], 4).best == 3
    verdict = [{"from_name": "verdict", "to_name": "left", "type": "choices", "value": {"choices": ["Left"]}}]
    assert parse_side_by_side(verdict, swapped=False) == "good"
    assert parse_side_by_side(verdict, swapped=True) == "bad"
    with pytest.raises(InvalidLabel, match="skipped"):
        parse_side_by_side(verdict, swapped=False, was_cancelled=True)


@pytest.mark.parametrize("body, field", [
    ([], "JSON object"),
    ({"action": 3}, "`action`"),
    ({"action": "ANNOTATION_CREATED", "annotation": {"id": "x", "task": 1}}, "`annotation.id`"),
    ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}, "`annotation.task`"),
    ({"action": "ANNOTATIONS_DELETED", "annotations": 5}, "`annotations`"),
    ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "task": 2, "updated_at": "yesterday"}}, "ISO-8601"),
])
def test_malformed_webhook_payloads_name_the_field(body, field):
    with pytest.raises(BadPayload, match=field):
        events_from_webhook(body)


@pytest.fixture
def synced(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    store = LocalBlobStore(tmp_path / "blobs")
    set_ids = render_candidate_sets(sessions, store, 3, n_images=4)
    with sessions.begin() as s:
        for i, cs_id in enumerate(set_ids):
            s.add(LabelTask(kind="best_worst", ls_project_id=1, ls_task_id=100 + i, external_key=f"cs:{cs_id}",
                            candidate_set_id=cs_id))
    return sessions


def webhook(sessions, body):
    with sessions.begin() as s:
        return record_events(s, events_from_webhook(body), "webhook")


def test_apply_is_exactly_once_orders_updates_and_never_revives_deleted(synced):
    created = {"action": "ANNOTATION_CREATED", "annotation": annotation(1, 100, choices("1", "4"))}
    assert webhook(synced, created) == 1
    assert webhook(synced, created) == 0  # a replayed delivery is a no-op
    newer = {"action": "ANNOTATION_UPDATED", "annotation": annotation(1, 100, choices("2", "3"),
                                                                      "2026-11-23T11:00:00Z")}
    older = {"action": "ANNOTATION_UPDATED", "annotation": annotation(1, 100, choices("4", "1"),
                                                                      "2026-11-23T10:30:00Z")}
    webhook(synced, newer)
    webhook(synced, older)  # arrives late: must not overwrite the newer answer
    bad = {"action": "ANNOTATION_CREATED", "annotation": annotation(2, 101, choices("2", "2"))}
    stranger = {"action": "ANNOTATION_CREATED", "annotation": annotation(3, 999, choices("1", "2"))}
    webhook(synced, bad)
    webhook(synced, stranger)
    report = apply_pending(synced)
    assert report.applied == 5 and report.outcomes == {"valid": 2, "ignored": 2, "invalid": 1}
    with synced() as s:
        rows = {p.ls_annotation_id: p for p in s.scalars(select(Preference))}
        assert set(rows) == {1, 2}
        task = s.scalars(select(LabelTask).where(LabelTask.ls_task_id == 100)).one()
        items = {i.position + 1: i.image_id for i in
                 s.scalars(select(CandidateItem).where(CandidateItem.candidate_set_id == task.candidate_set_id))}
        assert rows[1].status == "valid"  # the newer answer (2, 3) won over the late older one (4, 1)
        assert (rows[1].best_image_id, rows[1].worst_image_id) == (items[2], items[3])
        assert rows[2].status == "invalid" and rows[2].reason == "best equals worst (image 2)"
    webhook(synced, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}]})
    webhook(synced, {"action": "ANNOTATION_UPDATED", "annotation": annotation(1, 100, choices("3", "1"),
                                                                              "2026-11-23T12:00:00Z")})
    apply_pending(synced)
    with synced() as s:
        row = s.scalars(select(Preference).where(Preference.ls_annotation_id == 1)).one()
        assert row.status == "retired" and row.reason == "deleted in Label Studio"
        assert s.scalar(select(func.count()).select_from(LabelEvent).where(LabelEvent.applied_at.is_(None))) == 0


def test_a_crash_mid_batch_applies_nothing_of_it_and_the_rerun_applies_all(synced):
    from editloop import faults

    for i in range(30):
        answer = choices(str(1 + i % 4), str(1 + (i + 1) % 4))
        webhook(synced, {"action": "ANNOTATION_CREATED", "annotation": annotation(1000 + i, 100 + i % 3, answer)})
    faults.arm("sync.apply", at=12)
    try:
        with pytest.raises(faults.InjectedCrash):
            apply_pending(synced, batch=10)
    finally:
        faults.disarm()
    with synced() as s:  # the first batch committed, the second rolled back whole
        assert s.scalar(select(func.count()).select_from(Preference)) == 10
    assert apply_pending(synced, batch=10).applied == 20
    with synced() as s:
        assert s.scalar(select(func.count()).select_from(Preference)) == 30


def test_agreement_and_gsb_match_hand_computed_values(synced):
    # Pairwise agreement, units [a,a,b], [a,a], [c]: pairs (a,a) (a,b) (a,b) | (a,a) -> 2 of 4 agree.
    assert pairwise_agreement([["a", "a", "b"], ["a", "a"], ["c"]]) == 0.5
    # Krippendorff's nominal alpha by hand for units [1,1], [1,2], [2,2], [3,3] (8 pairable values):
    # coincidences o_11 = 2 + 0 = 2, o_12 = o_21 = 1, o_22 = 2, o_33 = 2 -> n_1 = 3, n_2 = 3, n_3 = 2, n = 8.
    # D_o = (o_12 + o_21) / n = 2 / 8; D_e = (2*3*3 + 2*3*2 + 2*3*2) / (8 * 7) = 42 / 56.
    # alpha = 1 - (2/8) / (42/56) = 1 - 1/3 = 2/3.
    assert krippendorff_alpha_nominal([[1, 1], [1, 2], [2, 2], [3, 3]]) == pytest.approx(2 / 3)
    assert krippendorff_alpha_nominal([[1, 1], [2, 2]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([[1], [2]]) is None
    # GSB 6/3/1: superiority (6+3)/(3+1) = 2.25; win rate 9 / (9 + 4) = 0.6923.
    assert GSB(6, 3, 1).superiority == pytest.approx(2.25)
    assert GSB(6, 3, 1).win_rate == pytest.approx(9 / 13)
    assert GSB(0, 0, 0).superiority is None
    # The same numbers through the database: set 100 gets best 1,1 (agree), worst 4,3 (disagree).
    for ann_id, task, best, worst, user in [(1, 100, "1", "4", 1), (2, 100, "1", "3", 2), (3, 101, "2", "1", 1)]:
        webhook(synced, {"action": "ANNOTATION_CREATED", "annotation": annotation(ann_id, task, choices(best, worst),
                                                                                  user=user)})
    apply_pending(synced)
    with synced() as s:
        stats = label_stats(s)
        assert stats.per_annotator == {"ls:1": 2, "ls:2": 1} and stats.overlapping_tasks == 1
        assert stats.agreement_best == 1.0 and stats.agreement_worst == 0.0
        assert s.scalar(select(func.count()).select_from(ComparisonPair)) == 0


def test_generated_candidate_sets_are_labelled_into_pairs_and_bad_shapes_are_refused(db_url, tmp_path):
    """ByteEdit's data flow in the simulated world: a generator's own samples become candidate sets that a
    simulated panel labels best/worst, and the labels become preference pairs over exactly those images."""
    import numpy as np

    from editloop.labels.simulated import LabelPlan, image_candidate_sets, simulate_labels
    from editloop.world import render, sample_scene
    from editloop.world.annotators import panel
    from editloop.world.io import to_png
    from editloop.world.render import sample_quality
    from trainers.reward.data import preference_pairs

    upgrade(db_url)
    sessions, store = make_sessionmaker(make_engine(db_url)), LocalBlobStore(tmp_path / "blobs")
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng) for _ in range(5)]
    images = np.stack([[render(s, sample_quality(rng, len(s.objects), q=0.8)) for _ in range(3)] for s in scenes])
    ids = image_candidate_sets(sessions, store, [s.caption for s in scenes], images)
    assert simulate_labels(sessions, store, ids, LabelPlan(panel(seed=0))) == 5
    with sessions() as s:
        split = preference_pairs(s, store, eval_fraction=0.5, min_labels=1)
        keys = {store.put(to_png(im)) for im in images.reshape(-1, *images.shape[2:])}
    pairs = split.train + split.eval
    assert pairs and {p.win for p in pairs} | {p.lose for p in pairs} <= keys
    assert {p.prompt for p in pairs} <= {s.caption for s in scenes}
    with pytest.raises(ValueError, match=r"`images` must be .*got \(5, 3, 64, 64\)"):
        image_candidate_sets(sessions, store, [s.caption for s in scenes], images[..., 0])


def test_the_held_out_sets_the_floor_scores_are_apart_from_those_that_choose_the_checkpoint():
    """A reward run chooses its best checkpoint on the "select" sets and is gated (and floored) on the "eval" sets:
    the three sides are disjoint, and adding a select side moves sets only out of train, never out of eval."""
    from trainers.reward.data import split_of

    plain = {i: split_of(i) for i in range(4000)}
    three = {i: split_of(i, select_fraction=0.10) for i in range(4000)}
    assert {i for i, side in plain.items() if side == "eval"} == {i for i, side in three.items() if side == "eval"}
    assert all(plain[i] == "train" for i, side in three.items() if side == "select")
    counts = {side: sum(v == side for v in three.values()) for side in ("train", "select", "eval")}
    assert 0.13 < counts["eval"] / 4000 < 0.17 and 0.08 < counts["select"] / 4000 < 0.12, counts


def test_generated_edit_sets_carry_their_source_and_mask_and_train_a_reward_that_reads_them(db_url, tmp_path):
    """Edit samples labelled with the masked source they were made from: the pairs keep the source and mask,
    and an aesthetic reward trained on them records `reads_source` (feedback learning passes sources then)."""
    import numpy as np

    from editloop.labels.simulated import LabelPlan, image_candidate_sets, simulate_labels
    from editloop.models.reward import load_reward, save_reward, tiny_reward
    from editloop.models.tokenizer import build_tokenizer
    from editloop.world import cell_mask, render, sample_scene
    from editloop.world.annotators import panel
    from editloop.world.render import sample_quality
    from trainers.reward.aesthetic import train_aesthetic
    from trainers.reward.data import ImageCache, preference_pairs
    from trainers.reward.loop import LoopConfig

    upgrade(db_url)
    sessions, store = make_sessionmaker(make_engine(db_url)), LocalBlobStore(tmp_path / "blobs")
    rng = np.random.default_rng(4)
    scenes = [sample_scene(rng) for _ in range(6)]
    images = np.stack([[render(s, sample_quality(rng, len(s.objects), q=0.8)) for _ in range(3)] for s in scenes])
    sources = np.stack([render(s) for s in scenes])
    masks = np.stack([cell_mask(s.objects[0].position) for s in scenes])
    captions = [s.caption for s in scenes]
    with pytest.raises(ValueError, match="`sources` and `masks` go together"):
        image_candidate_sets(sessions, store, captions, images, sources=sources)
    with pytest.raises(ValueError, match=r"`sources` must be \(6, 64, 64, 3\) .* got \(6, 32, 64, 3\)"):
        image_candidate_sets(sessions, store, captions, images, sources=sources[:, :32], masks=masks)
    ids = image_candidate_sets(sessions, store, captions, images, sources=sources, masks=masks)
    simulate_labels(sessions, store, ids, LabelPlan(panel(seed=0)))
    with sessions() as s:
        split = preference_pairs(s, store, eval_fraction=0.5, min_labels=1)
    pairs = split.train + split.eval
    assert pairs and all(p.source and p.mask for p in pairs)
    model = tiny_reward("aesthetic", 0)
    assert not model.config.reads_source
    best, _ = train_aesthetic(model, build_tokenizer(), split.train, split.eval or split.train, ImageCache(store),
                              LoopConfig(steps=2, eval_every=1, checkpoint_every=10**9), tmp_path / "run",
                              batch_size=4)
    save_reward(best, "aesthetic", tmp_path / "reward")
    assert load_reward(tmp_path / "reward", "aesthetic")[1].config.reads_source


def test_review_pairs_are_written_once_and_only_their_valid_verdicts_count(db_url, tmp_path):
    import numpy as np

    from editloop.db.models import Comparison, ModelVersion
    from editloop.labels.review import AWAITING, Review, record_review, request_review, review_verdicts

    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    store = LocalBlobStore(tmp_path / "blobs")
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8) for _ in range(2))
    prompts = ["a red circle on white", "a blue square on black", "a green triangle on gray"]
    with sessions.begin() as s:
        ids = request_review(s, store, "pefl-1", "base", a, b, prompts)
    with sessions.begin() as s:
        assert request_review(s, store, "pefl-1", "base", a, b, prompts) == ids  # a rerun finds the same pairs
        assert s.scalar(select(func.count()).select_from(ComparisonPair)) == 3
        answers = [(0, "good", "x", "valid"), (0, "bad", "y", "valid"), (0, "good", "z", "valid"),
                   (1, "bad", "x", "valid"), (2, "good", "x", "invalid")]
        for i, verdict, annotator, status in answers:
            s.add(Comparison(pair_id=ids[i], verdict=verdict, annotator=annotator, status=status))
        with pytest.raises(ValueError, match="one image per prompt from each model; got 3 candidate, 2 served"):
            request_review(s, store, "pefl-2", "base", a, b[:2], prompts)
    with sessions.begin() as s:
        review, pairs = review_verdicts(s, "pefl-1")
        # the invalid answer does not count; the first pair counts once, by its reviewers' majority
        assert (review, pairs) == (Review(verdicts=GSB(2, 0, 2), pairs=GSB(1, 0, 1)), 3)
        row = ModelVersion(kind="editor", name="editor", version="pefl-1", checkpoint_key="k" * 64, status="candidate",
                           metrics={"guard_failures": [f"{AWAITING} (3 pairs)"]}, config={})
        s.add(row)
        waiting = record_review(row, review, pairs, 5)
        assert waiting == "4 side-by-side verdicts on its 3 review pairs; the review needs 5"
        assert record_review(row, review, pairs, 4) is None
        assert row.metrics["guard_failures"] == [
            "the reviewers do not prefer it to the served model side by side (pairs won / tied / lost by majority "
            "1 / 0 / 1, sign test p = 0.750, needs < 0.05; verdicts good / same / bad 2 / 0 / 2)"]
        assert row.metrics["review"]["pairs"] == {"won": 1, "tied": 0, "lost": 1}
        faster = ModelVersion(kind="editor", name="editor", version="progressive-1", checkpoint_key="k" * 64,
                              status="candidate", metrics={"review_margin": 0.5}, config={})
        assert record_review(faster, review, pairs, 4) is None  # a faster candidate is tested for no worse
        assert "non-inferiority at margin 0.5: p = 0.240" in faster.metrics["guard_failures"][0]
        assert faster.metrics["review"]["test"] == "non-inferiority at margin 0.5"
