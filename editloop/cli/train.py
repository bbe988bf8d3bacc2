"""`editloop train reward --kind K [--wait]`: enqueue a reward-model training run on the gpu queue.
`editloop train pefl|adversarial|progressive [--wait]`: enqueue a feedback chain (ByteEdit) on the gpu queue.
`editloop train dpo [--instruct] [--wait]`: enqueue a Diffusion-DPO run (from the best/worst labels on edit sets, or
with --instruct on instruction-edit sets, training the instruction editor) on the gpu queue.
`editloop train grpo [--instruct] [--wait]`: enqueue an online GRPO run (samples scored by the reward services) on the
gpu queue; with --instruct it trains the instruction editor on its own edits of world instructions.
`editloop train align --rounds N [--wait]`: enqueue SeedEdit alignment rounds as a chain on the gpu queue."""

from __future__ import annotations

import argparse
import json
import uuid

from editloop import queue
from editloop.models.reward_kinds import kind_names
from editloop.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="enqueue training runs")
    tsub = p.add_subparsers(dest="train_command", required=True)
    r = tsub.add_parser("reward", help="train a reward model from the labels (a Celery task on the gpu queue)")
    r.add_argument("--kind", required=True, choices=kind_names())
    r.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    r.add_argument("--train-size", type=int, default=None,
                   help="examples to build for training: alignment (default 4000 captions with hard negatives) and "
                        "coherence (default 512 inpainted composites); the aesthetic reward trains on every label")
    r.add_argument("--eval-size", type=int, default=None,
                   help="held-out examples (alignment default 1000, coherence default 128)")
    r.add_argument("--batch-size", type=int, default=None, help="examples per step (default 64)")
    r.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations (default 100)")
    r.add_argument("--epochs", type=float, default=None,
                   help="train the fewer of --steps and this many passes over the training examples (at least 200 "
                        "steps), as the loop's triggered runs do (EDITLOOP_REWARD_TRAIN_EPOCHS, 3); default: --steps")
    r.add_argument("--no-promote", action="store_true", help="register the candidate but do not promote it")
    r.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    r.set_defaults(func=_train_reward)
    for stage, what in (("pefl", "PeFL with the aesthetic and alignment rewards (T=20)"),
                        ("adversarial", "PeFL, then the adversarial stage with the coherence critic"),
                        ("progressive", "PeFL, adversarial, then progressive acceleration to 8 steps")):
        f = tsub.add_parser(stage, help=f"feedback chain: {what}")
        f.add_argument("--only", action="store_true",
                       help=f"run only the {stage} stage, starting from the promoted editor")
        f.add_argument("--steps", type=int, default=None, help="training steps per stage (default 200)")
        f.add_argument("--batch-size", type=int, default=None)
        f.add_argument("--eval-examples", type=int, default=None, help="held-out examples per evaluation")
        f.add_argument("--task-reward-scale", action="append", default=[], metavar="TASK=SCALE",
                       help="multiply the reward loss on one task's examples (repeatable), e.g. outpaint=4 erase=0")
        f.add_argument("--review", choices=["none", "panel", "people"], default=None,
                       help="promote only a candidate the reviewers prefer side by side to the served model: panel "
                            "(the world's simulated reviewers) or people (Label Studio tasks, then `editloop models "
                            "review`)")
        f.add_argument("--review-margin", type=float, default=None, metavar="M",
                       help="a faster candidate passes the review if shown no worse than the served model by this "
                            "net preference (non-inferiority; default 0.1)")
        f.add_argument("--select-every", type=int, default=None, metavar="N",
                       help="keep a snapshot every N steps and hand the gate the one best on validation")
        f.add_argument("--kl-weight", type=float, default=None, metavar="BETA",
                       help="DPOK's KL trust region to each stage's start model (default 100, the weight BENCHMARKS.md "
                            "measured best; 0 turns it off)")
        f.add_argument("--rewards", default=None, metavar="KIND=W,...",
                       help="the preference rewards and their weights, e.g. aesthetic=1,alignment=0.5 (default: "
                            "aesthetic=1,alignment=1, each promoted version; the adversarial stage adds coherence)")
        f.add_argument("--no-promote", action="store_true", help="register candidates but do not promote them")
        f.add_argument("--wait", action="store_true", help="wait for the chain and print each stage's result")
        f.set_defaults(func=_train_feedback, stage=stage)
    d = tsub.add_parser("dpo", help="Diffusion-DPO for the inpainting editor, straight from the best/worst labels on "
                                    "edit sets (no reward model in the loss; the same gate as a feedback stage)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    d.add_argument("--batch-size", type=int, default=None, help="preference pairs per step (default 8)")
    d.add_argument("--beta", type=float, default=None, help="DPO's beta (default 5000, the paper's for SD 1.5)")
    d.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-5)")
    d.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank (default: full)")
    d.add_argument("--eval-examples", type=int, default=None, help="held-out examples of the gate")
    d.add_argument("--rewards", default=None, metavar="KIND=W,...",
                   help="the promoted rewards the gate scores with (default aesthetic=1,alignment=1)")
    d.add_argument("--instruct", action="store_true",
                   help="train the instruction editor (SeedEdit) from the labels on instruction-edit sets "
                        "(`editloop annotation candidates --instruct`), starting from the promoted instruct version "
                        "(else the committed one); gated on the alignment rounds' held-out edits")
    d.add_argument("--eval-per-kind", type=int, default=None,
                   help="--instruct: held-out edits per edit kind of the gate (default 8)")
    d.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    d.add_argument("--no-promote", action="store_true", help="register the candidate but do not promote it")
    d.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    d.set_defaults(func=_train_dpo)
    add_grpo_parser(tsub)
    a = tsub.add_parser("align", help="SeedEdit alignment rounds: weak-generator pairs, filters, the editor "
                                      "regenerating pairs round after round")
    a.add_argument("--rounds", type=int, default=2, help="rounds in the chain (default 2)")
    a.add_argument("--arch", choices=["causal", "concat"], default="causal",
                   help="causal two-branch editor (SeedEdit) or the InstructPix2Pix concat baseline")
    a.add_argument("--pairs", type=int, default=None, help="edit specs per round (default 384)")
    a.add_argument("--steps", type=int, default=None, help="training steps per round (default 600)")
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every K steps (default 50)")
    a.add_argument("--pair-steps", type=int, default=None, help="sampling steps when making pairs (default 12)")
    a.add_argument("--scorer", choices=["auto", "alignment", "judge"], default=None,
                   help="agreement scorer of the filters (default auto: the promoted alignment reward, else "
                        "the world judge)")
    a.add_argument("--schedule", choices=["zero-snr-v"], default=None,
                   help="train a new editor on this noise schedule instead of its base's (zero terminal SNR, "
                        "v-prediction: the initial noise then carries nothing the editor could copy)")
    a.add_argument("--init", choices=["t2i", "inpaint"], default=None,
                   help="what a new editor starts from: the text-to-image model (default) or, for --arch concat, "
                        "the inpainting model read with mask 0 (it starts out copying its input)")
    a.add_argument("--train-text-encoder", action="store_true",
                   help="train the editor's text encoder with its UNet (the base's learned captions, not the "
                        "instructions' verbs; BENCHMARKS.md measures it)")
    a.add_argument("--method", choices=["inpaint", "blend"], default=None,
                   help="round 1's weak generator: the inpainting model over the edit region (default), or the "
                        "text-to-image model making both images (blend)")
    a.add_argument("--blend-until", type=float, default=None,
                   help="--method blend: the fraction of sampling steps whose latents outside the edit region are "
                        "the source's (default 1); 0 shares only the initial noise (SeedEdit's weak generator)")
    a.add_argument("--candidates", type=int, default=None,
                   help="rounds after the first: the editor's edits per instruction, each its own seed (default 1)")
    a.add_argument("--later-min-agreement", type=float, default=None,
                   help="rounds after the first: the agreement an own pair needs (default: round 1's filter); 1.0 "
                        "keeps it only if the judge reads every attribute of both captions")
    a.add_argument("--later-max-outside-l1", type=float, default=None,
                   help="rounds after the first: the most mean L1 outside the edit region an own pair may change")
    a.add_argument("--later-pairs", choices=["editor", "editor-best", "best-or-weak", "weak"], default=None,
                   help="rounds after the first keep every passing own pair (editor, default), the best per "
                        "instruction (editor-best), that or else the weak generator's pair (best-or-weak), or the "
                        "weak generator's new pairs alone (weak, a control)")
    a.add_argument("--balance-kinds", action="store_true",
                   help="draw training examples by edit kind uniformly, then a pair of that kind")
    a.add_argument("--min-pairs", type=int, default=None, help="stop a round with fewer surviving pairs")
    a.add_argument("--eval-per-kind", type=int, default=None, help="held-out edits per kind (default 8)")
    a.add_argument("--from-promoted", action="store_true",
                   help="the first round continues the promoted instruct version (default: round 1 from the "
                        "weak generator, a new editor from the text-to-image model)")
    a.add_argument("--no-promote", action="store_true", help="register candidates but do not promote them")
    a.add_argument("--wait", action="store_true", help="wait for the chain and print each round's result")
    a.set_defaults(func=_train_align)


