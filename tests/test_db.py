import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from editloop.db import (
    CandidateItem,
    CandidateSet,
    Generation,
    GenerationImage,
    ImageRecord,
    ModelVersion,
    Preference,
    Prompt,
    TrainingRun,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from editloop.db.models import Base


def test_upgrade_empty_database_to_head_matches_the_models(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    # the migration and the models agree column by column
    for name, table in Base.metadata.tables.items():
        cols = {c["name"] for c in inspect(engine).get_columns(name)}
        assert cols == set(table.columns.keys()), name
    upgrade(db_url)  # idempotent
    engine.dispose()


def test_generation_candidate_set_preference_round_trip(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    Session = make_sessionmaker(engine)
    with Session.begin() as s:
        prompt = Prompt(text="a small red square at the center on a white background")
        imgs = [ImageRecord(blob_key=f"sha256:{i:064x}", width=64, height=64) for i in range(3)]
        s.add_all([prompt, *imgs])
        s.flush()
        gen = Generation(kind="t2i", prompt=prompt, model_name="base-t2i", model_version="v1", steps=20,
                         guidance=4.0, seed=2**40, scheduler="ddim", params={"eta": 0.0})
        gen.images = [GenerationImage(index=i, image=im) for i, im in enumerate(imgs)]
        cs = CandidateSet(kind="t2i", prompt=prompt, generation_id=gen.id, idempotency_key="k1")
        s.add_all([gen, cs])
        s.flush()
        cs.items = [CandidateItem(position=i, image=im) for i, im in enumerate(imgs)]
        s.add(Preference(candidate_set_id=cs.id, best_image_id=imgs[0].id, worst_image_id=imgs[2].id,
                         annotator="sim-0", ls_task_id=7, ls_annotation_id=70))
        s.add(ModelVersion(kind="t2i", name="base-t2i", version="v1", config={"steps": 2500}, status="promoted"))
        s.add(TrainingRun(kind="aesthetic", inputs={"labels": 10}))
    with Session() as s:
        gen = s.scalars(select(Generation)).one()
        assert gen.seed == 2**40 and gen.params == {"eta": 0.0}
        assert [gi.image.blob_key[-1] for gi in gen.images] == ["0", "1", "2"]
        cs = s.scalars(select(CandidateSet)).one()
        assert len(cs.items) == 3 and cs.prompt.text.startswith("a small red square")
        assert s.scalars(select(Preference)).one().status == "valid"
        assert s.scalars(select(TrainingRun)).one().status == "queued"
    # one preference row per Label Studio annotation; one (name, version) in the registry
    with pytest.raises(IntegrityError), Session.begin() as s:
        s.add(Preference(candidate_set_id=cs.id, annotator="sim-1", ls_annotation_id=70))
    with pytest.raises(IntegrityError), Session.begin() as s:
        s.add(ModelVersion(kind="t2i", name="base-t2i", version="v1"))
    engine.dispose()
