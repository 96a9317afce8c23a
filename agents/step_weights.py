"""Step-balanced likelihood losses: a weight per denoising step that evens out how hard each step pulls on the weights.

A step's policy gradient is ∇_θ log π = ((x_{t-1} − μ)/σ_k²)·(∂μ/∂f)·∇_θ f with x_{t-1} − μ = σ_k·z, so per unit of
∇_θ f it has the size of the step's sensitivity s_k = |∂μ/∂f|/σ_k (:mod:`ddpo_env.conditioning`). On the embedded
models' 10-step schedule the step landing at t = 1 has s ≈ 8× the median step and takes 80–90 % of the gradient.
With ``step_weights="sensitivity"`` each trained step k's log-likelihood is scaled by

    w_k = s̃ / s_k          (s̃: the median of s_k over the trained steps, so the median step keeps weight 1)

so that w_k·s_k is the same for every step. The scale multiplies the log-ratio (DDPO-IS: r_k = exp(w_k·(log π_θ −
log π_old)), clipped to [1−ε, 1+ε]) and the log-probability (DDPO-SF: −Â·w_k·log π_θ): each step's gradient is
evened out, and PPO's clip range means the same move of the network's output at every step. This is the idea of
GRPO-Guard's per-step ratio normalisation and TempFlow-GRPO's noise-aware weights (arXiv 2510.22319, 2508.04324);
the weight here is the exact sensitivity of the step's Gaussian, from the schedule alone (for an element whose x̂₀
is not clipped), so it holds for DDIM with ε-, v- or x̂₀-prediction and for the flow-matching SDE step alike.

The sensitivity leaves out how strongly the network's output reacts to the weights at each noise level (‖∇_θ f‖),
which differs too. ``step_weights="gradient"`` measures the whole factor instead: before the first update, the norm
g_k of each trained step's loss gradient on one micro-batch of the first rollout (uniform weights, ratio 1), then

    w_k = g̃ / g_k          (g̃: the median of g_k over the trained steps)

fixed for the rest of the run (saved in checkpoints): every step then pulls on the weights about equally, which is
GRPO-Guard's aim of normalising each step's contribution, measured rather than derived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.config import STEP_WEIGHTS


def sensitivity_weights(sensitivity: np.ndarray, trained: range) -> np.ndarray:
    """w_k = median_{j ∈ trained} s_j / s_k for every step k (T,), from the steps' sensitivities s (T,)."""
    s = np.asarray(sensitivity, dtype=np.float64)
    return float(np.median(s[list(trained)])) / s


def step_weight_table(kind: str, schedule: Any, trained: range, device: torch.device | str) -> torch.Tensor | None:
    """The weight of every step index k of ``schedule`` as a float32 tensor (T,) on ``device``; None for uniform, and
    for 'gradient' until :func:`measured_weights` sets it."""
    if kind in ("uniform", "gradient"):
        return None
    if kind != "sensitivity":
        raise ValueError(f"step_weights must be one of {STEP_WEIGHTS}, got {kind!r}")
    from ddpo_env.conditioning import schedule_conditioning

    weights = sensitivity_weights(schedule_conditioning(schedule).sensitivity, trained)
    return torch.as_tensor(weights, dtype=torch.float32).to(device)


def measured_weights(agent: Any) -> torch.Tensor:
    """w_k = median g / g_k over the agent's trained steps k (1 elsewhere), g_k the norm of step k's loss gradient
    on the first micro-batch of its current rollout under uniform weights (data parallel: the ranks' norms averaged);
    float32 (T,) on the agent's device. Leaves ``.grad`` and the agent's generators as they were."""
    from agents.step_stats import step_gradient

    params = agent.policy.trainable_parameters()
    samples = agent.train_samples()[: agent.rank_batch_size]
    steps = list(agent.trainable_steps())
    state = agent.train_generator.get_state()
    try:
        norms = np.array([float(step_gradient(agent, samples, k, params).norm()) for k in steps])
    finally:
        agent.train_generator.set_state(state)
    if agent.ranks:
        norms = np.mean(agent.ranks.gather(norms), axis=0)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise FloatingPointError(f"step_weights='gradient': a step's gradient norm is {norms.tolist()}; it needs "
                                 "finite, non-zero gradients on the first rollout (is every reward equal?)")
    weights = np.ones(agent.num_steps)
    weights[steps] = float(np.median(norms)) / norms
    return torch.as_tensor(weights, dtype=torch.float32).to(agent.device)