def enqueue_reward_run(settings: Settings, kind: str, config: dict, reason: str) -> str:
    """Record a queued run with the reason it was started, then send the task; returns the run id."""
    from editloop.db import TrainingRun
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery

    payload = queue.TrainReward(kind, uuid.uuid4().hex, config)  # refused here, before a row or a message
    with open_sessions(settings).begin() as s:
        s.add(TrainingRun(id=payload.run_id, kind=f"reward-{kind}", status="queued",
                          inputs={"config": config, "trigger": reason}))
    result = make_celery(settings).send_task(payload.task, args=payload.args(), task_id=payload.run_id)
    return result.id


def reward_config(args: argparse.Namespace) -> dict:
    """The run's config from the flags; ValueError naming the flag for a value the run would refuse."""
    config: dict = {"auto_promote": not args.no_promote}
    for flag, key, value in (("--steps", "steps", args.steps), ("--batch-size", "batch_size", args.batch_size),
                             ("--eval-every", "eval_every", args.eval_every),
                             ("--train-size", f"{args.kind}_train", args.train_size),
                             ("--eval-size", f"{args.kind}_eval", args.eval_size)):
        if value is None:
            continue
        if value < 1:
            raise ValueError(f"`{flag}` must be >= 1, got {value}")
        if args.kind == "aesthetic" and flag in ("--train-size", "--eval-size"):
            raise ValueError(f"`{flag}` applies to the alignment and coherence rewards; the aesthetic reward trains "
                             f"on the valid labels (held-out split by candidate set)")
        config[key] = value
    if args.epochs is not None:
        if not 0 < args.epochs <= 10_000:  # NaN and inf too
            raise ValueError(f"`--epochs` must be > 0 and <= 10000, got {args.epochs}")
        config["epochs"] = args.epochs
    return config


