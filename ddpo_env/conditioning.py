"""Step conditioning: how strongly each denoising step's log-probability reacts to the network's output.

The policy gradient of a step is ∇_θ log π = ((x_{t-1} − μ)/σ²)·(∂μ/∂f)·∇_θ f, with f the network output and
x_{t-1} − μ = σ·z. Its size per unit of ∇_θ f is the step's *sensitivity*

    s_k = RMS over elements of |∂μ/∂f| / σ_k

For DDIM with ε-prediction, ∂μ/∂ε̂ = √(1−ᾱ_{t'}−σ²) − √ᾱ_{t'}·√(1−ᾱ_t)/√ᾱ_t (0 where x̂₀ is clipped): it blows up as
ᾱ_t → 0, and a tiny last σ blows up 1/σ. A step far more sensitive than the others takes over the gradient with
noise (its gradient is large and carries no more signal), so agents should skip it or the schedule should avoid
it. The env warns about such a step (:func:`warn_if_ill_conditioned`); ``python -m ddpo_env.diagnose`` (or
``ddpo diagnose``, :mod:`ddpo_env.diagnose`) prints the table for a model and its settings.

Code name → symbol: ``sensitivity`` s_k, ``std`` σ_k (the policy's std, η·σ_t for DDIM), ``alpha_prod_t`` ᾱ_t
(DDIM) or ``sigma`` σ (flow matching), ``clipped_fraction`` the share of x̂₀ elements the scheduler clips.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

#: A step whose sensitivity exceeds this multiple of the median step's is ill-conditioned (the env warns).
ILL_CONDITIONED_RATIO = 20.0


#: Printed when one step has most of the gradient: it sets the direction of every update, so it must carry signal.
MAJORITY_HINT = (". Train with step_stats_every=1 and read steps/grad_cosine_kNN: if that step's cosine is ≈ 0 "
                 "its gradient is noise, so train without it (skip_last_steps / skip_first_steps)")


class IllConditionedStepWarning(UserWarning):
    """A denoising step's log-probability is far more sensitive to the network than the other steps'."""


class StepConditioning(NamedTuple):
    """Per step k = 0 .. T−1 of an episode (numpy arrays of shape (T,))."""

    timesteps: np.ndarray  # τ_k as the observations carry it
    noise_level: np.ndarray  # ᾱ_{τ_k} (DDIM) or σ_k (flow matching)
    std: np.ndarray  # the policy's std at the step
    sensitivity: np.ndarray  # s_k = RMS |∂μ/∂f| / std
    clipped_fraction: np.ndarray  # share of x̂₀ elements clipped by the scheduler (0 without real states)

    @property
    def ratio_to_median(self) -> np.ndarray:
        """s_k / median_k s_k."""
        return self.sensitivity / max(float(np.median(self.sensitivity)), 1e-30)

    @property
    def gradient_share(self) -> np.ndarray:
        """s_k² / Σ_j s_j²: step k's share of the squared norm of an episode's policy gradient when every step's
        ∇_θ f has the same size. A step with most of it sets the update's direction, noise included."""
        squares = self.sensitivity**2
        return squares / max(float(squares.sum()), 1e-30)

    @property
    def max_ratio(self) -> float:
        """The worst step's sensitivity over the median step's (1.0 for a perfectly even schedule)."""
        return float(self.ratio_to_median.max())

    def rows(self) -> list[dict[str, float]]:
        """One dict per step (for JSON and tables)."""
        ratio, share = self.ratio_to_median, self.gradient_share
        return [{"step": k, "timestep": int(self.timesteps[k]), "noise_level": float(self.noise_level[k]),
                 "std": float(self.std[k]), "sensitivity": float(self.sensitivity[k]),
                 "ratio_to_median": float(ratio[k]), "gradient_share": float(share[k]),
                 "clipped_fraction": float(self.clipped_fraction[k])}
                for k in range(len(self.timesteps))]

    def markdown(self) -> str:
        """The table as Markdown."""
        lines = ["| step k | timestep | ᾱ_t or σ | std σ_k | sensitivity s_k | s_k / median | gradient share "
                 "| x̂₀ clipped |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['timestep']} | {r['noise_level']:.3g} | {r['std']:.3g} | {r['sensitivity']:.3g} "
                  f"| {r['ratio_to_median']:.2f} | {100 * r['gradient_share']:.0f} % "
                  f"| {100 * r['clipped_fraction']:.1f} % |"
                  for r in self.rows()]
        return "\n".join(lines)


def _noise_levels(schedule: Any) -> torch.Tensor:
    return schedule.alpha_prod_t if hasattr(schedule, "alpha_prod_t") else schedule.sigmas


