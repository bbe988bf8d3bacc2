"""SeedEdit: causal two-branch attention, instruction editors, pairs, filters, training, rounds on a worker."""

import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import start_worker, wait_for_checkpoint, worker_state
from sqlalchemy import select

from editloop.cli.main import build_parser
from editloop.cli.train import align_config
from editloop.db import ModelVersion, TrainingRun
from editloop.models.instruct import load_instruct_editor
from editloop.models.instruct_sampling import edit_images
from editloop.models.zoo import load_pipeline
from editloop.paths import INSTRUCT_DIR
from editloop.world.edits import EDIT_KINDS, sample_edit
from editloop.world.instructions import check_instruction, valid_instructions
from editloop.world.render import render
from editloop.world.scene import sample_scene
from trainers.align.editor_train import (
    EditorTrainConfig,
    batch_indices,
    editor_from_inpaint,
    editor_from_t2i,
    new_editor,
    train_editor,
)
from trainers.align.evaluate import held_out_edits, judge_edits
from trainers.align.filters import FilterConfig, JudgeScorer, filter_pairs, region_l1
from trainers.align.pairs import Pairs, candidate_specs, edit_specs, latent_region, weak_pairs_batch
from trainers.align.round_config import RoundConfig, round_pairs
from trainers.align.run import TooFewPairs, run_align_round
from trainers.align.select import best_per_spec, kept_round_pairs

