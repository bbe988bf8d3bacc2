"""The committed base models load through the service entry point and keep their record."""

import json

import numpy as np

from editloop.models.base import BASE_DIR, load_base
from editloop.models.evaluate import inpaint
from editloop.world import cell_mask, render, sample_scene


def test_committed_base_models_load_and_sample():
    t2i = load_base("t2i", device="cpu")
    img = t2i("a large red circle at the top left on a white background", num_inference_steps=2,
              output_type="np").images
    assert img.shape == (1, 64, 64, 3)
    inp = load_base("inpaint", device="cpu")
    scene = sample_scene(np.random.default_rng(0), 2)
    out = inpaint(inp, render(scene)[None], cell_mask(scene.objects[0].position)[None], [scene.caption], seed=0,
                  steps=2)
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8


def test_committed_base_models_passed_the_vae_gate_and_record_their_recipe():
    progress = json.loads((BASE_DIR / "progress.json").read_text())
    assert progress["vae"]["vae_clean_recon_caption_accuracy"] >= 0.98
    assert progress["t2i"]["config"]["seed"] == 0
    assert all(progress[s]["done"] for s in ("vae", "t2i", "inpaint"))
    sizes = sum(f.stat().st_size for f in BASE_DIR.rglob("*") if f.is_file())
    assert sizes < 60 * 2**20  # tens of MB at most


def test_pretraining_defaults_are_the_committed_base_recipe():
    """`editloop world pretrain` with no recipe flags trains what is committed (the VAE was made by an earlier
    run: its own record is progress["vae"]["config"])."""
    from trainers.pretrain.config import PretrainConfig

    progress = json.loads((BASE_DIR / "progress.json").read_text())
    recorded = progress["inpaint"]["config"]
    not_recipe = ("out", "stages", "device", "dtype", "threads", "checkpoint_every", "eval_n")
    for name, default in PretrainConfig().to_dict().items():
        if name not in not_recipe and not name.startswith("vae_"):
            assert recorded[name] == default, name
