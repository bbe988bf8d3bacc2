"""UNet2DConditionModel that knows where it is: fixed x / y coordinate maps appended to its input.

A convolutional UNet learns absolute position only through the zero padding at the border.
CoordConv (Liu et al., 2018, "An intriguing failing of convolutional neural networks and the
CoordConv solution") gives every location its coordinates from the first layer on. It was tried
against the base text-to-image model's failure to put objects where the caption says and did not
help at the base budget (the model reads the layout from the initial noise instead; BENCHMARKS.md),
so it is an option of pretraining (`--coord-channels 2`), off by default.

The subclass is a drop-in UNet2DConditionModel: callers pass the usual 4 (text-to-image), 8
(concat editor) or 9 (inpainting) channels and `config.in_channels` keeps meaning that, so
diffusers' pipelines and every trainer work unchanged; only `conv_in` has `coord_channels` more
inputs (the last ones). `config.coord_channels` is saved with the weights; `load_unet` picks the
class from a directory's config, so plain diffusers UNets (a real Stable Diffusion checkpoint)
load as before.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from torch import nn

# diffusers' pipeline loader looks for the loadable base classes (ModelMixin) in the module a
# component's model_index.json entry names, so a plain `StableDiffusionPipeline.from_pretrained`
# of a directory with this UNet works too.
__all__ = ["CoordUNet2DConditionModel", "ModelMixin", "clone_unet", "coordinate_maps", "load_unet", "new_unet",
           "unet_class"]


def coordinate_maps(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W): x then y, each from -1 (left / top) to 1 (right / bottom) over pixel centres."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None]


class CoordUNet2DConditionModel(UNet2DConditionModel):
    """UNet2DConditionModel whose `conv_in` also reads `coord_channels` fixed coordinate maps."""

    def __init__(self, *args: Any, coord_channels: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if coord_channels not in (0, 2):
            raise ValueError(f"`coord_channels` must be 0 or 2, got {coord_channels!r}")
        self.register_to_config(coord_channels=coord_channels)
        old = self.conv_in
        self.conv_in = nn.Conv2d(old.in_channels + coord_channels, old.out_channels, old.kernel_size,
                                 padding=old.padding)

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = self.config.coord_channels
        if n:
            coords = coordinate_maps(sample.shape[-2], sample.shape[-1], sample)
            sample = torch.cat([sample, coords.expand(sample.shape[0], -1, -1, -1)], dim=1)
        return super().forward(sample, *args, **kwargs)


# diffusers reads a model's config keys from its __init__ signature: the parent's plus ours.
_parent = inspect.signature(UNet2DConditionModel.__init__)
CoordUNet2DConditionModel.__init__.__signature__ = _parent.replace(parameters=[
    *_parent.parameters.values(),
    inspect.Parameter("coord_channels", inspect.Parameter.KEYWORD_ONLY, default=2),
])

UNET_CLASSES: dict[str, type[UNet2DConditionModel]] = {
    "UNet2DConditionModel": UNet2DConditionModel,
    "CoordUNet2DConditionModel": CoordUNet2DConditionModel,
}


def unet_class(config: dict[str, Any] | Any) -> type[UNet2DConditionModel]:
    """The class a UNet config was saved from (plain diffusers UNets included)."""
    name = dict(config).get("_class_name", "UNet2DConditionModel")
    if name not in UNET_CLASSES:
        raise ValueError(f"`unet._class_name` must be one of {list(UNET_CLASSES)}, got {name!r}")
    return UNET_CLASSES[name]


def load_unet(path: str | Path, **kwargs: Any) -> UNet2DConditionModel:
    """Load a UNet directory (offline) with the class its config names."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"`unet` {str(path)!r} is not a UNet directory (no config.json)")
    cls = unet_class(json.loads(config_file.read_text()))
    return cls.from_pretrained(path, local_files_only=True, **kwargs)


def new_unet(config: dict[str, Any], coord_channels: int = 0) -> UNet2DConditionModel:
    """A freshly initialised UNet: diffusers' own without coordinates, CoordUNet with them."""
    if coord_channels:
        return CoordUNet2DConditionModel(**config, coord_channels=coord_channels)
    return UNet2DConditionModel(**config)


def clone_unet(unet: UNet2DConditionModel, **overrides: Any) -> UNet2DConditionModel:
    """A fresh UNet of the same class and config (with `overrides`), weights not copied."""
    config = {**dict(unet.config), **overrides}
    return type(unet).from_config(config)
