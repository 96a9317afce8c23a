"""One training job on DenoisingDiffusion-v0, from a :class:`TrainConfig` (what ``ddpo train`` and ``make train``
run; the command line is :mod:`agents.job.cli`).

Defaults (:mod:`agents.job.config`): DDPO-IS on the embedded default model with the JPEG-compressibility reward and
the paper's LoRA settings; ``make train`` runs ``configs/make_train.toml``, tuned for that model. The output folder
gets

    reward_curve.png   training reward per epoch, and the evaluation before / after
    monitor.png        with --monitor-every: train vs held-out prompts (reward, KL to the base model, diversity)
    before_after.png   100 fixed prompts and seeds: left before training, right after (titled with the reward and, on
                       the digits model, the share of digits the classifier still reads as prompted)
    metrics.json       the numbers (with digit_agreement_before / _after on the digits model, geneval_accuracy_before /
                       _after on the shapes model)
    checkpoints/       epoch-NNNNNN/ folders (atomic; resume with --resume auto)
    logs/              TensorBoard events (scalars and captioned sample grids) and progress.csv
    lora/              the LoRA adapter in diffusers' format (pipe.load_lora_weights), or unet/ for a full fine-tune
    before.npz         the evaluation before training (images, rewards; written first), which a resumed job reuses
                       instead of evaluating the base model again
    samples.png        written later by ``ddpo sample --checkpoint <this folder>``

A fresh run refuses a folder that holds a checkpoint (continue it with --resume auto, or --overwrite) or files no run
writes; a run that stopped before its first checkpoint (logs/, before.npz only) is replaced, with one line saying so.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, Logger, configure

import ddpo_env  # noqa: F401  (registers the env)
from agents import make_agent
from agents.distributed import Ranks, close_process_group, init_from_environment
from agents.job.callbacks import CheckpointEvery, EpochProgress, ImageGrids
from agents.job.checkpoint import (
    checkpoint_problem,
    is_writer,
    latest_checkpoint,
    list_checkpoints,
    load_resumable,
    newest_good,
    read_meta,
    unreadable,
)
from agents.job.config import TrainConfig
from agents.job.evaluation import EvaluationResult, evaluate_policy
from agents.job.export import export_weights
from agents.job.monitor import HeldOutMonitor, check_held_out, plot_monitor
from ddpo_env.backends import resolve_device
from ddpo_env.conditioning import schedule_conditioning
from ddpo_env.images import save_side_by_side
from ddpo_env.prompts import PromptSource
from rewards import REWARDS
from rewards.combine import resolve_reward, weighted_sum

EVAL_SEED = TrainConfig.eval_seed  # the fixed evaluation set's seed by default (and `ddpo evaluate`'s)


class TrainResult(NamedTuple):
    metrics: dict[str, Any]  # what metrics.json holds
    before: EvaluationResult | None  # the fixed evaluation set before training
    after: EvaluationResult | None  # and after
    agent: Any


def parse_rewards(spec: str, custom: Mapping[str, Any] | None = None) -> dict[str, float]:
    """'name' → {name: 1.0}; 'a=1,b=-0.5' → {a: 1.0, b: -0.5}. A name is a built-in reward, a key of ``custom``
    or an import path package.module:function (:func:`rewards.combine.resolve_reward`); unknown names and bad
    weights are errors."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = math.nan
        if not name or not math.isfinite(value) or value == 0:
            raise ValueError(
                f"bad reward {part.strip()!r} in {spec!r}: use a name from {sorted(REWARDS)} or "
                "package.module:function, optionally =weight (finite, non-zero), comma-separated"
            )
        resolve_reward(name, custom)
        weights[name] = value
    return weights


def validate(cfg: TrainConfig, custom: Mapping[str, Any] | None = None) -> None:
    """What a TrainConfig cannot check alone (its types and ranges it checks when built): the rewards it names,
    and options only for those."""
    unknown = sorted(set(cfg.reward_options) - set(parse_rewards(cfg.reward, custom)))
    if unknown:
        raise ValueError(f"reward_options for {unknown}, which are not in reward={cfg.reward!r}")


def build_env(cfg: TrainConfig, num_envs: int | None = None, model: Any = None,
              rewards: Mapping[str, Any] | None = None) -> Any:
    """The reward-wrapped vector env of the job (``num_envs``/``model``: an evaluation env of another size reusing a
    built backend, e.g. the training env's, with one prompt per env; ``rewards``: your own rewards by name)."""
    env_config = cfg.env if num_envs is None else dataclasses.replace(cfg.env, group_size=1)
    if model is not None:
        env_config = dataclasses.replace(env_config, model=model)
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs or cfg.num_envs, config=env_config)
    weights = parse_rewards(cfg.reward, rewards)
    options = {name: {**({"upscale": cfg.jpeg_upscale} if name.startswith("jpeg") else {}),
                      **cfg.reward_options.get(name, {})} for name in weights}
    return weighted_sum(env, weights, {k: v for k, v in options.items() if v}, custom=rewards)


