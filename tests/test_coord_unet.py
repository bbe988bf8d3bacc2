"""CoordUNet2DConditionModel: a drop-in UNet with coordinate inputs that saves, loads and inflates like
diffusers' own."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from editloop.models.coord_unet import CoordUNet2DConditionModel, coordinate_maps, load_unet, unet_class
from editloop.models.zoo import load_pipeline, make_pipeline, tiny_components
from trainers.pretrain.config import PretrainConfig
from trainers.pretrain.diffusion import inflate_conv_in

COND = torch.randn(2, 12, 128, generator=torch.Generator().manual_seed(0))


def _eps(unet, x, t=10):
    with torch.no_grad():
        return unet(x, t, COND[: len(x)]).sample


def test_coordinate_maps_run_left_to_right_and_top_to_bottom():
    maps = coordinate_maps(16, 16, torch.zeros(1))
    assert maps.shape == (1, 2, 16, 16)
    assert maps[0, 0, 0, 0] == -1 and maps[0, 0, 0, -1] == 1 and maps[0, 0, -1, 0] == -1  # x
    assert maps[0, 1, 0, 0] == -1 and maps[0, 1, -1, 0] == 1 and maps[0, 1, 0, -1] == -1  # y


def test_callers_pass_the_usual_channels_and_only_conv_in_reads_the_coordinates():
    unet = tiny_components(seed=3, coord_channels=2)["unet"].eval()
    assert isinstance(unet, CoordUNet2DConditionModel)
    assert unet.config.in_channels == 4 and unet.conv_in.in_channels == 6
    out = _eps(unet, torch.randn(2, 4, 16, 16))
    assert out.shape == (2, 4, 16, 16)


def test_the_first_layer_already_knows_where_it_is():
    """On a flat input a plain UNet's first layer answers the same everywhere inside the border; with
    coordinates it answers differently at every location."""

    def first_layer(unet):
        seen = []
        hook = unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o))
        _eps(unet, torch.zeros(1, 4, 16, 16))
        hook.remove()
        return seen[0][0, :, 1:-1, 1:-1]

    plain = first_layer(tiny_components(seed=3)["unet"].eval())
    coord = first_layer(tiny_components(seed=3, coord_channels=2)["unet"].eval())
    assert plain.std(dim=(1, 2)).max() == 0
    assert (coord.std(dim=(1, 2)) > 0).float().mean() > 0.9
    assert len({tuple(v.tolist()) for v in coord.flatten(1).T}) == 14 * 14


def test_a_pipeline_with_it_saves_and_loads_through_the_service_entry_point_and_plain_diffusers(tmp_path):
    components = tiny_components(seed=4, coord_channels=2)
    make_pipeline(components).save_pretrained(tmp_path / "t2i", safe_serialization=True)
    config = json.loads((tmp_path / "t2i" / "unet" / "config.json").read_text())
    assert config["_class_name"] == "CoordUNet2DConditionModel" and config["coord_channels"] == 2
    x = torch.randn(2, 4, 16, 16)
    want = _eps(components["unet"].eval(), x)
    ours = load_pipeline(tmp_path / "t2i", "t2i", device="cpu")
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "t2i", local_files_only=True, safety_checker=None,
                                                    feature_extractor=None, requires_safety_checker=False)
    for pipe in (ours, plain):
        assert isinstance(pipe.unet, CoordUNet2DConditionModel)
        assert torch.allclose(_eps(pipe.unet.eval(), x), want, atol=1e-6)
    image = ours("a large red circle at the top left", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_load_unet_reads_plain_diffusers_unets_too(tmp_path):
    unet = tiny_components(seed=5)["unet"]
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet")
    assert type(loaded) is UNet2DConditionModel
    with pytest.raises(ValueError, match="not a UNet directory"):
        load_unet(tmp_path / "nothing")
    with pytest.raises(ValueError, match="`unet._class_name` must be one of .* got 'VideoUNet'"):
        unet_class({"_class_name": "VideoUNet"})


def test_inflating_keeps_the_coordinate_weights_and_the_answer_when_the_extra_inputs_are_zero():
    unet = tiny_components(seed=6, coord_channels=2)["unet"].eval()
    big = inflate_conv_in(unet, 9).eval()
    assert isinstance(big, CoordUNet2DConditionModel)
    assert big.config.in_channels == 9 and big.conv_in.in_channels == 11
    assert torch.equal(big.conv_in.weight[:, 9:], unet.conv_in.weight[:, 4:])
    x = torch.randn(1, 4, 16, 16)
    a = _eps(unet, x)
    b = _eps(big, torch.cat([x, torch.randn(1, 5, 16, 16)], 1))
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_coordinate_settings_are_named():
    with pytest.raises(ValueError, match="`coord_channels` must be 0 or 2, got 3"):
        PretrainConfig(coord_channels=3)
    with pytest.raises(ValueError, match="`coord_channels` must be 0 or 2, got 1"):
        tiny_components(coord_channels=1)

