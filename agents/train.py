"""Train an agent on DenoisingDiffusion-v0 and leave pictures: ``python -m agents.train`` (what ``make train`` runs).

Defaults: DDPO-IS on the embedded default model with the JPEG-compressibility reward, 56 epochs of 64 samples
(about 9 minutes on 2 CPU cores). Writes to ``--output-dir``: ``reward_curve.png`` (reward per epoch),
``before_after.png`` (the same prompts and seeds before and after), ``metrics.json`` and ``trained.safetensors``
(the trained weights: the LoRA adapter, or the whole UNet with ``--lora-rank 0``).

Checkpoints with bit-exact resume, TensorBoard and LoRA export to diffusers arrive with the training application
(issue #6); this entry point runs one training job from start to end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from tqdm import tqdm

import ddpo_env  # noqa: F401  (registers the env)
from agents import AGENTS, make_agent
from agents.evaluation import EvaluationResult, evaluate_policy
from ddpo_env.images import save_grid
from ddpo_env.models.digits import prompt_for
from rewards import REWARDS, make_reward


@dataclass
class TrainConfig:
    """One training job."""

    agent: str = "ddpo-is"
    """ddpo-is | ddpo-sf | rwr | rwr-sparse."""
    model: str = "default"
    """'default' (embedded digits model), 'tiny', or a local diffusers Stable Diffusion folder."""
    reward: str = "jpeg_compressibility"
    """jpeg_compressibility | jpeg_incompressibility | digit_alignment | aesthetic."""
    jpeg_upscale: int = 4
    """JPEG rewards: enlarge images ×k before encoding (small images need it)."""
    aesthetic_clip_model: str = ""
    """aesthetic reward: local folder (or hub id) of a CLIP ViT-L/14."""
    aesthetic_mlp_weights: str = ""
    """aesthetic reward: path of the LAION predictor head's weights."""
    epochs: int = 56
    """Rollouts of samples_per_epoch samples each."""
    samples_per_epoch: int = 64
    """Denoising trajectories per rollout."""
    num_envs: int = 16
    """Episodes sampled in parallel."""
    batch_size: int = 16
    """Samples per training micro-batch."""
    learning_rate: float = 2e-4
    """AdamW learning rate (tuned for a full fine-tune of the default model)."""
    lora_rank: int = 0
    """LoRA rank; 0 fine-tunes the whole UNet."""
    clip_range: float = 1e-3
    """DDPO-IS: PPO clip range."""
    num_steps: int = 0
    """DDIM steps per episode; 0: the model's default."""
    seed: int = 0
    """Seeds everything."""
    device: str = "auto"
    """auto | cpu | cuda."""
    dtype: str = "float32"
    """Model precision: float32 | float16 | bfloat16."""
    output_dir: str = "runs/train"
    """Where the PNGs, metrics and weights go."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


class TrainResult(NamedTuple):
    metrics: dict[str, Any]  # what metrics.json holds
    before: EvaluationResult  # the fixed evaluation set before training
    after: EvaluationResult  # and after
    agent: Any


class EpochProgress(BaseCallback):
    """A tqdm bar over epochs showing the reward mean and samples/s; keeps the per-epoch reward statistics."""

    def __init__(self, epochs: int, samples_per_epoch: int) -> None:
        super().__init__()
        self.bar = tqdm(total=epochs, desc="train", unit="epoch")
        self.samples_per_epoch = samples_per_epoch
        self.history: list[dict[str, float]] = []
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        rewards = self.model.buffer.rewards
        elapsed = time.perf_counter() - self._start
        self.history.append({"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std())})
        done = len(self.history) * self.samples_per_epoch
        self.bar.set_postfix(reward=f"{rewards.mean():.4f}", samples_per_s=f"{done / elapsed:.1f}")
        self.bar.update(1)

    def _on_training_end(self) -> None:
        self.bar.close()


def evaluation_prompts(env) -> list[str]:
    """Ten prompts × ten seeds: the digits for the default model, else the model's default prompts."""
    if env.unwrapped.backend.name == "default":
        return [prompt_for(d, "a handwritten digit {n}") for d in range(10) for _ in range(10)]
    base = list(env.unwrapped.backend.default_prompts)[:10]
    return [p for p in base for _ in range(10)]