ALIGN_TINY = {"pairs": 14, "pair_steps": 2, "scorer": "judge", "min_pairs": 1, "eval_per_kind": 1,
              "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 1}}


@pytest.fixture
def t2i(tiny_models):
    return load_pipeline(tiny_models / "t2i", "t2i", device="cpu", dtype="fp32")


def shuffled_pairs(seed: int) -> tuple[np.ndarray, Pairs]:
    """Six world edits whose targets are the other edits' sources (training data with no meaning, for
    exercising the trainer), and the sources."""
    edits = edit_specs(6, seed)
    images = np.stack([render(e.source) for e in edits])
    return images, Pairs(images, images[::-1].copy(), np.stack([e.mask for e in edits]),
                         [e.instruction for e in edits], [e.kind for e in edits],
                         [e.source.to_json() for e in edits], [e.target.to_json() for e in edits], ["test"] * 6)


def noisy_inputs(editor, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(n, 4, 16, 16, generator=g)
    images = np.stack([render(sample_scene(np.random.default_rng(seed + k))) for k in range(n)])
    return noisy, editor.encode_images(images), editor.encode_text(["make the red circle blue"] * n)


@torch.no_grad()
def test_causal_rows_without_the_image_are_the_text_to_image_unet(t2i):
    """Target tokens that may not see the input attend only to themselves: exactly the plain UNet; rows that
    see it depend on the input image, and the input branch's keys do not depend on the target."""
    editor = editor_from_t2i(t2i, "causal")
    noisy, image_lat, text = noisy_inputs(editor)
    t = torch.tensor([500, 500])
    plain = t2i.unet(noisy, t, text).sample
    empty = editor.encode_text([""])
    editor.encode_input_branch(image_lat, empty)
    kept = {k: v[0].clone() for k, v in editor.branches.kept.items()}
    hidden = editor.eps(noisy, t, text, None, torch.tensor([False, False]))
    seen = editor.eps(noisy, t, text, None, torch.tensor([True, True]))
    seen_other = editor.eps(noisy * 0.5, t, text, None, torch.tensor([True, True]))
    assert torch.allclose(hidden, plain, atol=1e-5)
    assert not torch.allclose(seen, plain, atol=1e-3)
    assert all(torch.equal(kept[k], v[0]) for k, v in editor.branches.kept.items())  # untouched by the target
    editor.encode_input_branch(image_lat.flip(0), empty)  # another input image changes the seen rows
    assert not torch.allclose(editor.eps(noisy, t, text, None, torch.tensor([True, True])), seen, atol=1e-3)
    assert not torch.allclose(seen_other, seen)


@torch.no_grad()
def test_a_new_concat_editor_starts_as_the_text_to_image_unet(t2i):
    editor = editor_from_t2i(t2i, "concat")
    assert editor.unet.config.in_channels == 8
    noisy, image_lat, text = noisy_inputs(editor)
    t = torch.tensor([300, 300])
    plain = t2i.unet(noisy, t, text).sample
    assert torch.allclose(editor.eps(noisy, t, text, image_lat, torch.tensor([True, False])), plain, atol=1e-5)


@torch.no_grad()
def test_a_concat_editor_from_the_inpainting_model_starts_as_inpainting_that_keeps_everything(tiny_models, t2i):
    """init "inpaint": at step 0 the concat editor is the inpainting UNet told mask 0 (keep every pixel) with
    the whole input as its masked image; the other starts are refused with the field and value."""
    inp = load_pipeline(tiny_models / "inpaint", "inpaint", device="cpu", dtype="fp32")
    editor = editor_from_inpaint(inp)
    assert editor.arch == "concat" and editor.unet.config.in_channels == 8
    noisy, image_lat, text = noisy_inputs(editor)
    t = torch.tensor([300, 300])
    keep_all = inp.unet(torch.cat([noisy, torch.zeros_like(noisy[:, :1]), image_lat], dim=1), t, text).sample
    no_image = inp.unet(torch.cat([noisy, torch.zeros_like(noisy[:, :1]), 0 * image_lat], dim=1), t, text).sample
    got = editor.eps(noisy, t, text, image_lat, torch.tensor([True, False]))
    assert torch.allclose(got[:1], keep_all[:1], atol=1e-5) and torch.allclose(got[1:], no_image[1:], atol=1e-5)
    with pytest.raises(ValueError, match="an inpainting UNet has 9 input channels, got 4"):
        editor_from_inpaint(t2i)
    with pytest.raises(ValueError, match="`init` 'inpaint' starts a concat editor only"):
        new_editor("causal", "inpaint")
    with pytest.raises(ValueError, match="`init` must be one of \\['t2i', 'inpaint'\\], got 'sdxl'"):
        new_editor("concat", "sdxl")


def test_gradients_reach_the_shared_unet_through_both_branches(t2i):
    editor = editor_from_t2i(t2i, "causal")
    noisy, image_lat, text = noisy_inputs(editor)
    image_lat.requires_grad_(True)
    editor.encode_input_branch(image_lat, editor.encode_text([""]))
    out = editor.eps(noisy, torch.tensor([10, 10]), text, None, torch.tensor([True, True]))
    out.square().mean().backward()
    assert image_lat.grad is not None and image_lat.grad.abs().sum() > 0  # the target attends to the input
    assert editor.unet.conv_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["causal", "concat"])
def test_sampling_is_seeded_per_image_and_saves_and_loads(tmp_path, t2i, arch):
    editor = editor_from_t2i(t2i, arch)
    images = np.stack([render(sample_scene(np.random.default_rng(k))) for k in range(3)])
    texts = ["make the red circle blue", "remove the blue square", "change the background to white"]
    together = edit_images(editor, images, texts, [5, 6, 7], steps=3)
    alone = edit_images(editor, images[1:2], texts[1:2], [6], steps=3)
    assert together.shape == (3, 64, 64, 3) and together.dtype == np.uint8
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 2
    editor.save(tmp_path / "m", {"version": "v1", "default_steps": 3})
    loaded = load_instruct_editor(tmp_path / "m")
    assert loaded.arch == arch and loaded.meta["version"] == "v1" and loaded.setting("default_steps") == 3
    again = edit_images(loaded, images[1:2], texts[1:2], [6])
    assert np.abs(again[0].astype(int) - alone[0].astype(int)).max() <= 2
    with pytest.raises(ValueError, match="`image_guidance` must be in"):
        edit_images(editor, images[:1], texts[:1], [1], steps=2, image_guidance=11)
    with pytest.raises(ValueError, match="not an instruction editor"):
        load_instruct_editor(tmp_path)


def test_sampling_can_start_from_the_noised_input_and_names_a_bad_start(t2i):
    """start="input" is x_T = sqrt(abar_T) z_input + sqrt(1 - abar_T) eps: the same seed gives a start that
    differs by the input's share, which the saved default then selects."""
    from diffusers import DDIMScheduler

    from editloop.models.instruct_sampling import initial_latents

    editor = editor_from_t2i(t2i, "causal")
    sched = DDIMScheduler.from_config(editor.scheduler.config)
    sched.set_timesteps(4)
    z, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    abar = sched.alphas_cumprod[int(sched.timesteps[0])]
    assert torch.equal(initial_latents(sched, z, noise, "noise"), noise)
    assert torch.allclose(initial_latents(sched, z, noise, "input"), abar.sqrt() * z + (1 - abar).sqrt() * noise)
    images = np.stack([render(sample_scene(np.random.default_rng(k))) for k in range(2)])
    texts = ["make the red circle blue", "remove the blue square"]
    plain = edit_images(editor, images, texts, [1, 2], steps=2)
    anchored = edit_images(editor, images, texts, [1, 2], steps=2, start="input")
    assert not np.array_equal(plain, anchored)
    editor.meta["default_start"] = "input"
    assert np.array_equal(edit_images(editor, images, texts, [1, 2], steps=2), anchored)
    with pytest.raises(ValueError, match="`start` must be one of \\['noise', 'input'\\], got 'image'"):
        edit_images(editor, images, texts, [1, 2], steps=2, start="image")


def test_guidance_rescale_matches_the_conditioned_spread_and_names_a_bad_value(t2i):
    """Lin et al.'s rescale: phi = 1 gives each image the standard deviation of the fully conditioned prediction,
    phi = 0 is plain guidance; the editor's saved default selects it, and a value outside [0, 1] is named."""
    from editloop.models.instruct_sampling import rescale_guidance

    guided, cond = 3.0 * torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)
    full = rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(rescale_guidance(guided, cond, 0.5), 0.5 * (full + guided))
    editor = editor_from_t2i(t2i, "concat")
    images = np.stack([render(sample_scene(np.random.default_rng(k))) for k in range(2)])
    texts = ["make the red circle blue", "remove the blue square"]
    rescaled = edit_images(editor, images, texts, [1, 2], steps=2, guidance_rescale=0.7)
    assert not np.array_equal(edit_images(editor, images, texts, [1, 2], steps=2), rescaled)
    editor.meta["default_guidance_rescale"] = 0.7
    assert np.array_equal(edit_images(editor, images, texts, [1, 2], steps=2), rescaled)
    with pytest.raises(ValueError, match=r"`guidance_rescale` must be in \[0, 1\], got 1.5"):
        edit_images(editor, images, texts, [1, 2], steps=2, guidance_rescale=1.5)


