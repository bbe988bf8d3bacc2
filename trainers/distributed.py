"""Data-parallel training jobs: the worker that took a task launches `torchrun` with N processes on its node.

Every process builds the same model and the same endless, seeded batch stream; each takes its 1/N share of every
global batch (`shard`), PyTorch's DistributedDataParallel averages the gradients, so a step sees exactly the
global batch a single process would (up to the order of float sums). Rank 0 alone evaluates (the score is
broadcast, so early stopping agrees everywhere), writes checkpoints and reports progress: one checkpoint and one
model version per run, whatever the world size. Backend: NCCL on CUDA, gloo on CPU (the tests: 2 processes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from pydantic import SecretStr
from torch import nn

from editloop.settings import Settings

T = TypeVar("T")


class DistributedJobError(RuntimeError):
    """The distributed job's processes failed (exit status and the last lines of their output)."""


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str | None) -> None:
    """Join the job torchrun started (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def join_job(what: str) -> Settings:
    """A job process's start: its settings (the worker's, through the environment), joined to the job, and the
    rank line the tests and the job log look for."""
    settings = Settings()
    init_from_env(settings.device)
    rank, size = world()
    print(f"editloop-rank {rank + 1}/{size}: {what}", flush=True)
    return settings


def leave_job() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: T, rank: int, size: int) -> T:
    """This rank's contiguous 1/size of a global batch: tensors and lists along their first axis, dataclasses and
    tuples field by field, anything else (None, a flag) as it is. The batch must divide evenly."""
    if size == 1:
        return batch
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: shard(getattr(batch, f.name), rank, size)
                                             for f in dataclasses.fields(batch)})
    if isinstance(batch, tuple):
        return type(batch)(shard(x, rank, size) for x in batch)
    if isinstance(batch, torch.Tensor | list):
        n = len(batch)
        if n % size:
            raise ValueError(f"a batch of {n} does not split over {size} processes: make `batch_size` a multiple "
                             f"of EDITLOOP_TRAIN_PROCS ({size})")
        per = n // size
        return batch[rank * per:(rank + 1) * per]
    return batch


def local_rows(n: int) -> slice:
    """This rank's contiguous rows of a global batch of `n` (all of it outside a job); `n` must divide evenly."""
    rank, size = world()
    if size == 1:
        return slice(0, n)
    if n % size:
        raise ValueError(f"a batch of {n} does not split over {size} processes: make `batch_size` a multiple of "
                         f"EDITLOOP_TRAIN_PROCS ({size})")
    per = n // size
    return slice(rank * per, (rank + 1) * per)


def rank_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over the job's ranks; itself outside a job. A loss normalised by a count over
    the batch (pixels under the masks) divides each rank's sum by this mean of the counts: with the gradients
    averaged over the ranks, the step is the one-process step on the global batch."""
    size = world()[1]
    if size == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / size


def average_gradients(params) -> None:
    """Each parameter's gradient averaged over the job's ranks (after backward, before clipping and the optimiser
    step: every rank then clips and steps on the global batch's gradient). A no-op outside a job. For training
    loops that call the model several times per step (a sampler's denoising steps), where DDP's one-forward hooks
    do not fit."""
    size = world()[1]
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(size)


class LossModule(nn.Module):
    """`loss_fn(model, batch)` as a module's forward, so DistributedDataParallel sees the forward it syncs."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def data_parallel_loss(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]
                       ) -> Callable[[Any], torch.Tensor]:
    """The per-step loss on this rank's shard of a global batch; gradients are averaged over the job's ranks."""
    rank, size = world()
    if size == 1:
        return lambda batch: loss_fn(model, batch)
    ddp = nn.parallel.DistributedDataParallel(LossModule(model, loss_fn))
    return lambda batch: ddp(shard(batch, rank, size))


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float) -> float:
    """The mean of `value` over the job's ranks (a loss logged as the global batch's, not one shard's)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / world()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as EDITLOOP_* variables, secrets included: the job's processes read exactly these settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"EDITLOOP_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def launch(module: str, args: list[str], procs: int, settings: Settings, log: Path) -> None:
    """Run `python -m module *args` as a `procs`-process torchrun job on this node and wait for it; its output goes
    to `log`. DistributedJobError (exit status, last lines) when a process fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "--max-restarts=0", "-m", module, *args]
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise DistributedJobError(f"the {procs}-process job `{module}` exited with {done.returncode}: "
                                  + " | ".join(line[:200] for line in tail))


def _end_with_parent() -> None:
    """In the job's launcher, before it runs: SIGTERM when the worker that started it dies (even by SIGKILL), so
    torchrun stops its processes instead of training on beside the worker that takes the run over."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the job outlives a killed worker
        pass


def write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
