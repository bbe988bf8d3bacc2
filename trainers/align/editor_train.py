"""Train an instruction editor on edit pairs: epsilon (or, on a zero-terminal-SNR schedule, velocity)
prediction on the target latent, conditioned on the instruction and the input image, with InstructPix2Pix's
condition dropout (so both guidance scales work),
Min-SNR weighting, EMA, checkpoints and exact resume (the data of step k depends on (seed, k) alone)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel

from editloop.models.configs import SCHEDULES, check_schedule
from editloop.models.coord_unet import clone_unet
from editloop.models.data import step_rng
from editloop.models.instruct import InstructEditor
from editloop.models.pipeline_io import text_states
from editloop.models.zoo import training_scheduler
from trainers.align.pairs import Pairs
from trainers.distributed import is_main, local_rows, mean_over_ranks
from trainers.pretrain.common import EMA, guarded_step, set_lr
from trainers.pretrain.diffusion import inflate_conv_in, min_snr_weights, prediction_target
from trainers.runs import save_checkpoint, throttled


@dataclass(frozen=True)
class EditorTrainConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 50
    ema: float = 0.995
    drop_text: float = 0.05  # InstructPix2Pix: 5% no text, 5% no image, 5% neither
    drop_image: float = 0.05
    drop_both: float = 0.05
    min_snr_gamma: float = 5.0
    # the base text encoder learned captions only: an instruction's verbs and "larger" / "smaller" are tokens
    # it never trained on (near-identical states, BENCHMARKS.md "Instruction editing"); True trains it with the UNet
    train_text_encoder: bool = False
    # draw each example's edit kind uniformly, then a pair of that kind (SeedEdit mixes its data by task): an
    # editor's own pairs lean to the kinds it already does, and uniform draws let those crowd out the rest
    balance_kinds: bool = False
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"`steps` and `batch_size` must be >= 1, got {self.steps} and {self.batch_size}")
        if self.drop_text + self.drop_image + self.drop_both >= 1:
            raise ValueError("condition dropout probabilities must sum to less than 1")

    def to_dict(self) -> dict:
        return asdict(self)


def editor_scheduler(pipe, schedule: str | None) -> DDIMScheduler:  # a StableDiffusionPipeline
    """The editor's noise schedule: its base's (None) or a built-in one by name (editloop.models.configs). An editor
    inherits its base's schedule with "leading" timesteps: its `start="input"` noises the input to the first
    timestep, which trailing spacing puts at t = 999, where almost nothing of the input is left (the committed
    editor was measured with leading; trailing sampled it no better, BENCHMARKS.md "Base models")."""
    if schedule is None:
        return DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    check_schedule(schedule)
    return DDIMScheduler(**SCHEDULES[schedule])


def own_text_encoder(pipe) -> CLIPTextModel:  # a diffusers pipeline
    """A copy of the pipeline's text encoder (fp32) for a new editor: an editor may train it
    (`train_text_encoder`), and the pipeline (the weak generator of the pairs) must not change with it."""
    return copy.deepcopy(pipe.text_encoder).float()


def editor_from_t2i(pipe, arch: str, schedule: str | None = None) -> InstructEditor:
    """A new editor initialised from the text-to-image model (a StableDiffusionPipeline): the causal editor
    reuses its UNet as is; the concat baseline inflates conv_in to 8 channels with the new ones zero (as
    InstructPix2Pix does). `schedule` ("zero-snr-v") trains the editor on another schedule than its base's:
    the UNet then learns the new parametrisation during editor training (as SD 2's v-models were fine-tuned
    from epsilon ones), and x_T carries no signal, so the editor must read what it keeps from the input."""
    unet = clone_unet(pipe.unet)
    unet.load_state_dict(pipe.unet.state_dict())
    if arch == "concat":
        unet = inflate_conv_in(unet, 8)
    return InstructEditor(arch, unet.float(), pipe.vae.float(), own_text_encoder(pipe), pipe.tokenizer,
                          editor_scheduler(pipe, schedule), meta={})


INITS = ("t2i", "inpaint")  # what a new editor starts from


def concat_conv_from_inpaint(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The inpainting UNet (inputs: noisy latent, mask, masked-image latent) as an 8-channel concat editor UNet
    (noisy latent, input latent): the mask channel is dropped, which is the inpainting model read with mask 0
    ("keep everything") and the whole input as its masked image. A CoordUNet's coordinate channels stay last."""
    if unet.config.in_channels != 9:
        raise ValueError(f"an inpainting UNet has 9 input channels, got {unet.config.in_channels}")
    concat = clone_unet(unet, in_channels=8)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w[:, :4], w[:, 5:]], dim=1)
    concat.load_state_dict(state)
    return concat