def test_an_editor_trains_on_zero_terminal_snr_with_velocity_targets(tmp_path, t2i):
    """editor_from_t2i(..., "zero-snr-v"): the editor's own schedule (saved with it) is v-prediction with a
    pure-noise last step; training regresses the velocity, and the trained editor samples and reloads."""
    from editloop.models.zoo import training_scheduler
    from trainers.align.editor_train import editor_loss
    from trainers.pretrain.diffusion import prediction_target

    editor = editor_from_t2i(t2i, "causal", "zero-snr-v")
    assert editor.scheduler.config.prediction_type == "v_prediction"
    assert t2i.scheduler.config.prediction_type == "epsilon"  # the base keeps its own
    sched = training_scheduler(editor.scheduler.config)
    draws = torch.Generator().manual_seed(0)  # not the global stream: other tests' draws must not move this one
    src, tgt = torch.randn(2, 4, 16, 16, generator=draws), torch.randn(2, 4, 16, 16, generator=draws)
    text, empty = editor.encode_text(["make the red circle blue"] * 2), editor.encode_text([""])
    sees = torch.tensor([True, True])
    loss = editor_loss(editor, sched, src, tgt, text, empty, sees, torch.Generator().manual_seed(3), 0.0)
    gen = torch.Generator().manual_seed(3)  # the same draws, by hand: the target is the velocity, not the noise
    noise = torch.randn(tgt.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    with torch.no_grad():
        editor.encode_input_branch(src, empty)
        pred = editor.eps(sched.add_noise(tgt, noise, t), t, text, src, sees)
    v = prediction_target(sched, tgt, noise, t)
    assert torch.allclose(loss, ((pred - v) ** 2).mean(), atol=1e-5)
    assert ((v - noise) ** 2).mean() > 0.05  # and that target is not the noise (t = 170 and 94 here)
    images, pairs = shuffled_pairs(2)
    train_editor(editor, pairs, EditorTrainConfig(steps=2, batch_size=2, warmup=1), tmp_path / "run")
    editor.save(tmp_path / "m", {"version": "v-zsnr"})
    loaded = load_instruct_editor(tmp_path / "m")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    out = edit_images(loaded, images[:2], pairs.instructions[:2], [0, 1], steps=3)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="`schedule` must be one of \\['sd', 'zero-snr-v'\\], got 'cosine'"):
        editor_from_t2i(t2i, "causal", "cosine")


