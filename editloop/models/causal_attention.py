"""SeedEdit's causal two-branch self-attention, as diffusers attention processors on a UNet.

The editor runs one UNet (shared parameters) over two branches: the clean input latent and the noisy
target latent. Self-attention is causal between them: target tokens attend to the input tokens and to
themselves, input tokens only to themselves. Convolutions and cross-attention act per branch, so the
branches meet only here.

Because the input branch never looks at the target, its keys and values do not depend on the target or
on the timestep: the processors run in two modes over one shared `BranchState`:
- `encode`: the batch is the input branch; each layer does plain self-attention and keeps its (K, V);
- `target`: the batch is the target branch; each layer attends over [kept input K/V | own K/V], with a
  per-row flag that hides the input tokens (image dropout, and the "no image" row of two-scale CFG).
Training runs `encode` then `target` in one autograd graph (gradients reach the input branch through the
kept K/V); sampling runs `encode` once per image and reuses the K/V at every step.

Position: a UNet's self-attention has no positional encoding, so a target token has no way to find the
input token at its own place except through content (which the noise hides). SeedEdit's DiT carries
positional embeddings; here a fixed 2D distance bias on the target -> input logits plays that part (ALiBi-
style, at every resolution: log(n) - position_bias * squared grid distance, so the input token at the
target's own place weighs about as much as the n target tokens together). `position_bias = 0` turns it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

MODES = ("off", "encode", "target")


@dataclass
class BranchState:
    """What the causal processors of one UNet share: the mode, the kept input K/V, the row layout."""

    mode: str = "off"
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    rows: torch.Tensor | None = None  # target row -> kept (input) row
    sees_input: torch.Tensor | None = None  # (B,) bool: may this target row attend to its input tokens?
    position_bias: float = 0.0  # target -> input logits get -position_bias * (squared grid distance)
    _bias_cache: dict = field(default_factory=dict)

    def distance_bias(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(n, n) additive logits for target token i attending to input token j on a square grid of n tokens."""
        key = (n, device, dtype)
        if key not in self._bias_cache:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise ValueError(f"causal attention position bias needs a square token grid, got {n} tokens")
            yx = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(n, 2)
            d2 = (yx[:, None, :] - yx[None, :, :]).float().pow(2).sum(-1)
            # + log(n): the input token at the target's own place weighs about as much as all n target tokens
            self._bias_cache[key] = (math.log(n) - self.position_bias * d2).to(device, dtype)
        return self._bias_cache[key]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode

    def clear(self) -> None:
        self.mode, self.kept, self.rows, self.sees_input = "off", {}, None, None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class CausalBranchProcessor:
    """Self-attention (attn1) processor implementing the causal two-branch attention."""

    def __init__(self, name: str, state: BranchState) -> None:
        self.name = name
        self.state = state
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs: object) -> torch.Tensor:
        st = self.state
        if st.mode == "off" or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(hidden_states), attn.heads)
        v = _heads(attn.to_v(hidden_states), attn.heads)
        if st.mode == "encode":
            st.kept[self.name] = (k, v)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self._target(q, k, v)
        b, h, n, d = out.shape
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, h * d).to(q.dtype)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _target(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        st = self.state
        if self.name not in st.kept:
            raise RuntimeError(f"causal attention layer {self.name} has no input-branch keys: encode the input first")
        in_k, in_v = st.kept[self.name]
        rows = st.rows if st.rows is not None else torch.arange(q.shape[0], device=q.device)
        in_k, in_v = in_k[rows], in_v[rows]
        keys, values = torch.cat([in_k, k], dim=2), torch.cat([in_v, v], dim=2)
        all_see = st.sees_input is None or bool(st.sees_input.all())
        if all_see and not st.position_bias:
            return F.scaled_dot_product_attention(q, keys, values)
        b, n_in, n = q.shape[0], in_k.shape[2], k.shape[2]
        bias = torch.zeros(b, 1, n, n_in + n, dtype=q.dtype, device=q.device)
        if st.position_bias:
            bias[..., :n_in] = st.distance_bias(n, q.device, q.dtype)
        if not all_see:
            hidden = ~st.sees_input.to(q.device)
            bias[hidden, :, :, :n_in] = float("-inf")
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)


def install_causal_attention(unet: UNet2DConditionModel, position_bias: float = 0.0) -> BranchState:
    """Give every self-attention layer of `unet` a causal two-branch processor; returns their shared state."""
    state = BranchState(position_bias=position_bias)
    processors = {}
    for name, proc in unet.attn_processors.items():
        processors[name] = CausalBranchProcessor(name, state) if name.endswith("attn1.processor") else proc
    unet.set_attn_processor(processors)
    return state
