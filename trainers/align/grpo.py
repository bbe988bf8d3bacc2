"""Online GRPO for the instruction editor (SeedEdit's editor): groups of its own edits per instruction, scored by the
reward models (through the reward services over gRPC, or in-process: trainers/feedback/reward_client.py), pushed
toward the better ones of each group. The inpainting editor's GRPO (trainers/feedback/grpo.py) with the instruction
editor's sampler as the policy; its loss, advantages and optimiser step are shared from there.

The policy is the editor's guided sampler (InstructPix2Pix's two-scale classifier-free guidance over text and image,
editloop/models/instruct_sampling.py, from the editor's own start: noise or the noised input) made stochastic: DDIM
with eta > 0, so each step x_{t-1} ~ N(mu_theta(x_t), sigma_t^2 I) has a log-likelihood. One training step:

1. `batch_size / group` world edits drawn from (seed, "instruct-grpo", step) alone (a resumed run replays nothing):
   a clean render of the source and its instruction, each edited `group` times, keeping every x_t, x_{t-1} and
   log p_old(x_{t-1} | x_t).
2. Each edit scored as a reward model reads an edit: the edited image against the caption of the scene the
   instruction asks for (its target), on the source, inside the world's edit region (the mask the coherence reward
   reads: an edit that breaks what lies outside it reads as generated there). The editor never sees the target or
   the mask; only the rewards do, as a person judging the edit would.
3. Group-relative advantages per reward, weighted and summed; the clipped policy-gradient loss over a
   `train_fraction` of the sampling steps + kl_weight * KL to the frozen start editor (same step, same inputs).

Defaults: trained on the alignment reward (the caption the edit should match) and coherence; the aesthetic reward
held out as the guard. The gate is an alignment round's (the world's judge: success and preservation on held-out
edits, no worse than the served instruct version) plus the guard: a held-out reward or the coherence score that fell
more than `guard_drop` below the served editor's on the same held-out edits refuses the candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler

from editloop.models.data import step_rng, to_uint8
from editloop.models.instruct import InstructEditor
from editloop.models.instruct_sampling import check_guidance, initial_latents, rescale_guidance
from editloop.world.edits import Edit
from editloop.world.render import render
from trainers.align.pairs import edit_specs
from trainers.feedback.grpo import (
    batch_advantages,
    ddim_step,
    gaussian_log_prob,
    optimise,
    scores_record,
    step_loss,
    trained_steps,
)
from trainers.feedback.reward_client import ScoreBatch, Scorer

STREAM = "instruct-grpo"
# the preset of an instruction-editor GRPO run (a feedback "grpo" stage's fields; a run's overrides apply on top)
PRESET: dict[str, Any] = {"reward_weights": {"alignment": 1.0}, "grpo": {"guard": ["aesthetic"]}}


@dataclass
class InstructBatch:
    """What the editor is conditioned on, per row (no gradients): the sources' latents and the instructions."""

    edits: list[Edit]
    sources: np.ndarray  # N,H,W,3 uint8 clean renders
    image_latents: torch.Tensor
    text: torch.Tensor
    empty: torch.Tensor  # the empty instruction (1,L,D)
    text_guidance: float
    image_guidance: float
    rescale: float


@torch.no_grad()
def instruct_batch(editor: InstructEditor, edits: list[Edit]) -> InstructBatch:
    sources = np.stack([render(e.source) for e in edits])
    s_t, s_i = float(editor.setting("default_guidance")), float(editor.setting("default_image_guidance"))
    check_guidance(s_t, s_i)
    return InstructBatch(edits, sources, editor.encode_images(sources), editor.encode_text([e.instruction
                                                                                          for e in edits]),
                         editor.encode_text([""]), s_t, s_i, float(editor.setting("default_guidance_rescale")))


def guided(editor: InstructEditor, x: torch.Tensor, t: torch.Tensor, batch: InstructBatch,
           encode: bool = True) -> torch.Tensor:
    """The guided prediction at (x, t), as the sampler makes it (rows: image + text | image | neither), in fp32.
    `encode`: run the causal editor's input branch first (in the graph, for a training step); the rollout encodes
    it once for all its steps."""
    n, dev = len(x), x.device
    rows = torch.arange(n, device=dev).repeat(3)
    sees = torch.tensor([True] * (2 * n) + [False] * n, device=dev)
    conds = torch.cat([batch.text, batch.empty.expand(2 * n, -1, -1)])
    if encode and editor.arch == "causal":
        editor.encode_input_branch(batch.image_latents, batch.empty)
    eps = editor.eps(x.repeat(3, 1, 1, 1), t.expand(3 * n), conds, batch.image_latents, sees, rows).float()
    e_full, e_img, e_none = eps.chunk(3)
    return rescale_guidance(e_none + batch.image_guidance * (e_img - e_none)
                            + batch.text_guidance * (e_full - e_img), e_full, batch.rescale)


