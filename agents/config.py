"""Agent configuration: a typed dataclass per algorithm, one docstring per field, checked at construction (each
value against its field's type, :mod:`ddpo_env.fields`, and the choices; the ranges that depend on the env when the
agent is built, :meth:`AgentConfig.validate`). Imports no torch: :data:`AGENT_CONFIGS` names each agent's config
class for the command line, which parses and checks its flags before any model code loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from agents.advantages import GROUP_REWARDS, GROUP_STDS
from ddpo_env.fields import check_fields

OPTIMIZERS = ("adamw", "adamw8bit")
#: The UNet modules that get a LoRA adapter by default: the attention projections (as in DDPO's reference code).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def optimizer_class(name: str) -> type:
    """The optimizer class of an ``AgentConfig.optimizer`` name (bitsandbytes imported only when asked for)."""
    if name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise ImportError(
                "optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes (CUDA), or use optimizer='adamw'"
            ) from error
        return bitsandbytes.optim.AdamW8bit
    import torch

    return torch.optim.AdamW


@dataclass
class AgentConfig:
    """Settings shared by every agent (sampling, storage, optimisation)."""

    algorithm: ClassVar[str] = ""
    """Where the agent class that takes this config lives, ``"module:Class"`` (each agent's config sets it)."""

    samples_per_epoch: int = 64
    """Episodes (denoising trajectories) collected per rollout; a multiple of the env's num_envs."""
    batch_size: int = 8
    """Samples per training micro-batch (one UNet forward/backward holds batch_size transitions)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients add up to one optimizer step (× the timesteps trained per sample)."""
    num_inner_epochs: int = 1
    """Passes over each rollout's data."""
    learning_rate: float = 3e-4
    """AdamW learning rate (DDPO: 3e-4 with LoRA, ~1e-5 for a full fine-tune)."""
    adam_weight_decay: float = 1e-4
    """AdamW weight decay."""
    steps_per_pass: int = 1
    """Denoising steps of each sample evaluated in one forward/backward pass (0: all trained steps): the same
    gradient, since one optimizer step sums all of them anyway; fewer, larger network calls and more memory."""
    grad_workers: int = 1
    """Threads computing the backward passes of one update concurrently, one torch thread each (for CPUs; one
    process per core is usually faster still, docs/training.md; keep 1 on a GPU). Reproducible run to run for a
    given value."""
    compile_sampling: bool = False
    """torch.compile the network for the passes that record no gradient (sampling, evaluation, the KL reference;
    training passes stay eager): each batch shape compiles once on first use (tens of seconds on a CPU). The
    rollout's log-probs are then recomputed eagerly (recompute_log_probs), as compiled kernels round differently."""
    recompute_log_probs: bool | None = None
    """After sampling, recompute the rollout's log-probs log π_old of the trained steps with the eager network in the
    training passes' batch shape, so that the first update's ratios are exactly 1 wherever sampling and training
    kernels round differently. None (default): on where they were measured to differ, with compile_sampling (always)
    and on a CUDA device, where kernels are picked per batch shape (float32 on an H200: |log ratio| 1.7e-4 without it,
    beyond DDPO's clip range 1e-4; docs/gpu.md); True / False: on / off (off is ignored with compile_sampling).
    Costs one gradient-free forward per trained transition (DDPO-IS; the losses of DDPO-SF and RWR have no ratio and
    skip it)."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations during the backward pass instead of storing them (diffusers' gradient
    checkpointing): the same gradients with much less activation memory, for ~30 % more compute."""
    optimizer: str = "adamw"
    """'adamw' (torch) or 'adamw8bit' (bitsandbytes' 8-bit AdamW, optimizer state in 8 bits; needs bitsandbytes)."""
    timestep_fraction: float = 1.0
    """Fraction of the trainable steps of each trajectory trained on (a random subset per sample and inner epoch),
    in (0, 1]."""
    skip_first_steps: int = 0
    """Denoising steps at the start of every episode (from pure noise) that are never trained on: a deterministic
    choice for steps whose log-probability is ill-conditioned (``ddpo diagnose`` shows the per-step sensitivity; the
    paper's Stable Diffusion schedule and the embedded model need none)."""
    skip_last_steps: int = 0
    """Denoising steps at the end of every episode that are never trained on (see skip_first_steps)."""
    step_stats_every: int = 0
    """Every this many epochs, measure each trained step's gradient norm and the agreement (cosine) of the gradients
    of two halves of the rollout before the update, logged as steps/grad_norm_kNN and steps/grad_cosine_kNN (costs
    about one extra update; DDPO-IS and DDPO-SF). 0: off."""
    adv_clip: float = 5.0
    """Advantages are clipped to [-adv_clip, adv_clip] after normalisation."""
    max_grad_norm: float = 1.0
    """Gradient norm clip before each optimizer step."""
    per_prompt_stat_tracking: bool = True
    """Normalise rewards per prompt (DDPO); False: normalise over the whole batch."""
    stat_buffer_size: int = 32
    """Rewards remembered per prompt by the stat tracker."""
    stat_min_count: int = 16
    """Rewards a prompt needs before its own statistics are used (before that: the batch's)."""
    group_advantages: bool = False
    """GRPO-style advantages: normalise each reward within its prompt's group in this rollout (sample k per prompt
    with the env's group_size); groups whose rewards are all equal get 0. Replaces per-prompt stat tracking."""
    group_std: str = "group"
    """With group_advantages: divide by the group's std ('group') or the whole rollout's ('global')."""
    group_reward: str = "reward"
    """With group_advantages: normalise the rewards ('reward'), or each sample's win rate against the others of its
    group, ties half ('win_rate': Pref-GRPO's pairwise advantage, where only the order within a group counts)."""
    kl_coef: float = 0.0
    """β of the KL penalty to the base model, β·‖μ_θ − μ_ref‖²/(2σ²) per trained step, added to every agent's loss
    (the reference is the LoRA adapter disabled, or a frozen UNet copy for a full fine-tune). 0: off."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the trained weights with this decay, in [0, 1), for evaluation and
    export (0: off; e.g. 0.9)."""
    ema_update_interval: int = 1
    """Optimizer steps between EMA updates."""
    lora_rank: int = 4
    """LoRA rank on the lora_targets modules; 0 fine-tunes the whole UNet."""
    lora_alpha: float = 0.0
    """LoRA scale numerator: the adapter's output is scaled by lora_alpha / lora_rank (0: the rank, scale 1)."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Names (or name suffixes) of the UNet modules that get a LoRA adapter, e.g. to_q,to_k,to_v,to_out.0."""
    seed: int = 0
    """Seeds the env, the LoRA init, the policy's noise and the training shuffles."""

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, str):  # one name (a list from a config file becomes a tuple below)
            self.lora_targets = (self.lora_targets,)
        check_fields(self)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use one of {list(OPTIMIZERS)}")
        if self.group_std not in GROUP_STDS:
            raise ValueError(f"group_std must be one of {list(GROUP_STDS)}, got {self.group_std!r}")
        if self.group_reward not in GROUP_REWARDS:
            raise ValueError(f"group_reward must be one of {list(GROUP_REWARDS)}, got {self.group_reward!r}")

    def validate(self, num_envs: int, num_steps: int) -> None:
        """Raise ValueError naming the offending values; called by the agent once the env is known."""
        if self.group_reward != "reward" and not self.group_advantages:
            raise ValueError(f"group_reward={self.group_reward!r} ranks the samples within their prompt's group: set "
                             "group_advantages=True too (and the env's group_size > 1)")
        positive = ("samples_per_epoch", "batch_size", "gradient_accumulation_steps", "num_inner_epochs",
                    "stat_buffer_size", "stat_min_count")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.samples_per_epoch % num_envs:
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} must be a multiple of the env's num_envs={num_envs}"
            )
        if self.samples_per_epoch % self.batch_size:
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} must be a multiple of batch_size={self.batch_size}"
            )
        micro_batches = self.samples_per_epoch // self.batch_size
        if micro_batches % self.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} must divide the "
                f"{micro_batches} micro-batches per epoch (samples_per_epoch={self.samples_per_epoch} / "
                f"batch_size={self.batch_size})"
            )
        if not isinstance(self.grad_workers, int) or self.grad_workers < 1:
            raise ValueError(f"grad_workers must be a positive int, got {self.grad_workers!r}")
        if not isinstance(self.steps_per_pass, int) or self.steps_per_pass < 0:
            raise ValueError(f"steps_per_pass must be an int >= 0 (0: all trained steps), got {self.steps_per_pass!r}")
        if not (0 < self.timestep_fraction <= 1):
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction!r}")
        for name in ("skip_first_steps", "skip_last_steps", "step_stats_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.skip_first_steps + self.skip_last_steps >= num_steps:
            raise ValueError(
                f"skip_first_steps={self.skip_first_steps} + skip_last_steps={self.skip_last_steps} leave none of the "
                f"env's {num_steps} denoising steps to train on: skip fewer"
            )
        self._require_positive_finite("learning_rate", "adv_clip", "max_grad_norm")
        if self.stat_min_count > self.stat_buffer_size:
            raise ValueError(
                f"stat_min_count={self.stat_min_count} must be <= stat_buffer_size={self.stat_buffer_size}"
            )
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tune), got {self.lora_rank}")
        if not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha) and self.lora_alpha >= 0):
            raise ValueError(f"lora_alpha must be finite and >= 0 (0: the rank), got {self.lora_alpha!r}")
        if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise ValueError(f"lora_targets must be non-empty module names, e.g. {list(LORA_TARGETS)}, got "
                             f"{list(self.lora_targets)!r}")
        if not (isinstance(self.kl_coef, (int, float)) and math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be finite and >= 0 (0: no KL penalty), got {self.kl_coef!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay!r}")
        if not isinstance(self.ema_update_interval, int) or self.ema_update_interval < 1:
            raise ValueError(f"ema_update_interval must be a positive int, got {self.ema_update_interval!r}")

    def validate_ranks(self, world_size: int, num_envs: int) -> None:
        """Data parallel over ``world_size`` ranks (:mod:`agents.distributed`): samples_per_epoch and batch_size
        are global and split evenly; raise ValueError naming the values when they do not split."""
        if world_size == 1:
            return
        if self.samples_per_epoch % (world_size * num_envs):
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} must be a multiple of world size × num_envs = "
                f"{world_size} × {num_envs}: each rank samples samples_per_epoch / {world_size} episodes, "
                f"{num_envs} at a time"
            )
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of the world size {world_size}: each rank trains "
                f"on batch_size / {world_size} of its own samples per micro-batch"
            )

    def _require_positive_finite(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")

    def trainable_steps(self, num_steps: int) -> range:
        """The step indices k (0 = the first, from noise) that training draws from: all but the skipped ones."""
        return range(self.skip_first_steps, num_steps - self.skip_last_steps)

    def train_timesteps(self, num_steps: int) -> int:
        """Timesteps trained per sample and inner epoch: ⌈(trainable steps) · timestep_fraction⌉ (at least 1)."""
        return max(1, math.ceil(len(self.trainable_steps(num_steps)) * self.timestep_fraction - 1e-9))


#: ``step_weights`` of the likelihood agents (agents/step_weights.py).
STEP_WEIGHTS = ("uniform", "sensitivity", "gradient")


@dataclass
class LikelihoodConfig(AgentConfig):
    """Settings of the agents whose loss is a sum over the denoising steps' log-likelihoods (DDPO-IS, DDPO-SF)."""

    step_weights: str = "uniform"
    """'uniform': every trained step's log-likelihood counts once (DDPO). 'sensitivity': step k's log-likelihood (and
    log-ratio) is scaled by w_k = median s / s_k, s_k the step's sensitivity |∂μ/∂f|/σ_k, so that no step's gradient
    outweighs the others by its noise schedule alone. 'gradient': by w_k = median g / g_k, g_k the norm of step k's
    gradient measured on one micro-batch of the first rollout, so that every step pulls equally
    (agents/step_weights.py)."""

    sde_window: int = 0
    """Windowed SDE (MixGRPO, arXiv 2507.21802): only this many consecutive steps of each episode are stochastic
    and trained; every other step is the deterministic ODE step (DDIM with η = 0, or a flow model's Euler step), which
    asks for no log-probability. The window lies within the trainable steps (skip_first_steps / skip_last_steps).
    0: off, every step stochastic (DDPO)."""
    sde_window_shift_every: int = 0
    """With sde_window: epochs between moves of the window by one step towards the end of the episode, back to the
    first trainable step after the last position (MixGRPO's sliding window). 0: the window stays at the first
    trainable steps."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        if self.step_weights not in STEP_WEIGHTS:
            raise ValueError(f"step_weights must be one of {list(STEP_WEIGHTS)}, got {self.step_weights!r}")
        trainable = len(self.trainable_steps(num_steps))
        if not isinstance(self.sde_window, int) or not 0 <= self.sde_window <= trainable:
            raise ValueError(f"sde_window must be an int in [0, {trainable}] (the trainable steps of the env's "
                             f"{num_steps}; 0: off), got {self.sde_window!r}")
        if not isinstance(self.sde_window_shift_every, int) or self.sde_window_shift_every < 0:
            raise ValueError(f"sde_window_shift_every must be an int >= 0, got {self.sde_window_shift_every!r}")
        if self.sde_window_shift_every and not self.sde_window:
            raise ValueError("sde_window_shift_every moves the SDE window: set sde_window > 0 too")
        if self.step_weights == "gradient" and self.sde_window:
            raise ValueError("step_weights='gradient' measures every trainable step once, but sde_window trains a "
                             "moving window of them: use step_weights='sensitivity' or 'uniform' with sde_window")


@dataclass
class DDPOISConfig(LikelihoodConfig):
    """DDPO-IS: PPO's clipped importance-sampling objective over denoising steps."""

    algorithm: ClassVar[str] = "agents.ddpo:DDPO_IS"

    clip_range: float = 1e-4
    """PPO clip ε on the ratio π_θ/π_old (tuned to mean-reduced log-probs)."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        self._require_positive_finite("clip_range")


@dataclass
class DDPOSFConfig(LikelihoodConfig):
    """DDPO-SF: REINFORCE (score function), one on-policy gradient step per rollout."""

    algorithm: ClassVar[str] = "agents.reinforce:DDPO_SF"

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        if self.num_inner_epochs != 1:
            raise ValueError(
                f"DDPO-SF takes one on-policy gradient step per rollout: num_inner_epochs must be 1, "
                f"got {self.num_inner_epochs}"
            )


@dataclass
class RWRConfig(AgentConfig):
    """Reward-weighted regression: the denoising loss on final samples, weighted by softmax(r/τ)."""

    algorithm: ClassVar[str] = "agents.rwr:RWR"

    temperature: float = 1.0
    """τ of the weights softmax(Â/τ) on normalised rewards Â. For Â ~ N(0, 1) the effective sample size is
    N·exp(−1/τ²): 37 % of the rollout at τ = 1; at the paper's β = 1/τ = 5 it is one sample (logged as
    train/effective_sample_size)."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        self._require_positive_finite("temperature")
        _no_step_stats(self)


