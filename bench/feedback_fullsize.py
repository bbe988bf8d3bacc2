"""PeFL and GRPO steps at Stable Diffusion 1.5 size on a CUDA GPU: step time, peak memory, achieved TFLOP/s
(issue 6 item 6; issue 35 item 4).

    python bench/feedback_fullsize.py --out bench/results/feedback_fullsize.json          # on a CUDA machine
    python bench/feedback_fullsize.py --method grpo --batch 4 --out bench/results/grpo_fullsize.json
    python bench/feedback_fullsize.py --lora-rank 64 --gradient-checkpointing --out ...   # LoRA, less memory
    .venv/bin/python bench/feedback_fullsize.py --tiny --out /tmp/fullsize-smoke.json    # CPU smoke test

Random-initialised SD-1.5-shaped components (editloop/models/sd15.py; no weights are needed to time them): the
inpainting UNet (9 input channels, blocks 320/640/1280/1280, cross-attention 768), the VAE (128/256/512/512,
512 px -> 64x64x4), a 12-layer 768-wide CLIP text encoder, and ViT-B-sized reward models
(patch 32 at 512 px, 12 blocks of 768). One PeFL step is the full training step of
trainers/feedback/loop.py (no-grad DDIM from T1 to t', one UNet step with gradients, VAE decode,
rewards, reference regulariser, AdamW). FLOPs are counted with torch.utils.flop_counter in separate
runs of the same (seed-determined) steps; the card's peak is a large bf16 matmul in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from editloop.models.configs import SCHEDULER, TINY_TEXT, TINY_VAE, tiny_unet
from editloop.models.reward import CoherenceReward, PreferenceReward
from editloop.models.sd15 import SD15_TEXT, SD15_UNET, SD15_VAE
from editloop.models.tokenizer import build_tokenizer
from editloop.models.zoo import make_pipeline
from trainers.feedback.grpo import GrpoConfig, grpo_step
from trainers.feedback.loop import FeedbackConfig, train_feedback
from trainers.feedback.pefl import PeflSchedule
from trainers.feedback.reward_client import LocalScorer
from trainers.feedback.rewards import RewardModels


def components(tiny: bool) -> tuple[dict, RewardModels, int]:
    tok = build_tokenizer()
    if tiny:
        text = CLIPTextConfig(**TINY_TEXT)
        parts = {"vae": AutoencoderKL(**TINY_VAE), "unet": UNet2DConditionModel(**tiny_unet(9))}
        reward = dict(image_size=64, patch_size=8, dim=128, depth=2, heads=4)
        size = 64
    else:
        text = CLIPTextConfig(**SD15_TEXT)
        parts = {"vae": AutoencoderKL(**SD15_VAE), "unet": UNet2DConditionModel(**SD15_UNET)}
        reward = dict(image_size=512, patch_size=32, dim=768, depth=12, heads=12)
        size = 512
    parts.update(text_encoder=CLIPTextModel(text), tokenizer=tok, scheduler=DDIMScheduler(**SCHEDULER))
    text_cfg = {k: v for k, v in text.to_dict().items() if k in TINY_TEXT}
    rewards = RewardModels(preference={k: (PreferenceReward(**reward, text_config=text_cfg).requires_grad_(False)
                                           .eval(), tok) for k in ("aesthetic", "alignment")},
                           coherence=CoherenceReward())
    return parts, rewards, size


def peak_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/feedback_fullsize.json"))
    parser.add_argument("--tiny", action="store_true", help="the tiny configs on whatever device (a smoke test)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--method", choices=["pefl", "grpo"], default="pefl",
                        help="pefl: one PeFL step; grpo: a group rollout (eta 1) scored in-process, then the clipped "
                             "policy-gradient updates over half its steps")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank instead of the full UNet")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts, rewards, size = components(args.tiny)
    pipe = make_pipeline(parts).to(device)
    rewards.to(device)
    cfg = dict(steps=args.warmup + args.steps, batch_size=args.batch, resolution=size, checkpoint_every=10**6,
               schedule=PeflSchedule(20, 15, 10), gradient_checkpointing=args.gradient_checkpointing,
               lora_rank=args.lora_rank)
    step = None
    if args.method == "grpo":
        cfg.update(stage="grpo", kl_weight=0.0, grpo=GrpoConfig(group=2, scorer="in-process", guard=()))
        step = grpo_step(LocalScorer(rewards))
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as tmp:
        # FLOPs: a step's work depends on t' (how many no-grad steps it runs), which depends on (seed, step)
        # alone, so counting runs of `warmup` and `warmup + steps` steps give the timed steps' FLOPs exactly
        counts = []
        for n in (args.warmup, args.warmup + args.steps):
            counter = FlopCounterMode(display=False)
            with counter:
                train_feedback(pipe, rewards, FeedbackConfig(**{**cfg, "steps": n}), Path(tmp) / f"count{n}",
                               step=step)
            counts.append(counter.get_total_flops())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        state = train_feedback(pipe, rewards, FeedbackConfig(**cfg), Path(tmp) / "timed", step=step)
    timed = state.history[args.warmup:]
    seconds = sum(h["seconds"] for h in timed) / len(timed)
    flops = (counts[1] - counts[0]) / len(timed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_tflops(device, dtype, 8192 if device.type == "cuda" else 1024)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "config": "tiny" if args.tiny else "sd15", "method": args.method, "lora_rank": args.lora_rank,
              "gradient_checkpointing": args.gradient_checkpointing, "resolution": size, "batch": args.batch,
              "autocast": "bf16" if device.type == "cuda" else "fp32", "timed_steps": len(timed),
              "seconds_per_step": seconds, "images_per_second": args.batch / seconds,
              "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
              "flops_per_step": flops, "achieved_tflops": flops / seconds / 1e12,
              "matmul_peak_tflops": peak, "fraction_of_peak": flops / seconds / 1e12 / peak,
              "unet_parameters": sum(p.numel() for p in pipe.unet.parameters())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