def test_every_world_instruction_is_in_the_grammar_and_others_get_the_closest_forms():
    rng = np.random.default_rng(0)
    grammar = set(valid_instructions())
    for _ in range(300):
        edit = sample_edit(rng, sample_scene(rng))
        assert edit.instruction in grammar
    assert check_instruction("  Remove the Blue Square. ") == "remove the blue square"
    with pytest.raises(ValueError, match="closest valid forms: 'turn the red circle into a square'"):
        check_instruction("turn the red circle into square")


def test_edit_specs_are_balanced_and_deterministic():
    specs = edit_specs(21, 3)
    assert [e.kind for e in specs] == list(EDIT_KINDS) * 3
    assert [e.instruction for e in edit_specs(21, 3)] == [e.instruction for e in specs]
    assert [e.instruction for e in edit_specs(21, 4)] != [e.instruction for e in specs]


def test_balanced_batches_draw_each_kind_alike_however_the_pairs_lean():
    kinds = ["remove"] * 90 + ["add"] * 6 + ["recolor"] * 4
    plain = batch_indices(np.random.default_rng(0), kinds, 3000, balance_kinds=False)
    balanced = batch_indices(np.random.default_rng(0), kinds, 3000, balance_kinds=True)
    share = lambda idx, k: np.mean([kinds[i] == k for i in idx])  # noqa: E731
    assert share(plain, "remove") > 0.85 and share(plain, "recolor") < 0.08
    for k in ("remove", "add", "recolor"):
        assert abs(share(balanced, k) - 1 / 3) < 0.04, (k, share(balanced, k))
    assert set(balanced[[kinds[i] == "recolor" for i in balanced]]) == {96, 97, 98, 99}  # every recolor pair drawn
    again = batch_indices(np.random.default_rng(0), kinds, 3000, balance_kinds=True)
    assert np.array_equal(balanced, again)  # a step's batch depends on its stream alone (exact resume)


def test_held_out_edits_grow_by_prefix_and_the_judge_scores_each_edit():
    small, large = held_out_edits(1), held_out_edits(3)
    assert [e.instruction for e in large[: len(small)]] == [e.instruction for e in small]
    sources = np.stack([render(e.source) for e in large])
    exact = judge_edits(large, sources, np.stack([render(e.target) for e in large]))
    assert exact["per_edit"] == {"success": [1] * len(large), "preservation": [1] * len(large)}
    unchanged = judge_edits(large, sources, sources)  # an editor that returns its input edits nothing
    assert unchanged["per_edit"]["success"] == [0] * len(large) and unchanged["l1_outside"] == 0
    assert unchanged["preservation"] == np.mean(unchanged["per_edit"]["preservation"]) > 0