def _train_reward(args: argparse.Namespace) -> int:
    settings = Settings()
    config = reward_config(args)
    run_id = enqueue_reward_run(settings, args.kind, config, "by hand: editloop train reward")
    print(f"queued {args.kind} reward run {run_id} (a worker on the gpu queue runs it)")
    if not args.wait:
        return 0
    return wait_for_run(settings, run_id, args.kind)


def feedback_stages(stage: str, only: bool) -> list[str]:
    from trainers.feedback.loop import STAGES

    return [stage] if only else list(STAGES[: STAGES.index(stage) + 1])


def check_feedback_config(stages: list[str], config: dict, evaluation: dict) -> None:
    """Raise ValueError (naming the field and value) for a config a stage would refuse."""
    from trainers.feedback.progressive import stage_config
    from trainers.feedback.run import EvalConfig

    EvalConfig(**evaluation)
    for stage in stages:
        stage_config(stage, **config)


def enqueue_feedback_chain(settings: Settings, stages: list[str], config: dict, reason: str) -> list[str]:
    """Record one queued run per stage, then send them as one Celery chain; returns the run ids."""
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery
    from trainers.chains import add_feedback_rows, send_feedback_chain

    with open_sessions(settings).begin() as s:
        run_ids = add_feedback_rows(s, stages, config, reason)
    send_feedback_chain(make_celery(settings), stages, run_ids, config)
    return run_ids


RECIPE_KL_WEIGHT = 100.0  # BENCHMARKS.md, "Two on-policy rounds, and a KL trust region": without it PeFL exploits