def build_agent(cfg: TrainConfig, env: Any) -> Any:
    """The job's agent on ``env``, with the job's algorithm config (a copy: the agent owns its config)."""
    return make_agent(cfg.agent, env, config=dataclasses.replace(cfg.algorithm))


def evaluation_prompts(env: Any) -> list[str]:
    """The fixed evaluation set's prompts: the env's task's evaluation prompts, ten seeds each (ddpo_env.tasks)."""
    return env.unwrapped.task.evaluation_prompts(env.unwrapped.backend)


def monitor_prompts(cfg: TrainConfig, env: Any) -> tuple[list[str], list[str]]:
    """The held-out monitor's (train, held-out) prompt sets: ten training prompts, and the held-out file or the
    task's held-out prompts (the default model: the digits in a wording it never saw; shapes: held-out
    combinations)."""
    train_prompts = evaluation_prompts(env)[::10]
    task = env.unwrapped.task
    if cfg.held_out_prompts:
        held_out = list(PromptSource(cfg.held_out_prompts).prompts)
    elif task.held_out_prompts is not None:
        held_out = list(task.held_out_prompts())
    else:
        raise ValueError(f"monitor_every needs held-out prompts, and the task {task.name!r} has none: pass "
                         "--held-out-prompts FILE (one prompt per line, none of them a training prompt)")
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


def resolve_resume(resume: str, output_dir: str, log: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint a job resumes from (None: a fresh start); ``resume`` as in :class:`TrainConfig`. ``auto`` takes
    the newest checkpoint of the run that reads, skipping unreadable ones; ``log`` (e.g. print) gets a line for each
    skipped one, or says that the run starts afresh. A checkpoint that cannot be read is an error naming the file
    and the newest earlier one that reads."""
    if not resume:
        return None
    if resume == "auto":
        root = Path(output_dir) / "checkpoints"
        found = list_checkpoints(root)
        if not found:
            if log is not None:
                log(f"--resume auto: no checkpoint in {root} yet: starting afresh")
            return None
        good = newest_good(root, log=log)
        if good is None:
            raise ValueError(f"--resume auto: no checkpoint in {root} reads ({checkpoint_problem(found[-1])}): "
                             "restore one, or start the run afresh with --overwrite")
        return good
    path = Path(resume)
    read_meta(path)  # a clear error when it is not a checkpoint
    problem = checkpoint_problem(path)
    if problem is not None:
        raise unreadable(path, problem)
    return path


def continue_progress_csv(logger: Logger, earlier: str, epochs: int) -> None:
    """A resumed run's progress.csv keeps the rows of the epochs its checkpoint holds (SB3's CSV writer starts a
    new file): later rows of the killed run, trained again now, are dropped."""
    lines = earlier.splitlines()
    header = lines[0].split(",")
    column = header.index("rollout/epoch") if "rollout/epoch" in header else None
    parsed = list(csv.reader(lines[1:]))
    rows = [line for line, cells in zip(lines[1:], parsed, strict=True)
            if column is None or float(cells[column] or 0) < epochs]
    for fmt in logger.output_formats:
        if isinstance(fmt, CSVOutputFormat):
            fmt.keys = header
            fmt.file.write("\n".join([lines[0], *rows]) + "\n")
            fmt.file.flush()


def claim_output_dir(out: Path, overwrite: bool, main: bool) -> None:
    """A fresh run's folder must hold no other run: a run written into an earlier one would mix their metrics,
    pictures and checkpoints (and a later --resume auto would pick the wrong one). Refused: a folder holding a
    checkpoint (continue it with --resume auto) or files a run does not write. A run that stopped before its first
    checkpoint (only logs/, before.npz, an empty checkpoints/) has nothing to continue: it is replaced, with one line
    saying so. With ``overwrite`` any folder is emptied. Only rank 0 (``main``) deletes and prints."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    names = sorted(p.name for p in out.iterdir())
    checkpoint = latest_checkpoint(out / "checkpoints") if (out / "checkpoints").is_dir() else None
    if not overwrite:
        if checkpoint is not None:
            raise FileExistsError(f"output_dir {out} already holds a run ({', '.join(names[:5])}; newest checkpoint "
                                  f"{checkpoint.name}): continue it with --resume auto, start afresh with --overwrite "
                                  "(deletes it), or choose another --output-dir")
        early = ("logs", "before.npz", "checkpoints")  # what a run writes before its first checkpoint
        other = [name for name in names if name not in early]
        if other:
            raise FileExistsError(f"output_dir {out} holds files but no checkpoint to continue ({', '.join(other[:5])})"
                                  ": choose another --output-dir, or --overwrite (deletes them)")
        if main:
            print(f"output_dir {out} holds a run that stopped before its first checkpoint ({', '.join(names)}): "
                  "replacing it")
    if main:
        for path in out.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _evaluate_before(agent: Any, eval_env: Any, prompts: list[str], out: Path, resumed: bool, seed: int
                     ) -> EvaluationResult:
    """The untrained model's evaluation on the fixed set, kept in before.npz (arrays ``images`` (N, H, W, 3) uint8
    and ``rewards`` (N,)) so a resumed job reuses it rather than evaluating the base model again."""
    path = out / "before.npz"
    if resumed and path.is_file():
        saved = np.load(path)
        return EvaluationResult(saved["images"], saved["rewards"], prompts)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=seed, progress=True)
    np.savez(path, images=result.images, rewards=result.rewards)
    return result


