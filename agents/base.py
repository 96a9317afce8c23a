"""The rollout-and-update loop every agent shares (stable-baselines3's ``OnPolicyAlgorithm`` pattern).

``DiffusionAgent`` owns sampling (the policy acts on the env for ``samples_per_epoch`` episodes), storage
(:class:`~agents.buffer.TrajectoryBuffer`), advantages (per-prompt stat tracking, clipping), the micro-batch /
timestep loop with gradient accumulation, NaN guards and logging through SB3's logger. An algorithm file only
says which transitions it trains on and its loss (:meth:`DiffusionAgent.compute_loss`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

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
from agents.hooks import notify_epoch_end
from agents.kl import gaussian_kl
from agents.parallel import parallel_gradients
from agents.policy import DiffusionPolicy
from agents.stat_tracking import PerPromptStatTracker
from agents.step_stats import StepStats, step_gradient_stats
from ddpo_env.ddim import DDIMStepOutput
from ddpo_env.sb3 import SB3VecEnv


class _Pass(NamedTuple):
    """What one backward pass of an update reads on its thread (:meth:`DiffusionAgent._accumulate`)."""

    generator: torch.Generator | None  # its own random numbers on a grad_workers thread (None: the training one)
    reference: torch.Tensor | None  # μ_ref of its transitions, precomputed (kl_coef > 0)


class DiffusionAgent(OnPolicyAlgorithm):
    """Base of DDPO-IS, DDPO-SF, RWR and sparse RWR.

    Args:
        env: a DenoisingDiffusion-v0 vector env (``gym.make_vec``, possibly reward-wrapped) or its SB3VecEnv.
        config: the algorithm's config dataclass; or give its fields as keyword arguments.
        verbose, tensorboard_log: as in stable-baselines3.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig

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
        venv = env if isinstance(env, SB3VecEnv) else SB3VecEnv(env)
        self.diffusion_env = venv.venv.unwrapped
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
        self._passes: dict[int, _Pass] = {}  # thread id → the pass it computes, during an update
        self.step_stats = StepStats()
        self.num_epochs = 0  # rollouts collected and trained on
        self.num_skipped_updates = 0
        self.rollout_rewards = np.zeros(0)  # the last rollout's rewards, every rank's
        self._sampling_seconds = 0.0
        self.global_advantages = torch.zeros(self.config.samples_per_epoch)  # every rank's, in rank order
        if self.ranks:
            self.reseed_rank(0)
            self.ranks.broadcast_parameters(self.policy.trainable_parameters())
        if self.config.kl_coef > 0:
            self.policy.keep_reference()
        if self.config.compile_sampling:
            self.diffusion_env.backend.compile_inference()
        self.ema = (EMA(self.policy.trainable_parameters(), self.config.ema_decay, self.config.ema_update_interval)
                    if self.config.ema_decay > 0 else None)

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
        for first in range(0, self.rank_samples, num_envs):
            rows = slice(first, first + num_envs)
            obs = self._last_obs
            returns = np.zeros(num_envs)
            prompt_ids = np.asarray(obs["prompt_id"]).reshape(-1).copy()
            for k in range(self.num_steps):
                with torch.no_grad():
                    obs_tensor = obs_as_tensor(obs, self.device)
                    out = self.policy.step(obs_tensor)
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
            self._last_obs = obs
        self._compute_advantages(self.buffer.non_finite())
        self._sampling_seconds = time.perf_counter() - start
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _compute_advantages(self, problem: str | None = None) -> None:
        """Advantages from the rewards of the whole rollout (every rank's, gathered in rank order); raises
        FloatingPointError, on every rank alike, for a non-finite latent, log-prob (``problem``) or reward."""
        rewards, prompts = self.buffer.rewards, self.buffer.prompts
        if self.ranks:
            parts = self.ranks.gather((rewards, prompts, problem))
            problem = "; ".join(f"rank {r}: {p[2]}" for r, p in enumerate(parts) if p[2]) or None
            rewards = np.concatenate([p[0] for p in parts])
            prompts = [prompt for p in parts for prompt in p[1]]
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

    def kl_penalty(self, batch: TrajectoryBatch, out: DDIMStepOutput | None = None) -> tuple[torch.Tensor, dict]:
        """β · mean KL(π_θ ‖ π_ref) over ``batch`` (:mod:`agents.kl`; ``out``: the policy's step on it, if already
        computed) and its log entry; (0, {}) when kl_coef is 0. μ_ref comes from the pass's precomputed reference
        (:meth:`_accumulate`), or is computed here."""
        if self.config.kl_coef == 0:
            return torch.zeros((), device=self.device), {}
        out = out if out is not None else self.transition_step(batch)
        current = self._passes.get(threading.get_ident())
        ref_mean = current.reference if current else None
        if ref_mean is None:
            ref_mean = self.transition_step(batch, reference=True).mean
        kl = gaussian_kl(out.mean, ref_mean, out.std_dev_t)
        return self.config.kl_coef * kl.mean(), {"kl": float(kl.detach().mean())}

    def train_samples(self) -> torch.Tensor:
        """Indices of the rollout samples this algorithm trains on (all of them by default)."""
        return torch.arange(self.buffer.num_samples)

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(sample indices, step indices, steps per sample) per forward/backward pass: samples shuffled, each
        sample's n trainable steps shuffled independently keeping the first ⌈n·timestep_fraction⌉, and
        ``steps_per_pass`` of them evaluated together (the indices are the chunk's samples repeated once per step)."""
        samples = self.train_samples()
        if len(samples) == 0:  # e.g. sparse RWR on a rank that holds none of the top samples
            return
        train_steps = self.config.train_timesteps(self.num_steps)
        trainable = self.trainable_steps()
        group = self.config.steps_per_pass or train_steps
        for _ in range(self.config.num_inner_epochs):
            order = samples[torch.randperm(len(samples), generator=self.train_generator)]
            step_order = trainable.start + torch.stack(
                [torch.randperm(len(trainable), generator=self.train_generator) for _ in range(len(samples))]
            )
            for first in range(0, len(order), self.rank_batch_size):
                chunk = slice(first, first + self.rank_batch_size)
                for j in range(0, train_steps, group):
                    k = min(group, train_steps - j)
                    yield order[chunk].repeat(k), step_order[chunk, j : j + k].T.reshape(-1), k

    def trainable_steps(self) -> range:
        """Step indices k this agent trains on (the config's skip_first_steps / skip_last_steps left out)."""
        return self.config.trainable_steps(self.num_steps)

    def record_step_stats(self, steps: torch.Tensor, **values: torch.Tensor) -> None:
        """Per-transition values (B,) at step indices ``steps`` (B,), averaged per step and logged after the update
        as steps/<name>_kNN (TensorBoard and progress.csv)."""
        self.step_stats.add(steps, **values)

    def backward_passes_per_update(self) -> int:
        """Single-step backward passes (a micro-batch at one denoising step) whose gradients add up to one
        optimizer step; a pass over k steps at once counts k."""
        return self.config.gradient_accumulation_steps * self.config.train_timesteps(self.num_steps)

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The algorithm's loss on one micro-batch, and metrics to log. Implemented by each algorithm."""
        raise NotImplementedError

    def train(self) -> None:
        """One pass of updates over the rollout in ``self.buffer``."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        params = self.policy.trainable_parameters()
        every = self.config.step_stats_every
        probe = step_gradient_stats(self) if every and self.num_epochs % every == 0 else {}
        self.step_stats.clear()
        per_update = self.backward_passes_per_update()
        metrics: dict[str, list[float]] = defaultdict(list)
        start, passes = time.perf_counter(), 0
        self.policy.optimizer.zero_grad(set_to_none=True)
        updates: list[list[tuple[torch.Tensor, torch.Tensor, int]]] = [[]]
        for samples, steps, k in self.micro_batches():
            updates[-1].append((samples, steps, k))
            passes += k
            if passes % per_update == 0:
                updates.append([])
        updates = [u for u in updates if u]
        # ranks take the same number of optimizer steps; a rank out of passes contributes zero gradients
        num_updates = self.ranks.max(len(updates)) if self.ranks else len(updates)
        for index in range(num_updates):
            if index < len(updates):
                self._accumulate(updates[index], index + 1, per_update, params, metrics)
            self._optimizer_step(params, metrics)
        self.num_epochs += 1
        for key, values in metrics.items():
            self.logger.record(f"train/{key}", float(np.mean(values)))
        for name, per_step in {**self.step_stats.means(), **probe}.items():
            for k, value in per_step.items():
                self.logger.record(f"steps/{name}_k{k:02d}", value, exclude=("stdout", "log"))
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.record("train/skipped_updates", self.num_skipped_updates)
        seconds = self._sampling_seconds + time.perf_counter() - start
        self.logger.record("time/samples_per_s", self.config.samples_per_epoch / seconds)  # all ranks together

    def _accumulate(self, update: list[tuple[torch.Tensor, torch.Tensor, int]], update_index: int,
                    per_update: int, params: list[torch.nn.Parameter], metrics: dict[str, list[float]]) -> None:
        """The gradients of one update's passes into ``.grad``: in order on this thread, or on ``grad_workers``
        threads (:mod:`agents.parallel`), each pass then drawing any randomness from its own generator seeded here."""
        infos: list[tuple[float, dict[str, float]]] = [(0.0, {})] * len(update)
        references = [None] * len(update)
        if self.config.kl_coef > 0:  # μ_ref on this thread: switching the adapter off is not thread-safe
            references = [self.transition_step(self.buffer.transitions(samples.to(self.device), steps.to(
                self.device)), reference=True).mean for samples, steps, _ in update]

        def loss_of(i: int, seed: int | None = None) -> torch.Tensor:
            samples, steps, k = update[i]
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            self._passes[threading.get_ident()] = _Pass(generator, references[i])
            loss, info = self.compute_loss(samples.to(self.device), steps.to(self.device))
            infos[i] = (float(loss.detach()), info)
            return loss * k / per_update  # k steps at once: the sum of k single-step passes

        workers = min(self.config.grad_workers, len(update))
        if workers <= 1:
            try:
                for i in range(len(update)):
                    loss_of(i).backward()
            finally:
                self._passes.clear()
        else:
            # each pass's seed from (seed, epoch, update, pass): the shuffles' generator is left untouched
            seeds = [int(np.random.SeedSequence([self.config.seed, self.num_epochs, update_index, i]).generate_state(
                1, np.uint64)[0] >> 1) for i in range(len(update))]
            try:
                grads = parallel_gradients([functools.partial(loss_of, i, s) for i, s in enumerate(seeds)], params,
                                           workers)
            finally:
                self._passes.clear()
            for param, grad in zip(params, grads, strict=True):
                if grad is not None:
                    param.grad = grad if param.grad is None else param.grad + grad
        for loss, info in infos:
            metrics["loss"].append(loss)
            for key, value in info.items():
                metrics[key].append(value)

    def loss_generator(self) -> torch.Generator:
        """Where :meth:`compute_loss` draws random numbers: the training generator, or on a ``grad_workers``
        thread that pass's own generator (so the draws do not depend on thread timing)."""
        current = self._passes.get(threading.get_ident())
        return current.generator if current and current.generator is not None else self.train_generator

    def _optimizer_step(self, params: list[torch.nn.Parameter], metrics: dict[str, list[float]]) -> None:
        if self.ranks:
            self.ranks.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.num_skipped_updates += 1  # a non-finite gradient never reaches the weights
            self.logger.record("train/last_skip_reason", "non-finite gradient")
        else:
            self.policy.optimizer.step()
            self._n_updates += 1
            if self.ema is not None:
                self.ema.update(self._n_updates)
        metrics["grad_norm"].append(float(grad_norm))
        self.policy.optimizer.zero_grad(set_to_none=True)

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """A block in which the policy holds its EMA weights (``ema_decay`` > 0), for evaluation and export; the
        trained weights otherwise."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    # -------------------------------------------------------------------------------------- learning

    def learn(
        self,
        total_samples: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> DiffusionAgent:
        """Train on ``total_samples`` episodes (rounded up to whole rollouts of ``samples_per_epoch``)."""
        if total_samples < 1:
            raise ValueError(f"total_samples must be >= 1, got {total_samples}")
        epochs = -(-total_samples // self.config.samples_per_epoch)
        total_timesteps = epochs * self.rank_samples * self.num_steps  # SB3 counts this process's env steps
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
        callback.on_training_end()
        return self
