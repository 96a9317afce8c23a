"""Over-optimisation and generalisation monitor (the DDPO paper's open problem, §6).

Every ``every`` optimizer updates (and once before the first), the policy samples two fixed prompt sets with the
deterministic ODE sampler (DDIM η = 0, or a flow model's Euler steps), ``samples_per_prompt`` seeds per prompt, the
same seeds every time:

    train      prompts the agent trains on
    held_out   prompts it never sees in training

and records for each: the mean reward; the KL to the base model, Σ over steps ‖μ_θ − μ_ref‖²/(2σ²) / T along the
trajectories (:mod:`agents.kl`, with the training policy's σ); and diversity, the mean pairwise RMS distance
between the images of one prompt (pixels in [0, 1]), averaged over prompts. A reward that climbs on train prompts
while held-out reward, KL or diversity tell another story is over-optimisation made visible. With EMA the averaged
weights are monitored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.hooks import EpochEndCallback
from agents.job.evaluation import evaluate_policy

SETS = ("train", "held_out")


def diversity(images: np.ndarray, prompts: list[str]) -> float:
    """Mean over prompts of the mean pairwise RMS distance between that prompt's images (uint8 (N, H, W, 3))."""
    pixels = images.astype(np.float64).reshape(len(images), -1) / 255
    per_prompt = []
    for prompt in dict.fromkeys(prompts):
        rows = pixels[[p == prompt for p in prompts]]
        if len(rows) < 2:
            continue
        d = [np.sqrt(np.mean((a - b) ** 2)) for i, a in enumerate(rows) for b in rows[i + 1:]]
        per_prompt.append(np.mean(d))
    if not per_prompt:
        raise ValueError("diversity needs at least 2 images of some prompt: use samples_per_prompt >= 2")
    return float(np.mean(per_prompt))


def check_held_out(train_prompts: list[str], held_out_prompts: list[str]) -> None:
    """ValueError when a held-out prompt is also a training prompt."""
    overlap = sorted(set(train_prompts) & set(held_out_prompts))
    if overlap:
        raise ValueError(f"held-out prompts {overlap[:3]} are also training prompts: the held-out set must be "
                         "prompts never trained on")


class HeldOutMonitor(EpochEndCallback):
    """Evaluates train vs held-out prompts every ``every`` updates; ``records`` holds one dict per evaluation
    (epoch, updates, samples, and reward / kl / diversity per set), also logged as ``monitor/<name>``.

    Args:
        eval_env: a reward-wrapped evaluation env on the agent's model (not the training env).
        train_prompts, held_out_prompts: the two fixed sets (must not overlap).
        every: optimizer updates between evaluations.
        samples_per_prompt: seeds per prompt (≥ 2, for diversity).
        records: earlier records (a resumed run continues its curves).

    For a full fine-tune the KL needs the base model kept before training starts: the agent keeps it when kl_coef
    > 0, otherwise call ``agent.policy.keep_reference()`` on the fresh agent (``agents.job.train`` does).
    """

    def __init__(self, eval_env: Any, train_prompts: list[str], held_out_prompts: list[str], every: int,
                 samples_per_prompt: int = 2, seed: int = 30_000, records: list[dict] | None = None) -> None:
        super().__init__()
        check_held_out(train_prompts, held_out_prompts)
        if every < 1 or samples_per_prompt < 2:
            raise ValueError(f"need every >= 1 and samples_per_prompt >= 2, got {every}, {samples_per_prompt}")
        self.eval_env, self.every, self.seed = eval_env, every, seed
        self.prompt_sets = {"train": [p for p in train_prompts for _ in range(samples_per_prompt)],
                            "held_out": [p for p in held_out_prompts for _ in range(samples_per_prompt)]}
        self.records = list(records or [])

    def evaluate(self) -> dict[str, Any]:
        model = self.model
        record: dict[str, Any] = {"epoch": model.num_epochs, "updates": model.num_updates,
                                  "samples": model.num_epochs * model.config.samples_per_epoch}
        with model.ema_weights():
            for name, prompts in self.prompt_sets.items():
                result = evaluate_policy(model.policy, self.eval_env, prompts, seed=self.seed, kl=True, ode=True)
                record[f"reward_{name}"] = float(result.rewards.mean())
                record[f"kl_{name}"] = float(result.kl.mean())
                record[f"diversity_{name}"] = diversity(result.images, prompts)
        for key, value in record.items():
            self.logger.record(f"monitor/{key}", value)
        self.records.append(record)
        return record

    def _on_training_start(self) -> None:
        if not self.model.policy.has_reference and self.model.num_epochs:
            raise RuntimeError("the monitor needs the base model of this full fine-tune: call "
                               "agent.policy.keep_reference() on the fresh agent, before loading trained weights")
        self.model.policy.keep_reference()
        if not self.records:
            self.evaluate()

    def on_epoch_end(self) -> None:
        if self.model.num_updates // self.every > self.records[-1]["updates"] // self.every:
            self.evaluate()


def plot_monitor(records: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Reward, KL to the base model and diversity vs samples, train vs held-out prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [r["samples"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=120)
    for ax, metric, label in zip(axes, ("reward", "kl", "diversity"),
                                 ("reward", "KL to the base model (per step)", "diversity (pairwise RMS)"),
                                 strict=True):
        for name, style in zip(SETS, ("-o", "--s"), strict=True):
            ax.plot(samples, [r[f"{metric}_{name}"] for r in records], style, markersize=3,
                    label=name.replace("_", "-") + " prompts")
        ax.set_xlabel("training samples")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
