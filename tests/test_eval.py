"""`editloop eval`: versions measured on held-out suites (the world's, benchmark folders), stored with the version
in PostgreSQL and as JSON, compared edit by edit; the pixel metrics and the folder layouts on their own."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import promote_rewards
from PIL import Image
from sqlalchemy import select

from editloop.cli.main import main
from editloop.db import ModelVersion
from editloop.db.models import Evaluation
from editloop.labels.simulated import LabelPlan, render_candidate_sets, simulate_labels
from editloop.models.reward import save_reward, tiny_reward
from editloop.world.annotators import SimulatedAnnotator
from editloop.world.io import save_grid_png
from editloop.world.render import render
from editloop.world.scene import sample_scene
from trainers.evaluation.image_metrics import PSNR_CAP, outside_metrics
from trainers.evaluation.suites import folder_suite


def scene_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render(sample_scene(rng)) for _ in range(n)]


def test_outside_metrics_see_only_the_kept_pixels():
    a = scene_images(1, 0)[0]
    mask = np.zeros(a.shape[:2], dtype=np.uint8)
    mask[10:30, 10:30] = 1
    inside = a.copy()
    inside[10:30, 10:30] = 255 - inside[10:30, 10:30]
    same = outside_metrics(inside, a, mask)  # a change inside the mask is the edit: nothing lost
    assert same == {"l1_outside": 0.0, "psnr_outside": PSNR_CAP, "ssim_outside": pytest.approx(1.0, abs=0.05)}
    outside = inside.copy()
    outside[40:60, 40:60] = 255 - outside[40:60, 40:60]
    lost = outside_metrics(outside, a, mask)
    assert lost["l1_outside"] > 0.01 and lost["psnr_outside"] < 30 and lost["ssim_outside"] < same["ssim_outside"]
    assert all(np.isnan(v) for v in outside_metrics(outside, a, np.ones_like(mask)).values())  # nothing kept


def write_png(path: Path, image: np.ndarray, size: int = 96) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((size, size)).save(path)  # not the editor's size: the suite resizes
    return path.name


def manifest_suite(root: Path, n: int, masks: bool = True) -> Path:
    images, lines = scene_images(2 * n, 5), []
    for i in range(n):
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[20:44, 20:44] = 255
        row = {"id": f"ex{i}", "source": write_png(root / f"src{i}.png", images[i]),
               "target": write_png(root / f"tgt{i}.png", images[n + i]), "instruction": "make it red",
               "source_caption": "a blue circle", "target_caption": "a red circle"}
        if masks:
            row["mask"] = write_png(root / f"mask{i}.png", np.stack([mask] * 3, -1))
        lines.append(json.dumps(row))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_folder_suites_in_the_manifest_and_magicbrush_layouts(tmp_path):
    suite = folder_suite(manifest_suite(tmp_path / "m", 3), 64)
    assert suite.name.startswith("manifest:") and [it.id for it in suite.items] == ["ex0", "ex1", "ex2"]
    item = suite.items[0]
    assert item.source.shape == (64, 64, 3) and item.target.shape == (64, 64, 3)
    assert item.mask.sum() == 24 * 24 and item.prompt == "a red circle"
    mb = tmp_path / "mb"
    images = scene_images(3, 9)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32] = 255
    sessions = {"327726": [
        {"input": write_png(mb / "images/327726/327726-input.png", images[0]),
         "mask": write_png(mb / "images/327726/327726-mask1.png", mask),
         "output": write_png(mb / "images/327726/327726-output1.png", images[1]), "instruction": "add a square"},
        {"input": "327726-output1.png", "mask": "327726-mask1.png",
         "output": write_png(mb / "images/327726/327726-output2.png", images[2]), "instruction": "make it green"}]}
    (mb / "edit_sessions.json").write_text(json.dumps(sessions))
    suite = folder_suite(mb, 64)
    assert [it.id for it in suite.items] == ["327726-1", "327726-2"] and suite.items[1].instruction == "make it green"
    assert suite.items[0].mask[:32].all() and not suite.items[0].mask[32:].any()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.jsonl").write_text('{"id": "a", "source": "x.png"}\n')
    with pytest.raises(ValueError, match=r"line 1 lacks \['instruction'\]"):
        folder_suite(tmp_path / "bad", 64)
    with pytest.raises(ValueError, match="neither manifest.jsonl nor edit_sessions.json"):
        folder_suite(tmp_path, 64)


def test_a_labelled_grid_names_its_rows_and_columns(tmp_path):
    rows = [scene_images(3, 1), scene_images(3, 2)]
    save_grid_png(rows, tmp_path / "plain.png")
    save_grid_png(rows, tmp_path / "named.png", ["source", "edited"], ["add a red square", "x", "y"], "edits")
    assert Image.open(tmp_path / "plain.png").size == (3 * 64, 2 * 64)
    named = np.asarray(Image.open(tmp_path / "named.png").convert("L"))
    assert named.shape[1] > 3 * 64 and named.shape[0] > 2 * 64
    with pytest.raises(ValueError, match="needs 2 row labels and 3 captions"):
        save_grid_png(rows, tmp_path / "bad.png", ["source"], ["a", "b", "c"])


def noisy_editor(base: Path, dest: Path, scale: float) -> Path:
    """A copy of the base inpainting model with noise on its UNet: an editor version that edits differently."""
    from editloop.models.card import read_card, write_card
    from editloop.models.zoo import load_pipeline

    pipe = load_pipeline(base, "inpaint", device="cpu", dtype="fp32")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(scale * p.std() * torch.randn_like(p) if p.numel() > 1 else 0)
    pipe.save_pretrained(dest, safe_serialization=True)
    write_card(dest, {**read_card(base), "kind": "editor", "version": "noisy-1"})
    return dest


def tiny_clip(dest: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from editloop.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "max_position_embeddings": tok.model_max_length, "bos_token_id": 0, "eos_token_id": 1,
                                  "pad_token_id": 0},
                     vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                                    "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture
def eval_state(tmp_path, postgres_url, monkeypatch):
    """A PostgreSQL state with labels, promoted (untrained) rewards and a second editor version in the registry."""
    from editloop.registry import register_candidate, store_model_dir
    from editloop.settings import Settings
    from editloop.state import open_state

    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDITLOOP_DATABASE_URL", postgres_url)
    monkeypatch.setenv("EDITLOOP_DEVICE", "cpu")
    settings = Settings()
    sessions, store = open_state(settings)
    rewards = tmp_path / "rewards"
    for kind in ("aesthetic", "alignment"):
        save_reward(tiny_reward(kind, seed=1), kind, rewards / kind, version=f"{kind}-test")
    promote_rewards(sessions, store, rewards, ("aesthetic", "alignment"))
    ids = render_candidate_sets(sessions, store, 40, 3, seed=1, kind="inpaint")
    simulate_labels(sessions, store, ids, LabelPlan([SimulatedAnnotator("sharp", 0.25, seed=3)]))
    noisy = noisy_editor(settings.editor_model, tmp_path / "noisy", 0.3)
    from editloop.models.model_dir import model_version

    lineage = {"start_version": model_version(settings.editor_model), "note": "the base with noise on its UNet"}
    with sessions.begin() as s:
        register_candidate(s, "editor", "editor", "noisy-1", store_model_dir(store, noisy), {"eval_score": 0.5},
                           {"lineage": lineage}, None)
    return settings, sessions, store


def run_cli(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_measures_versions_stores_them_and_compares_them_edit_by_edit(eval_state, capsys):
    settings, sessions, store = eval_state
    base = run_cli(capsys, "editor", "base", "--n", "6")
    noisy = run_cli(capsys, "editor", "noisy-1", "--n", "6")
    assert base["suite"] == noisy["suite"] == "world-inpaint-60000-6"
    for rec in (base, noisy):
        m = rec["metrics"]
        assert 0 <= m["success"] <= 1 and 0 <= m["preservation"] <= 1 and m["n"] == 6
        assert set(m["per_task"]) == {"erase", "inpaint", "outpaint"}
        assert 0 < m["reward_aesthetic"] < 1 and 0 < m["reward_alignment"] < 1  # the promoted rewards scored it
        assert rec["config"]["rewards"] == {"aesthetic": "aesthetic-test", "alignment": "alignment-test"}
        assert len(rec["per_item"]["success"]) == 6 and store.exists(rec["samples_key"])
        assert Path(settings.state_dir / "evals").glob(f"{rec['id']:05d}-editor-*.json")
    assert noisy["metrics"]["l1_outside"] > base["metrics"]["l1_outside"]  # the noise costs what the mask keeps
    with sessions() as s:
        rows = s.scalars(select(Evaluation).order_by(Evaluation.id)).all()
        noisy_row = s.scalars(select(ModelVersion).where(ModelVersion.version == "noisy-1")).one()
        assert [r.model_version_id for r in rows] == [None, noisy_row.id]  # the base is no registry version
    cmp = run_cli(capsys, "compare", "base", "noisy-1")
    assert cmp["n"] == 6 and cmp["a"]["evaluation"] == base["id"] and cmp["b"]["evaluation"] == noisy["id"]
    for verdict in ("success", "preservation"):
        r = cmp["verdicts"][verdict]
        a, b = sum(base["per_item"][verdict]), sum(noisy["per_item"][verdict])
        assert (r["a"], r["b"]) == (a, b) and r["gained"] - r["lost"] == b - a and 0 < r["p"] <= 1
    assert cmp["metrics"]["l1_outside"]["diff"] == pytest.approx(
        noisy["metrics"]["l1_outside"] - base["metrics"]["l1_outside"])
    assert main(["eval", "compare", "base", "no-such-version"]) == 2
    assert "no stored editor evaluation of 'no-such-version'" in capsys.readouterr().err


def test_eval_reward_and_reward_drift(eval_state, capsys):
    rec = run_cli(capsys, "reward", "aesthetic")
    assert rec["version"] == "aesthetic-test" and rec["metrics"]["labelled_pairs"] > 0
    assert 0 <= rec["metrics"]["labelled_accuracy"] <= 1
    rec = run_cli(capsys, "reward", "alignment-test", "--n", "40")
    assert rec["model_kind"] == "alignment" and rec["metrics"]["n"] == 40 and 0 <= rec["metrics"]["accuracy"] <= 1
    drift = run_cli(capsys, "reward-drift", "aesthetic", "--editor", "noisy-1", "--n", "6")
    m = drift["metrics"]
    assert m["editor"].endswith("noisy-1") and m["pairs"] <= 6 and m["base_pairs"] <= 6
    assert len(drift["per_item"]["editor_pair_right"]) == 6
    assert main(["eval", "reward-drift", "aesthetic", "--taste", "sour"]) == 2
    assert "`--taste` must be one of ['default', 'reversed'], got 'sour'" in capsys.readouterr().err
    assert main(["eval", "reward", "nope"]) == 2
    assert "no reward version 'nope'" in capsys.readouterr().err


def test_eval_on_a_benchmark_folder_with_clip(eval_state, tmp_path, capsys):
    suite = manifest_suite(tmp_path / "suite", 3)
    clip = tiny_clip(tmp_path / "clip")
    rec = run_cli(capsys, "instruct", "base", "--suite", str(suite), "--clip", str(clip))
    m = rec["metrics"]
    assert rec["suite"] == f"manifest:{suite.resolve()}" and m["n"] == 3 and "success" not in m  # no judge
    for key in ("l1_outside", "psnr_outside", "ssim_outside", "l1_target", "clip_i", "clip_t", "clip_direction"):
        assert np.isfinite(m[key]), key
    assert -1 <= m["clip_direction"] <= 1 and rec["config"]["clip"] == str(clip)
    unmasked = manifest_suite(tmp_path / "unmasked", 2, masks=False)
    assert main(["eval", "editor", "base", "--suite", str(unmasked)]) == 2
    assert "the inpainting editor needs a mask per item; 2 items" in capsys.readouterr().err
    shutil.rmtree(clip)
    assert main(["eval", "instruct", "base", "--suite", str(suite), "--clip", str(clip)]) == 2
    assert "`--clip` must be a CLIP model directory" in capsys.readouterr().err


IMAGES_LOADED = "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"


def open_page(path: Path, shot: Path) -> dict:
    """The page in headless Chromium: its images (all, and those loaded), its text and a screenshot."""
    from browser import Browser
    from conftest import free_port

    browser = Browser(free_port(), width=1200, height=2400)
    try:
        browser.open(path.resolve().as_uri())
        browser.wait_for(f"document.images.length > 0 && ({IMAGES_LOADED}) === document.images.length", timeout=30)
        page = {"images": browser.evaluate("document.images.length"), "loaded": browser.evaluate(IMAGES_LOADED),
                "text": browser.evaluate("document.body.innerText"),
                "srcs": browser.evaluate("Array.from(document.images).map(i => i.getAttribute('src'))")}
        page["shot"] = browser.screenshot(shot)
    finally:
        browser.close()
    return page


def test_a_report_renders_in_chromium_with_curves_samples_gate_and_lineage(eval_state, tmp_path, capsys):
    """A reward version trained here (its TensorBoard event files give the curves) and the editor version (its
    before/after samples come from evaluations `--evaluate` runs) each get one static page; Chromium renders every
    plot and image of both (the screenshots are kept in the test's folder)."""
    import uuid

    from trainers.reward.run import RewardTrainConfig, train_reward

    settings, sessions, store = eval_state
    run_id = uuid.uuid4().hex
    out = train_reward("alignment", run_id, sessions, store, settings,
                       RewardTrainConfig(steps=6, eval_every=3, batch_size=8, warmup=1, alignment_train=64,
                                         alignment_eval=32))
    board = settings.state_dir / "runs" / run_id / "tensorboard"
    assert list(board.glob("events.out.tfevents.*"))  # the run wrote TensorBoard event files
    from trainers.evaluation.report import board_scalars

    series = board_scalars(settings.state_dir / "runs" / run_id)
    assert [s for s, _ in series["reward-alignment/eval"]] == [3, 6]  # every evaluation, at its step

    capsys.readouterr()
    assert main(["report", out["version"], "--out", str(tmp_path / "reward-report")]) == 0
    page = open_page(tmp_path / "reward-report" / "index.html", tmp_path / "reward-report.png")
    assert page["images"] == page["loaded"] == 1 and page["srcs"] == ["curves.png"]
    assert "The gate" in page["text"] and "chance floor" in page["text"] and "Lineage" in page["text"]
    assert f"run {run_id}" in page["text"] and len(page["shot"]) > 20_000
    assert main(["report", run_id[:8], "--out", str(tmp_path / "run-report")]) == 0  # a run, by a prefix of its id
    run_page = (tmp_path / "run-report" / "index.html").read_text()
    assert f"run {run_id} (reward-alignment)" in run_page and 'src="curves.png"' in run_page
    assert (tmp_path / "run-report" / "curves.png").stat().st_size > 5_000

    assert main(["report", "noisy-1", "--evaluate", "--out", str(tmp_path / "editor-report")]) == 0
    printed = capsys.readouterr().out
    assert "evaluating editor noisy-1" in printed and "evaluating editor base" in printed
    page = open_page(tmp_path / "editor-report" / "index.html", tmp_path / "editor-report.png")
    assert page["images"] == page["loaded"] == 2  # before (the base) and after (noisy-1), as evaluated
    assert all(src.startswith("samples-") for src in page["srcs"])
    text = page["text"]
    assert "edit by edit against the parent" in text and "the base with noise on its UNet" in text
    assert "passes the gate" in text or "refused by the gate" in text
    assert main(["report", "nothing-of-that-name"]) == 2
    assert "no version or run 'nothing-of-that-name'" in capsys.readouterr().err
