import json
import subprocess
import sys

import numpy as np

from editloop.models.zoo import load_pipeline

TWO_STEPS = ["--vae-steps", "2", "--t2i-steps", "2", "--inpaint-steps", "2", "--vae-gate", "0",
             "--eval-n", "4", "--vae-batch", "4", "--t2i-batch", "4", "--inpaint-batch", "4",
             "--text-steps", "2", "--text-batch", "4", "--checkpoint-every", "1", "--seed", "3"]


def pretrain(out, *extra):
    return subprocess.run([sys.executable, "-m", "editloop.cli.main", "world", "pretrain", "--out", str(out),
                           *TWO_STEPS, *extra], capture_output=True, text=True, timeout=600)


def test_two_step_pretrain_writes_loadable_models_with_their_config(tmp_path):
    run = pretrain(tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert [progress[s]["done"] for s in ("vae", "text", "t2i", "inpaint")] == [True] * 4
    assert progress["t2i"]["config"]["t2i_steps"] == 2
    t2i = load_pipeline(tmp_path / "t2i", "t2i", device="cpu")
    inp = load_pipeline(tmp_path / "inpaint", "inpaint", device="cpu")
    assert inp.unet.config.in_channels == 9 and t2i.unet.config.in_channels == 4
    # the inpainting model keeps the text-to-image model's noise schedule
    assert t2i.scheduler.config.beta_schedule == inp.scheduler.config.beta_schedule == "scaled_linear"
    assert t2i.scheduler.config.prediction_type == inp.scheduler.config.prediction_type == "v_prediction"
    assert t2i.unet.config.coord_channels == inp.unet.config.coord_channels == 2
    assert t2i.vae.config.scaling_factor != 1.0  # measured from the latents
    img = t2i("a small blue square at the center on a gray background", num_inference_steps=2,
              output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    # every checkpoint carries the resolved config and the step
    import torch

    ckpt = torch.load(tmp_path / "checkpoints" / "t2i.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["config"]["seed"] == 3


def test_pretrain_resumes_and_skips_finished_stages(tmp_path):
    assert pretrain(tmp_path, "--stages", "vae").returncode == 0
    # more steps for the VAE: a finished stage is skipped, not retrained
    again = pretrain(tmp_path, "--stages", "vae", "t2i")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "vae: done already" in again.stdout
    assert (tmp_path / "t2i" / "model_index.json").is_file()


def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path):
    import torch

    from trainers.pretrain.config import PretrainConfig
    from trainers.pretrain.vae import train_vae

    cfg = PretrainConfig(out=tmp_path, vae_steps=2, vae_batch=2, vae_gate=0, eval_n=2, checkpoint_every=1)
    ckpt = tmp_path / "checkpoints" / "vae.pt"
    train_vae(cfg, tmp_path / "a", ckpt)
    first = torch.load(ckpt, weights_only=False)
    cfg.vae_steps = 3
    metrics = train_vae(cfg, tmp_path / "b", ckpt)  # picks up at step 2
    assert first["step"] == 2 and metrics["vae_steps"] == 3


def test_bad_pretrain_settings_are_named(tmp_path):
    run = pretrain(tmp_path, "--vae-batch", "0")
    assert run.returncode == 2 and "`vae_batch` must be >= 1, got 0" in run.stderr


def test_export_base_writes_fp16_diffusion_weights_that_load_as_fp32(tmp_path):
    import torch

    from editloop.models.base import export_base

    assert pretrain(tmp_path / "run").returncode == 0
    written = export_base(tmp_path / "run", tmp_path / "base")
    assert [p.name for p in written] == ["t2i", "inpaint"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "base" / "t2i" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    with safe_open(str(tmp_path / "base" / "t2i" / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float32
    pipe = load_pipeline(tmp_path / "base" / "inpaint", "inpaint", device="cpu")
    assert pipe.unet.dtype == torch.float32
    assert (tmp_path / "base" / "progress.json").is_file()


def test_asking_for_more_steps_continues_a_finished_stage_and_retrains_what_depends_on_it(tmp_path):
    assert pretrain(tmp_path).returncode == 0
    more = pretrain(tmp_path, "--t2i-steps", "3")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "vae: done already" in more.stdout and "inpaint: will retrain" in more.stdout
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["t2i"]["t2i_steps"] == 3 and progress["inpaint"]["done"]


def test_contrastive_text_stage_feeds_a_frozen_text_encoder_to_both_diffusion_stages(tmp_path):
    import torch
    from transformers import CLIPTextModel

    run = pretrain(tmp_path, "--stages", "vae", "text", "t2i", "inpaint", "--text-steps", "2", "--text-batch", "4")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "t2i: text encoder from" in run.stdout and "(frozen)" in run.stdout
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["text"]["text_steps"] == 2
    assert 0.0 <= progress["text"]["text_position_accuracy"] <= 1.0
    contrastive = CLIPTextModel.from_pretrained(tmp_path / "text" / "text_encoder").state_dict()
    for stage in ("t2i", "inpaint"):
        pipe = load_pipeline(tmp_path / stage, stage, device="cpu")
        assert all(torch.equal(v, contrastive[k]) for k, v in pipe.text_encoder.state_dict().items())
    # retraining the text stage makes the diffusion stages stale
    again = pretrain(tmp_path, "--stages", "text", "t2i", "--text-steps", "3", "--text-batch", "4")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "t2i: will retrain (text changes)" in again.stdout


def test_hard_negative_captions_differ_from_the_scene_in_the_one_way_they_claim():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from editloop.world.scene import parse_caption, sample_scene
    from trainers.pretrain.text import moved, rebound

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 2**32 - 1))
    def check(seed):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng)
        m = parse_caption(moved(rng, scene).caption)
        assert [(o.color, o.shape, o.size) for o in m.objects] == [(o.color, o.shape, o.size) for o in scene.objects]
        assert sum(a.position != b.position for a, b in zip(m.objects, scene.objects, strict=True)) == 1
        r = parse_caption(rebound(rng, scene).caption)
        assert [(o.shape, o.size, o.position) for o in r.objects] == \
            [(o.shape, o.size, o.position) for o in scene.objects]
        assert r.caption != scene.caption and r.background == scene.background

    check()