@dataclass
class SparseRWRConfig(AgentConfig):
    """Sparse RWR: the unweighted denoising loss on the top fraction of samples by reward."""

    algorithm: ClassVar[str] = "agents.rwr:SparseRWR"

    top_fraction: float = 0.1
    """Fraction of each rollout's samples kept (the best by reward), in (0, 1]."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        if not (0 < self.top_fraction <= 1):
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction!r}")
        _no_step_stats(self)


@dataclass
class AWMConfig(AgentConfig):
    """AWM, advantage-weighted matching: the denoising loss on the rollout's final samples, weighted by the
    advantage (negative advantages push away), with a robust per-step weight."""

    algorithm: ClassVar[str] = "agents.awm:AWM"

    awm_power: float = 0.25
    """p of the generalised-Huber log-likelihood −w_t·((ℓ + δ)^p − δ^p)/p of a sample's squared error ℓ (AWM's code:
    0.25; 1 is the plain squared error)."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        if not (math.isfinite(self.awm_power) and 0 < self.awm_power <= 1):
            raise ValueError(f"awm_power must be in (0, 1], got {self.awm_power!r}")


@dataclass
class DiffusionNFTConfig(AgentConfig):
    """DiffusionNFT: the denoising loss of implicit positive and negative policies on the final samples, split by
    reward; rollouts from a slowly updated old policy."""

    algorithm: ClassVar[str] = "agents.nft:DiffusionNFT"

    nft_beta: float = 1.0
    """β, how far the implicit policies lie from the old one: v± = old ± β·(v_θ − old) (the paper's code: 1.0, and
    0.1 for some rewards)."""
    optimality_scale: float = 5.0
    """Z of the optimality probability r = ½ + ½·clip(Â/Z, −1, 1) of a sample with advantage Â."""
    old_policy_rate: float = 0.001
    """The old (sampling) policy follows the trained one after each epoch: θ_old ← η·θ_old + (1 − η)·θ with
    η = min(old_policy_rate · optimizer steps, old_policy_max) (the paper's code: 0.001 and 0.5); 0: η = 0, the old
    policy is the current one at each rollout."""
    old_policy_max: float = 0.5
    """The cap of η (see old_policy_rate), in [0, 1)."""

    def validate(self, num_envs: int, num_steps: int) -> None:
        super().validate(num_envs, num_steps)
        self._require_positive_finite("nft_beta", "optimality_scale")
        if not (0 <= self.old_policy_rate and math.isfinite(self.old_policy_rate)):
            raise ValueError(f"old_policy_rate must be finite and >= 0, got {self.old_policy_rate!r}")
        if not (0 <= self.old_policy_max < 1):
            raise ValueError(f"old_policy_max must be in [0, 1), got {self.old_policy_max!r}")
        if self.grad_workers != 1:
            raise ValueError("diffusion-nft swaps the old policy's weights in for each pass: use grad_workers=1")


#: The one table of agents: each name → its config class, whose ``algorithm`` names the class that trains
#: (``"module:Class"``, imported by ``agents.make_agent`` / ``agents.AGENTS``, which import torch).
AGENT_CONFIGS: dict[str, type[AgentConfig]] = {
    "ddpo-is": DDPOISConfig,
    "ddpo-sf": DDPOSFConfig,
    "rwr": RWRConfig,
    "rwr-sparse": SparseRWRConfig,
    "awm": AWMConfig,
    "diffusion-nft": DiffusionNFTConfig,
}


def _no_step_stats(config: AgentConfig) -> None:
    if config.step_stats_every:
        raise ValueError(f"step_stats_every={config.step_stats_every}: per-step gradients need a loss per denoising "
                         "step (ddpo-is, ddpo-sf); RWR regresses on final samples: use step_stats_every=0")
