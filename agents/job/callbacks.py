"""What a training job shows and keeps while it runs: a progress bar, checkpoints, image grids in TensorBoard."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import Image
from tqdm import tqdm

from agents.hooks import EpochEndCallback
from agents.job.checkpoint import save_checkpoint
from agents.job.evaluation import evaluate_policy

NOT_TEXT = ("stdout", "log", "json", "csv")  # image records go to TensorBoard only
#: Logged update diagnostics kept per epoch in the job's history (metrics.json), under these names.
TRAIN_DIAGNOSTICS = {"train/clip_fraction": "clip_fraction", "train/approx_kl": "approx_kl",
                     "train/n_updates": "optimizer_steps", "train/effective_sample_size": "effective_sample_size",
                     "train/kl": "kl_penalty_kl"}


class EpochProgress(EpochEndCallback):
    """A tqdm bar over epochs showing the reward mean and samples/s; keeps per-epoch reward statistics in
    ``history`` (continued from ``history`` when a run resumes)."""

    def __init__(self, epochs: int, samples_per_epoch: int, history: list[dict[str, float]] | None = None,
                 show: bool = True) -> None:
        super().__init__()
        self.history = list(history or [])
        self.bar = tqdm(total=epochs, initial=len(self.history), desc="train", unit="epoch", disable=not show)
        self.samples_per_epoch = samples_per_epoch
        self._start, self._done = time.perf_counter(), 0

    def _on_rollout_end(self) -> None:
        rewards = self.model.rollout_rewards  # every rank's
        self.history.append({"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std())})
        if len(self.model.rollout_terms) > 1:  # a weighted sum: each term's mean score
            self.history[-1].update({f"reward_{k}": v for k, v in self.model.rollout_terms.items()})

    def on_epoch_end(self) -> None:
        logged = self.model.logger.name_to_value  # this epoch's records, not yet dumped
        for key, name in TRAIN_DIAGNOSTICS.items():
            if key in logged:
                self.history[-1][name] = float(logged[key])
        self._done += self.samples_per_epoch
        rate = self._done / (time.perf_counter() - self._start)
        self.bar.set_postfix(reward=f"{self.history[-1]['reward_mean']:.4f}", samples_per_s=f"{rate:.1f}")
        self.bar.update(1)

    def _on_training_end(self) -> None:
        self.bar.close()


class CheckpointEvery(EpochEndCallback):
    """Saves a checkpoint every ``every`` epochs and always after the last one (``final_epoch``).

    Args:
        root: the checkpoints folder.
        every: epochs between checkpoints (0: only the final one).
        final_epoch: the job's last epoch.
        keep_last: newest checkpoints kept (0: all).
        config: called at each save; what it returns is recorded in meta.json (the job's config and history).
    """

    def __init__(self, root: str | Path, every: int, final_epoch: int, keep_last: int,
                 config: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self.root, self.every, self.final_epoch = root, every, final_epoch
        self.keep_last, self.config = keep_last, config
        self.saved: list[Path] = []

    def on_epoch_logged(self) -> None:  # after the epoch's progress.csv row is written
        epoch = self.model.num_epochs
        if epoch >= self.final_epoch or (self.every and epoch % self.every == 0):
            path = save_checkpoint(self.model, self.root, config=self.config(), keep_last=self.keep_last)
            if path is not None:
                self.saved.append(path)


class ImageGrids(EpochEndCallback):
    """Every ``every`` epochs and after the last (``final_epoch``), samples fixed prompts and seeds and logs a grid
    captioned with prompt and reward to TensorBoard (``samples/grid``). Uses the evaluation env, never the training
    env's generators."""

    def __init__(self, eval_env: Any, prompts: list[str], every: int, final_epoch: int = 0, seed: int = 20_000,
                 cols: int = 8) -> None:
        super().__init__()
        self.eval_env, self.prompts, self.every, self.seed, self.cols = eval_env, prompts, every, seed, cols
        self.final_epoch = final_epoch  # also logged there, when it is not a multiple of every

    def log_grid(self) -> None:
        with self.model.ema_weights():
            result = evaluate_policy(self.model.policy, self.eval_env, self.prompts, seed=self.seed)
        self.logger.record("samples/grid", Image(result.grid(self.cols), "HWC"), exclude=NOT_TEXT)

    def _on_training_start(self) -> None:
        if self.every and self.model.num_epochs == 0:
            self.log_grid()  # the model before any update
            self.logger.dump(self.model.num_timesteps)

    def on_epoch_end(self) -> None:
        epoch = self.model.num_epochs
        if self.every and (epoch % self.every == 0 or epoch == self.final_epoch):
            self.log_grid()
