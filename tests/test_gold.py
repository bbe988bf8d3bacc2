"""Gold sets: known answers mixed among the sets, measuring each annotator (`editloop annotation stats`)."""

import pytest

from editloop.db import GoldAnswer, make_engine, make_sessionmaker, upgrade
from editloop.labels.gold import gold_accuracy, make_gold_sets, record_gold
from editloop.labels.simulated import LabelPlan, simulate_labels
from editloop.labels.stats import format_stats, label_stats
from editloop.store.local import LocalBlobStore
from editloop.world.annotators import SimulatedAnnotator


def test_gold_sets_measure_a_careful_annotator_above_a_careless_one(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    store = LocalBlobStore(tmp_path / "blobs")
    with sessions.begin() as s:
        ids = make_gold_sets(s, store, 40, 4, seed=1)
    with sessions() as s:
        answers = [s.get(GoldAnswer, i) for i in ids]
        assert all(a.source == "world judge" and a.best_image_id != a.worst_image_id for a in answers)
    careful, careless = SimulatedAnnotator("careful", 0.1, seed=0), SimulatedAnnotator("careless", 20.0, seed=1)
    simulate_labels(sessions, store, ids, LabelPlan([careful, careless], overlap=2))
    with sessions() as s:
        gold = gold_accuracy(s)
        text = format_stats(label_stats(s))
    assert gold["sim:careful"]["gold_labels"] == gold["sim:careless"]["gold_labels"] == 40
    assert gold["sim:careful"]["both"] > 0.6 > 0.4 > gold["sim:careless"]["both"]  # chance: 1/4 x 1/3 = 0.083
    assert "accuracy on gold sets (known answers), per annotator:" in text
    assert f"sim:careful: best {gold['sim:careful']['best']:.3f}" in text


def test_a_gold_answer_is_checked_against_its_set(db_url, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    store = LocalBlobStore(tmp_path / "blobs")
    with sessions.begin() as s:
        [set_id] = make_gold_sets(s, store, 1, 3, seed=2)
    with sessions.begin() as s:
        with pytest.raises(ValueError, match=r"`best_position` must be in 0..2 \(set \d+ has 3 images\), got 3"):
            record_gold(s, set_id, 3, 0, "expert")
        with pytest.raises(ValueError, match="`best_position` and `worst_position` are both 1"):
            record_gold(s, set_id, 1, 1, "expert")
        with pytest.raises(ValueError, match="no candidate set 999"):
            record_gold(s, 999, 0, 1, "expert")
        assert record_gold(s, set_id, 2, 0, "expert").source == "expert"  # an expert may correct the answer
    with pytest.raises(ValueError, match="`sets` must be in 1..1000, got 0"), sessions() as s:
        make_gold_sets(s, store, 0)
    with sessions() as s:
        assert "no gold set labelled yet" in format_stats(label_stats(s))


def test_the_cli_makes_gold_sets_and_names_bad_values(tmp_path, monkeypatch, capsys):
    from editloop.cli.main import main

    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(tmp_path / "state"))
    assert main(["annotation", "gold", "--sets", "3", "--images", "3"]) == 0
    assert "gold sets 1..3 made (3, answers recorded); push them with `editloop annotation push`" in \
        capsys.readouterr().out
    assert main(["annotation", "gold", "--sets", "2", "--images", "1"]) == 2
    assert "`images` must be in 2..16, got 1" in capsys.readouterr().err
