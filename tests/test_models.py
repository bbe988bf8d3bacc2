import json

import numpy as np
import pytest
import torch

from editloop.models.data import inpaint_batch, quality_mix_batch, to_tensor, to_uint8
from editloop.models.tokenizer import build_tokenizer
from editloop.models.zoo import SCHEDULERS, load_pipeline, make_pipeline, set_scheduler, tiny_components
from editloop.world import render, sample_scene
from trainers.pretrain.diffusion import inflate_conv_in

PROMPT = "a large red circle at the top left on a white background"


def test_tokenizer_is_word_level_and_fits_every_caption():
    tok = build_tokenizer()
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(PROMPT.split()) + 2
    assert tok.unk_token_id not in ids
    rng = np.random.default_rng(0)
    longest = max(len(tok(sample_scene(rng, 3).caption).input_ids) for _ in range(300))
    assert longest <= tok.model_max_length
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT.replace(",", " ,")


def test_tiny_text_to_image_pipeline_generates_64px_images():
    pipe = make_pipeline(tiny_components(seed=0))
    out = pipe([PROMPT, ""], num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()
    again = pipe([PROMPT, ""], num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.allclose(out, again)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers_sample(name):
    pipe = set_scheduler(make_pipeline(tiny_components(seed=0)), name)
    assert type(pipe.scheduler) is SCHEDULERS[name]
    out = pipe(PROMPT, num_inference_steps=3, output_type="np").images
    assert out.shape == (1, 64, 64, 3)


def test_unknown_scheduler_is_named():
    with pytest.raises(ValueError, match="`scheduler` must be one of .* got 'plms'"):
        set_scheduler(make_pipeline(tiny_components()), "plms")


def test_a_diffusers_directory_loads_by_path_through_the_service_entry_point(tmp_path):
    """The real-checkpoint path: save_pretrained a tiny inpainting model, load it by path."""
    components = tiny_components(seed=1, inpainting=True)
    make_pipeline(components).save_pretrained(tmp_path / "sd-inpaint", safe_serialization=True)
    index = json.loads((tmp_path / "sd-inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    pipe = load_pipeline(tmp_path / "sd-inpaint", "inpaint", device="cpu")
    assert pipe.unet.config.in_channels == 9
    image = (to_tensor([render(sample_scene(np.random.default_rng(0)))]) + 1) / 2
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 20:44] = 1
    out = pipe(PROMPT, image=image, mask_image=mask, num_inference_steps=2, output_type="np",
               height=64, width=64).images
    assert out.shape == (1, 64, 64, 3)
    # the same weights came back
    for a, b in zip(components["unet"].parameters(), pipe.unet.parameters()):
        assert torch.equal(a, b)


def test_loading_refuses_what_is_not_there(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers directory"):
        load_pipeline(tmp_path, "t2i")
    make_pipeline(tiny_components()).save_pretrained(tmp_path / "t2i")
    with pytest.raises(ValueError, match=r"has no inpainting UNet \(in_channels=4, need 9\)"):
        load_pipeline(tmp_path / "t2i", "inpaint")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        load_pipeline(tmp_path / "t2i", "video")


def test_inflated_unet_matches_the_original_when_the_extra_inputs_are_zero():
    unet = tiny_components(seed=2)["unet"].eval()
    big = inflate_conv_in(unet).eval()
    x = torch.randn(1, 4, 16, 16)
    cond = torch.randn(1, 40, 128)
    with torch.no_grad():
        a = unet(x, 10, cond).sample
        b = big(torch.cat([x, torch.randn(1, 5, 16, 16)], 1), 10, cond).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_training_batches_are_deterministic_and_well_formed():
    from editloop.models.data import step_rng

    a = quality_mix_batch(step_rng(0, "t2i", 5), 4)
    b = quality_mix_batch(step_rng(0, "t2i", 5), 4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (4, 3, 64, 64) and a.images.min() >= -1 and a.images.max() <= 1
    m = inpaint_batch(step_rng(0, "inpaint", 0), 6)
    assert m.masks.shape == (6, 1, 64, 64) and set(m.masks.unique().tolist()) <= {0.0, 1.0}
    assert np.array_equal(to_uint8(to_tensor([render(a.scenes[0])]))[0], render(a.scenes[0]))