def parse_task_scales(items: list[str]) -> dict[str, float]:
    """["outpaint=4", "erase=0"] -> {"outpaint": 4.0, "erase": 0.0}, checked as FeedbackConfig checks it."""
    from trainers.feedback.loop import check_task_scale

    scales: dict[str, float] = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            scales[task.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--task-reward-scale must be TASK=SCALE (e.g. outpaint=4), got {item!r}")
    check_task_scale(scales)
    return scales


def _train_feedback(args: argparse.Namespace) -> int:
    settings = Settings()
    config: dict = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                       ("snapshot_every", args.select_every)) if v is not None}
    config["kl_weight"] = RECIPE_KL_WEIGHT if args.kl_weight is None else args.kl_weight
    if args.rewards is not None:
        from trainers.feedback.loop import parse_reward_weights

        config["reward_weights"] = parse_reward_weights(args.rewards, "--rewards")
    if args.task_reward_scale:
        config["task_reward_scale"] = parse_task_scales(args.task_reward_scale)
    evaluation = {"auto_promote": not args.no_promote,
                  **{k: v for k, v in (("examples", args.eval_examples), ("review", args.review),
                                       ("review_margin", args.review_margin)) if v is not None}}
    stages = feedback_stages(args.stage, args.only)
    check_feedback_config(stages, config, evaluation)  # bad values fail here, not on the worker
    config["eval"] = evaluation
    run_ids = enqueue_feedback_chain(settings, stages, config, f"by hand: editloop train {args.stage}")
    for stage, run_id in zip(stages, run_ids):
        print(f"queued {stage} run {run_id}")
    if not args.wait:
        return 0
    for stage, run_id in zip(stages, run_ids):
        if wait_for_run(settings, run_id, stage) != 0:
            return 1
    return 0


def dpo_config(args: argparse.Namespace) -> dict:
    """The DPO run's config from the flags, checked as the worker checks it (ValueError naming the field)."""
    config: dict = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                       ("dpo_beta", args.beta), ("lr", args.lr), ("lora_rank", args.lora_rank),
                                       ("checkpoint_every", args.checkpoint_every)) if v is not None}
    if args.instruct:
        return instruct_dpo_config(args, config)
    if args.eval_per_kind is not None:
        raise ValueError("`--eval-per-kind` applies to --instruct runs; the inpainting editor's gate takes "
                         "--eval-examples")
    if args.rewards is not None:
        from trainers.feedback.loop import parse_reward_weights

        config["reward_weights"] = parse_reward_weights(args.rewards, "--rewards")
    evaluation = {"auto_promote": not args.no_promote,
                  **({"examples": args.eval_examples} if args.eval_examples is not None else {})}
    check_feedback_config(["dpo"], config, evaluation)
    return {**config, "eval": evaluation}


def instruct_dpo_config(args: argparse.Namespace, config: dict) -> dict:
    """An instruction-editor DPO run's config (trainers/align/dpo.py), checked as the worker checks it."""
    from trainers.align.tuning import split_config

    for flag, value in (("--rewards", args.rewards), ("--eval-examples", args.eval_examples)):
        if value is not None:
            raise ValueError(f"`{flag}` does not apply to --instruct (its gate is the world's judge on held-out "
                             f"edits: --eval-per-kind)")
    config = {**config, "auto_promote": not args.no_promote,
              **({"eval_per_kind": args.eval_per_kind} if args.eval_per_kind is not None else {})}
    split_config(config)
    return config


