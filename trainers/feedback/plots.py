"""Loss and reward curves of a feedback run, saved as a PNG next to its checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth(values: list[float], k: int = 10) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < k:
        return v
    return np.convolve(v, np.ones(k) / k, mode="valid")


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "reference", "g_adv", "d_loss") if any(k in h for h in history)]
    rewards = [k for k in history[0] if k.startswith("reward_")] if history else []
    title_right = "mean reward R(c, x0) on training batches"
    if not rewards and history and "implicit_accuracy" in history[0]:  # DPO: no reward in the loss
        rewards, title_right = ["implicit_accuracy"], "DPO implicit accuracy (the winner's error fell more)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in keys:
        values = [h[key] for h in history if key in h]
        axes[0].plot(smooth(values), label=key)
    axes[0].set_title("losses (moving average of 10)")
    for key in rewards:
        axes[1].plot(smooth([h[key] for h in history]), label=key)
    axes[1].set_title(title_right, fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
