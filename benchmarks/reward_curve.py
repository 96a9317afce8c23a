"""The evaluation-reward curve of a training job: every few epochs, the job's reward on its fixed evaluation set
(the task's evaluation prompts at the job's ``eval_seed``), so a benchmark plots what a policy does on samples it did
not train on rather than the training reward, and reads samples-to-score off it (:mod:`benchmarks.samples_to_score`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from agents.hooks import EpochEndCallback


class TrainingClock:
    """Wall and CPU seconds of training since it was made, the time spent inside :meth:`evaluating` left out. The CPU
    seconds are the process's: with one torch thread per job, what the time would be on an idle core when other jobs
    share the machine."""

    def __init__(self) -> None:
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        self._paused = self._paused_cpu = 0.0  # wall and CPU seconds spent evaluating

    @property
    def evaluating_seconds(self) -> float:
        """Wall seconds spent inside :meth:`evaluating`."""
        return self._paused

    def training(self) -> dict[str, float]:
        """``seconds`` and ``cpu_seconds`` of training so far."""
        return {"seconds": time.perf_counter() - self._start - self._paused,
                "cpu_seconds": time.process_time() - self._cpu_start - self._paused_cpu}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Time that does not count as training."""
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start
            self._paused_cpu += time.process_time() - cpu


class RewardCurve(EpochEndCallback):
    """Every ``every`` epochs (not the last: the job evaluates that itself), the mean reward of the policy on the job's
    fixed evaluation set. ``points`` holds per evaluation the epoch, the samples trained on, the training seconds so
    far and the process's CPU seconds of training (:class:`TrainingClock`) and the mean ``reward``."""

    def __init__(self, cfg: Any, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"RewardCurve every={every}: evaluate every 1 or more epochs")
        self.cfg, self.every = cfg, every
        self.points: list[dict[str, float]] = []
        self._env: Any = None
        self._prompts: list[str] = []
        self.clock = TrainingClock()

    def on_epoch_end(self) -> None:
        from agents.job.evaluation import evaluate_policy
        from agents.job.train import build_env, evaluation_prompts

        agent, epoch = self.model, self.model.num_epochs
        if epoch % self.every or epoch >= self.cfg.epochs:
            return
        times = self.clock.training()
        with self.clock.evaluating():
            if self._env is None:
                self._env = build_env(self.cfg, num_envs=25, model=agent.diffusion_env.backend)
                self._prompts = evaluation_prompts(self._env)
            with agent.ema_weights():
                result = evaluate_policy(agent.policy, self._env, self._prompts, seed=self.cfg.eval_seed)
            self.points.append({"epoch": epoch, "samples": epoch * self.cfg.samples_per_epoch, **times,
                                "reward": float(np.mean(result.rewards))})


def with_final(points: list[dict[str, float]], cfg: Any, train_seconds: float, reward: float) -> list[dict[str, Any]]:
    """The curve with the job's own final evaluation appended (its training seconds as the job measured them)."""
    last = {"epoch": cfg.epochs, "samples": cfg.epochs * cfg.samples_per_epoch, "seconds": train_seconds,
            "cpu_seconds": None, "reward": reward}
    return [*points, last]


def gains(points: list[dict[str, Any]], before_mean: float, before_std: float) -> list[dict[str, Any]]:
    """The curve in units of the untrained model's per-sample std: each point's ``gain`` over ``before_mean``."""
    scale = max(before_std, 1e-12)
    return [{**p, "gain": (p["reward"] - before_mean) / scale} for p in points]