def editor_from_inpaint(pipe, schedule: str | None = None) -> InstructEditor:
    """A new concat editor initialised from the inpainting model (a StableDiffusionInpaintPipeline): at step 0 it
    is the inpainting model told to keep the whole input, so it starts out copying its input and training
    teaches it what to change (a deviation from InstructPix2Pix, which starts from the text-to-image model with
    zero weights on the input channels; BENCHMARKS.md measures both). The causal editor reads its input through
    attention, not channels, so it has no such start: it must begin from the text-to-image model."""
    return InstructEditor("concat", concat_conv_from_inpaint(pipe.unet).float(), pipe.vae.float(),
                          own_text_encoder(pipe), pipe.tokenizer, editor_scheduler(pipe, schedule), meta={})


def check_init(arch: str, init: str) -> None:
    """A new editor's start must be known, and the inpainting start fits the concat editor only."""
    if init not in INITS:
        raise ValueError(f"`init` must be one of {list(INITS)}, got {init!r}")
    if init == "inpaint" and arch != "concat":
        raise ValueError(f"`init` 'inpaint' starts a concat editor only; `arch` {arch!r} must start from 't2i' "
                         f"(the inpainting UNet reads its input as channels)")


def new_editor(arch: str, init: str = "t2i", schedule: str | None = None, device: str | None = None,
               base: dict | None = None) -> InstructEditor:
    """A new editor of `arch` from the committed base model named by `init` ("t2i" or "inpaint"). `base` may
    hold already loaded base pipelines by kind (so a caller building several editors loads each once)."""
    from editloop.models.base import load_base

    check_init(arch, init)
    base = base if base is not None else {}
    if init not in base:
        base[init] = load_base(init, device=device, dtype="fp32")
    pipe = base[init]
    editor = editor_from_inpaint(pipe, schedule) if init == "inpaint" else editor_from_t2i(pipe, arch, schedule)
    editor.meta["init"] = init
    return editor.to(pipe.unet.device)  # a new UNet is built on the CPU; the base's modules sit on its device


@dataclass
class TrainState:
    step: int
    history: list[dict[str, float]]


def batch_indices(rng: np.random.Generator, kinds: list[str], n: int, balance_kinds: bool) -> np.ndarray:
    """`n` pair indices: uniform over the pairs, or (`balance_kinds`) a kind uniform over the kinds present, then a
    pair uniform within it."""
    if not balance_kinds:
        return rng.integers(0, len(kinds), n)
    names, of_pair = np.unique(np.asarray(kinds), return_inverse=True)
    members = [np.flatnonzero(of_pair == k) for k in range(len(names))]
    picked = rng.integers(0, len(names), n)
    return np.array([members[k][rng.integers(0, len(members[k]))] for k in picked], dtype=np.int64)


