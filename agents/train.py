"""One training job on DenoisingDiffusion-v0, from a :class:`TrainConfig` (what ``ddpo train`` and ``make train``
run; the command line is :mod:`agents.cli`).

Defaults: DDPO-IS on the embedded default model with the JPEG-compressibility reward, 56 epochs of 64 samples
(under 10 minutes on 2 CPU cores). The output folder gets

    reward_curve.png   training reward per epoch, and the evaluation before / after
    monitor.png        with --monitor-every: train vs held-out prompts (reward, KL to the base model, diversity)
    before_after.png   100 fixed prompts and seeds: left before training, right after
    metrics.json       the numbers
    checkpoints/       epoch-NNNNNN/ folders (atomic; resume with --resume auto)
    logs/              TensorBoard events (scalars and captioned sample grids) and progress.csv
    lora/              the LoRA adapter in diffusers' format (pipe.load_lora_weights), or unet/ for a full fine-tune
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure

import ddpo_env  # noqa: F401  (registers the env)
from agents import AGENTS, make_agent
from agents.callbacks import CheckpointEvery, EpochProgress, ImageGrids
from agents.checkpoint import is_writer, latest_checkpoint, load_checkpoint, read_meta
from agents.distributed import Ranks, init_from_environment
from agents.evaluation import EvaluationResult, evaluate_policy
from agents.export import export_weights
from agents.monitor import HeldOutMonitor, check_held_out, plot_monitor
from ddpo_env.backends import resolve_device
from ddpo_env.images import save_grid
from ddpo_env.models.digits import HELDOUT_TEMPLATES, prompt_for
from ddpo_env.prompts import PromptSource
from rewards import REWARDS, make_reward

EVAL_SEED = 10_000  # x_T and sampling noise of the fixed evaluation set (before = after = eval command)


@dataclass
class TrainConfig:
    """One training job."""

    agent: str = "ddpo-is"
    """ddpo-is | ddpo-sf | rwr | rwr-sparse."""
    model: str = "default"
    """'default' (embedded digits model), 'tiny', 'tiny-sd3', or a local diffusers Stable Diffusion (1/2/3) folder."""
    reward: str = "jpeg_compressibility"
    """A reward name, or a weighted sum such as 'jpeg_compressibility=1,digit_alignment=2'."""
    reward_options: dict = field(default_factory=dict)
    """Per-reward constructor arguments, e.g. {"aesthetic": {"clip_model": "...", "mlp_weights": "..."}} (JSON)."""
    jpeg_upscale: int = 4
    """JPEG rewards: enlarge images ×k before encoding (small images need it)."""
    prompts: str = ""
    """Prompt file (one per line); empty: the model's own prompt distribution."""
    epochs: int = 56
    """Rollouts of samples_per_epoch samples each (the whole job, also when resuming)."""
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
    steps_per_pass: int = 1
    """Denoising steps of a sample per forward/backward pass (0: all): same update, fewer and larger passes."""
    grad_workers: int = 1
    """Threads computing an update's backward passes (CPU: one per core; 1 on a GPU)."""
    attention: str = "sdpa"
    """The UNet's attention kernel: 'sdpa' or 'matmul' (same numbers; faster on a CPU for small attention heads)."""
    compile_sampling: bool = False
    """torch.compile the network for sampling and evaluation (gradient-free passes); compiles once per shape."""
    num_steps: int = 0
    """DDIM steps per episode; 0: the model's default."""
    kl_coef: float = 0.0
    """β of the KL penalty to the base model (0: off)."""
    group_size: int = 1
    """Samples per prompt in each rollout (envs sharing a prompt; num_envs must be a multiple)."""
    group_advantages: bool = False
    """GRPO-style advantages normalised within each prompt's group (needs group_size > 1)."""
    group_std: str = "group"
    """With group advantages: divide by the group's std (group) or the rollout's (global)."""
    ema_decay: float = 0.0
    """EMA of the trained weights for evaluation and export (0: off; e.g. 0.9)."""
    ema_update_interval: int = 1
    """Optimizer steps between EMA updates."""
    monitor_every: int = 0
    """Optimizer updates between held-out monitor evaluations (train vs held-out prompts: reward, KL to the base
    model, diversity; monitor.png); 0: off."""
    held_out_prompts: str = ""
    """The monitor's held-out prompt file (one per line, never trained on); empty: the default model's held-out
    phrasings."""
    seed: int = 0
    """Seeds everything."""
    device: str = "auto"
    """auto | cpu | cuda."""
    dtype: str = "float32"
    """Model precision: float32 | float16 | bfloat16 (autocast; trainable LoRA weights stay float32)."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in the backward pass: less memory, about a third more compute."""
    optimizer: str = "adamw"
    """adamw | adamw8bit (bitsandbytes' 8-bit AdamW: optimizer state in 8 bits; needs bitsandbytes)."""
    decode_batch_size: int = 0
    """Latents decoded per VAE call (0: all envs at once; 1 bounds the decoder's memory)."""
    output_dir: str = "runs/train"
    """Where the PNGs, metrics, logs, checkpoints and exported weights go."""
    save_every: int = 10
    """Checkpoint every N epochs (0: only at the end; the last epoch is always saved)."""
    keep_last: int = 3
    """Checkpoints kept (0: all)."""
    resume: str = ""
    """'auto' (the newest checkpoint in output_dir/checkpoints), a checkpoint folder, or empty to start afresh."""
    tensorboard: bool = True
    """Write TensorBoard events (scalars; sample grids every image_every epochs) to output_dir/logs."""
    image_every: int = 14
    """Epochs between captioned sample grids in TensorBoard (0: none)."""
    evaluate: bool = True
    """Evaluate 100 fixed prompts and seeds before and after training (the PNGs need it)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


class TrainResult(NamedTuple):
    metrics: dict[str, Any]  # what metrics.json holds
    before: EvaluationResult | None  # the fixed evaluation set before training
    after: EvaluationResult | None  # and after
    agent: Any


def parse_rewards(spec: str) -> dict[str, float]:
    """'name' → {name: 1.0}; 'a=1,b=-0.5' → {a: 1.0, b: -0.5}; unknown names and bad weights are errors."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = math.nan
        if name not in REWARDS or not math.isfinite(value) or value == 0:
            raise ValueError(
                f"bad reward {part.strip()!r} in {spec!r}: use a name from {sorted(REWARDS)}, optionally "
                "=weight (finite, non-zero), comma-separated"
            )
        weights[name] = value
    return weights


