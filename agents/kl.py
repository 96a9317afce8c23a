"""KL regularisation to the base model (Flow-GRPO / DanceGRPO; Fan et al. 2023 for DDPO).

Policy and reference share the step's std σ (it is fixed by the schedule), so the per-step KL between the two
Gaussians is closed-form:

    KL(π_θ(·|x_t, c) ‖ π_ref(·|x_t, c)) = ‖μ_θ − μ_ref‖² / (2σ²)

reduced by the mean over the latent's dimensions, like the log-probabilities (docs/mdp.md). π_ref is the
model the run started from: the UNet with its LoRA adapter disabled (no second copy), or a frozen copy of the
UNet for a full fine-tune.
"""

from __future__ import annotations

import torch


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """‖μ_θ − μ_ref‖² / (2σ²), mean over all non-batch dims → (B,). ``std`` broadcasts to the means."""
    return ((mean - ref_mean) ** 2 / (2 * std**2)).mean(dim=tuple(range(1, mean.ndim)))


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> float:
    """½·mean (log π_θ − log π_old)², the usual estimate of KL(π_old ‖ π_θ) from the same transitions (a
    diagnostic of how far an update moved the sampling policy, not the penalty above)."""
    return float(0.5 * ((log_prob.detach() - old_log_prob) ** 2).mean())
