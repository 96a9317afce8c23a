"""Does one step along the policy gradient raise the reward? The one-sign-step test, per group of denoising steps,
against random directions; and each step's share of the gradient.

From one rollout of the current policy (in ``agent.buffer``) and a fixed evaluation set (the same prompts, x_T and
noise before and after: paired samples), for each group G of denoising steps:

    g_G    = Σ_{k∈G} ∇_θ L_k          (L_k: the agent's loss on the rollout's transitions at step k)
    θ'     = θ − lr · sign(g_G)        (Adam's first step along g_G)
    Δ_i    = R_i(θ') − R_i(θ)          (evaluation sample i)  →  gain = mean Δ, standard error = std Δ / √n

and the same step along random sign vectors (the control). A gradient that carries signal raises the reward by more
than 2 standard errors, where random directions do not. Each step's share of the gradient: ‖g_k‖² / Σ_j ‖g_j‖².
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.step_stats import step_gradient


@dataclass
class SignStep:
    """The test's result for one direction: a group of steps, or a random control."""

    name: str
    steps: list[int]  # empty for a random control
    gain: float
    stderr: float

    @property
    def raises(self) -> bool:
        """The reward rose by more than 2 standard errors."""
        return self.gain > 2 * self.stderr


def step_gradients(agent: Any) -> dict[int, torch.Tensor]:
    """∇_θ L_k for every step k the agent trains, on all of its rollout's training samples (flat vectors)."""
    params = agent.policy.trainable_parameters()
    samples = agent.train_samples()
    return {k: step_gradient(agent, samples, k, params) for k in agent.trainable_steps()}


def gradient_shares(gradients: dict[int, torch.Tensor]) -> dict[int, float]:
    """‖g_k‖² / Σ_j ‖g_j‖² per step k."""
    squares = {k: float(g.square().sum()) for k, g in gradients.items()}
    total = sum(squares.values()) or 1.0
    return {k: v / total for k, v in squares.items()}


@torch.no_grad()
def sign_step_gain(agent: Any, direction: torch.Tensor, learning_rate: float,
                   evaluate: Callable[[], np.ndarray], before: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) of the evaluation rewards' change after θ ← θ − lr·sign(direction); θ is restored."""
    params = agent.policy.trainable_parameters()
    saved = [p.detach().clone() for p in params]
    offset = 0
    for param in params:
        n = param.numel()
        param.sub_(learning_rate * torch.sign(direction[offset : offset + n]).view_as(param).to(param))
        offset += n
    try:
        change = np.asarray(evaluate(), dtype=np.float64) - before
    finally:
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)
    return float(change.mean()), float(change.std(ddof=1) / np.sqrt(len(change)))


def one_sign_step_test(agent: Any, evaluate: Callable[[], np.ndarray], groups: dict[str, Sequence[int]],
                       learning_rate: float, controls: int = 3, seed: int = 0,
                       gradients: dict[int, torch.Tensor] | None = None) -> tuple[list[SignStep], dict[int, float]]:
    """The test (module docstring) for each named group of step indices, then ``controls`` random directions; and
    each step's share of the gradient. ``evaluate()`` returns the fixed evaluation set's rewards under the policy's
    current weights; ``gradients``: :func:`step_gradients` of the agent's rollout, if already computed. The weights
    are left as they were."""
    gradients = gradients if gradients is not None else step_gradients(agent)
    unknown = sorted({k for steps in groups.values() for k in steps} - set(gradients))
    if unknown:
        raise ValueError(f"steps {unknown} are not trained by this agent (it trains {sorted(gradients)})")
    before = np.asarray(evaluate(), dtype=np.float64)
    results = []
    for name, steps in groups.items():
        direction = torch.stack([gradients[k] for k in steps]).sum(0)
        results.append(SignStep(name, list(steps), *sign_step_gain(agent, direction, learning_rate, evaluate,
                                                                     before)))
    size = next(iter(gradients.values())).numel()
    for i in range(controls):
        generator = torch.Generator().manual_seed(seed * 1_000 + i)
        direction = torch.randint(0, 2, (size,), generator=generator, device="cpu").float() * 2 - 1
        results.append(SignStep(f"random {i + 1}", [], *sign_step_gain(agent, direction, learning_rate, evaluate,
                                                                         before)))
    return results, gradient_shares(gradients)


def markdown(results: Sequence[SignStep], shares: dict[int, float]) -> str:
    """The shares per step and the gains per direction, as two tables."""
    lines = ["| step k | share of the gradient (‖g_k‖² / Σ‖g‖²) |", "|---|---|"]
    lines += [f"| {k} | {100 * share:.1f} % |" for k, share in shares.items()]
    lines += ["", "| direction | steps | reward change | standard error | raises (> 2 SE) |", "|---|---|---|---|---|"]
    for r in results:
        steps = ",".join(map(str, r.steps)) if r.steps else "–"
        lines.append(f"| {r.name} | {steps} | {r.gain:+.4f} | {r.stderr:.4f} | {'yes' if r.raises else 'no'} |")
    return "\n".join(lines)
