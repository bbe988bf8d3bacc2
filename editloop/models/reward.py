"""Reward models, ImageReward-style (Xu et al., 2023) at tiny scale.

- `PreferenceReward` (aesthetic R_a and alignment R_b): a patch image encoder and a CLIP-style
  text encoder, fused by cross-attention (image tokens attend to text tokens), then an MLP
  head to one score. Optional source image and mask enter as extra input channels, so an edit
  can be scored against what it edited; the source enters masked, as the inpainting model sees it
  (the regenerated region blanked), so the reward judges the edit from the same evidence the editor had.
  `reads_source` records whether the model was trained with sources (feedback learning passes them
  then). A real CLIP directory (transformers format) loads by path into the same class
  (`PreferenceReward.from_clip`): its vision tower replaces the patch encoder (images only) and its
  text tower the text encoder.
- `CoherenceReward` (R_g): a per-pixel real/fake map from a small conv encoder-decoder, with a
  scalar summary (mean probability that a pixel is real).

Both carry their config (ConfigMixin) and save/load with save_pretrained / from_pretrained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from editloop.models.card import card_path, has_card, read_card, write_card
from editloop.models.reward_kinds import is_coherence, kind_names, reward_kind

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP's image processor applies
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FusionBlock(nn.Module):
    """Self-attention over image tokens, cross-attention to text tokens, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_pad: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.cross_attn(h, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


def image_stem(stem: str, in_channels: int, dim: int, patch_size: int) -> nn.Module:
    """Image -> (N, dim, H/p, W/p) tokens. "patch": one strided conv (ViT); "conv": 3x3 convs that halve the
    resolution log2(p) times (the early-convolution ViT of Xiao et al., 2021), which sees pixel-level blur and
    noise a linear patch embedding averages away."""
    if stem == "patch":
        return nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
    if stem != "conv":
        raise ValueError(f"`stem` must be 'patch' or 'conv', got {stem!r}")
    if patch_size & (patch_size - 1):
        raise ValueError(f"a conv stem needs a power-of-two `patch_size`, got {patch_size}")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 32, 3, padding=1), nn.SiLU()]
    prev = 32
    for i in range(patch_size.bit_length() - 1):
        width = min(dim, 32 * 2 ** (i + 1))
        layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
        prev = width
    layers.append(nn.Conv2d(prev, dim, 1))
    return nn.Sequential(*layers)


