"""The rollout-and-update loop every agent shares (stable-baselines3's ``OnPolicyAlgorithm`` pattern).

``DiffusionAgent`` owns sampling (the policy acts on the env for ``samples_per_epoch`` episodes), storage
(:class:`~agents.buffer.TrajectoryBuffer`), advantages (per-prompt stat tracking, clipping), the micro-batch /
timestep loop with gradient accumulation, NaN guards and logging through SB3's logger. An algorithm file only
says which transitions it trains on and its loss (:meth:`DiffusionAgent.compute_loss`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import obs_as_tensor

from agents.advantages import rollout_advantages
from agents.buffer import TrajectoryBatch, TrajectoryBuffer
from agents.config import AgentConfig, optimizer_class
from agents.distributed import Ranks
from agents.ema import EMA
from agents.hooks import notify_epoch_end, notify_epoch_logged
from agents.policy import DiffusionPolicy
from agents.stat_tracking import PerPromptStatTracker
from agents.state import AgentState
from agents.step_stats import StepStats
from agents.step_weights import step_weight_table
from agents.steps import TrainedSteps
from agents.update import GradientPass, UpdateLoop
from agents.vectorise import vectorised
from ddpo_env.ddim import DDIMStepOutput
from ddpo_env.sb3 import SB3VecEnv
from ddpo_env.vector_env import DenoisingDiffusionVectorEnv


class DiffusionAgent(AgentState, UpdateLoop, TrainedSteps, OnPolicyAlgorithm):
    """Base of DDPO-IS, DDPO-SF, RWR and sparse RWR.

    Args:
        env: a DenoisingDiffusion-v0 vector env (``gym.make_vec``, possibly reward-wrapped) or its SB3VecEnv; or, as
            SB3 wraps a single env in a DummyVecEnv, a single env (``gym.make``, possibly wrapped with
            ``TerminalReward``): the agent trains on that env's own batched vector env (num_envs=1) with each
            TerminalReward carried over as a VectorTerminalReward (:func:`vectorised`; printed with verbose >= 1).
            The agent trains the env's UNet: a later agent built on the same env takes it over, and this one then
            refuses to run (:class:`agents.policy.DiffusionPolicy`).
        config: the algorithm's config dataclass; or give its fields as keyword arguments.
        verbose, tensorboard_log: as in stable-baselines3.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    #: Whether the loss compares against the rollout's log-probs log π_old: with ``compile_sampling`` or
    #: ``recompute_log_probs`` they are then recomputed by the eager network after sampling.
    uses_old_log_probs: ClassVar[bool] = True

    def __init__(
        self,
        env: Any,
        config: AgentConfig | None = None,
        *,
        verbose: int = 0,
        tensorboard_log: str | None = None,
        **kwargs: Any,
    ) -> None:
        if config is not None and kwargs:
            raise ValueError(f"pass either config= or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = config if config is not None else self.config_class(**kwargs)
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        venv = env if isinstance(env, SB3VecEnv) else SB3VecEnv(vectorised(env, verbose))
        self.diffusion_env = venv.venv.unwrapped
        if not isinstance(self.diffusion_env, DenoisingDiffusionVectorEnv):
            raise TypeError(
                f"{type(self).__name__} trains on the batched DenoisingDiffusion-v0 vector env, got "
                f"{type(self.diffusion_env).__name__}: build it with gym.make_vec(\"DenoisingDiffusion-v0\", "
                "num_envs=..., ...) and wrap it with a reward (a SyncVectorEnv or AsyncVectorEnv of single envs "
                "cannot batch the model's forward passes)")
        self.num_steps = self.diffusion_env.num_steps
        self.config.validate(venv.num_envs, self.num_steps)
        if self.config.group_advantages and self.diffusion_env.config.group_size == 1:
            raise ValueError("group_advantages needs several samples per prompt in each rollout: build the env with "
                             "group_size=k (k > 1, e.g. 4), so each group of k envs shares a prompt")
        self.ranks = Ranks.current()  # None: one process; else data parallel (agents/distributed.py)
        world = self.ranks.world_size if self.ranks else 1
        self.config.validate_ranks(world, venv.num_envs)
        self.rank_samples = self.config.samples_per_epoch // world  # episodes this rank samples per rollout
        self.rank_batch_size = self.config.batch_size // world
        super().__init__(
            policy=DiffusionPolicy,
            env=venv,
            learning_rate=self.config.learning_rate,
            n_steps=self.num_steps,
            gamma=1.0,
            gae_lambda=1.0,
            ent_coef=0.0,
            vf_coef=0.0,
            max_grad_norm=self.config.max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            policy_kwargs={
                "diffusion_env": self.diffusion_env,
                "lora_rank": self.config.lora_rank,
                "lora_alpha": self.config.lora_alpha,
                "lora_targets": self.config.lora_targets,
                "seed": self.config.seed,
                "optimizer_class": optimizer_class(self.config.optimizer),
                "optimizer_kwargs": {"weight_decay": self.config.adam_weight_decay},
                "gradient_checkpointing": self.config.gradient_checkpointing,
            },
            verbose=verbose,
            seed=self.config.seed,
            device=self.diffusion_env.device,
            monitor_wrapper=False,
            tensorboard_log=tensorboard_log,
            supported_action_spaces=(spaces.Box,),
            _init_setup_model=False,
        )
        self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.buffer = TrajectoryBuffer(self.rank_samples, self.num_steps, self.diffusion_env.latent_shape, self.device)
        self.stat_tracker = PerPromptStatTracker(self.config.stat_buffer_size, self.config.stat_min_count)
        self.train_generator = torch.Generator().manual_seed(self.config.seed)
        self._passes: dict[int, GradientPass] = {}  # thread id → the pass it computes, during an update
        self.step_stats = StepStats()
        self._step_weights = step_weight_table(getattr(self.config, "step_weights", "uniform"),
                                               self.diffusion_env.schedule, self.config.trainable_steps(self.num_steps),
                                               self.device)
        self.num_epochs = 0  # rollouts collected and trained on
        self.num_skipped_updates = 0
        self.rollout_rewards = np.zeros(0)  # the last rollout's rewards, every rank's
        self.rollout_terms: dict[str, float] = {}  # the last rollout's mean score per reward term
        self._sampling_seconds = 0.0
        # every rank's, in rank order
        self.global_advantages = torch.zeros(self.config.samples_per_epoch, device=self.device)
        if self.ranks:
            self.reseed_rank(0)
            self.ranks.broadcast_parameters(self.policy.trainable_parameters())
        if self.config.kl_coef > 0:
            self.policy.keep_reference()
        if self.config.compile_sampling:
            self.diffusion_env.backend.compile_inference()
        # float16 gradients underflow below ~6e-8: scale the loss (the trained weights themselves are float32). A run
        # takes hundreds of updates, not 10⁵: start lower and adapt sooner than torch's 2¹⁶ and 2000 clean steps
        self.grad_scaler = (torch.amp.GradScaler(self.device.type, init_scale=2.0**12, growth_interval=100)
                            if self.diffusion_env.backend.dtype == torch.float16 else None)
        self.ema = (EMA(self.policy.trainable_parameters(), self.config.ema_decay, self.config.ema_update_interval)
                    if self.config.ema_decay > 0 else None)

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding (python, numpy, torch, the action space, the env), without the switch SB3 makes on a GPU of the
        whole process to deterministic cuDNN with autotuning off: that slows every convolution, other models' too,
        and run-to-run identical CUDA kernels are not what this library promises (docs/training.md, "Resume");
        set ``torch.backends.cudnn.deterministic`` yourself if you want them."""
        flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        try:
            super().set_random_seed(seed)
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags

    @property
    def num_updates(self) -> int:
        """Optimizer steps taken (SB3's ``_n_updates``), across resumes."""
        return self._n_updates

    def reseed_rank(self, epoch: int) -> None:
        """Data parallel: this rank's own env seeds (env i of rank r gets seed + r·num_envs + i, as env r·num_envs + i
        of one process would) and sampling noise; at ``epoch`` > 0 (a resume, with any number of ranks) both are
        derived from (seed, epoch, rank) and the envs are reset with them."""
        if epoch == 0:
            self.env.seed(self.seed + self.ranks.rank * self.env.num_envs)  # used by learn()'s first reset
        else:
            self.env.seed(self.ranks.seed(self.seed, epoch))
            self._last_obs = self.env.reset()
        self.policy.noise_generator.manual_seed(self.ranks.seed(self.seed, epoch, 1))

    # ------------------------------------------------------------------------------------- sampling

    def collect_rollouts(self, env: Any, callback: BaseCallback, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        """Run ``samples_per_epoch`` whole episodes with the current policy into ``self.buffer``."""
        self.policy.set_training_mode(False)
        self.buffer.reset()
        callback.on_rollout_start()
        num_envs, start = env.num_envs, time.perf_counter()
        terms: dict[str, list[float]] = {}
        for first in range(0, self.rank_samples, num_envs):
            rows = slice(first, first + num_envs)
            obs = self._last_obs
            returns = np.zeros(num_envs)
            prompt_ids = np.asarray(obs["prompt_id"]).reshape(-1).copy()
            for k in range(self.num_steps):
                with torch.no_grad():
                    obs_tensor = obs_as_tensor(obs, self.device)
                    # outside an SDE window: the deterministic ODE step (agents/steps.py)
                    stochastic = self.stochastic_step(k)
                    out = self.policy.step(obs_tensor) if stochastic else self.policy.step(obs_tensor, ode=True)
                obs, rewards, dones, infos = env.step(out.prev_sample.cpu().numpy())
                self.num_timesteps += num_envs
                returns += rewards
                self.buffer.add_step(
                    rows, k, obs_tensor["latent"], out.prev_sample,
                    obs_tensor["timestep"].reshape(-1).round().long(), out.log_prob,
                )
                callback.update_locals(locals())
                if not callback.on_step():
                    return False
            if not dones.all():
                raise RuntimeError(
                    f"an episode did not end after {self.num_steps} steps: is the env a DenoisingDiffusion env?"
                )
            self.buffer.add_episodes(rows, prompt_ids, self.diffusion_env.prompt_strings(prompt_ids), returns)
            for info in infos:  # each reward term's raw score, as the reward wrappers report it
                for key, value in info.items():
                    if key.startswith("reward_"):
                        terms.setdefault(key.removeprefix("reward_"), []).append(float(value))
            self._last_obs = obs
        if self.recomputes_log_probs and self.uses_old_log_probs:
            self.recompute_log_probs()
        self._compute_advantages(self.buffer.non_finite(), terms)
        self._sampling_seconds = time.perf_counter() - start
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    @property
    def recomputes_log_probs(self) -> bool:
        """Whether the rollout's old log-probs are recomputed by the eager network in the training passes' batch shape
        (``recompute_log_probs``; None: with ``compile_sampling`` and on a CUDA device)."""
        choice = self.config.recompute_log_probs
        return self.config.compile_sampling or (self.device.type == "cuda" if choice is None else choice)

    def recompute_log_probs(self) -> None:
        """Replace the rollout's log-probs (log π_old of the trained steps) by what the eager network computes for the
        same transitions under the same weights, in micro-batches of the training passes' size. The compiled kernels
        that sampled them (``compile_sampling``) round differently from the eager ones the update runs (in bfloat16
        by more than PPO's clip range), and on a GPU so may kernels picked for another batch shape; without this the
        first update's ratios would not be 1. Costs one gradient-free forward per trained transition."""
        n, trainable = self.buffer.num_samples, torch.tensor(list(self.trainable_steps()), device="cpu")
        samples = torch.arange(n, device="cpu").repeat(len(trainable))  # step-major
        steps = trainable.repeat_interleave(n)
        size = self.rank_batch_size * (self.config.steps_per_pass or len(trainable))
        with torch.no_grad(), self.diffusion_env.backend.eager():
            for first in range(0, len(samples), size):
                rows = samples[first : first + size].to(self.device)
                columns = steps[first : first + size].to(self.device)
                batch = self.buffer.transitions(rows, columns)
                self.buffer.log_probs[rows, columns] = self.transition_log_probs(batch).to(self.buffer.log_probs.dtype)

    def collect_rollout(self) -> None:
        """Sample one rollout (``samples_per_epoch`` episodes) into ``self.buffer`` with the current policy, without
        training on it: for diagnostics such as :func:`agents.step_stats.first_update_log_ratios`. The env is reset
        first if no episode is under way; the rollout counts towards ``num_timesteps`` as ``learn``'s do."""
        _, callback = self._setup_learn(self.rank_samples * self.num_steps, None,
                                        reset_num_timesteps=self._last_obs is None, tb_log_name=type(self).__name__)
        if not self.collect_rollouts(self.env, callback, None, self.n_steps):
            raise RuntimeError("the rollout was stopped before its end")

    def _compute_advantages(self, problem: str | None = None, terms: dict[str, list[float]] | None = None) -> None:
        """Advantages from the rewards of the whole rollout (every rank's, gathered in rank order); raises
        FloatingPointError, on every rank alike, for a non-finite latent, log-prob (``problem``) or reward. Each
        reward term's mean score (``terms``) is logged as rollout/reward_<name>."""
        rewards, prompts, terms = self.buffer.rewards, self.buffer.prompts, terms or {}
        if self.ranks:
            parts = self.ranks.gather((rewards, prompts, problem, terms))
            problem = "; ".join(f"rank {r}: {p[2]}" for r, p in enumerate(parts) if p[2]) or None
            rewards = np.concatenate([p[0] for p in parts])
            prompts = [prompt for p in parts for prompt in p[1]]
            terms = {name: [v for p in parts for v in p[3].get(name, [])] for name in terms}
        if problem:
            raise FloatingPointError(problem)
        if not np.isfinite(rewards).all():
            bad = np.flatnonzero(~np.isfinite(rewards)).tolist()
            raise FloatingPointError(
                f"non-finite reward in rollout samples {bad[:10]}: the update is refused (check the reward wrapper)"
            )
        advantages, logs = rollout_advantages(self.config, self.stat_tracker, prompts, rewards)
        for key, value in logs.items():
            self.logger.record(f"rollout/{key}", value)
        self.rollout_rewards = rewards
        self.global_advantages = torch.as_tensor(advantages, dtype=torch.float32, device=self.device)
        self.buffer.set_advantages(advantages[self.rank_rows()])
        self.rollout_terms = {name: float(np.mean(values)) for name, values in terms.items()}
        if len(self.rollout_terms) > 1:  # a weighted sum: each term's own mean score
            for name, value in self.rollout_terms.items():
                self.logger.record(f"rollout/reward_{name}", value)
        self.logger.record("rollout/reward_mean", float(rewards.mean()))
        self.logger.record("rollout/reward_std", float(rewards.std()))
        self.logger.record("rollout/epoch", self.num_epochs)

    # -------------------------------------------------------------------------------------- training

    def rank_rows(self) -> slice:
        """This rank's samples in the gathered (global) arrays: all of them in a single process."""
        return self.ranks.rows(self.rank_samples) if self.ranks else slice(None)

    def transition_step(self, batch: TrajectoryBatch, reference: bool = False) -> DDIMStepOutput:
        """The policy's step (log π_θ(x_{t-1} | x_t, c), μ_θ, σ) on stored transitions under the current weights;
        the base model's (no gradient) with ``reference``."""
        obs = {"latent": batch.latents, "timestep": batch.timesteps, "prompt_id": batch.prompt_ids}
        if reference:
            return self.policy.reference_step(obs, actions=batch.next_latents)
        return self.policy.step(obs, actions=batch.next_latents)

    def transition_log_probs(self, batch: TrajectoryBatch) -> torch.Tensor:
        """log π_θ(x_{t-1} | x_t, c) of stored transitions under the current weights (B,)."""
        return self.transition_step(batch).log_prob

    def train_samples(self) -> torch.Tensor:
        """Indices of the rollout samples this algorithm trains on (all of them by default)."""
        return torch.arange(self.buffer.num_samples, device="cpu")

    def record_step_stats(self, steps: torch.Tensor, **values: torch.Tensor) -> None:
        """Per-transition values (B,) at step indices ``steps`` (B,), averaged per step and logged after the update
        as steps/<name>_kNN (TensorBoard and progress.csv)."""
        self.step_stats.add(steps, **values)

    def backward_passes_per_update(self) -> int:
        """Single-step backward passes (a micro-batch at one denoising step) whose gradients add up to one
        optimizer step; a pass over k steps at once counts k."""
        return self.config.gradient_accumulation_steps * self.train_timesteps()

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The algorithm's loss on one micro-batch, and metrics to log. Implemented by each algorithm."""
        raise NotImplementedError

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """A block in which the policy holds its EMA weights (``ema_decay`` > 0), for evaluation and export; the
        trained weights otherwise."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    # -------------------------------------------------------------------------------------- learning

    def learn(
        self,
        total_timesteps: int | None = None,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        *,
        total_samples: int | None = None,
    ) -> DiffusionAgent:
        """Train for ``total_timesteps`` env steps (SB3's meaning: one denoising step of one env is a timestep) or,
        as a convenience, ``total_samples`` episodes; either is rounded up to whole rollouts of
        ``samples_per_epoch`` episodes (``samples_per_epoch × num_steps`` timesteps)."""
        if (total_timesteps is None) == (total_samples is None):
            raise ValueError("pass total_timesteps (env steps, as in stable-baselines3) or total_samples (episodes), "
                             "not both or neither")
        per_epoch = self.rank_samples * self.num_steps  # SB3 counts this process's env steps
        amount, name = (total_samples, "total_samples") if total_samples is not None else (total_timesteps,
                                                                                            "total_timesteps")
        if amount < 1:
            raise ValueError(f"{name} must be >= 1, got {amount}")
        epochs = (-(-total_samples // self.config.samples_per_epoch) if total_samples is not None
                  else -(-total_timesteps // per_epoch))
        total_timesteps = epochs * per_epoch
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or type(self).__name__, progress_bar
        )
        callback.on_training_start(locals(), globals())
        iteration = 0
        while self.num_timesteps < total_timesteps:
            if not self.collect_rollouts(self.env, callback, None, self.n_steps):
                break
            iteration += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.train()
            notify_epoch_end(callback)
            if log_interval and iteration % log_interval == 0:
                self.dump_logs(iteration)
            notify_epoch_logged(callback)
        callback.on_training_end()
        return self
