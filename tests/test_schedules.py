"""Noise schedules: fine-tuning keeps a model's own; zero terminal SNR with v-prediction trains and samples;
the one-step x0 (PeFL's) is right for both parametrisations and names any other."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from editloop.models.configs import ZERO_SNR_V_SCHEDULER
from editloop.models.zoo import make_pipeline, predicted_x0, tiny_components, training_scheduler
from trainers.pretrain.config import PretrainConfig
from trainers.pretrain.diffusion import min_snr_weights, prediction_target


def test_fine_tuning_trains_on_the_schedule_the_model_was_trained_on():
    theirs = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    assert torch.allclose(training_scheduler(theirs.config).alphas_cumprod, theirs.alphas_cumprod)
    assert training_scheduler().config.beta_schedule == "scaled_linear"  # from scratch: the built-in one


def test_zero_terminal_snr_targets_velocity_and_keeps_the_pure_noise_step():
    sched = training_scheduler(DDIMScheduler(**ZERO_SNR_V_SCHEDULER).config)
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # the last step is pure noise
    x0, noise = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    t = torch.tensor([0, 500, 999])
    v = prediction_target(sched, x0, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-5)
    assert torch.allclose(v[2], -x0[2], atol=1e-3)  # at zero SNR the velocity is -x0
    w = min_snr_weights(sched, t, 5.0)
    assert torch.isfinite(w).all() and w[2] == 1.0 and w[0] < 0.1
    eps_sched = training_scheduler()
    assert torch.equal(prediction_target(eps_sched, x0, noise, t), noise)


def test_a_zero_snr_v_pipeline_samples_and_bad_schedules_are_named():
    components = tiny_components(seed=0)
    components["scheduler"] = DDIMScheduler(**ZERO_SNR_V_SCHEDULER)
    pipe = make_pipeline(components)
    out = pipe("a large red circle at the top left on a white background", num_inference_steps=3,
               output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    assert int(pipe.scheduler.timesteps[0]) == 999  # trailing: sampling starts from pure noise
    with pytest.raises(ValueError, match="`schedule` must be one of .* got 'cosine'"):
        PretrainConfig(schedule="cosine")


def test_one_step_x0_inverts_both_parametrisations():
    x0, noise = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    t = torch.tensor([10, 500, 990])
    for config in (training_scheduler().config, DDIMScheduler(**ZERO_SNR_V_SCHEDULER).config):
        sched = training_scheduler(config)
        x_t = sched.add_noise(x0, noise, t)
        exact = prediction_target(sched, x0, noise, t)  # what a perfect model outputs
        assert torch.allclose(predicted_x0(sched, x_t, t, exact), x0, atol=1e-3)
        one = predicted_x0(sched, x_t[:1], t[0], exact[:1])  # a scalar timestep, as PeFL passes it
        assert torch.allclose(one, x0[:1], atol=1e-3)
    sample = training_scheduler({**training_scheduler().config, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="`prediction_type` must be 'epsilon' or 'v_prediction', got 'sample'"):
        predicted_x0(sample, x0, t, noise)