@dataclass
class InstructRollout:
    """The sampled trajectories of one batch (no gradients)."""

    batch: InstructBatch
    latents: list[torch.Tensor]
    next_latents: list[torch.Tensor]
    log_probs: torch.Tensor  # (steps, N)
    stds: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    images: np.ndarray  # N,H,W,3 uint8
    sched: DDIMScheduler


def ddim_schedule(editor: InstructEditor, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(editor.scheduler.config)
    sched.set_timesteps(steps, device=editor.device)
    return sched


@torch.no_grad()
def instruct_rollout(editor: InstructEditor, batch: InstructBatch, steps: int, eta: float,
                     generator: torch.Generator) -> InstructRollout:
    """Edit the batch with the stochastic guided sampler from the editor's own start, keeping what the loss needs."""
    sched = ddim_schedule(editor, steps)
    noise = torch.randn(batch.image_latents.shape, generator=generator).to(batch.image_latents)
    x = initial_latents(sched, batch.image_latents, noise, str(editor.setting("default_start")))
    latents, nexts, log_probs, stds = [], [], [], []
    if editor.arch == "causal":
        editor.encode_input_branch(batch.image_latents, batch.empty)
    try:
        for t in sched.timesteps:
            mean, std = ddim_step(sched, guided(editor, x, t, batch, encode=False), t, x, eta)
            nxt = mean + std * torch.randn(x.shape, generator=generator).to(x)
            latents.append(x)
            nexts.append(nxt)
            log_probs.append(gaussian_log_prob(nxt, mean, std))
            stds.append(std)
            x = nxt
    finally:
        if editor.branches is not None:
            editor.branches.clear()
    images = to_uint8(editor.decode(x))
    return InstructRollout(batch, latents, nexts, torch.stack(log_probs), stds, list(sched.timesteps), images, sched)


def instruct_policy_loss(editor: InstructEditor, reference: InstructEditor, roll: InstructRollout, index: int,
                         advantages: torch.Tensor, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss at sampling step `index`: the clipped objective + kl_weight * KL to the reference editor."""
    grpo, sched = cfg.grpo, roll.sched
    x, t = roll.latents[index], roll.timesteps[index]
    try:
        mean, _ = ddim_step(sched, guided(editor, x, t, roll.batch), t, x, grpo.eta)
        with torch.no_grad():
            ref_mean, _ = ddim_step(sched, guided(reference, x, t, roll.batch), t, x, grpo.eta)
        return step_loss(mean, ref_mean, roll.next_latents[index], roll.log_probs[index], roll.stds[index],
                         advantages, grpo)
    finally:
        for e in (editor, reference):
            if e.branches is not None:
                e.branches.clear()


def score_edits(scorer: Scorer, kinds: list[str], images: np.ndarray, edits: list[Edit],
                sources: np.ndarray) -> dict[str, np.ndarray]:
    """Each reward's score of the edits: against their target scenes' captions, on their sources, in their regions."""
    batch = ScoreBatch(images, [e.target.caption for e in edits], sources, np.stack([e.mask for e in edits]))
    return {kind: scorer.score(kind, batch) for kind in kinds}


def training_edits(cfg, step: int, rng: np.random.Generator) -> list[Edit]:
    """The step's edits, each `group` times in a row: seeds drawn from the step's own stream."""
    chosen = edit_specs(cfg.batch_size // cfg.grpo.group, int(rng.integers(2**31)))
    return [e for e in chosen for _ in range(cfg.grpo.group)]


def instruct_grpo_step(scorer: Scorer, steps: int) -> Callable[..., dict[str, float]]:
    """A training step for trainers.feedback.loop.train_feedback with the editor as its `pipe`: (editor, cfg, step,
    params, opt, anchor) -> record, `anchor` being the frozen start UNet; `steps`: the sampling steps of a rollout."""
    from trainers.align.dpo import reference_editor

    made: dict[str, InstructEditor] = {}

    def step_fn(editor: InstructEditor, cfg, step: int, params, opt, anchor) -> dict[str, Any]:
        if not made:
            made["reference"] = reference_editor(editor, anchor)
        grpo = cfg.grpo
        rng = step_rng(cfg.seed, STREAM, step)
        edits = training_edits(cfg, step, rng)
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
        editor.unet.eval()
        batch = instruct_batch(editor, edits)
        roll = instruct_rollout(editor, batch, steps, grpo.eta, generator)
        weights = {**cfg.reward_weights, "coherence": grpo.coherence_weight}
        scores = score_edits(scorer, grpo.reward_kinds(cfg.reward_weights), roll.images, edits, batch.sources)
        advantages, scored = batch_advantages(scores, weights, grpo.group, step, editor.device)
        chosen_steps = trained_steps(rng, len(roll.timesteps), grpo.train_fraction)
        editor.unet.train()
        record = optimise(lambda index: instruct_policy_loss(editor, made["reference"], roll, index, advantages,
                                                             cfg), chosen_steps, cfg, step, params, opt)
        return {**record, **scores_record(scores, scored, advantages, grpo)}

    return step_fn