def _train_dpo(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.instruct:
        return _train_instruct(args, settings, "dpo", dpo_config(args))
    (run_id,) = enqueue_feedback_chain(settings, ["dpo"], dpo_config(args), "by hand: editloop train dpo")
    print(f"queued dpo run {run_id}")
    return wait_for_run(settings, run_id, "dpo") if args.wait else 0


def _train_instruct(args: argparse.Namespace, settings: Settings, method: str, config: dict) -> int:
    """Queue an instruction-editor DPO or GRPO run (trainers/align/tuning.py) from the promoted instruct version."""
    from editloop.registry import promoted
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery
    from trainers.chains import add_instruct_tuning_row, send_instruct_tuning

    with open_sessions(settings).begin() as s:
        row = promoted(s, "instruct")
        start = row.version if row is not None else None
        run_id = add_instruct_tuning_row(s, config, f"by hand: editloop train {method} --instruct", start, method)
    send_instruct_tuning(make_celery(settings), run_id, config, start)
    print(f"queued instruct {method} run {run_id} (from {start or 'the committed instruction editor'})")
    return wait_for_run(settings, run_id, f"instruct {method}") if args.wait else 0


def add_grpo_parser(tsub: argparse._SubParsersAction) -> None:
    g = tsub.add_parser("grpo", help="online GRPO for the inpainting editor: groups of its own samples per edit, "
                                     "scored by the reward services over gRPC (or in-process), the same gate")
    g.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    g.add_argument("--batch-size", type=int, default=None, help="samples per step, a multiple of --group (default 8)")
    g.add_argument("--group", type=int, default=None, help="samples per edit (default 4)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every K steps (default 25)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-5)")
    g.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank (default: full)")
    g.add_argument("--kl-weight", type=float, default=None, help="KL to the start model (default 0.04)")
    g.add_argument("--clip", type=float, default=None, help="PPO clip range of the ratio (default 1e-4)")
    g.add_argument("--eta", type=float, default=None, help="DDIM eta of the sampling policy, (0, 1] (default 1)")
    g.add_argument("--sample-steps", type=int, default=None,
                   help="sampling steps of a rollout (default: the stage's 20; with --instruct the editor's own)")
    g.add_argument("--train-fraction", type=float, default=None,
                   help="share of the sampling steps trained per batch (default 0.5)")
    g.add_argument("--rewards", default=None, metavar="KIND=W,...",
                   help="rewards and weights (default aesthetic=1,coherence=0.5); a kind left out weighs 0, so "
                        "aesthetic=1 alone turns the coherence (preservation) reward off")
    g.add_argument("--guard", default=None, metavar="KIND,...",
                   help="held-out rewards, never trained on; the gate refuses a candidate they fall on (default "
                        "alignment; 'none' for no guard)")
    g.add_argument("--scorer", choices=["auto", "services", "in-process"], default=None,
                   help="score through the reward services (gRPC), in-process, or auto: the services when the stack "
                        "runs them (default)")
    g.add_argument("--reward-address", action="append", default=[], metavar="KIND=HOST:PORT",
                   help="a reward service's address (repeatable; default: the running stack's)")
    g.add_argument("--reward-timeout", type=float, default=None, help="seconds per reward request (default 30)")
    g.add_argument("--eval-examples", type=int, default=None, help="held-out examples of the gate")
    g.add_argument("--instruct", action="store_true",
                   help="train the instruction editor (SeedEdit) on its own edits of world instructions, scored "
                        "against the caption each instruction asks for (default rewards alignment=1,coherence=0.5, "
                        "guard aesthetic), starting from the promoted instruct version (else the committed one); "
                        "gated on the alignment rounds' held-out edits")
    g.add_argument("--eval-per-kind", type=int, default=None,
                   help="--instruct: held-out edits per edit kind of the gate (default 8)")
    g.add_argument("--no-promote", action="store_true", help="register the candidate but do not promote it")
    g.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    g.set_defaults(func=_train_grpo)


def grpo_config(args: argparse.Namespace, settings: Settings) -> dict:
    """The GRPO run's config from the flags, checked as the worker checks it (ValueError naming the field)."""
    config: dict = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                       ("lora_rank", args.lora_rank),
                                       ("checkpoint_every", args.checkpoint_every)) if v is not None}
    grpo: dict = {k: v for k, v in (("group", args.group), ("kl_weight", args.kl_weight), ("clip", args.clip),
                                     ("eta", args.eta), ("train_fraction", args.train_fraction),
                                     ("sample_steps", args.sample_steps),
                                     ("scorer", args.scorer), ("timeout", args.reward_timeout)) if v is not None}
    if args.rewards is not None:
        config["reward_weights"], grpo["coherence_weight"] = split_coherence(args.rewards)
    if args.guard is not None:
        grpo["guard"] = [] if args.guard.strip() == "none" else [k.strip() for k in args.guard.split(",") if k.strip()]
    if args.reward_address:
        from editloop.addresses import parse_named_addresses
        from editloop.models.reward_kinds import kind_names

        grpo["addresses"] = parse_named_addresses(args.reward_address, "--reward-address", kind_names(),
                                                  "KIND=HOST:PORT")
    config["grpo"] = grpo
    from trainers.feedback.reward_client import resolve_addresses

    if args.instruct:
        from trainers.align.tuning import split_config, training_config

        if args.eval_examples is not None:
            raise ValueError("`--eval-examples` does not apply to --instruct (its gate is the world's judge on "
                             "held-out edits: --eval-per-kind)")
        config = {**config, "auto_promote": not args.no_promote,
                  **({"eval_per_kind": args.eval_per_kind} if args.eval_per_kind is not None else {})}
        full = training_config("grpo", split_config(config, "grpo")[0])
    else:
        if args.eval_per_kind is not None:
            raise ValueError("`--eval-per-kind` applies to --instruct runs; the inpainting editor's gate takes "
                             "--eval-examples")
        evaluation = {"auto_promote": not args.no_promote,
                      **({"examples": args.eval_examples} if args.eval_examples is not None else {})}
        check_feedback_config(["grpo"], config, evaluation)
        from trainers.feedback.progressive import stage_config

        full = stage_config("grpo", **config)
        config = {**config, "eval": evaluation}
    # scorer "services" with no address known: refused before queueing
    resolve_addresses(full.grpo.scorer, full.grpo.reward_kinds(full.reward_weights), settings, full.grpo.addresses)
    return config