def validate(cfg: TrainConfig) -> None:
    if cfg.agent not in AGENTS:
        raise ValueError(f"unknown agent {cfg.agent!r}: use one of {sorted(AGENTS)}")
    unknown = sorted(set(cfg.reward_options) - set(parse_rewards(cfg.reward)))
    if unknown:
        raise ValueError(f"reward_options for {unknown}, which are not in reward={cfg.reward!r}")
    for name in ("epochs", "samples_per_epoch", "num_envs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("save_every", "keep_last", "image_every", "threads", "num_steps", "lora_rank", "monitor_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def build_env(cfg: TrainConfig, num_envs: int | None = None, model: Any = None) -> Any:
    """The reward-wrapped vector env of the job (``model``: reuse a built backend, e.g. the training env's)."""
    env_kwargs: dict[str, Any] = {"model": model if model is not None else cfg.model, "device": cfg.device,
                                  "dtype": cfg.dtype, "decode_batch_size": cfg.decode_batch_size,
                                  "attention": cfg.attention,
                                  "group_size": cfg.group_size if num_envs is None else 1}
    if cfg.num_steps:
        env_kwargs["num_steps"] = cfg.num_steps
    if cfg.prompts:
        env_kwargs["prompts"] = cfg.prompts
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs or cfg.num_envs, **env_kwargs)
    for name, weight in parse_rewards(cfg.reward).items():
        options = {"upscale": cfg.jpeg_upscale} if name.startswith("jpeg") else {}
        env = make_reward(name, env, weight=weight, **{**options, **cfg.reward_options.get(name, {})})
    return env


def build_agent(cfg: TrainConfig, env: Any) -> Any:
    known = {f.name for f in fields(AGENTS[cfg.agent].config_class)}
    return make_agent(cfg.agent, env, **{k: v for k, v in asdict(cfg).items() if k in known})


def evaluation_prompts(env: Any) -> list[str]:
    """Ten seeds of each of up to ten prompts: the digits for the default model, else the model's default prompts."""
    if env.unwrapped.backend.name == "default":
        return [prompt_for(d, "a handwritten digit {n}") for d in range(10) for _ in range(10)]
    base = list(env.unwrapped.backend.default_prompts)[:10]
    return [p for p in base for _ in range(10)]


