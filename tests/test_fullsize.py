"""Stable Diffusion 1.5's architecture (random weights, diffusers format) through the same trainer code as the tiny
models, on the CPU at 64 px: written by `editloop models init-sd15`, loaded by path, a PeFL step and a GRPO step
with LoRA and gradient checkpointing, SDPA attention. The speed of these steps is bench/feedback_fullsize.py's."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from editloop.cli.main import main
from editloop.models.reward import save_reward, tiny_reward
from editloop.models.zoo import load_pipeline
from trainers.feedback.grpo import GrpoConfig, grpo_step
from trainers.feedback.loop import FeedbackConfig, train_feedback
from trainers.feedback.pefl import PeflSchedule
from trainers.feedback.reward_client import LocalScorer
from trainers.feedback.rewards import load_rewards

KINDS = ("aesthetic", "alignment", "coherence")


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd15") / "model"
    assert main(["models", "init-sd15", "--out", str(out)]) == 0
    yield out
    shutil.rmtree(out)  # 3.8 GB: not kept with pytest's last three temporary trees


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    for kind in KINDS:
        save_reward(tiny_reward(kind, seed=1), kind, root / kind, version=f"{kind}-test")
    return load_rewards({k: root / k for k in KINDS}, {k: f"{k}-test" for k in KINDS})


def lora_delta(pipe, before: dict[str, torch.Tensor]) -> float:
    """The largest change of an attention projection's weight (where LoRA was fused)."""
    after = pipe.unet.state_dict()
    return max(float((after[k] - before[k]).abs().max()) for k in before if "attn1.to_q.weight" in k)


def test_sd15_sized_model_by_path_trains_with_lora_and_checkpointing(sd15_dir, rewards, tmp_path):
    assert main(["models", "init-sd15", "--out", str(sd15_dir)]) == 2  # never over an existing model
    pipe = load_pipeline(sd15_dir, "inpaint", device="cpu")
    assert sum(p.numel() for p in pipe.unet.parameters()) > 850e6  # SD 1.5's UNet, not a tiny one
    assert pipe.unet.config.block_out_channels == [320, 640, 1280, 1280] and pipe.unet.config.in_channels == 9
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())  # SDPA
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "attn1.to_q.weight" in k}

    common = dict(batch_size=2, resolution=64, lora_rank=4, gradient_checkpointing=True, checkpoint_every=1,
                  reward_weights={"aesthetic": 1.0}, lr=1e-3)
    pefl = FeedbackConfig(steps=1, schedule=PeflSchedule(4, 3, 2), **common)
    state = train_feedback(pipe, rewards, pefl, tmp_path / "pefl")
    assert state.step == 1 and (tmp_path / "pefl" / "checkpoint.pt").is_file()
    assert "lora" not in " ".join(pipe.unet.state_dict())  # the adapters were fused: a plain UNet again
    after_pefl = lora_delta(pipe, base)
    assert after_pefl > 0

    grpo = FeedbackConfig(stage="grpo", steps=1, schedule=PeflSchedule(4, 3, 2), kl_weight=0.0,
                          grpo=GrpoConfig(group=2, scorer="in-process", guard=()), **common)
    state = train_feedback(pipe, rewards, grpo, tmp_path / "grpo", step=grpo_step(LocalScorer(rewards)))
    record = state.history[-1]
    assert state.step == 1 and torch.isfinite(torch.tensor(record["loss"])) and record["dropped"] == 0
    assert lora_delta(pipe, base) != after_pefl  # GRPO's update moved the fused weights again