def test_latent_blending_keeps_the_source_outside_the_edit_region(t2i):
    edits = [e for e in edit_specs(14, 1) if e.kind in ("recolor", "remove")][:2]
    src, tgt = weak_pairs_batch(t2i, edits, [1, 2], steps=3)
    region = latent_region(np.stack([e.mask for e in edits]), 16)
    assert region.shape == (2, 1, 16, 16) and 0 < region.mean() < 0.5
    far = np.kron(1 - region[:, 0].numpy(), np.ones((4, 4)))[..., None]  # pixels of latents never blended
    far = np.pad(far[:, 8:-8, 8:-8], ((0, 0), (8, 8), (8, 8), (0, 0)))  # away from the decoder's reach
    diff = np.abs(src.astype(int) - tgt.astype(int)) * far
    inside = np.abs(src.astype(int) - tgt.astype(int)) * (1 - far)
    assert diff.max() <= inside.max()


def test_a_weak_generator_sharing_only_the_noise_changes_more_outside_the_edit_region():
    cfg = RoundConfig(pairs=6, pair_steps=3, method="blend", blend_until=0.0)
    free = round_pairs(1, cfg, None, "cpu")
    blended = round_pairs(1, replace(cfg, blend_until=1.0), None, "cpu")
    _, free_outside = region_l1(free.sources, free.targets, free.masks)
    _, blended_outside = region_l1(blended.sources, blended.targets, blended.masks)
    assert free.instructions == blended.instructions  # the same specs and seeds
    assert np.nanmean(free_outside) > 2 * np.nanmean(blended_outside)


def test_filters_count_what_each_test_keeps():
    edits = [e for e in edit_specs(14, 2) if e.kind in ("recolor", "move")][:2]
    sources = np.stack([render(e.source) for e in edits])
    good = np.stack([render(e.target) for e in edits])  # renders only stand in for a perfect editor here
    unchanged = sources.copy()
    smeared = good.copy()
    smeared[:, :20] = np.where(smeared[:, :20] > 128, 0, 255)  # changes outside the edit region
    pairs = Pairs.concat([
        Pairs(sources, t, np.stack([e.mask for e in edits]), [e.instruction for e in edits],
              [e.kind for e in edits], [e.source.to_json() for e in edits], [e.target.to_json() for e in edits],
              [tag] * 2)
        for t, tag in ((good, "good"), (unchanged, "unchanged"), (smeared, "smeared"))])
    keep, counts = filter_pairs(pairs, JudgeScorer(), FilterConfig())
    assert keep.tolist() == [True, True, False, False, False, False]
    assert counts["total"] == 6 and counts["kept"] == 2 and counts["passes"]["direction"] >= 2
    assert counts["after"]["similarity"] == 2 and counts["kept_per_kind"] == {"move": 1, "recolor": 1}
    with pytest.raises(ValueError, match="`filter.max_outside_l1` must be in"):
        FilterConfig(max_outside_l1=2.0)


def test_the_best_candidate_per_spec_is_the_kept_one_that_changes_least_outside_the_edit_region():
    edits = edit_specs(3, 5)
    sources = np.stack([render(e.source) for e in edits])
    good = np.stack([render(e.target) for e in edits])  # renders only stand in for an editor's candidates here
    smeared = good.copy()
    smeared[:, :6] = 255 - smeared[:, :6]  # the same edit, with a change outside the edit region
    masks = np.stack([e.mask for e in edits])
    smeared = np.where(masks[..., None].astype(bool), good, smeared)
    cands = Pairs.concat([Pairs(sources, t, masks, [e.instruction for e in edits], [e.kind for e in edits],
                                [e.source.to_json() for e in edits], [e.target.to_json() for e in edits], [tag] * 3)
                          for t, tag in ((smeared, "smeared"), (good, "good"))])  # candidate-major rows
    keep = np.array([True, True, False, True, False, False])  # spec 1's clean candidate failed; spec 2 has none
    assert candidate_specs(6, 3).tolist() == [0, 1, 2, 0, 1, 2]
    assert best_per_spec(cands, keep, 3).tolist() == [3, 1]
    with pytest.raises(ValueError, match="7 candidate rows are not a whole number of candidates for 3 specs"):
        candidate_specs(7, 3)


