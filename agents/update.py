"""The update half of every agent's epoch: micro-batches over the rollout, gradient accumulation (on this thread or on
``grad_workers`` threads), the optimizer step with its NaN guard, gradient clipping and EMA, and the optional KL
penalty to the base model. :class:`agents.base.DiffusionAgent` inherits it; an algorithm only supplies
``compute_loss``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from agents.buffer import TrajectoryBatch
from agents.kl import gaussian_kl
from agents.parallel import parallel_gradients
from agents.step_stats import step_gradient_stats
from agents.step_weights import measured_weights
from ddpo_env.ddim import DDIMStepOutput


class GradientPass(NamedTuple):
    """What one backward pass of an update reads on its thread (:meth:`DiffusionAgent._accumulate`)."""

    generator: torch.Generator | None  # its own random numbers on a grad_workers thread (None: the training one)
    reference: torch.Tensor | None  # μ_ref of its transitions, precomputed (kl_coef > 0)


class UpdateLoop:
    """The update methods of :class:`agents.base.DiffusionAgent` (see the module docstring)."""

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

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(sample indices, step indices, steps per sample) per forward/backward pass: samples shuffled, each
        sample's n trainable steps shuffled independently keeping the first ⌈n·timestep_fraction⌉, and
        ``steps_per_pass`` of them evaluated together (the indices are the chunk's samples repeated once per step)."""
        samples = self.train_samples()
        if len(samples) == 0:  # e.g. sparse RWR on a rank that holds none of the top samples
            return
        train_steps = self.train_timesteps()
        trainable = self.trainable_steps()
        group = self.config.steps_per_pass or train_steps
        for _ in range(self.config.num_inner_epochs):
            order = samples[torch.randperm(len(samples), generator=self.train_generator, device="cpu")]
            step_order = trainable.start + torch.stack([
                torch.randperm(len(trainable), generator=self.train_generator, device="cpu")
                for _ in range(len(samples))
            ])
            for first in range(0, len(order), self.rank_batch_size):
                chunk = slice(first, first + self.rank_batch_size)
                for j in range(0, train_steps, group):
                    k = min(group, train_steps - j)
                    yield order[chunk].repeat(k), step_order[chunk, j : j + k].T.reshape(-1), k

    def train(self) -> None:
        """One pass of updates over the rollout in ``self.buffer``."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        if getattr(self.config, "step_weights", "uniform") == "gradient" and self._step_weights is None:
            self._step_weights = measured_weights(self)  # once, on the first rollout (agents/step_weights.py)
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
        scale = self.loss_scale()
        references = [None] * len(update)
        if self.config.kl_coef > 0:  # μ_ref on this thread: switching the adapter off is not thread-safe
            references = [self.transition_step(self.buffer.transitions(samples.to(self.device), steps.to(
                self.device)), reference=True).mean for samples, steps, _ in update]

        def loss_of(i: int, seed: int | None = None) -> torch.Tensor:
            samples, steps, k = update[i]
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            self._passes[threading.get_ident()] = GradientPass(generator, references[i])
            loss, info = self.compute_loss(samples.to(self.device), steps.to(self.device))
            infos[i] = (float(loss.detach()), info)
            return loss * (scale * k / per_update)  # k steps at once: the sum of k single-step passes

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

    def loss_scale(self) -> torch.Tensor | float:
        """What each backward pass multiplies its loss by: float16's current loss scale (``grad_scaler``, so that
        small gradients do not underflow in half precision; the optimizer step divides it out), else 1."""
        if self.grad_scaler is None:
            return 1.0
        return self.grad_scaler.scale(torch.ones((), device=self.device))

    def _optimizer_step(self, params: list[torch.nn.Parameter], metrics: dict[str, list[float]]) -> None:
        scaler, optimizer = self.grad_scaler, self.policy.optimizer
        if self.ranks:
            self.ranks.average_gradients(params)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.num_skipped_updates += 1  # a non-finite gradient never reaches the weights
            self.logger.record("train/last_skip_reason", "non-finite gradient" + (
                " (float16 loss scale lowered)" if scaler is not None else ""))
        else:
            if scaler is not None:
                scaler.step(optimizer)  # the gradients are unscaled already; it steps, as they are finite
            else:
                optimizer.step()
            self._n_updates += 1
            if self.ema is not None:
                self.ema.update(self._n_updates)
        if scaler is not None:
            scaler.update()  # halves the scale after an overflow, doubles it after growth_interval clean steps
            self.logger.record("train/loss_scale", scaler.get_scale())
        metrics["grad_norm"].append(float(grad_norm))
        optimizer.zero_grad(set_to_none=True)
