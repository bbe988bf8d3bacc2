"""`editloop up` machinery and the client commands, as a user drives them."""


import numpy as np
import pytest

from editloop.cli.main import main
from editloop.cli.stack import running_stack
from editloop.settings import Settings
from editloop.world import cell_mask, render, sample_scene
from editloop.world.io import load_png, mask_to_png, save_png


@pytest.fixture
def stack_env(tmp_path, tiny_models, tiny_instruct, monkeypatch):
    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDITLOOP_INSTRUCT_MODEL", str(tiny_instruct["causal"]))
    monkeypatch.setenv("EDITLOOP_GENERATOR_MODEL", str(tiny_models / "t2i"))
    monkeypatch.setenv("EDITLOOP_EDITOR_MODEL", str(tiny_models / "inpaint"))
    monkeypatch.setenv("EDITLOOP_QUIET_LOGS", "1")
    return Settings()


def test_up_serves_the_clients_and_leaves_no_process_behind(stack_env, tmp_path, capsys):
    scene = sample_scene(np.random.default_rng(0), 2)
    save_png(render(scene), tmp_path / "src.png")
    (tmp_path / "mask.png").write_bytes(mask_to_png(cell_mask(scene.objects[0].position)))
    import psutil

    before = {c.pid for c in psutil.Process().children(recursive=True)}  # e.g. the session's Label Studio
    with running_stack(stack_env) as addresses:
        assert set(addresses) == {"generator", "editor"}
        assert main(["generate", scene.caption, "--n", "2", "--steps", "2", "--out", str(tmp_path / "g"),
                     "--record"]) == 0
        assert main(["erase", str(tmp_path / "src.png"), str(tmp_path / "mask.png"), "--steps", "2",
                     "--out", str(tmp_path / "e")]) == 0
        assert main(["inpaint", str(tmp_path / "src.png"), str(tmp_path / "mask.png"), "--steps", "500",
                     "--prompt", scene.caption, "--out", str(tmp_path / "e")]) == 2
        assert main(["edit", str(tmp_path / "src.png"), f"remove the {scene.objects[0].color} "
                     f"{scene.objects[0].shape}", "--n", "2", "--steps", "2", "--out", str(tmp_path / "i")]) == 0
        assert main(["edit", str(tmp_path / "src.png"), "paint it red", "--steps", "2"]) == 2
        assert main(["models", "list"]) == 0
        children = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
        assert len(children) >= 3
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    out = capsys.readouterr()
    assert "`params.steps` must be in 1..200, got 500" in out.err
    assert "base-t2i" in out.out and "base-inpaint" in out.out  # models list shows both, registered
    assert load_png(tmp_path / "g" / "generate-1.png").shape == (64, 64, 3)
    assert (tmp_path / "e" / "erase-0.png").is_file()
    assert load_png(tmp_path / "i" / "edit-1.png").shape == (64, 64, 3)
    assert "`instruction` 'paint it red' is not an instruction of the Shapes World grammar" in out.err


def test_demo_runs_end_to_end_on_tiny_models(stack_env, tmp_path, label_studio, monkeypatch):
    import json
    import uuid

    import psutil
    from conftest import free_port

    from annotation.server import info_path

    monkeypatch.setenv("EDITLOOP_ANNOTATION_WEB_PORT", str(free_port()))
    monkeypatch.setenv("EDITLOOP_ANNOTATION_PROJECT_PREFIX", f"demo-{uuid.uuid4().hex[:6]}")
    label_studio.save(info_path(stack_env))  # the session's Label Studio stands in for `annotation up`
    monkeypatch.setenv("EDITLOOP_PROMOTION_FLOOR_ALPHA", "1")  # 20 reward steps do not surely beat chance
    assert main(["demo", "--steps", "2", "--prompts", "3", "--candidates", "3", "--reward-steps", "20",
                 "--feedback-steps", "2", "--out", str(tmp_path / "d")]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert len(summary["candidate_sets"]) == 3 and len(summary["erase_success"]) == 4
    assert summary["annotation"]["labels"] == {"valid": 6}  # 3 sets x overlap 2, labelled and synced
    assert summary["rewards"]["alignment"]["promoted"] is True  # the first version passes the gate (floor off)
    assert 0.0 <= summary["rewards"]["service_accuracy"] <= 1.0
    assert summary["feedback"]["rewards"] == ["alignment"]  # 6 labels: too few for an aesthetic run
    fb = summary["feedback"]
    assert not fb["promoted"] or fb["eval_score"] > fb["parent_eval_score"]  # promoted only if better
    from PIL import Image

    w, h = Image.open(tmp_path / "d" / "feedback.png").size  # 6 edits (columns): source, before, after, labelled
    assert w > 6 * 64 and h > 3 * 64 and w > h
    left = [c for c in psutil.Process().children(recursive=True) if "annotation.web" in " ".join(c.cmdline())]
    assert not left  # the image/webhook endpoint it started is stopped
    assert all(len(cs["judged_correct"]) == 3 for cs in summary["candidate_sets"])
    assert (tmp_path / "d" / "candidates.png").is_file() and (tmp_path / "d" / "erase.png").is_file()
    edits = summary["instruction_edits"]
    assert edits["model"] == "default-instruct tiny-causal" and len(edits["edits"]) == 7  # one per edit kind
    w, h = Image.open(tmp_path / "d" / "edit.png").size  # 7 columns (one per edit kind) x 2 rows, labelled
    assert w > 7 * 64 and h > 2 * 64 and w > 2 * h