def monitor_prompts(cfg: TrainConfig, env: Any) -> tuple[list[str], list[str]]:
    """The held-out monitor's (train, held-out) prompt sets: ten training prompts, and the held-out file or, for the
    default model, the digits in a phrasing it never saw ("an image of the digit seven")."""
    train_prompts = evaluation_prompts(env)[::10]
    if cfg.held_out_prompts:
        held_out = list(PromptSource(cfg.held_out_prompts).prompts)
    elif env.unwrapped.backend.name == "default":
        held_out = [prompt_for(d, HELDOUT_TEMPLATES[0]) for d in range(10)]
    else:
        raise ValueError("monitor_every needs held-out prompts for this model: pass --held-out-prompts FILE (one "
                         "prompt per line, none of them a training prompt)")
    source = env.unwrapped.prompt_source.prompts  # a list source: none of it may be held out
    check_held_out(list(source or train_prompts), held_out)
    return train_prompts, held_out


def plot_rewards(history: list[dict[str, float]], before: float | None, after: float | None, path: Path,
                 title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history) + 1)
    mean = np.array([h["reward_mean"] for h in history])
    std = np.array([h["reward_std"] for h in history])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, mean, label="training rollouts (mean ± std)")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
    if before is not None and after is not None:
        ax.axhline(before, color="gray", linestyle="--", label=f"evaluation before: {before:.3f}")
        ax.axhline(after, color="green", linestyle="--", label=f"evaluation after: {after:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def resolve_resume(resume: str, output_dir: str) -> Path | None:
    """The checkpoint a job resumes from (None: a fresh start); ``resume`` as in :class:`TrainConfig`."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(Path(output_dir) / "checkpoints")  # nothing saved yet: a fresh start
    path = Path(resume)
    read_meta(path)  # a clear error when it is not a checkpoint
    return path


def _evaluate_before(agent: Any, eval_env: Any, prompts: list[str], out: Path, resumed: bool) -> EvaluationResult:
    """The untrained model's evaluation, kept in before.npz so a resumed job reuses it."""
    path = out / "before.npz"
    if resumed and path.is_file():
        saved = np.load(path)
        return EvaluationResult(saved["images"], saved["rewards"], prompts)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=EVAL_SEED)
    np.savez(path, images=result.images, rewards=result.rewards)
    return result