def condition_flags(rng: np.random.Generator, n: int, cfg: EditorTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keep text, keep image) per row, with the three dropout cases exclusive."""
    u = rng.random(n)
    no_text = u < cfg.drop_text
    no_image = (u >= cfg.drop_text) & (u < cfg.drop_text + cfg.drop_image)
    both = (u >= cfg.drop_text + cfg.drop_image) & (u < cfg.drop_text + cfg.drop_image + cfg.drop_both)
    return ~(no_text | both), ~(no_image | both)


def editor_loss(editor: InstructEditor, scheduler, src_lat: torch.Tensor, tgt_lat: torch.Tensor,
                text: torch.Tensor, empty: torch.Tensor, sees: torch.Tensor, gen: torch.Generator,
                gamma: float, rows: tuple[int, slice] | None = None) -> torch.Tensor:
    """Min-SNR-weighted MSE to the schedule's target (epsilon or velocity) on the target latents; for the
    causal editor the input branch runs in the same graph, so its gradients reach the shared UNet too. `rows`
    (global batch size, this rank's slice) in a data-parallel job: noise and timesteps are drawn for the global
    batch and this rank keeps its rows, as one process would have drawn them."""
    n, keep = rows if rows is not None else (len(tgt_lat), slice(None))
    noise = torch.randn((n, *tgt_lat.shape[1:]), generator=gen)[keep].to(tgt_lat.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)[keep].to(tgt_lat.device)
    noisy = scheduler.add_noise(tgt_lat, noise, t)
    if editor.arch == "causal":
        editor.encode_input_branch(src_lat, empty)
    pred = editor.eps(noisy, t, text, src_lat, sees)
    target = prediction_target(scheduler, tgt_lat, noise, t)
    per = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (per * min_snr_weights(scheduler, t, gamma)).mean()


class TextConditions:
    """The instruction and empty-prompt states a training batch is conditioned on: encoded once when the text
    encoder is frozen, or per batch (with gradients) when it trains with the UNet."""

    def __init__(self, editor: InstructEditor, instructions: list[str], train: bool) -> None:
        self.editor, self.instructions, self.train = editor, list(instructions), train
        editor.text_encoder.train(train).requires_grad_(train)
        if not train:  # encode_text runs without gradients
            self.all, self.empty = editor.encode_text(self.instructions), editor.encode_text([""])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.editor.text_encoder.parameters()) if self.train else []

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) instruction states of rows `idx` and the (1, L, D) empty prompt's."""
        if not self.train:
            return self.all[idx], self.empty
        texts = [self.instructions[i] for i in idx] + [""]
        return text_states(self.editor.tokenizer, self.editor.text_encoder, texts).split([len(idx), 1])


def train_editor(editor: InstructEditor, pairs: Pairs, cfg: EditorTrainConfig, run_dir: Path,
                 progress: Callable[[int, int, dict[str, float]], None] | None = None) -> TrainState:
    """Train `editor.unet` (and, with `cfg.train_text_encoder`, the text encoder; the VAE stays frozen) on
    `pairs`; resumes from run_dir/editor.pt. The EMA weights are copied into the trained modules at the end."""
    if len(pairs) == 0:
        raise ValueError("no pairs to train on")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "editor.pt"
    dev = editor.device
    src_lat, tgt_lat = editor.encode_images(pairs.sources), editor.encode_images(pairs.targets)
    texts = TextConditions(editor, pairs.instructions, cfg.train_text_encoder)
    unet = editor.unet.train()
    params = list(unet.parameters()) + texts.parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    ema = EMA(params, cfg.ema)
    scheduler = training_scheduler(editor.scheduler.config)  # the schedule the editor's base was trained on
    state = TrainState(0, [])
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=dev, weights_only=False)
        unet.load_state_dict(saved["unet"])
        if cfg.train_text_encoder:
            editor.text_encoder.load_state_dict(saved["text_encoder"])
        opt.load_state_dict(saved["optimizer"])
        ema.load_state_dict(saved["ema"])
        state = TrainState(saved["step"], saved["history"])
    main = is_main()  # a data-parallel job's rank 0 alone checkpoints and reports
    progress = throttled(progress) if main else None
    rows = local_rows(cfg.batch_size)  # this rank's share of every global batch (all of it in one process)
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {editor.arch} editor", unit="step",
               disable=None if main else True)
    loss_ema = state.history[-1]["loss_ema"] if state.history else None
    while state.step < cfg.steps:
        t0 = time.perf_counter()
        rng = step_rng(cfg.seed, "align", state.step)
        idx = batch_indices(rng, pairs.kinds, cfg.batch_size, cfg.balance_kinds)
        keep_text, keep_image = condition_flags(rng, cfg.batch_size, cfg)
        idx, keep_text, keep_image = idx[rows], keep_text[rows], keep_image[rows]
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        instr, empty = texts.batch(idx)
        text = torch.where(torch.from_numpy(keep_text).to(dev)[:, None, None], instr, empty)
        sees = torch.from_numpy(keep_image).to(dev)
        set_lr(opt, cfg.lr, state.step, cfg.steps, cfg.warmup)
        loss = editor_loss(editor, scheduler, src_lat[idx], tgt_lat[idx], text, empty, sees, gen, cfg.min_snr_gamma,
                           rows=(cfg.batch_size, rows))
        guarded_step(opt, loss, params, ema, state.step, "editor")
        state.step += 1
        value = mean_over_ranks(loss.item())  # the global batch's loss
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        last = {"step": state.step, "loss": value, "loss_ema": loss_ema, "seconds": time.perf_counter() - t0}
        state.history.append(last)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        if main and (state.step == cfg.steps or state.step % cfg.checkpoint_every == 0):
            saved = {"unet": unet.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                     "step": state.step, "history": state.history, "config": cfg.to_dict()}
            if cfg.train_text_encoder:
                saved["text_encoder"] = editor.text_encoder.state_dict()
            save_checkpoint(ckpt, saved)
        if progress is not None:
            progress(state.step, cfg.steps, last)
    bar.close()
    if editor.branches is not None:
        editor.branches.clear()
    ema.copy_to(params)
    unet.eval()
    editor.text_encoder.eval()
    return state