def test_a_later_round_keeps_one_own_pair_per_instruction_or_else_the_weak_generators():
    editor = load_instruct_editor(INSTRUCT_DIR, device="cpu")
    loose = FilterConfig(min_agreement=0.0, max_outside_l1=1.0, min_inside_l1=0.0)
    cfg = RoundConfig(pairs=7, pair_steps=2, candidates=2, filter=loose, later_filter=loose,
                      later_pairs="best-or-weak")
    kept, counts = kept_round_pairs(2, cfg, editor, JudgeScorer(), "cpu")
    own = [k for k, o in enumerate(kept.origin) if o.startswith("editor:")]
    weak = [k for k, o in enumerate(kept.origin) if o == "inpaint"]
    key = lambda k: (kept.source_scenes[k], kept.instructions[k])  # noqa: E731 - one edit spec
    assert len(own) == counts["best_per_spec"] == len({key(k) for k in own}) <= counts["after"]["similarity"]
    assert sum(counts["best_per_kind"].values()) == len(own)
    assert len(weak) == counts["weak"]["filled"] and not {key(k) for k in weak} & {key(k) for k in own}
    assert counts["weak"]["specs_without_own"] == 7 - len(own) and counts["total"] == 14
    assert counts["kept"] == len(kept) == len(own) + len(weak) and len(kept.origin) == len(own) + len(weak)
    every, every_counts = kept_round_pairs(2, replace(cfg, later_pairs="editor"), editor, JudgeScorer(), "cpu")
    assert len(every) == every_counts["kept"] == every_counts["after"]["similarity"] >= len(own)
    alone, alone_counts = kept_round_pairs(2, replace(cfg, later_pairs="weak"), editor, JudgeScorer(), "cpu")
    assert set(alone.origin) <= {"inpaint"} and alone_counts["total"] == 7
    assert alone_counts["later_pairs"] == "weak" and alone_counts["kept"] == len(alone)
    with pytest.raises(ValueError, match="`later_pairs` must be one of .* got 'best'"):
        RoundConfig(later_pairs="best")


def test_editor_training_resumes_exactly(tmp_path, t2i):
    _, pairs = shuffled_pairs(5)
    cfg = EditorTrainConfig(steps=4, batch_size=2, checkpoint_every=2, warmup=1)
    straight = editor_from_t2i(t2i, "causal")
    train_editor(straight, pairs, cfg, tmp_path / "a")
    split = editor_from_t2i(t2i, "causal")
    train_editor(split, pairs, EditorTrainConfig(**{**cfg.to_dict(), "steps": 2}), tmp_path / "b")
    resumed = editor_from_t2i(t2i, "causal")
    state = train_editor(resumed, pairs, cfg, tmp_path / "b")  # picks up the step-2 checkpoint
    assert state.step == 4 and len(state.history) == 4
    a, b = straight.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="no pairs"):
        train_editor(straight, pairs.select(np.zeros(6, dtype=bool)), cfg, tmp_path / "c")


def test_editor_training_can_train_the_text_encoder_and_resumes_it_exactly(tmp_path, t2i):
    _, pairs = shuffled_pairs(6)
    base = {k: v.clone() for k, v in t2i.text_encoder.state_dict().items()}
    frozen = editor_from_t2i(t2i, "concat")
    train_editor(frozen, pairs, EditorTrainConfig(steps=2, batch_size=2, warmup=1), tmp_path / "frozen")
    assert all(torch.equal(base[k], v) for k, v in frozen.text_encoder.state_dict().items())
    cfg = EditorTrainConfig(steps=4, batch_size=2, checkpoint_every=2, warmup=1, lr=1e-3, train_text_encoder=True)
    straight = editor_from_t2i(t2i, "concat")
    train_editor(straight, pairs, cfg, tmp_path / "a")
    trained = straight.text_encoder.state_dict()
    fresh = editor_from_t2i(t2i, "concat")
    for name, weight in fresh.text_encoder.named_parameters():  # the encoder trained, not only the UNet
        if name.endswith(("token_embedding.weight", "mlp.fc1.weight", "final_layer_norm.weight")):
            assert not torch.equal(weight, trained[name]), name
    instruction = ["make the red circle larger"]
    assert not torch.allclose(straight.encode_text(instruction), fresh.encode_text(instruction), atol=1e-4)
    split = editor_from_t2i(t2i, "concat")
    train_editor(split, pairs, EditorTrainConfig(**{**cfg.to_dict(), "steps": 2}), tmp_path / "b")
    resumed = editor_from_t2i(t2i, "concat")
    train_editor(resumed, pairs, cfg, tmp_path / "b")  # picks up the step-2 checkpoint, text encoder included
    assert all(torch.equal(v, resumed.text_encoder.state_dict()[k]) for k, v in trained.items())
    straight.save(tmp_path / "m", {"version": "v-text"})
    loaded = load_instruct_editor(tmp_path / "m")
    assert all(torch.equal(v, loaded.text_encoder.state_dict()[k]) for k, v in trained.items())
    assert all(torch.equal(base[k], v) for k, v in t2i.text_encoder.state_dict().items())  # the weak generator's


