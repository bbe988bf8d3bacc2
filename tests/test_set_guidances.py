"""Candidate sets whose images each have their own text guidance (editloop/guidances.py): what the loop's label
batches are made with by default, since near-twin sets carry little signal (BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import worker_state

from editloop.db.models import CandidateSet, Generation
from editloop.guidances import guidance_groups, parse_guidances
from editloop.world.io import from_png


def images_of(sessions, store, set_id: int) -> tuple[list[np.ndarray], Generation]:
    with sessions() as s:
        cs = s.get(CandidateSet, set_id)
        gen = s.get(Generation, cs.generation_id)
        s.expunge(gen)
        return [from_png(store.get(item.image.blob_key), "candidate") for item in cs.items], gen


def gap(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_each_image_is_sampled_at_its_own_guidance_with_its_own_seed(tmp_path, tiny_models, tiny_instruct):
    """Image i of a varied set is the image a one-guidance set at its guidance makes with the same seed, for
    inpaint and instruct sets alike; the record names every image's guidance; the idempotency keys differ."""
    from trainers import candidates
    from trainers.edit_sets import EditSetsRequest, edit_set_specs

    _, settings, sessions, store = worker_state(tmp_path)
    settings = settings.model_copy(update={"editor_model": tiny_models / "inpaint",
                                           "instruct_model": tiny_instruct["causal"]})
    for instruct in (False, True):
        varied_request = EditSetsRequest(editor="base", sets=1, images=4, steps=2, guidances=(1.0, 7.0),
                                         instruct=instruct)
        specs = edit_set_specs(varied_request, "base", store)
        singles = {g: edit_set_specs(EditSetsRequest(editor="base", sets=1, images=4, steps=2, guidance=g,
                                                     instruct=instruct), "base", store)[0] for g in (1.0, 7.0)}
        assert len({specs[0]["idempotency_key"], *(s["idempotency_key"] for s in singles.values())}) == 3
        with sessions.begin() as s:
            varied_id = candidates.run(candidates.CandidateSpec(**specs[0]), s, store, settings)
            single_ids = {g: candidates.run(candidates.CandidateSpec(**spec), s, store, settings)
                          for g, spec in singles.items()}
        varied, gen = images_of(sessions, store, varied_id)
        assert gen.params["guidances"] == [1.0, 7.0, 1.0, 7.0] and gen.steps == 2
        low, high = (images_of(sessions, store, single_ids[g])[0] for g in (1.0, 7.0))
        for i, image in enumerate(varied):  # equal up to the batch size's float rounding (2 images vs 4)
            own, other = (low, high) if i % 2 == 0 else (high, low)
            assert gap(image, own[i]) <= 2 < gap(image, other[i]), (instruct, i)
        assert not np.array_equal(low[0], high[0])  # the guidance matters for these models


def test_the_loop_makes_varied_sets_by_default_and_bad_lists_are_named(tmp_path, capsys):
    from editloop.cli.main import main
    from editloop.settings import Settings
    from trainers.candidates import CandidateSpec
    from trainers.label_rounds import label_policy

    assert label_policy(Settings(state_dir=tmp_path)).guidances == (1.0, 2.5, 4.0, 7.0)
    assert label_policy(Settings(state_dir=tmp_path, loop_label_guidances="")).guidances is None
    assert guidance_groups([1.0, 7.0, 1.0, 4.0]) == [(1.0, [0, 2]), (4.0, [3]), (7.0, [1])]
    assert CandidateSpec(prompt="a", n=5, guidances=(1.0, 2.0)).image_guidances() == [1.0, 2.0, 1.0, 2.0, 1.0]
    assert CandidateSpec(prompt="a", n=2, guidance=3.0).image_guidances() == [3.0, 3.0]
    bad = [("1,x", "`EDITLOOP_LOOP_LABEL_GUIDANCES` must be comma-separated numbers (e.g. 1.0,2.5,4.0,7.0), "
                    "got '1,x'"),
           ("1,12", "`EDITLOOP_LOOP_LABEL_GUIDANCES` values must be numbers in [0, 10.0], got 12.0"),
           ("nan", "`EDITLOOP_LOOP_LABEL_GUIDANCES` values must be numbers in [0, 10.0], got nan"),
           (",".join(["1"] * 17), "`EDITLOOP_LOOP_LABEL_GUIDANCES` takes 1..16 values (one per image, cycled), "
                                  "got 17")]
    for text, message in bad:
        with pytest.raises(ValueError) as err:
            label_policy(Settings(state_dir=tmp_path, loop_label_guidances=text))
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"`guidances` values must be numbers in \[0, 10.0\], got -1"):
        CandidateSpec(prompt="a", guidances=(2.0, -1)).check()
    assert parse_guidances(" ", "x") is None
    assert main(["annotation", "candidates", "--guidances", "1,99", "--sets", "1"]) == 2
    assert "`--guidances` values must be numbers in [0, 10.0], got 99.0" in capsys.readouterr().err
