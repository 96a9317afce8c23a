"""The flow-matching denoising step as a Gaussian policy (Flow-GRPO, Liu et al. 2025), with its exact log-prob.

A rectified-flow model (SD3, FLUX) predicts the velocity v_θ(x_σ, σ, c) ≈ ε − x₀ of x_σ = (1 − σ)·x₀ + σ·ε, and
diffusers' ``FlowMatchEulerDiscreteScheduler`` integrates the ODE dx = v dσ deterministically. Flow-GRPO turns the
step into a Gaussian with the same marginals by the reverse-time SDE whose score is −(x + (1 − σ)v)/σ:

    dσ      = σ' − σ                    (< 0: from σ to the next, smaller σ')
    s_σ     = a · √(σ / (1 − σ))        (noise level a; at σ = 1 the denominator is 1 − σ_1, the next sigma)
    μ_θ     = x·(1 + s_σ² dσ / (2σ)) + v_θ·(1 + s_σ² (1 − σ) / (2σ))·dσ
    std     = s_σ · √(−dσ)
    x_{σ'}  = μ_θ + std · z,   z ~ N(0, I)
    log π_θ = mean over dims of log N(x_{σ'}; μ_θ, std²)

With a = 0 the step is diffusers' Euler step x + v·dσ exactly (and has no log-prob, so the env refuses a = 0).
Observations carry an integer key per step, round(σ·num_train_timesteps), as they do DDIM's timesteps; the
network gets the float σ·num_train_timesteps that diffusers' pipelines pass it.

Code name → symbol:  sigma σ,  sigma_prev σ',  noise_level a,  std_dev_t s_σ,  mean μ_θ,  pred_original_sample
x̂₀ = x − σ·v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddpo_env.ddim import DDIMStepOutput, check_eta, gaussian_log_prob, match_step_index, randn_like

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def sde_noise_scale(sigma: torch.Tensor, sigma_max: float, noise_level: float) -> torch.Tensor:
    """s_σ = a·√(σ / (1 − σ)), with σ_1 (``sigma_max``) in the denominator at σ = 1."""
    return noise_level * torch.sqrt(sigma / (1 - torch.where(sigma == 1, torch.full_like(sigma, sigma_max), sigma)))


def flow_sde_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_prev: torch.Tensor,
    sigma_max: float,
    noise_level: float,
    *,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> DDIMStepOutput:
    """One SDE step x_σ → x_σ' (see the module docstring). ``sigma``, ``sigma_prev`` broadcast to the sample
    (e.g. (B, 1, 1, 1)); ``sigma_max`` is σ_1, the second sigma of the schedule (used at σ = 1). Sample with
    ``noise``/``generator``, or score an already taken ``prev_sample``. Math in float32 (float64 if the sample
    is), as diffusers' Euler step upcasts."""
    if noise is not None and prev_sample is not None:
        raise ValueError("pass either noise (to sample) or prev_sample (to score), not both")
    dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
    x, v = sample.to(dtype), model_output.to(dtype)
    sigma, sigma_prev = sigma.to(x.device, dtype), sigma_prev.to(x.device, dtype)
    d_sigma = sigma_prev - sigma
    std_dev_t = sde_noise_scale(sigma, sigma_max, noise_level)
    mean = (x * (1 + std_dev_t**2 / (2 * sigma) * d_sigma)
            + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * d_sigma)
    std = std_dev_t * torch.sqrt(-d_sigma)
    if prev_sample is None:
        if noise is None:
            noise = randn_like(mean, generator)
        prev_sample = mean + std * noise.to(dtype)
    prev_sample = prev_sample.to(dtype)
    return DDIMStepOutput(
        prev_sample=prev_sample,
        log_prob=gaussian_log_prob(prev_sample, mean, std),
        mean=mean,
        std_dev_t=std,
        pred_original_sample=x - sigma * v,
    )


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The T steps of a flow-matching episode (σ_0 = 1-ish … σ_T = 0), built with diffusers' own
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` so shift and spacing follow the model's config.

    Attributes (index k = 0 .. T−1, CPU tensors (T,)):
        timesteps: integer keys round(σ_k · N) of the observations, strictly decreasing, ≥ 1.
        sigmas: σ_k (float32); prev_sigmas: σ_{k+1} (the last is 0).
        std_dev_t: the step's std s_σ·√(σ − σ') (strictly positive).
        eta: the noise level a.  num_train_timesteps: N.  sigma_max: σ_1, used at σ = 1.
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    prev_sigmas: torch.Tensor
    std_dev_t: torch.Tensor
    eta: float
    num_train_timesteps: int
    sigma_max: float

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def max_timestep(self) -> int:
        """The largest observation key (σ = 1 ↦ N)."""
        return self.num_train_timesteps

    @classmethod
    def from_scheduler_config(cls, config: Any, num_steps: int, eta: float = 0.7) -> FlowMatchSchedule:
        """``config``: a FlowMatchEulerDiscreteScheduler config; ``eta``: the SDE noise level a > 0."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_eta(eta, f"eta (the flow SDE's noise level a) must be > 0, got {eta!r}: with 0 the step is the "
                  "deterministic Euler step and has no log-probability (Flow-GRPO uses 0.7)")
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        c = scheduler.config
        if c.use_dynamic_shifting:
            raise ValueError("the scheduler uses dynamic (resolution-dependent) shifting, which needs the image "
                             "sequence length: pass scheduler_overrides={'use_dynamic_shifting': False, 'shift': s}")
        if not isinstance(num_steps, int) or not 1 <= num_steps <= c.num_train_timesteps:
            raise ValueError(f"num_steps must be an int in [1, {c.num_train_timesteps}], got {num_steps!r}")
        scheduler.set_timesteps(num_steps)
        sigmas = scheduler.sigmas.to(torch.float32)
        if len(sigmas) != num_steps + 1 or float(sigmas[-1]) != 0:
            raise ValueError("the flow scheduler must end at sigma 0 (invert_sigmas=False, shift_terminal=None)")
        keys = torch.round(sigmas[:-1].double() * c.num_train_timesteps).to(torch.int64)
        if not bool((keys[1:] < keys[:-1]).all()) or int(keys[-1]) < 1:
            raise ValueError(f"{num_steps} steps put two sigmas on the same integer timestep key: use fewer steps")
        sigma_max = float(sigmas[1]) if num_steps > 1 else 0.0
        std = sde_noise_scale(sigmas[:-1], sigma_max, float(eta)) * torch.sqrt(sigmas[:-1] - sigmas[1:])
        if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(f"a step of this flow schedule has std {std.tolist()}: its log-probability is undefined")
        return cls(timesteps=keys, sigmas=sigmas[:-1], prev_sigmas=sigmas[1:], std_dev_t=std, eta=float(eta),
                   num_train_timesteps=int(c.num_train_timesteps), sigma_max=sigma_max)

    def step_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        return match_step_index(timesteps, self.timesteps, "flow schedule").reshape(-1)

    def _per_sample(self, values: torch.Tensor, timesteps: torch.Tensor, ndim: int, device: Any) -> torch.Tensor:
        return values[self.step_index(timesteps)].reshape((-1,) + (1,) * (ndim - 1)).to(device)

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network is given for observation keys: σ·N as float32 (B,)."""
        sigma = self.sigmas[self.step_index(timesteps)]
        device = timesteps.device if isinstance(timesteps, torch.Tensor) else "cpu"
        return (sigma * self.num_train_timesteps).to(device)

    def std(self, timesteps: torch.Tensor, ndim: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """The step's std for a batch of keys, shaped (B, 1, …, 1)."""
        return self._per_sample(self.std_dev_t, timesteps, ndim, device).to(dtype)

    def step(self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, **kwargs: Any
             ) -> DDIMStepOutput:
        """:func:`flow_sde_step` at the keys ``timesteps`` (B,); ``noise``/``prev_sample``/``generator`` as there."""
        sigma = self._per_sample(self.sigmas, timesteps, sample.ndim, sample.device)
        sigma_prev = self._per_sample(self.prev_sigmas, timesteps, sample.ndim, sample.device)
        return flow_sde_step(model_output, sample, sigma, sigma_prev, self.sigma_max, self.eta, **kwargs)

    def ode_step(self, out: DDIMStepOutput, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """diffusers' deterministic Euler step x + v·dσ from the same network output, via x̂₀ = x − σ·v in ``out``."""
        sigma = self._per_sample(self.sigmas, timesteps, sample.ndim, sample.device)
        sigma_prev = self._per_sample(self.prev_sigmas, timesteps, sample.ndim, sample.device)
        velocity = (sample - out.pred_original_sample.to(sample.dtype)) / sigma
        return sample + (sigma_prev - sigma) * velocity

    def forward_noise(self, x0: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean samples noised to the episode's steps ``steps`` (B,) (indices k): (x_σ = (1−σ)·x₀ + σ·ε, the
        network's timestep σ·N (B,), the target v = ε − x₀, the noise level σ (B, 1, …))."""
        k = torch.as_tensor(steps, device="cpu").reshape(-1)
        sigma = self.sigmas[k].reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0.device, x0.dtype)
        return ((1 - sigma) * x0 + sigma * noise, (self.sigmas[k] * self.num_train_timesteps).to(x0.device),
                noise - x0, sigma)

    def original_sample(self, model_output: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """x̂₀ = x_σ − σ·v̂ at steps ``steps`` (indices k)."""
        k = torch.as_tensor(steps, device="cpu").reshape(-1)
        sigma = self.sigmas[k].reshape((-1,) + (1,) * (x_t.ndim - 1)).to(x_t.device, x_t.dtype)
        return x_t - sigma * model_output

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_σ = (1−σ)·x₀ + σ·ε, network timestep σ·N, target v = ε − x₀) at σ ~ U(0, 1) per sample: the
        flow-matching loss's inputs (reward-weighted regression trains on them)."""
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        sigma = torch.rand(x0.shape[0], generator=generator, device=generator.device).to(x0.device)
        s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise, sigma * self.num_train_timesteps, noise - x0
