"""Per-denoising-step training diagnostics: which steps carry the gradient, and whether it is signal or noise.

* :class:`StepStats` averages per-transition values (clip fraction, log-ratio) by step index k during an update.
* :func:`step_gradient_stats` splits a rollout's samples into two halves A and B and, for each trained step k,
  takes the gradient of the algorithm's loss on each half at that step alone:

      grad_norm_k    ‖(g_A + g_B)/2‖          how much step k pulls on the weights
      grad_cosine_k  cos(g_A, g_B)            agreement of independent halves: ≈0 for pure noise, > 0 for signal

  A step with a large norm and a cosine near 0 dominates the update with noise (``ddpo diagnose`` tells why).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import numpy as np
import torch


class StepStats:
    """Running means of per-transition values by denoising step index; thread-safe (``grad_workers``)."""

    def __init__(self) -> None:
        self._sums: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.Lock()

    def add(self, steps: torch.Tensor, **values: torch.Tensor) -> None:
        """Add values (B,) of transitions at step indices ``steps`` (B,)."""
        k = steps.detach().cpu().numpy()
        with self._lock:
            for name, value in values.items():
                v = value.detach().float().cpu().numpy()
                for step in np.unique(k):
                    mask = k == step
                    self._sums[name][int(step)] += float(v[mask].sum())
                    self._counts[name][int(step)] += int(mask.sum())

    def means(self) -> dict[str, dict[int, float]]:
        """{name: {k: mean}} of everything added since the last :meth:`clear`."""
        with self._lock:
            return {name: {k: sums[k] / self._counts[name][k] for k in sorted(sums)}
                    for name, sums in self._sums.items()}

    def clear(self) -> None:
        with self._lock:
            self._sums.clear()
            self._counts.clear()


def step_gradient_stats(agent: Any) -> dict[str, dict[int, float]]:
    """{"grad_norm": {k: …}, "grad_cosine": {k: …}} for every step k the agent trains, from its current rollout and
    weights (see the module docstring). Leaves ``.grad`` and the agent's random generators untouched."""
    params = agent.policy.trainable_parameters()
    samples = agent.train_samples()
    half = len(samples) // 2
    if half == 0:
        return {}
    halves = (samples[:half], samples[half : 2 * half])
    norms, cosines = {}, {}
    for k in agent.trainable_steps():
        grads = [step_gradient(agent, part, k, params) for part in halves]
        norms[k] = float(((grads[0] + grads[1]) / 2).norm())
        cosines[k] = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    return {"grad_norm": norms, "grad_cosine": cosines}


def step_gradient(agent: Any, samples: torch.Tensor, step: int, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """∇ of the mean loss over ``samples`` at step index ``step``, as one flat vector (micro-batches of the agent's
    batch size, weighted by their share)."""
    total = [torch.zeros_like(p) for p in params]
    size = agent.rank_batch_size
    for first in range(0, len(samples), size):
        chunk = samples[first : first + size].to(agent.device)
        steps = torch.full_like(chunk, step)
        loss, _ = agent.compute_loss(chunk, steps)
        scale = agent.loss_scale()  # float16: scaled against underflow, divided out below
        grads = torch.autograd.grad(loss * (scale * len(chunk) / len(samples)), params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t += g / scale
    return torch.cat([t.reshape(-1) for t in total]).float()


def first_update_log_ratios(agent: Any) -> dict[int, float]:
    """{k: the largest |log π_θ − log π_old|} over the transitions of the rollout in ``agent.buffer`` at each trained
    step index k, each computed as the first optimizer step's passes compute it (the same micro-batches, training
    mode, gradient recording on) under the current weights. All zeros: every ratio of the first update is exactly 1,
    so the old log-probs the update compares against are what its own forward computes. Leaves the weights,
    ``.grad`` and the agent's random generators untouched."""
    state = agent.train_generator.get_state()
    agent.policy.set_training_mode(True)
    worst: dict[int, float] = {}
    try:
        for samples, steps, _ in agent.micro_batches():
            batch = agent.buffer.transitions(samples.to(agent.device), steps.to(agent.device))
            log_ratio = (agent.transition_log_probs(batch) - batch.old_log_probs).detach().abs().cpu()
            for k in steps.unique().tolist():
                worst[k] = max(worst.get(k, 0.0), float(log_ratio[steps == k].max()))
    finally:
        agent.train_generator.set_state(state)
    return dict(sorted(worst.items()))