def mean_derivative(schedule: Any, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂μ/∂f elementwise, std) of the schedule's step at a batch of states: μ depends on each element of the
    network output f only through the same element (clipping included), so the gradient of Σμ is that diagonal.
    Shapes: f and x_t (B, C, h, w), τ (B,); returns (B, C, h, w) and (B, 1, 1, 1)."""
    f = model_output.detach().double().requires_grad_(True)
    with torch.enable_grad():
        out = schedule.step(f, timesteps, sample.detach().double(), noise=torch.zeros_like(f))
        (grad,) = torch.autograd.grad(out.mean.sum(), f)
    return grad.float(), out.std_dev_t.float()


def schedule_conditioning(schedule: Any) -> StepConditioning:
    """The sensitivity of every step of ``schedule`` for an element whose x̂₀ is not clipped: a property of the
    schedule alone (no model), exact for ε-, v- and x̂₀-prediction and flow matching, where μ is affine in f."""
    n = schedule.num_steps
    zeros = torch.zeros(n, 1, 1, 1, dtype=torch.float64, device="cpu")
    grad, std = mean_derivative(schedule, zeros, schedule.timesteps, zeros)
    sensitivity = grad.abs().reshape(n) / std.reshape(n)
    return StepConditioning(schedule.timesteps.numpy().copy(), _noise_levels(schedule).double().numpy(),
                            std.reshape(n).double().numpy(), sensitivity.double().numpy(), np.zeros(n))


@torch.no_grad()
def env_conditioning(env: Any, num_samples: int = 16, seed: int = 0) -> StepConditioning:
    """The sensitivity of every step at real states: episodes of the env's own (frozen) model from
    ``reset(seed=seed)``, ``num_samples`` of them (in batches of the env's num_envs). Clipped elements of x̂₀
    count with their derivative, 0 for x̂₀'s part, so the RMS falls where the scheduler clips."""
    from ddpo_env.sampler import DDIMSampler

    base = env.unwrapped
    schedule, n = base.schedule, base.num_steps
    unclipped = _without_clipping(schedule)
    sums, clipped, count = np.zeros(n), np.zeros(n), 0
    sampler = DDIMSampler(env, seed=seed)
    std = np.zeros(n)
    for start in range(0, num_samples, base.num_envs):
        obs, _ = base.reset(seed=seed + start)
        for k in range(n):
            out_model, latents, timesteps = sampler.model_output(obs)
            grad, step_std = mean_derivative(schedule, out_model, timesteps, latents)
            sums[k] += float((grad**2).mean(dim=tuple(range(1, grad.ndim))).sum())
            std[k] = float(step_std.reshape(-1)[0])
            if unclipped is not None:
                raw = unclipped.step(out_model, timesteps, latents, noise=torch.zeros_like(latents))
                clipped[k] += float((raw.pred_original_sample.abs() > schedule.clip_sample_range).float().mean(
                    dim=tuple(range(1, latents.ndim))).sum())
            action = schedule.step(out_model, timesteps, latents, generator=sampler.generator).prev_sample
            obs, *_ = base.step(action)
        count += base.num_envs
    sensitivity = np.sqrt(sums / count) / std
    return StepConditioning(schedule.timesteps.numpy().copy(), _noise_levels(schedule).double().numpy(), std,
                            sensitivity, clipped / count)


def _without_clipping(schedule: Any) -> Any:
    """The same schedule with x̂₀ clipping and thresholding off (None when it never clips)."""
    if not getattr(schedule, "clip_sample", False) and not getattr(schedule, "thresholding", False):
        return None
    return dataclasses.replace(schedule, clip_sample=False, thresholding=False)


_warned: set[tuple] = set()


def warn_if_ill_conditioned(schedule: Any, where: str = "this env") -> StepConditioning:
    """Warn (once per schedule) when a step's sensitivity is more than :data:`ILL_CONDITIONED_RATIO` × the median
    step's, naming the step and the fixes; returns the schedule's conditioning."""
    conditioning = schedule_conditioning(schedule)
    ratio = conditioning.ratio_to_median
    bad = np.flatnonzero(ratio > ILL_CONDITIONED_RATIO).tolist()
    key = (tuple(schedule.timesteps.tolist()), tuple(np.round(conditioning.sensitivity, 6)))
    if bad and key not in _warned:
        _warned.add(key)
        n = len(ratio)
        first, last = [k for k in bad if k < n / 2], [k for k in bad if k >= n / 2]
        skips = ", ".join(s for s in (f"skip_first_steps={max(first) + 1}" if first else "",
                                      f"skip_last_steps={n - min(last)}" if last else "") if s)
        steps = ", ".join(f"step {k} (timestep {int(conditioning.timesteps[k])}: {ratio[k]:.0f}×)" for k in bad)
        warnings.warn(
            f"{where}: {steps} of {n} {'is' if len(bad) == 1 else 'are'} ill-conditioned: its log-probability is more "
            f"than {ILL_CONDITIONED_RATIO:.0f}× as sensitive to the network output as the median step's, so it "
            f"dominates policy gradients with noise. Train without it ({skips} in the agent's config), or use a "
            "schedule that avoids it (v-prediction, a noise schedule whose ᾱ stays away from 0, more steps); "
            "python -m ddpo_env.diagnose shows the table",
            IllConditionedStepWarning, stacklevel=3,
        )
    return conditioning
