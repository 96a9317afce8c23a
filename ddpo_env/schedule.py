"""What the env and the agents need of a noise schedule, written once for DDIM (:mod:`ddpo_env.ddim`) and flow
matching (:mod:`ddpo_env.flow`): a :class:`Schedule` maps an observation's integer timestep key to its step, gives
the step's Gaussian policy (``step``), its std, the deterministic ODE step, the network's timestep input and the
(noisy sample, timestep, target) pairs of the model's own training loss (reward-weighted regression uses them), at
random timesteps or at the episode's own (``forward_noise``, with ``original_sample`` its inverse: DiffusionNFT, AWM).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ddpo_env.ddim import DDIMSchedule
from ddpo_env.flow import FLOW_SCHEDULERS, FlowMatchSchedule


class Schedule(Protocol):
    timesteps: torch.Tensor  # (T,) int64 observation keys, decreasing
    eta: float
    num_train_timesteps: int

    @property
    def num_steps(self) -> int: ...

    @property
    def max_timestep(self) -> int: ...

    def step_index(self, timesteps: torch.Tensor) -> torch.Tensor: ...

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor: ...

    def std(self, timesteps: torch.Tensor, ndim: int, device: Any, dtype: torch.dtype) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, **kwargs: Any
             ) -> Any: ...

    def ode_step(self, out: Any, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...

    def training_pair(self, x0: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def forward_noise(self, x0: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def original_sample(self, model_output: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor
                        ) -> torch.Tensor: ...


def is_flow_scheduler(config: Any) -> bool:
    """Whether a diffusers scheduler config is a flow-matching one (by its ``_class_name``)."""
    return dict(config).get("_class_name") in FLOW_SCHEDULERS


def make_schedule(config: Any, num_steps: int, eta: float | None) -> DDIMSchedule | FlowMatchSchedule:
    """The episode's schedule for a diffusers scheduler config: the flow SDE for a flow-matching scheduler
    (``eta`` = its noise level a, default 0.7), DDIM for any other (``eta`` = η, default 1.0)."""
    if is_flow_scheduler(config):
        return FlowMatchSchedule.from_scheduler_config(config, num_steps, 0.7 if eta is None else eta)
    return DDIMSchedule.from_scheduler_config(config, num_steps, 1.0 if eta is None else eta)