def test_round_settings_and_too_few_pairs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="`source` must be one of"):
        RoundConfig(source="photos")
    with pytest.raises(ValueError, match="`schedule` must be one of \\['sd', 'zero-snr-v'\\], got 'cosine'"):
        RoundConfig(schedule="cosine")
    with pytest.raises(ValueError, match="`init` must be one of \\['t2i', 'inpaint'\\], got 'sd'"):
        RoundConfig(arch="concat", init="sd")
    with pytest.raises(ValueError, match="`init` 'inpaint' starts a concat editor only; `arch` 'causal'"):
        RoundConfig(init="inpaint")
    with pytest.raises(ValueError, match="`blend_until` must be in \\[0, 1\\], got 1.5"):
        RoundConfig(method="blend", blend_until=1.5)
    with pytest.raises(ValueError, match="unknown alignment round settings: \\['rounds'\\]"):
        RoundConfig.from_dict({"rounds": 3})
    args = build_parser().parse_args(["train", "align", "--arch", "concat", "--train-text-encoder", "--steps", "5"])
    assert RoundConfig.from_dict(align_config(args)).train.train_text_encoder  # the CLI flag reaches the trainer
    args = build_parser().parse_args(["train", "align", "--method", "blend", "--blend-until", "0", "--candidates",
                                      "4", "--later-min-agreement", "1.0", "--balance-kinds"])
    cfg = RoundConfig.from_dict(align_config(args))
    assert (cfg.method, cfg.blend_until, cfg.candidates, cfg.train.balance_kinds) == ("blend", 0.0, 4, True)
    assert cfg.filter_for(1) == FilterConfig() and cfg.filter_for(2) == FilterConfig(min_agreement=1.0)
    assert RoundConfig.from_dict(cfg.to_dict()) == cfg  # the settings a run row stores load back the same
    assert RoundConfig().filter_for(3) == FilterConfig()  # without later filters every round uses `filter`
    with pytest.raises(ValueError, match="`filter.min_agreement` must be in \\[0, 1\\], got 2.0"):
        RoundConfig.from_dict({"later_filter": {"min_agreement": 2.0}})
    with pytest.raises(ValueError, match="unknown `later_filter` settings: \\['min_agreemnt'\\]"):
        RoundConfig.from_dict({"later_filter": {"min_agreemnt": 1.0}})
    _, settings, sessions, store = worker_state(tmp_path)
    with pytest.raises(TooFewPairs, match="round 1: only \\d+ of 7 pairs survived the filters"):
        run_align_round("r-few", sessions, store, settings, {**ALIGN_TINY, "pairs": 7, "min_pairs": 100})
    with sessions() as s:
        run = s.get(TrainingRun, "r-few")
        assert run.status == "failed" and "survived the filters" in run.error
        assert s.scalars(select(ModelVersion).where(ModelVersion.kind == "instruct")).all() == []


