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
    """The weight of every step index k of ``schedule`` as a float32 tensor (T,) on ``device``; None for uniform."""
    if kind == "uniform":
        return None
    if kind != "sensitivity":
        raise ValueError(f"step_weights must be one of {STEP_WEIGHTS}, got {kind!r}")
    from ddpo_env.conditioning import schedule_conditioning

    weights = sensitivity_weights(schedule_conditioning(schedule).sensitivity, trained)
    return torch.as_tensor(weights, dtype=torch.float32).to(device)