def train(cfg: TrainConfig, callbacks: Sequence[BaseCallback] = (),
          rewards: Mapping[str, Any] | None = None) -> TrainResult:
    """Run the job described by ``cfg`` (resuming it when ``cfg.resume`` says so); returns its metrics (also in
    metrics.json), its evaluations and the agent. ``callbacks`` run after the job's own. ``rewards`` names your own
    rewards (a scorer class or object, or a function fn(images, prompts) -> rewards) for ``cfg.reward`` to use,
    e.g. ``train(cfg.replace(reward="mine,jpeg_compressibility=0.5"), rewards={"mine": fn})``; an importable one
    needs no entry: ``reward="package.module:function"``."""
    validate(cfg, rewards)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by torchrun / accelerate launch: one rank of many
    owns_group = launched and not torch.distributed.is_initialized()  # joined here, so left here
    if launched:
        cfg = cfg.replace(device=init_from_environment(str(resolve_device(cfg.env.device)), cfg.collective_timeout_s))
    ranks = Ranks.current()
    main = is_writer()  # rank 0 (or the only process): it evaluates, logs and writes
    out = Path(cfg.output_dir)
    resume_from = resolve_resume(cfg.resume, cfg.output_dir, log=print if main else None)
    if not cfg.resume:  # (--resume auto with no checkpoint yet restarts that run in its folder)
        claim_output_dir(out, cfg.overwrite, main)
    if ranks:
        ranks.barrier()  # every rank has looked at the folder before rank 0 writes into it
    out.mkdir(parents=True, exist_ok=True)

    env = build_env(cfg, rewards=rewards)
    agent = build_agent(cfg, env)
    monitoring = main and cfg.monitor_every > 0
    if monitoring:
        monitor_sets = monitor_prompts(cfg, env)
        agent.policy.keep_reference()  # the base model, before any trained weights are loaded
    history: list[dict[str, float]] = []
    saved_monitor: list[dict[str, Any]] = []
    if resume_from is not None:
        resume_from, loaded = load_resumable(agent, resume_from, fall_back=cfg.resume == "auto",
                                             log=print if main else None)
        saved = loaded["config"]
        history, saved_monitor = saved.get("history", []), saved.get("monitor", [])
        if main:
            print(f"resuming from {resume_from} (epoch {agent.num_epochs} of {cfg.epochs})")
    formats = ["csv", "tensorboard"] if cfg.tensorboard else ["csv"]
    earlier = (out / "logs" / "progress.csv").read_text(encoding="utf-8") if resume_from is not None and (
        out / "logs" / "progress.csv").is_file() else ""
    agent.set_logger(configure(str(out / "logs"), formats) if main else Logger(folder=None, output_formats=[]))
    if main and earlier:
        continue_progress_csv(agent.logger, earlier, agent.num_epochs)
    conditioning = schedule_conditioning(env.unwrapped.schedule)  # logged with the first epoch (ddpo diagnose)
    for k, ratio in enumerate(conditioning.ratio_to_median):
        agent.logger.record(f"steps/sensitivity_to_median_k{k:02d}", float(ratio), exclude=("stdout", "log"))

    grids = main and cfg.tensorboard and cfg.image_every > 0
    evaluate = main and cfg.evaluate
    eval_env = (build_env(cfg, num_envs=25, model=env.unwrapped.backend, rewards=rewards)
                if evaluate or grids or monitoring else None)
    prompts = evaluation_prompts(env)
    before = (_evaluate_before(agent, eval_env, prompts, out, resume_from is not None, cfg.eval_seed)
              if evaluate else None)
    if ranks:
        ranks.barrier()  # the other ranks wait for rank 0's evaluation

    progress = EpochProgress(cfg.epochs, cfg.samples_per_epoch, history, show=main)
    job = cfg.to_flat()
    monitor = HeldOutMonitor(eval_env, *monitor_sets, cfg.monitor_every,
                             records=saved_monitor) if monitoring else None
    checkpoints = CheckpointEvery(out / "checkpoints", cfg.save_every, cfg.epochs, cfg.keep_last,
                                  lambda: {**job, "history": progress.history,
                                           "monitor": monitor.records if monitor else []})
    own: list[BaseCallback] = [progress, *([monitor] if monitor else []), checkpoints]
    if grids:
        own.append(ImageGrids(eval_env, prompts[::10][:8] * 2, cfg.image_every, final_epoch=cfg.epochs))
    remaining = cfg.epochs - agent.num_epochs
    start = time.perf_counter()
    try:
        if remaining > 0:
            agent.learn(total_samples=remaining * cfg.samples_per_epoch, callback=[*own, *callbacks],
                        reset_num_timesteps=resume_from is None)
    finally:  # also when training fails: progress.csv and the TensorBoard file are closed, what they hold kept
        agent.logger.close()
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {"config": cfg.to_flat(), "samples": agent.num_epochs * cfg.samples_per_epoch,
                               "train_seconds": seconds, "epochs": progress.history}
    if not main:
        if owns_group:
            close_process_group()  # waits for rank 0's evaluation and files
        return TrainResult(metrics, None, None, agent)
    with agent.ema_weights():  # the EMA weights when ema_decay > 0
        # with LoRA the base model is the adapter switched off: the KL to it along the evaluation trajectories is cheap
        after = (evaluate_policy(agent.policy, eval_env, prompts, seed=cfg.eval_seed, kl=agent.policy.lora_rank > 0,
                                 progress=True) if evaluate else None)
        exported = export_weights(agent.policy, out)
    plot_rewards(progress.history, None if before is None else float(before.rewards.mean()),
                 None if after is None else float(after.rewards.mean()), out / "reward_curve.png",
                 f"{cfg.agent} on {cfg.env.model} model, reward {cfg.reward}")
    lines = [f"\n{cfg.agent} on the {cfg.env.model} model, reward {cfg.reward}: {agent.num_epochs} epochs × "
             f"{cfg.samples_per_epoch} samples ({max(remaining, 0)} epochs in this run, {seconds / 60:.1f} min)"]
    if before is not None and after is not None:
        gain = (after.rewards.mean() - before.rewards.mean()) / max(before.rewards.std(), 1e-12)
        for key, result in (("eval_reward_before", before), ("eval_reward_after", after)):
            metrics[key] = {"mean": float(result.rewards.mean()), "std": float(result.rewards.std())}
        metrics["eval_gain_in_initial_std"] = float(gain)
        if after.kl is not None:
            metrics["eval_kl_to_base_after"] = float(after.kl.mean())
        titles = [f"before: reward {before.rewards.mean():.3f}", f"after: {after.rewards.mean():.3f} ({gain:+.1f} std)"]
        lines += [f"  evaluation reward (100 fixed prompts and seeds): {before.rewards.mean():.4f} ± "
                  f"{before.rewards.std():.4f} → {after.rewards.mean():.4f} ± {after.rewards.std():.4f}  "
                  f"({gain:+.2f} initial std)"]
        judge = env.unwrapped.task.judge  # does each image show what its prompt asks (the task's own check)
        agreement = [judge(r.images, prompts) if judge else None for r in (before, after)]
        if agreement[0] is not None:
            metrics[f"{judge.metric}_before"], metrics[f"{judge.metric}_after"] = agreement
            titles = [f"{t}, {judge.label} {100 * a:.0f} %" for t, a in zip(titles, agreement, strict=True)]
            lines.append(f"  {judge.description}: {100 * agreement[0]:.0f} % → {100 * agreement[1]:.0f} %")
        rows = len(prompts) // 10  # one row per evaluation prompt (ten seeds each; SD's defaults have eight)
        halves = [r.images.reshape(rows, 10, *r.images.shape[1:])[:, :5].reshape(-1, *r.images.shape[1:])
                  for r in (before, after)]
        save_side_by_side(halves, rows, titles, out / "before_after.png")
        lines.append(f"  {out / 'before_after.png'}  left: before, right: after (same prompts and seeds)")
    if monitor is not None:
        metrics["monitor"] = monitor.records
        plot_monitor(monitor.records, out / "monitor.png", f"{cfg.agent} on {cfg.env.model}, reward {cfg.reward}: "
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
    if owns_group:
        close_process_group()
    return TrainResult(metrics, before, after, agent)
