"""The DDIM denoising step as a Gaussian policy, with its exact log-probability.

DDPO (Black et al. 2024, §4) treats one DDIM step as an action a_t = x_{t-1} drawn from
π_θ(x_{t-1} | x_t, t, c) = N(μ_θ(x_t, t, c), σ_t² I). This file holds that math and nothing else;
the env (schedule), the reference sampler and the agents' policy all call it, so there is one
implementation.

Code name → paper symbol (Song et al. 2021 eq. 12, 16; Black et al. 2024 §4):

    alpha_prod_t        ᾱ_t            alphas_cumprod at the current timestep t
    alpha_prod_t_prev   ᾱ_{t'}         at the previous timestep t' (``final_alpha_cumprod`` when t' < 0)
    beta_prod_t         1 − ᾱ_t
    pred_original_sample x̂₀
    pred_epsilon        ε̂
    variance            σ_t²           (1−ᾱ_{t'})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t'})
    std_dev_t           η·σ_t          the policy's standard deviation
    mean                μ_θ            √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'}−(ησ_t)²)·ε̂
    log_prob            log π_θ        mean (not sum) over all non-batch dims

The operations follow ``diffusers.DDIMScheduler.step`` term for term so that, in the same dtype, the
sample equals diffusers' with ``variance_noise=z`` up to float rounding (tests check every timestep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: Relative size of float64 rounding accepted in 1 − ᾱ_{t'} − (ησ_t)² ≥ 0.
_ROUNDING = 1e-9
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DDIMStepOutput(NamedTuple):
    """Result of one stochastic DDIM step; every tensor has batch dimension B first.

    prev_sample: x_{t-1}, the action (B, C, H, W).
    log_prob: log π_θ(x_{t-1} | x_t), mean-reduced over (C, H, W): shape (B,).
    mean: μ_θ (B, C, H, W).
    std_dev_t: η·σ_t broadcastable to the sample, e.g. (B, 1, 1, 1).
    pred_original_sample: x̂₀ after clipping/thresholding (B, C, H, W).
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std_dev_t: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass(frozen=True)
class DDIMSchedule:
    """The T denoising steps of an episode and their per-step coefficients.

    Built from a diffusers scheduler config with :meth:`from_scheduler_config`; diffusers' own
    ``DDIMScheduler.set_timesteps`` chooses the timesteps so the spacing logic never drifts from it.

    Attributes (index k = 0 .. T−1 is the step of the episode; all tensors float32 on CPU, shape (T,)):
        timesteps: τ_k, int64, decreasing (e.g. 951, 901, …, 1).
        prev_timesteps: τ_k − num_train_timesteps // T, as diffusers computes t' (may be negative).
        alpha_prod_t: ᾱ_{τ_k}.
        alpha_prod_t_prev: ᾱ_{t'}, or ``final_alpha_cumprod`` where t' < 0.
        std_dev_t: η·σ_{τ_k}; strictly positive (checked at construction).
        direction_coef: √(1 − ᾱ_{t'} − (ησ_t)²), the weight of ε̂ in the mean (computed in float64; an exact 0 where
            rounding made the radicand a hair negative).
        eta: η.
        prediction_type: "epsilon", "v_prediction" or "sample".
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value:
            the scheduler's treatment of x̂₀, copied from its config.
        num_train_timesteps: length of the training noise schedule (1000 for Stable Diffusion).
        alphas_cumprod: ᾱ_t for every training timestep t (float32), for :meth:`training_pair`.
    """

    timesteps: torch.Tensor
    prev_timesteps: torch.Tensor
    alpha_prod_t: torch.Tensor
    alpha_prod_t_prev: torch.Tensor
    std_dev_t: torch.Tensor
    direction_coef: torch.Tensor
    eta: float
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float
    thresholding: bool
    dynamic_thresholding_ratio: float
    sample_max_value: float
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor | None = None  # ᾱ over all num_train_timesteps (float32), for training_pair

    @property
    def num_steps(self) -> int:
        """T, the number of denoising steps (= episode length)."""
        return int(self.timesteps.shape[0])

    @classmethod
    def from_scheduler_config(cls, config: Any, num_steps: int, eta: float = 1.0) -> DDIMSchedule:
        """Build the schedule for ``num_steps`` DDIM steps with noise scale ``eta``.

        ``config`` is a diffusers scheduler config (any scheduler's: DDIM reads the fields it knows).
        Raises ValueError for eta ≤ 0, num_steps outside [1, num_train_timesteps], an unknown
        prediction type, or any step whose std is 0 (its log-probability would be undefined).
        """
        from diffusers import DDIMScheduler

        check_eta(eta, f"eta must be > 0, got {eta!r}: with eta=0 the denoising step is deterministic and has "
                  "no log-probability (DDPO uses eta=1.0)")
        scheduler = DDIMScheduler.from_config(config)
        c = scheduler.config
        if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= c.num_train_timesteps:
            raise ValueError(
                f"num_steps must be an int in [1, {c.num_train_timesteps}] (the model's num_train_timesteps), "
                f"got {num_steps!r}"
            )
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {c.prediction_type!r} is not supported: use one of {PREDICTION_TYPES}"
            )
        scheduler.set_timesteps(int(num_steps))
        timesteps = scheduler.timesteps.to(torch.int64)
        prev_timesteps = timesteps - c.num_train_timesteps // int(num_steps)
        # The coefficients in float64: at ᾱ_t ≈ 0, 1 − ᾱ_{t'} − (ησ_t)² (≥ 0 in exact arithmetic for η ≤ 1) rounds
        # to about −6e-8 in float32, which would refuse a valid schedule and put a NaN into the mean.
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        final = torch.tensor(float(scheduler.final_alpha_cumprod), dtype=torch.float64, device="cpu")
        alpha_prod_t = alphas_cumprod[timesteps]
        # t' < 0 means "after the last step": diffusers uses final_alpha_cumprod there. (The DDPO
        # reference code clamps t' to 0 instead, which differs when set_alpha_to_one=True.)
        alpha_prod_t_prev = torch.where(
            prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], final
        )
        std_dev_t = eta * _variance(alpha_prod_t, alpha_prod_t_prev) ** 0.5
        zero = (~(std_dev_t.float() > 0)).nonzero().flatten().tolist()
        if zero:
            k = zero[0]
            raise ValueError(
                f"step {k} of {num_steps} (timestep {int(timesteps[k])} -> {int(prev_timesteps[k])}) has std 0, "
                "so its log-probability is undefined. This happens when the last step lands on ᾱ_{t'} = ᾱ_t "
                "(timestep_spacing='leading' or 'linspace' with steps_offset=0) or ᾱ_{t'} = 1 "
                "(set_alpha_to_one=True): use timestep_spacing='trailing' or steps_offset=1, "
                "and set_alpha_to_one=False"
            )
        direction_sq = 1 - alpha_prod_t_prev - std_dev_t**2
        if bool((direction_sq < -_ROUNDING * (1 - alpha_prod_t_prev)).any()):
            raise ValueError(
                f"eta={eta} is too large: 1 - ᾱ_(t') - (eta·σ_t)² < 0 on some step, so the DDIM mean is undefined; "
                "use 0 < eta <= 1"
            )
        return cls(
            timesteps=timesteps,
            prev_timesteps=prev_timesteps,
            alpha_prod_t=alpha_prod_t.float(),
            alpha_prod_t_prev=alpha_prod_t_prev.float(),
            std_dev_t=std_dev_t.float(),
            direction_coef=direction_sq.clamp(min=0).sqrt().float(),
            eta=float(eta),
            prediction_type=c.prediction_type,
            clip_sample=bool(c.clip_sample),
            clip_sample_range=float(c.clip_sample_range),
            thresholding=bool(c.thresholding),
            dynamic_thresholding_ratio=float(c.dynamic_thresholding_ratio),
            sample_max_value=float(c.sample_max_value),
            num_train_timesteps=int(c.num_train_timesteps),
            alphas_cumprod=scheduler.alphas_cumprod.to(torch.float32),
        )

    def step_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Map timesteps τ (any shape, int) to step indices k; raises ValueError for a timestep not in the schedule."""
        return match_step_index(timesteps, self.timesteps, "schedule")

    @property
    def max_timestep(self) -> int:
        """The largest timestep an observation can carry."""
        return self.num_train_timesteps - 1

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network is given for observation timesteps: the timesteps themselves."""
        return timesteps

    def std(self, timesteps: torch.Tensor, ndim: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """η·σ_t for a batch of timesteps, shaped (B, 1, …, 1)."""
        return self.coefficients(timesteps, ndim, device, dtype)[2]

    def step(self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, **kwargs: Any
             ) -> DDIMStepOutput:
        """:func:`ddim_step` on this schedule (``noise``/``prev_sample``/``generator`` as there)."""
        return ddim_step(model_output, timesteps, sample, self, **kwargs)

    def ode_step(self, out: DDIMStepOutput, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The deterministic DDIM step (η = 0) from the same network output, via its x̂₀ in ``out``:
        x_{t'} = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'})·ε̂ with ε̂ = (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t)."""
        alpha_prod_t, alpha_prod_t_prev, _, _ = self.coefficients(timesteps, sample.ndim, sample.device, sample.dtype)
        x0 = out.pred_original_sample.to(sample.dtype)
        pred_epsilon = (sample - alpha_prod_t**0.5 * x0) / (1 - alpha_prod_t) ** 0.5
        return alpha_prod_t_prev**0.5 * x0 + (1 - alpha_prod_t_prev) ** 0.5 * pred_epsilon

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t, the network's target) at t ~ U{0..N−1} per sample: the denoising loss's
        inputs (reward-weighted regression trains on them); the target is ε, v or x₀ by prediction type."""
        if self.alphas_cumprod is None:
            raise ValueError("this schedule was built without alphas_cumprod: use DDIMSchedule.from_scheduler_config")
        t = torch.randint(len(self.alphas_cumprod), (x0.shape[0],), generator=generator, device=generator.device)
        t = t.to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        alpha_prod = self.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.ndim - 1)))
        x_t, target = self._noised(x0, alpha_prod, noise)
        return x_t, t, target

    def forward_noise(self, x0: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean samples noised to the episode's steps ``steps`` (B,) (indices k): (x_t = √ᾱ_τ·x₀ + √(1−ᾱ_τ)·ε, the
        network's timestep τ (B,), the target (ε, v or x₀ by prediction type), the noise level √(1−ᾱ_τ) (B, 1, …)):
        the model's own training loss at the sampler's timesteps (DiffusionNFT, AWM)."""
        k = torch.as_tensor(steps, device="cpu").reshape(-1)
        alpha_prod = self.alpha_prod_t[k].reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0.device, x0.dtype)
        x_t, target = self._noised(x0, alpha_prod, noise)
        return x_t, self.timesteps[k].to(x0.device), target, (1 - alpha_prod).sqrt()

    def _noised(self, x0: torch.Tensor, alpha_prod: torch.Tensor, noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t = √ᾱ·x₀ + √(1−ᾱ)·ε, the network's target: ε, v = √ᾱ·ε − √(1−ᾱ)·x₀ or x₀ by prediction type)."""
        x_t = alpha_prod.sqrt() * x0 + (1 - alpha_prod).sqrt() * noise
        if self.prediction_type == "epsilon":
            return x_t, noise
        if self.prediction_type == "v_prediction":
            return x_t, alpha_prod.sqrt() * noise - (1 - alpha_prod).sqrt() * x0
        return x_t, x0

    def original_sample(self, model_output: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """x̂₀ from the network output at x_t of steps ``steps`` (indices k), unclipped: the inverse of
        :meth:`forward_noise` for the target."""
        k = torch.as_tensor(steps, device="cpu").reshape(-1)
        alpha_prod = self.alpha_prod_t[k].reshape((-1,) + (1,) * (x_t.ndim - 1)).to(x_t.device, x_t.dtype)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - alpha_prod).sqrt() * model_output) / alpha_prod.sqrt()
        if self.prediction_type == "v_prediction":
            return alpha_prod.sqrt() * x_t - (1 - alpha_prod).sqrt() * model_output
        return model_output

    def coefficients(
        self, timesteps: torch.Tensor, ndim: int, device: torch.device | str, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ᾱ_t, ᾱ_{t'}, η·σ_t, √(1−ᾱ_{t'}−(ησ_t)²)) for a batch of timesteps (B,), each shaped (B, 1, …, 1) with
        ``ndim`` dims."""
        k = self.step_index(timesteps).reshape(-1)
        shape = (-1,) + (1,) * (ndim - 1)
        return tuple(  # type: ignore[return-value]
            v[k].reshape(shape).to(device=device, dtype=dtype)
            for v in (self.alpha_prod_t, self.alpha_prod_t_prev, self.std_dev_t, self.direction_coef)
        )


def _variance(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor) -> torch.Tensor:
    """σ_t² = (1−ᾱ_{t'})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t'})  (DDIM eq. 16 with η = 1)."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def predict_original_sample(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    schedule: DDIMSchedule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 4 of DDIM: (x̂₀, ε̂) from the network output, then clip or threshold x̂₀ as configured."""
    beta_prod_t = 1 - alpha_prod_t
    if schedule.prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        pred_epsilon = model_output
    elif schedule.prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
    else:  # v_prediction (validated in DDIMSchedule)
        pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    if schedule.thresholding:
        pred_original_sample = _dynamic_threshold(pred_original_sample, schedule)
    elif schedule.clip_sample:
        r = schedule.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-r, r)
    return pred_original_sample, pred_epsilon


