"""A bare, hand-written DDPO-IS loop (the ddpo-pytorch shape: no Gym, no stable-baselines3), the baseline of the
overhead and GPU benchmarks, and :class:`Timers`, which splits an epoch's time the same way for both loops.

The loop runs the same model (a :class:`~ddpo_env.backends.DiffusionBackend`) and the same math as the env and
the agent — :func:`~ddpo_env.sampler.guided_model_output`, :func:`~ddpo_env.ddim.ddim_step`,
:func:`~agents.ddpo.ppo_clip_loss` — so a difference in time is the cost of the Gym/SB3 shape.

One epoch: sample ``samples_per_epoch`` trajectories in batches of ``sample_batch``, decode, score, normalise
the rewards over the batch, then micro-batches of ``batch_size`` samples × each of the T steps, one optimizer
step per micro-batch (gradients summed over its steps), like the agent with ``gradient_accumulation_steps=1``.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from agents.ddpo import ppo_clip_loss
from ddpo_env.backends import DiffusionBackend
from ddpo_env.ddim import DDIMSchedule, ddim_step
from ddpo_env.sampler import guided_model_output


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timers:
    """Seconds per (phase, part): ``with timers.phase("sampling")`` sets the phase; :meth:`wrap` times a method of
    an object in place (the UNet call, the decoder, a reward's ``score``). What is not wrapped counts as "other"."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._phase = "other"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        outer, self._phase = self._phase, name
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[f"{name}/total"] += time.perf_counter() - start
            self._phase = outer

    def wrap_phase(self, obj: object, method: str, phase: str) -> None:
        """Run every call of ``obj.method`` in ``phase`` (e.g. an agent's rollout and update)."""
        inner = getattr(obj, method)

        def phased(*args, **kwargs):
            with self.phase(phase):
                return inner(*args, **kwargs)

        setattr(obj, method, phased)

    def wrap(self, obj: object, method: str, part: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            synchronize(self.device)
            self.seconds[f"{self._phase}/{part}"] += time.perf_counter() - start
            return out

        setattr(obj, method, timed)

    def breakdown(self) -> dict[str, float]:
        """{phase/part: seconds}, with each phase's unwrapped remainder as phase/other."""
        out = dict(self.seconds)
        for key in [k for k in out if k.endswith("/total")]:
            phase = key.split("/")[0]
            parts = sum(v for k, v in out.items() if k.startswith(phase + "/") and not k.endswith("/total"))
            out[f"{phase}/other"] = out[key] - parts
        return dict(sorted(out.items()))

    def reset(self) -> None:
        self.seconds.clear()


@dataclass
class BareConfig:
    samples_per_epoch: int = 64
    sample_batch: int = 16
    batch_size: int = 16
    learning_rate: float = 2e-4
    clip_range: float = 1e-3
    adv_clip: float = 5.0
    max_grad_norm: float = 1.0
    steps_per_pass: int = 1  # 0: all T steps of a micro-batch in one pass (as the agent's steps_per_pass)
    seed: int = 0


class BareDDPO:
    """DDPO-IS over a backend's UNet (all of it trainable, or a LoRA adapter already added to it)."""

    def __init__(self, backend: DiffusionBackend, schedule: DDIMSchedule, prompts: list[str], guidance_scale: float,
                 reward_fn: Callable[[np.ndarray, list[str]], np.ndarray], config: BareConfig) -> None:
        self.backend, self.schedule, self.config = backend, schedule, config
        self.prompts, self.guidance_scale, self.reward_fn = prompts, guidance_scale, reward_fn
        self.device = backend.device
        self.shape = backend.latent_shape(None)  # (C, h, w) of x_t
        self.embeds = backend.encode_prompts(prompts)  # (P, L, D), encoded once
        self.negative = backend.encode_prompts([""])
        self.params = [p for p in backend.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=1e-4)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.cpu_generator = torch.Generator().manual_seed(config.seed)

    def model_output(self, x: torch.Tensor, t: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
        autocast = (contextlib.nullcontext() if self.backend.dtype == torch.float32
                    else torch.autocast(self.device.type, dtype=self.backend.dtype))
        with autocast:
            out = guided_model_output(self.backend, x, t, self.embeds[prompt_idx], self.negative,
                                      self.guidance_scale)
        return out.float()

    @torch.no_grad()
    def sample(self) -> dict[str, torch.Tensor]:
        """Trajectories: latents (N, T+1, ...), log_probs (N, T), prompt indices (N,), rewards (N,)."""
        cfg, T = self.config, self.schedule.num_steps
        latents, log_probs, prompt_idx, rewards = [], [], [], []
        for _ in range(cfg.samples_per_epoch // cfg.sample_batch):
            idx = torch.randint(len(self.prompts), (cfg.sample_batch,), generator=self.cpu_generator).to(self.device)
            x = torch.randn((cfg.sample_batch, *self.shape), generator=self.generator, device=self.device)
            trajectory, logp = [x], []
            for k in range(T):
                t = self.schedule.timesteps[k].repeat(cfg.sample_batch).to(self.device)
                out = ddim_step(self.model_output(x, t, idx), t, x, self.schedule, generator=self.generator)
                x = out.prev_sample
                trajectory.append(x)
                logp.append(out.log_prob)
            images = (self.backend.decode(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            rewards.append(torch.as_tensor(self.reward_fn(images, [self.prompts[i] for i in idx.tolist()])))
            latents.append(torch.stack(trajectory, 1))
            log_probs.append(torch.stack(logp, 1))
            prompt_idx.append(idx)
        return {"latents": torch.cat(latents), "log_probs": torch.cat(log_probs), "prompt_idx": torch.cat(prompt_idx),
                "rewards": torch.cat(rewards).float()}

    def train(self, batch: dict[str, torch.Tensor]) -> None:
        cfg, T = self.config, self.schedule.num_steps
        rewards = batch["rewards"]
        advantages = ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)).clamp(-cfg.adv_clip,
                                                                                                 cfg.adv_clip)
        advantages = advantages.to(self.device)
        n = rewards.numel()
        order = torch.randperm(n, generator=self.cpu_generator)
        step_order = torch.stack([torch.randperm(T, generator=self.cpu_generator) for _ in range(n)])
        group = cfg.steps_per_pass or T
        timesteps = self.schedule.timesteps.to(self.device)
        for first in range(0, n, cfg.batch_size):
            chunk = order[first:first + cfg.batch_size]
            for j in range(0, T, group):
                k = min(group, T - j)
                rows = chunk.repeat(k).to(self.device)
                steps = step_order[chunk, j:j + k].T.reshape(-1).to(self.device)
                x, x_prev = batch["latents"][rows, steps], batch["latents"][rows, steps + 1]
                t = timesteps[steps]
                out = ddim_step(self.model_output(x, t, batch["prompt_idx"][rows]), t, x, self.schedule,
                                prev_sample=x_prev)
                loss, _ = ppo_clip_loss(out.log_prob, batch["log_probs"][rows, steps], advantages[rows],
                                        cfg.clip_range)
                (loss * k / T).backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def epoch(self, timers: Timers | None = None) -> float:
        """One sampling + training epoch; returns the batch's mean reward."""
        timers = timers or Timers(self.device)
        with timers.phase("sampling"):
            batch = self.sample()
        with timers.phase("training"):
            self.train(batch)
        return float(batch["rewards"].mean())