class PreferenceReward(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 64, patch_size: int = 8, in_channels: int = 7, dim: int = 128,
                 depth: int = 2, heads: int = 4, text_config: dict | None = None, stem: str = "patch",
                 vision_config: dict | None = None, reads_source: bool = False) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"`image_size` {image_size} must be a multiple of `patch_size` {patch_size}")
        if vision_config is None:
            self.patch = image_stem(stem, in_channels, dim, patch_size)
            self.pos = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, dim))
        else:  # a CLIP vision tower (from_clip): images only, at its own resolution
            self.vision = CLIPVisionModel(CLIPVisionConfig(**vision_config))
            self.vision_proj = nn.Linear(self.vision.config.hidden_size, dim)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**(text_config or {})))
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, dim)
        self.blocks = nn.ModuleList([FusionBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                source: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """images/source in [-1, 1] (N,3,H,W), mask in {0,1} (N,1,H,W) -> scores (N,)."""
        x = self.image_tokens(images, source, mask)
        text = self.text_proj(self.text_encoder(input_ids, attention_mask=attention_mask)[0])
        pad = (attention_mask == 0) if attention_mask is not None else None
        for block in self.blocks:
            x = block(x, text, pad)
        return self.head(self.norm(x).mean(dim=1)).squeeze(-1)


    def image_tokens(self, images: torch.Tensor, source: torch.Tensor | None, mask: torch.Tensor | None
                     ) -> torch.Tensor:
        if self.config.vision_config is not None:
            size = self.vision.config.image_size
            x = F.interpolate((images + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
            mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype)[:, None, None] for v in (CLIP_MEAN, CLIP_STD))
            return self.vision_proj(self.vision(pixel_values=(x - mean) / std).last_hidden_state)
        n, _, h, w = images.shape
        source = source if source is not None else torch.zeros_like(images)
        mask = mask if mask is not None else images.new_zeros(n, 1, h, w)
        source = source * (1 - mask)  # what the editor sees: the region it regenerates is not given
        return self.patch(torch.cat([images, source, mask], dim=1)).flatten(2).transpose(1, 2) + self.pos

    @classmethod
    def from_clip(cls, path, dim: int = 256, depth: int = 2, heads: int = 4) -> PreferenceReward:
        """A preference reward on a real CLIP backbone (a transformers CLIPModel directory, offline): its
        towers' weights are copied in; the fusion blocks and the head start fresh."""
        from pathlib import Path

        from transformers import CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"`backbone` {str(path)!r} is not a transformers model directory (no config.json)")
        clip = CLIPModel.from_pretrained(path, local_files_only=True)
        text, vision = clip.config.text_config.to_dict(), clip.config.vision_config.to_dict()
        model = cls(image_size=vision["image_size"], patch_size=vision["patch_size"], dim=dim, depth=depth,
                    heads=heads, text_config=text, vision_config=vision)
        model.text_encoder.load_state_dict(clip.text_model.state_dict())
        model.vision.load_state_dict(clip.vision_model.state_dict())
        return model


class CoherenceReward(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        prev = in_channels
        for c in channels:
            self.down.append(nn.Sequential(nn.Conv2d(prev, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                                           nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()))
            prev = c
        self.up = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.up.append(nn.Sequential(nn.Conv2d(prev + c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()))
            prev = c
        self.out = nn.Conv2d(prev, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images in [-1, 1] (N,3,H,W) -> logits (N,1,H,W) that a pixel is real (not generated)."""
        skips, x = [], images
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.out(x)

    @staticmethod
    def summary(logits: torch.Tensor) -> torch.Tensor:
        """Scalar score per image: the mean probability that its pixels are real."""
        return torch.sigmoid(logits).mean(dim=(1, 2, 3))


# Measured (BENCHMARKS.md, bench/reward_quality.py): the conv stem is what lifts the aesthetic model to the
# annotators' ceiling (pixel-level blur and noise), while its GroupNorm costs the alignment model the flat
# background's colour (background accuracy 0.785 against 1.000 with the patch stem). Each kind names its stem in
# editloop/models/reward_kinds.py.


def tiny_reward(kind: str, seed: int = 0, stem: str | None = None) -> PreferenceReward | CoherenceReward:
    """An untrained tiny reward model of `kind` (tests, serving benchmarks, start of training); `stem`
    defaults to the one measured best for the kind (its RewardKind.stem)."""
    from editloop.models.configs import TINY_TEXT

    spec = reward_kind(kind)
    torch.manual_seed(seed)
    if spec.family == "coherence":
        return CoherenceReward()
    text = dict(TINY_TEXT, num_hidden_layers=2)
    return PreferenceReward(text_config=text, stem=stem or spec.stem)


def save_reward(model: PreferenceReward | CoherenceReward, kind: str, path, version: str | None = None,
                extra: dict | None = None, tokenizer=None) -> None:
    """A reward model directory: model/, tokenizer/ (text-conditioned kinds; the world's tokenizer unless
    `tokenizer` is given, e.g. a real CLIP's), editloop.json."""
    from pathlib import Path

    from editloop.models.tokenizer import build_tokenizer

    expected = CoherenceReward if is_coherence(kind) else PreferenceReward
    if not isinstance(model, expected):
        raise ValueError(f"a {kind} reward must be a {expected.__name__}, got {type(model).__name__}")
    path = Path(path)
    model.save_pretrained(path / "model", safe_serialization=True)
    if not is_coherence(kind):
        (tokenizer or build_tokenizer()).save_pretrained(path / "tokenizer")
    meta = {"kind": kind, **({"version": version} if version else {}), **(extra or {})}
    write_card(path, meta)


def load_reward(path, kind: str | None = None):
    """Load (kind, model, tokenizer or None) from a reward directory; refuse the wrong kind."""
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not has_card(path):
        raise FileNotFoundError(f"`model` {str(path)!r} is not a reward model directory (no editloop.json)")
    found = read_card(path).get("kind")
    if found not in kind_names():
        raise ValueError(f"{card_path(path)} names kind {found!r}; expected one of {list(kind_names())}")
    if kind is not None and found != kind:
        raise ValueError(f"`model` {str(path)!r} is a {found} reward model, not {kind}")
    cls = CoherenceReward if is_coherence(found) else PreferenceReward
    model = cls.from_pretrained(path / "model").eval()
    tokenizer = None if is_coherence(found) else PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    return found, model, tokenizer