def _dynamic_threshold(x0: torch.Tensor, schedule: DDIMSchedule) -> torch.Tensor:
    """Imagen's dynamic thresholding of x̂₀: per sample, s = quantile(|x̂₀|, ratio) clamped to [1, max]."""
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), schedule.dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1, max=schedule.sample_max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def ddim_step(
    model_output: torch.Tensor,
    timesteps: torch.Tensor,
    sample: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> DDIMStepOutput:
    """One stochastic DDIM step x_t → x_{t-1} with its log-probability under π_θ.

    Args:
        model_output: network output (ε̂, v̂ or x̂₀ per ``schedule.prediction_type``), (B, C, H, W).
        timesteps: τ of each sample, (B,) int; may differ across the batch (training minibatches).
        sample: x_t, (B, C, H, W).
        schedule: the episode's :class:`DDIMSchedule`.
        noise: z ~ N(0, I) to sample with: x_{t-1} = μ + η σ_t z.
        prev_sample: an x_{t-1} already taken (training): its log-prob is evaluated, nothing is sampled.
        generator: draws z when neither ``noise`` nor ``prev_sample`` is given (one per sample, or one).

    Math in the sample's dtype; the log-prob is computed in float32 (or float64 if the sample is).
    """
    if noise is not None and prev_sample is not None:
        raise ValueError("pass either noise (to sample) or prev_sample (to score), not both")
    alpha_prod_t, alpha_prod_t_prev, std_dev_t, direction_coef = schedule.coefficients(
        timesteps, sample.ndim, sample.device, sample.dtype
    )
    # 1, 4. x̂₀ and ε̂ from the model output; clip or threshold x̂₀.
    pred_original_sample, pred_epsilon = predict_original_sample(model_output, sample, alpha_prod_t, schedule)
    # 2, 3. μ = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'}−(ησ_t)²)·ε̂ ; std = ησ_t (precomputed in the schedule).
    pred_sample_direction = direction_coef * pred_epsilon
    mean = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
    if prev_sample is None:
        if noise is None:
            noise = randn_like(mean, generator)
        prev_sample = mean + std_dev_t * noise
    return DDIMStepOutput(
        prev_sample=prev_sample,
        log_prob=gaussian_log_prob(prev_sample, mean, std_dev_t),
        mean=mean,
        std_dev_t=std_dev_t,
        pred_original_sample=pred_original_sample,
    )


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, std² I) per element, averaged over all non-batch dims → (B,).

    Mean, not sum, so that ratios and clip ranges do not scale with latent size (docs/mdp.md).
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    log_prob = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def classifier_free_guidance(
    uncond_output: torch.Tensor, cond_output: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """ε̂ = ε_u + w·(ε_c − ε_u): the guided prediction, used alike in sampling and training."""
    return uncond_output + guidance_scale * (cond_output - uncond_output)


# ---------------------------------------------------------------- helpers shared with the flow SDE (ddpo_env.flow)

def check_eta(eta: Any, message: str) -> None:
    """The noise level must be a finite number > 0 (at 0 a step is deterministic: no log-probability)."""
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
        raise ValueError(message)


def match_step_index(timesteps: torch.Tensor, table: torch.Tensor, what: str) -> torch.Tensor:
    """Step indices k with ``table[k] == timesteps`` (any shape); a key not in the table is a ValueError."""
    t = torch.as_tensor(timesteps, dtype=torch.int64, device="cpu")
    match = t.reshape(-1, 1) == table.reshape(1, -1)
    if not bool(match.any(dim=1).all()):
        bad = t.reshape(-1)[~match.any(dim=1)].unique().tolist()
        raise ValueError(f"timesteps {bad} are not in this {what} {table.tolist()}: was the observation produced "
                         "by an env with the same num_steps and scheduler?")
    return match.to(torch.int64).argmax(dim=1).reshape(t.shape)


def randn_like(like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: from one generator, or one generator per sample."""
    if isinstance(generator, list):
        if len(generator) != like.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {like.shape[0]}: pass one per sample")
        return torch.stack(
            [torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype) for g in generator]
        ).to(like.device)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
