"""The feedback training loop shared by the PeFL, adversarial and progressive stages.

Per step: a batch of world examples drawn from (seed, stage, step) alone (so a resumed run replays
nothing), the PeFL forward, the reward losses (plus the coherence critic's term in the adversarial
stage), the reference regulariser, an AdamW step on the UNet (or its LoRA adapters), an EMA update,
and, in the adversarial stage, a discriminator update. Every `checkpoint_every` steps the UNet, its
EMA, the optimisers, the critic and the history are written atomically; a non-finite loss stops the
run with `Diverged` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from editloop.models.data import edit_context, step_rng, to_tensor
from editloop.models.zoo import set_timestep_spacing
from trainers.distributed import average_gradients, is_main, local_rows, mean_over_ranks
from trainers.feedback.adversarial import AdversarialConfig, discriminator_step, generator_loss
from trainers.feedback.examples import TASKS, check_tasks, feedback_examples, make_example, upscale
from trainers.feedback.grpo import GrpoConfig, check_grpo
from trainers.feedback.pefl import PeflSchedule, autocast, decode, predict_x0, prepare, reference_loss
from trainers.feedback.rewards import RewardModels, calibrate, reward_losses
from trainers.feedback.selection import Selection, save_snapshot, select_snapshot
from trainers.runs import save_checkpoint, throttled

STAGES = ("pefl", "adversarial", "progressive")  # ByteEdit's chain, in order
METHODS = (*STAGES, "dpo", "grpo")  # a feedback-lifecycle run trains a stage, Diffusion-DPO (dpo.py) or GRPO (grpo.py)
SPACINGS = ("leading", "trailing", "linspace")


class Diverged(RuntimeError):
    """The loss went non-finite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class FeedbackConfig:
    stage: str = "pefl"
    schedule: PeflSchedule = field(default_factory=PeflSchedule)
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-5
    ema_decay: float = 0.98
    reward_weights: dict[str, float] = field(default_factory=lambda: {"aesthetic": 1.0, "alignment": 1.0})
    # task -> multiplier of the preference rewards' loss on that task's examples (a task left out: 1);
    # e.g. {"erase": 0, "inpaint": 0, "outpaint": 4} (BENCHMARKS.md, "Reward weights per task")
    task_reward_scale: dict[str, float] = field(default_factory=dict)
    eta: float = 1.0  # reference regulariser weight
    perceptual_weight: float = 1.0
    guidance: float = 4.0
    tasks: tuple[str, ...] = TASKS
    adversarial: AdversarialConfig | None = None
    checkpoint_every: int = 25
    grad_clip: float = 1.0
    seed: int = 0
    lora_rank: int = 0  # 0 = full fine-tuning; > 0 trains LoRA adapters (needs peft)
    gradient_checkpointing: bool = False
    resolution: int = 64  # training examples are upscaled to this size (512 for Stable-Diffusion-sized models)
    calibration_examples: int = 0  # > 0: rewards normalised on this many clean sources (BENCHMARKS.md: hacked)
    # None: sample with the start model's timestep spacing; "trailing" puts the first of few steps at t = 999
    # (Lin et al., 2024, section 3.3); the trained model keeps the spacing it was trained with
    timestep_spacing: str | None = None
    snapshot_every: int = 0  # > 0: keep the EMA weights every this many steps for checkpoint selection
    # > 0: DPOK's KL trust region to the start model (pefl.py): kl_weight * the drift of the noise prediction
    kl_weight: float = 0.0
    # Diffusion-DPO's beta (dpo.py; stage "dpo" only): how far from the reference the preferences may pull
    dpo_beta: float = 5000.0
    grpo: GrpoConfig | None = None  # online GRPO's settings (grpo.py; stage "grpo" only)

    def __post_init__(self) -> None:
        if self.stage not in METHODS:
            raise ValueError(f"`stage` must be one of {list(METHODS)}, got {self.stage!r}")
        check_tasks(self.tasks)
        check_task_scale(self.task_reward_scale)
        check_reward_weights(self.reward_weights)
        if self.timestep_spacing not in (None, *SPACINGS):
            raise ValueError(f"`timestep_spacing` must be one of {list(SPACINGS)} or None, "
                             f"got {self.timestep_spacing!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.lora_rank < 0:
            raise ValueError(f"`lora_rank` must be >= 0 (0: full fine-tuning), got {self.lora_rank}")
        if self.snapshot_every < 0:
            raise ValueError(f"`snapshot_every` must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"`kl_weight` must be a finite number >= 0 (0: no KL term), got {self.kl_weight}")
        if not (math.isfinite(self.dpo_beta) and self.dpo_beta > 0):
            raise ValueError(f"`dpo_beta` must be a finite number > 0, got {self.dpo_beta}")
        if self.stage == "grpo":
            check_grpo(self)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackConfig:
        data = dict(data)
        data["schedule"] = PeflSchedule(**data.get("schedule", {}))
        if data.get("adversarial") is not None:
            data["adversarial"] = AdversarialConfig(**data["adversarial"])
        if data.get("grpo") is not None:
            data["grpo"] = GrpoConfig.from_dict(data["grpo"])
        if "tasks" in data:
            data["tasks"] = tuple(data["tasks"])
        return cls(**data)


PREFERENCE_REWARDS = ("aesthetic", "alignment")  # scored per image; coherence enters as the adversarial critic


def check_reward_weights(weights: dict[str, float]) -> None:
    """The preference rewards a feedback stage learns from, with their weights: known kinds, finite, >= 0, one > 0."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"`reward_weights` must name at least one of {list(PREFERENCE_REWARDS)}, got {weights!r}")
    for kind, value in weights.items():
        if kind not in PREFERENCE_REWARDS:
            extra = " (the coherence reward is the adversarial stage's critic)" if kind == "coherence" else ""
            raise ValueError(f"`reward_weights` names unknown reward {kind!r}; rewards: {list(PREFERENCE_REWARDS)}"
                             + extra)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"`reward_weights[{kind!r}]` must be a finite number >= 0, got {value!r}")
    if not any(v > 0 for v in weights.values()):
        raise ValueError(f"`reward_weights` needs one weight > 0, got {weights}")


def parse_reward_weights(text: str, name: str = "reward_weights") -> dict[str, float]:
    """"aesthetic=1,alignment=0.5" -> {"aesthetic": 1.0, "alignment": 0.5}, checked as FeedbackConfig checks it;
    `name` is the flag or setting the text came from (it names the error)."""
    weights: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        kind, sep, value = item.partition("=")
        try:
            weights[kind.strip()] = float(value) if sep else float("nan")
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"`{name}` must be KIND=WEIGHT[,KIND=WEIGHT] (e.g. aesthetic=1,alignment=0.5), "
                             f"got {item!r}")
    check_reward_weights(weights)
    return weights


def check_task_scale(scale: dict[str, float]) -> None:
    for task, value in scale.items():
        if task not in TASKS:
            raise ValueError(f"`task_reward_scale` names unknown task {task!r}; tasks: {list(TASKS)}")
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"`task_reward_scale[{task!r}]` must be a finite number >= 0, got {value!r}")


def task_scales(cfg: FeedbackConfig, tasks: list[str]) -> torch.Tensor | None:
    """Per-example multipliers of the reward loss (None when every task weighs 1)."""
    if not cfg.task_reward_scale:
        return None
    return torch.tensor([float(cfg.task_reward_scale.get(t, 1.0)) for t in tasks])


def make_trainable(pipe, cfg: FeedbackConfig) -> list[torch.nn.Parameter]:
    """Freeze the VAE and text encoder; the UNet (or its LoRA adapters) trains. Returns what trains."""
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    if cfg.lora_rank:
        add_lora(pipe.unet, cfg.lora_rank)
    else:
        pipe.unet.requires_grad_(True)
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return [p for p in pipe.unet.parameters() if p.requires_grad]


def add_lora(unet: torch.nn.Module, rank: int) -> None:
    """LoRA adapters on the attention projections (peft); the base weights freeze."""
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("`lora_rank` > 0 needs peft: `.venv/bin/pip install 'editloop[lora]'`") from exc
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


class Ema:
    """Exponential moving average of the trainable parameters (the weights that are saved)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


@dataclass
class FeedbackState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    selection: Selection | None = None  # the snapshot chosen on validation, when snapshots were kept


def train_feedback(pipe, rewards: RewardModels, cfg: FeedbackConfig, run_dir: Path,
                   progress: Callable[[int, int, dict[str, float]], None] | None = None,
                   select: Callable[[int], float] | None = None,
                   step: Callable[..., dict[str, float]] | None = None) -> FeedbackState:
    """Fine-tune `pipe.unet` in place (it ends holding the EMA weights); resumes from run_dir/checkpoint.pt.
    With `cfg.timestep_spacing`, `pipe.scheduler` switches to that spacing first (and is saved with it).
    With `cfg.snapshot_every` and `select` (a validation score of the weights loaded now, higher is better),
    it ends holding the best-scored snapshot instead of the last EMA weights (selection.py). A `step`
    (pipe, cfg, step index, params, optimiser, frozen start UNet) -> record replaces the PeFL step (Diffusion-DPO's,
    dpo.py); the frozen start UNet is then always kept."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint.pt"
    if cfg.timestep_spacing is not None:  # trained, evaluated and saved with this spacing
        set_timestep_spacing(pipe, cfg.timestep_spacing)
    unet, device = pipe.unet, pipe.unet.device
    # the start weights, before any checkpoint loads: the KL term's anchor, or a DPO step's reference
    anchor = start_anchor(unet) if cfg.kl_weight > 0 or step is not None else None
    params = make_trainable(pipe, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema = Ema(params, cfg.ema_decay)
    disc, d_opt = None, None
    if cfg.adversarial is not None:
        if rewards.coherence is None:
            raise ValueError("the adversarial stage needs a coherence reward model as its discriminator")
        disc = rewards.coherence
        d_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.adversarial.d_lr, weight_decay=0.0)
    if cfg.calibration_examples:
        calibrate_rewards(rewards, cfg)
    state = FeedbackState()
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False, map_location=device)
        unet.load_state_dict(saved["unet"], strict=False)
        opt.load_state_dict(saved["opt"])
        ema.shadow = [t.to(device) for t in saved["ema"]]
        if disc is not None:
            disc.load_state_dict(saved["disc"])
            d_opt.load_state_dict(saved["d_opt"])
        state = FeedbackState(saved["step"], saved["history"])
    main = is_main()  # a data-parallel job's rank 0 alone writes checkpoints, snapshots and the history
    progress = throttled(progress) if main else None
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"{cfg.stage} (T={cfg.schedule.steps})", unit="step",
               disable=None if main else True)
    while state.step < cfg.steps:
        t0 = time.perf_counter()
        record = (step(pipe, cfg, state.step, params, opt, anchor) if step is not None
                  else _one_step(pipe, rewards, cfg, state.step, params, opt, disc, d_opt, anchor))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["seconds"] = time.perf_counter() - t0
        ema.update(params)
        state.step += 1
        state.history.append({"step": state.step, **record})
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if main and cfg.snapshot_every and (state.step % cfg.snapshot_every == 0 or state.step == cfg.steps):
            save_snapshot(run_dir, state.step, ema.shadow)  # before the checkpoint that would skip it on resume
        if main and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
            payload = {"unet": unet.state_dict(), "opt": opt.state_dict(),
                       "ema": ema.shadow, "step": state.step, "history": state.history, "config": cfg.to_dict()}
            if disc is not None:
                payload.update(disc=disc.state_dict(), d_opt=d_opt.state_dict())
            save_checkpoint(ckpt, payload)
        if progress is not None:
            progress(state.step, cfg.steps, record)
    bar.close()
    ema.copy_to(params)
    if cfg.snapshot_every and select is not None:
        state.selection = select_snapshot(run_dir, params, select)
    if cfg.lora_rank:  # merge the adapters into the weights: the saved model is a plain UNet again
        unet.fuse_lora()
        unet.unload_lora()
    if main:
        (run_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    return state


def calibrate_rewards(rewards: RewardModels, cfg: FeedbackConfig) -> None:
    """Normalise the rewards on clean sources of a fixed calibration set (the same on every resume)."""
    if not rewards.preference:
        return
    examples = [upscale(e, cfg.resolution) for e in feedback_examples(cfg.calibration_examples, 7_777_777, cfg.tasks)]
    model, _ = next(iter(rewards.preference.values()))
    images = to_tensor([e.source for e in examples]).to(next(model.parameters()).device)
    source, mask = edit_context([e.source for e in examples], [e.mask for e in examples], *images.shape[-2:])
    calibrate(rewards, images, [e.prompt for e in examples], source, mask)


def start_anchor(unet: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the UNet as it is now (the KL term's reference; one more UNet in memory)."""
    import copy

    return copy.deepcopy(unet).requires_grad_(False).eval()


def _one_step(pipe, rewards: RewardModels, cfg: FeedbackConfig, step: int, params, opt, disc, d_opt,
              anchor=None) -> dict[str, float]:
    rng = step_rng(cfg.seed, cfg.stage, step)
    rows = local_rows(cfg.batch_size)  # a data-parallel job: this rank's share of the global batch
    examples = [upscale(make_example(rng, cfg.tasks[(step * cfg.batch_size + i) % len(cfg.tasks)]), cfg.resolution)
                for i in range(cfg.batch_size)][rows]
    generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
    batch = prepare(pipe, examples)
    pipe.unet.train()
    with autocast(pipe.unet.device):
        x0, steps_left, drift = predict_x0(pipe, batch, cfg.schedule, generator, cfg.guidance, anchor=anchor,
                                           rows=(cfg.batch_size, rows))
        images = decode(pipe, x0)
        loss, record = reward_losses(rewards, cfg.reward_weights, images, batch.prompts,
                                     task_scales(cfg, [e.task for e in examples]), batch.source, batch.mask)
        reg = reference_loss(pipe.vae, images, batch, cfg.perceptual_weight).mean()
        loss = loss + cfg.eta * reg
        if drift is not None:
            loss = loss + cfg.kl_weight * drift.mean()
            record["kl"] = float(drift.mean().detach())
        if disc is not None and cfg.adversarial.generator_active(step):
            adv = generator_loss(disc, images, batch.mask)
            loss = loss + cfg.adversarial.weight * adv
            record["g_adv"] = float(adv.detach())
    if not math.isfinite(float(loss.detach())):
        raise Diverged(f"{cfg.stage} loss is {float(loss.detach())} at step {step + 1}; "
                       f"the last good checkpoint is kept")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params)  # a data-parallel job: every rank clips and steps on the global batch's gradient
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    record = {k: mean_over_ranks(v) if isinstance(v, float) else v for k, v in record.items()}
    record.update(loss=mean_over_ranks(float(loss.detach())), reference=mean_over_ranks(float(reg.detach())),
                  steps_left=steps_left, grad_norm=float(grad_norm))
    if disc is not None and cfg.adversarial.discriminator_due(step):
        record.update(discriminator_step(disc, d_opt, images.detach(), batch.source, batch.mask, cfg.adversarial))
    return record