def test_editloop_train_align_runs_two_rounds_on_a_real_worker_through_a_killed_worker(tmp_path):
    """Two rounds as one Celery chain on RabbitMQ; the worker is SIGKILLed once round 1 has a checkpoint; the
    next worker resumes it; round 2 starts from round 1's editor, regenerates pairs, and trains on both
    rounds' pairs (two candidates per instruction under its own later filter, the best of them per instruction
    or else the weak generator's pair). One version per round;
    promotion follows the gate."""
    env, settings, sessions, store = worker_state(tmp_path, rabbitmq=True)
    from trainers.celery_app import make_celery

    make_celery(settings).control.purge()
    first = start_worker("gpu", "al", env)
    args = [sys.executable, "-m", "editloop.cli.main", "train", "align", "--rounds", "2", "--pairs", "14",
            "--pair-steps", "2", "--steps", "8", "--batch-size", "2", "--checkpoint-every", "1", "--scorer", "judge",
            "--min-pairs", "0", "--eval-per-kind", "1", "--candidates", "2", "--later-max-outside-l1", "1.0",
            "--later-pairs", "best-or-weak", "--wait"]
    cli = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = wait_for_checkpoint(settings.state_dir / "runs", "editor.pt")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    second = start_worker("gpu", "al", env)
    try:
        out, _ = cli.communicate(timeout=1200)
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert cli.returncode == 0, out
    assert killed_at < 8
    with sessions() as s:
        runs = s.scalars(select(TrainingRun).where(TrainingRun.kind == "align").order_by(TrainingRun.created_at)).all()
        assert [r.status for r in runs] == ["succeeded", "succeeded"]
        r1, r2 = (r.outputs for r in runs)
        assert (r1["round"], r2["round"]) == (1, 2) and r1["metrics"]["steps_done"] == 8
        versions = s.scalars(select(ModelVersion).where(ModelVersion.kind == "instruct")).all()
        assert sorted(v.version for v in versions) == sorted([r1["version"], r2["version"]])
        v2 = next(v for v in versions if v.version == r2["version"])
        assert v2.parent_id == next(v.id for v in versions if v.version == r1["version"])
        assert len(v2.config["pairs_keys"]) == 2 and v2.metrics["filter"]["total"] == 2 * 14  # two candidates each
        assert r1["filter"]["config"]["max_outside_l1"] == 0.05 and r2["filter"]["config"]["max_outside_l1"] == 1.0
        assert v2.metrics["train_pairs"] == r1["filter"]["kept"] + r2["filter"]["kept"]
        assert r2["filter"]["later_pairs"] == "best-or-weak"  # at most one own pair per instruction, else the weak's
        assert r2["filter"]["kept"] == r2["filter"]["best_per_spec"] + r2["filter"]["weak"]["filled"]
        assert r2["filter"]["best_per_spec"] <= min(14, r2["filter"]["after"]["similarity"])
        assert set(v2.metrics["per_kind"]) == set(EDIT_KINDS)
        for o in (r1, r2):
            assert o["promoted"] == ("refused" not in o)
    assert f"queued alignment round 2 run {runs[1].id}" in out


def test_the_alignment_reward_scores_agreement_for_the_filters(tmp_path):
    from editloop.models.reward import save_reward, tiny_reward
    from trainers.align.filters import AlignmentScorer
    from trainers.feedback.rewards import load_rewards

    save_reward(tiny_reward("alignment", seed=1), "alignment", tmp_path / "alignment", version="a-test")
    scorer = AlignmentScorer(load_rewards({"alignment": tmp_path / "alignment"}), batch=2)
    edits = edit_specs(5, 9)
    images = np.stack([render(e.source) for e in edits])
    a = scorer.agreement(images, [e.source for e in edits])
    b = scorer.agreement(images, [e.target for e in edits])
    assert a.shape == (5,) and ((a > 0) & (a < 1)).all() and not np.allclose(a, b)


def test_continuing_from_the_promoted_editor_needs_one(tmp_path, monkeypatch, capsys):
    from editloop.cli.main import main

    _, settings, _, _ = worker_state(tmp_path)
    monkeypatch.setenv("EDITLOOP_STATE_DIR", str(settings.state_dir))
    assert main(["train", "align", "--from-promoted"]) == 2
    assert "no instruct version is promoted yet" in capsys.readouterr().err
    assert main(["train", "align", "--rounds", "0"]) == 2
    assert "`rounds` must be >= 1, got 0" in capsys.readouterr().err