def split_coherence(text: str) -> tuple[dict[str, float], float]:
    """--rewards for GRPO: the preference rewards' weights (checked as a stage's), and coherence's weight (0 if not
    named)."""
    from trainers.feedback.loop import parse_reward_weights

    items = [x.strip() for x in text.split(",") if x.strip()]
    rest = [x for x in items if x.partition("=")[0].strip() != "coherence"]
    coherence = 0.0
    for item in items:
        if item.partition("=")[0].strip() == "coherence":
            try:
                coherence = float(item.partition("=")[2])
            except ValueError:
                raise ValueError(f"`--rewards` must be KIND=WEIGHT[,KIND=WEIGHT], got {item!r}") from None
    return parse_reward_weights(",".join(rest), "--rewards"), coherence


def _train_grpo(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.instruct:
        return _train_instruct(args, settings, "grpo", grpo_config(args, settings))
    (run_id,) = enqueue_feedback_chain(settings, ["grpo"], grpo_config(args, settings), "by hand: editloop train grpo")
    print(f"queued grpo run {run_id}")
    return wait_for_run(settings, run_id, "grpo") if args.wait else 0


def align_config(args: argparse.Namespace) -> dict:
    config: dict = {"arch": args.arch, "auto_promote": not args.no_promote}
    for key, value in (("pairs", args.pairs), ("pair_steps", args.pair_steps), ("scorer", args.scorer),
                       ("schedule", args.schedule), ("init", args.init), ("min_pairs", args.min_pairs),
                       ("eval_per_kind", args.eval_per_kind), ("method", args.method),
                       ("blend_until", args.blend_until), ("candidates", args.candidates),
                       ("later_pairs", args.later_pairs)):
        if value is not None:
            config[key] = value
    later = {k: v for k, v in (("min_agreement", args.later_min_agreement),
                               ("max_outside_l1", args.later_max_outside_l1)) if v is not None}
    if later:
        config["later_filter"] = later
    train = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                               ("checkpoint_every", args.checkpoint_every),
                               ("train_text_encoder", args.train_text_encoder),
                               ("balance_kinds", args.balance_kinds)) if v}
    if train:
        config["train"] = train
    return config


def enqueue_align_chain(settings: Settings, rounds: int, config: dict, reason: str,
                        start_version: str | None = None) -> list[str]:
    """Record one queued run per round, then send them as one Celery chain; returns the run ids. The first
    round continues instruct version `start_version` if given, else starts from the weak generator."""
    from editloop.state import open_sessions
    from trainers.celery_app import make_celery
    from trainers.chains import add_align_rows, send_align_chain

    with open_sessions(settings).begin() as s:
        run_ids = add_align_rows(s, rounds, config, reason, start_version)
    send_align_chain(make_celery(settings), run_ids, config, start_version)
    return run_ids


def promoted_instruct_version(settings: Settings) -> str:
    from editloop.registry import promoted
    from editloop.state import open_sessions

    with open_sessions(settings)() as s:
        row = promoted(s, "instruct")
        if row is None:
            raise ValueError("`--from-promoted`: no instruct version is promoted yet; run `editloop train align` first")
        return row.version


def _train_align(args: argparse.Namespace) -> int:
    settings = Settings()
    start = promoted_instruct_version(settings) if args.from_promoted else None
    run_ids = enqueue_align_chain(settings, args.rounds, align_config(args),
                                  f"by hand: editloop train align --rounds {args.rounds}", start)
    for k, run_id in enumerate(run_ids, 1):
        print(f"queued alignment round {k} run {run_id}")
    if not args.wait:
        return 0
    for k, run_id in enumerate(run_ids, 1):
        if wait_for_run(settings, run_id, f"round {k}") != 0:
            return 1
    return 0


def wait_for_run(settings: Settings, run_id: str, label: str) -> int:
    """A progress bar while the run goes; then its outputs or error. 0 if it succeeded."""
    from editloop.cli.progress import follow_run
    from editloop.state import open_sessions

    ended = follow_run(open_sessions(settings), run_id, label)
    outputs = {k: v for k, v in ended["outputs"].items() if k not in ("history", "last")}
    print(json.dumps(outputs if ended["status"] == "succeeded" else {"status": ended["status"],
                                                                      "error": ended["error"]}, indent=2))
    return 0 if ended["status"] == "succeeded" else 1