def train(cfg: TrainConfig, callbacks: Sequence[BaseCallback] = ()) -> TrainResult:
    """Run the job described by ``cfg`` (resuming it when ``cfg.resume`` says so); returns its metrics (also in
    metrics.json), its evaluations and the agent. ``callbacks`` run after the job's own."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun / accelerate launch: one rank of many
        cfg = replace(cfg, device=init_from_environment(str(resolve_device(cfg.device))))
    ranks = Ranks.current()
    main = is_writer()  # rank 0 (or the only process): it evaluates, logs and writes
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = resolve_resume(cfg.resume, cfg.output_dir)

    env = build_env(cfg)
    agent = build_agent(cfg, env)
    monitoring = main and cfg.monitor_every > 0
    if monitoring:
        monitor_sets = monitor_prompts(cfg, env)
        agent.policy.keep_reference()  # the base model, before any trained weights are loaded
    history: list[dict[str, float]] = []
    saved_monitor: list[dict[str, Any]] = []
    if resume_from is not None:
        saved = load_checkpoint(agent, resume_from)["config"]
        history, saved_monitor = saved.get("history", []), saved.get("monitor", [])
        if main:
            print(f"resuming from {resume_from} (epoch {agent.num_epochs} of {cfg.epochs})")
    formats = ["csv", "tensorboard"] if cfg.tensorboard else ["csv"]
    agent.set_logger(configure(str(out / "logs"), formats) if main else Logger(folder=None, output_formats=[]))

    grids = main and cfg.tensorboard and cfg.image_every > 0
    evaluate = main and cfg.evaluate
    eval_env = build_env(cfg, num_envs=25, model=env.unwrapped.backend) if evaluate or grids or monitoring else None
    prompts = evaluation_prompts(env)
    before = _evaluate_before(agent, eval_env, prompts, out, resume_from is not None) if evaluate else None
    if ranks:
        ranks.barrier()  # the other ranks wait for rank 0's evaluation

    progress = EpochProgress(cfg.epochs, cfg.samples_per_epoch, history, show=main)
    job = asdict(cfg)
    monitor = HeldOutMonitor(eval_env, *monitor_sets, cfg.monitor_every,
                             records=saved_monitor) if monitoring else None
    checkpoints = CheckpointEvery(out / "checkpoints", cfg.save_every, cfg.epochs, cfg.keep_last,
                                  lambda: {**job, "history": progress.history,
                                           "monitor": monitor.records if monitor else []})
    own: list[BaseCallback] = [progress, *([monitor] if monitor else []), checkpoints]
    if grids:
        own.append(ImageGrids(eval_env, prompts[::10][:8] * 2, cfg.image_every))
    remaining = cfg.epochs - agent.num_epochs
    start = time.perf_counter()
    if remaining > 0:
        agent.learn(total_samples=remaining * cfg.samples_per_epoch, callback=[*own, *callbacks],
                    reset_num_timesteps=resume_from is None)
    seconds = time.perf_counter() - start
    agent.logger.close()
    metrics: dict[str, Any] = {"config": asdict(cfg), "samples": agent.num_epochs * cfg.samples_per_epoch,
                               "train_seconds": seconds, "epochs": progress.history}
    if not main:
        return TrainResult(metrics, None, None, agent)
    with agent.ema_weights():  # the EMA weights when ema_decay > 0
        after = evaluate_policy(agent.policy, eval_env, prompts, seed=EVAL_SEED) if evaluate else None
        exported = export_weights(agent.policy, out)
    plot_rewards(progress.history, None if before is None else float(before.rewards.mean()),
                 None if after is None else float(after.rewards.mean()), out / "reward_curve.png",
                 f"{cfg.agent} on {cfg.model} model, reward {cfg.reward}")
    lines = [f"\n{cfg.agent} on the {cfg.model} model, reward {cfg.reward}: {agent.num_epochs} epochs × "
             f"{cfg.samples_per_epoch} samples ({max(remaining, 0)} epochs in this run, {seconds / 60:.1f} min)"]
    if before is not None and after is not None:
        rows = len(prompts) // 10  # one row per evaluation prompt (ten seeds each; SD's defaults have eight)
        grid = np.concatenate([before.images.reshape(rows, 10, *before.images.shape[1:])[:, :5],
                               after.images.reshape(rows, 10, *after.images.shape[1:])[:, :5]], axis=1)
        save_grid(grid.reshape(-1, *before.images.shape[1:]), rows=rows, path=out / "before_after.png")
        for key, result in (("eval_reward_before", before), ("eval_reward_after", after)):
            metrics[key] = {"mean": float(result.rewards.mean()), "std": float(result.rewards.std())}
        gain = (after.rewards.mean() - before.rewards.mean()) / max(before.rewards.std(), 1e-12)
        lines += [f"  evaluation reward (100 fixed prompts and seeds): {before.rewards.mean():.4f} ± "
                  f"{before.rewards.std():.4f} → {after.rewards.mean():.4f} ± {after.rewards.std():.4f}  "
                  f"({gain:+.2f} initial std)",
                  f"  {out / 'before_after.png'}  left: before, right: after (same prompts and seeds)"]
    if monitor is not None:
        metrics["monitor"] = monitor.records
        plot_monitor(monitor.records, out / "monitor.png", f"{cfg.agent} on {cfg.model}, reward {cfg.reward}: "
                     "train vs held-out prompts (deterministic ODE sampler)")
        lines.append(f"  {out / 'monitor.png'}  train vs held-out prompts: reward, KL to the base model, diversity")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    lines += [f"  {out / 'reward_curve.png'}  reward per epoch",
              f"  {out / 'metrics.json'}  numbers",
              f"  {checkpoints.saved[-1] if checkpoints.saved else out / 'checkpoints'}  newest checkpoint "
              f"(resume: --resume auto)",
              f"  {exported}  trained weights for diffusers",
              f"  {out / 'logs'}  " + (f"tensorboard --logdir {out / 'logs'}" if cfg.tensorboard else "progress.csv")]
    print("\n".join(lines))
    return TrainResult(metrics, before, after, agent)