def plot_rewards(history: list[dict[str, float]], before: float, after: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history) + 1)
    mean = np.array([h["reward_mean"] for h in history])
    std = np.array([h["reward_std"] for h in history])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, mean, label="training rollouts (mean ± std)")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
    ax.axhline(before, color="gray", linestyle="--", label=f"evaluation before: {before:.3f}")
    ax.axhline(after, color="green", linestyle="--", label=f"evaluation after: {after:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors, written to a temporary file and renamed (never half a file)."""
    from safetensors.torch import save_file

    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        tmp = f.name
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig) -> TrainResult:
    """Run the job described by ``cfg``; returns its metrics (also in metrics.json) and evaluations."""
    if cfg.agent not in AGENTS:
        raise ValueError(f"unknown agent {cfg.agent!r}: use one of {sorted(AGENTS)}")
    if cfg.reward not in REWARDS:
        raise ValueError(f"unknown reward {cfg.reward!r}: use one of {sorted(REWARDS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {"model": cfg.model, "device": cfg.device, "dtype": cfg.dtype}
    if cfg.num_steps:
        env_kwargs["num_steps"] = cfg.num_steps
    reward_kwargs: dict = {"upscale": cfg.jpeg_upscale} if cfg.reward.startswith("jpeg") else {}
    if cfg.reward == "aesthetic":
        reward_kwargs = {"clip_model": cfg.aesthetic_clip_model, "mlp_weights": cfg.aesthetic_mlp_weights}
    env = make_reward(cfg.reward, gym.make_vec("DenoisingDiffusion-v0", num_envs=cfg.num_envs, **env_kwargs),
                      **reward_kwargs)
    agent_class = AGENTS[cfg.agent]
    known = {f.name for f in fields(agent_class.config_class)}
    agent_kwargs = {k: v for k, v in asdict(cfg).items() if k in known}
    agent = make_agent(cfg.agent, env, **agent_kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    eval_env = make_reward(
        cfg.reward,
        gym.make_vec("DenoisingDiffusion-v0", num_envs=25, **{**env_kwargs, "model": env.unwrapped.backend}),
        **reward_kwargs,
    )
    prompts = evaluation_prompts(env)
    before = evaluate_policy(agent.policy, eval_env, prompts, seed=10_000)

    progress = EpochProgress(cfg.epochs, cfg.samples_per_epoch)
    start = time.perf_counter()
    agent.learn(total_samples=cfg.epochs * cfg.samples_per_epoch, callback=progress)
    seconds = time.perf_counter() - start
    after = evaluate_policy(agent.policy, eval_env, prompts, seed=10_000)

    grid = np.concatenate([before.images.reshape(10, 10, *before.images.shape[1:])[:, :5],
                           after.images.reshape(10, 10, *after.images.shape[1:])[:, :5]], axis=1)
    save_grid(grid.reshape(-1, *before.images.shape[1:]), rows=10, path=out / "before_after.png")
    plot_rewards(progress.history, float(before.rewards.mean()), float(after.rewards.mean()),
                 out / "reward_curve.png", f"{cfg.agent} on {cfg.model} model, reward {cfg.reward}")
    save_weights(agent.policy.trainable_state_dict(), out / "trained.safetensors")
    metrics = {
        "config": asdict(cfg),
        "samples": cfg.epochs * cfg.samples_per_epoch,
        "train_seconds": seconds,
        "eval_reward_before": {"mean": float(before.rewards.mean()), "std": float(before.rewards.std())},
        "eval_reward_after": {"mean": float(after.rewards.mean()), "std": float(after.rewards.std())},
        "epochs": progress.history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    gain = (after.rewards.mean() - before.rewards.mean()) / max(before.rewards.std(), 1e-12)
    print(
        f"\n{cfg.agent} on the {cfg.model} model, reward {cfg.reward}: {cfg.epochs} epochs × {cfg.samples_per_epoch} "
        f"samples in {seconds / 60:.1f} min\n"
        f"  evaluation reward (100 fixed prompts and seeds): {before.rewards.mean():.4f} ± {before.rewards.std():.4f}"
        f" → {after.rewards.mean():.4f} ± {after.rewards.std():.4f}  ({gain:+.2f} initial std)\n"
        f"  {out / 'reward_curve.png'}    reward per epoch\n"
        f"  {out / 'before_after.png'}    left: before, right: after (same prompts and seeds)\n"
        f"  {out / 'metrics.json'}        numbers\n"
        f"  {out / 'trained.safetensors'} trained weights"
    )
    return TrainResult(metrics, before, after, agent)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
