"""What the env and the agents need of a noise schedule, written once for DDIM (:mod:`ddpo_env.ddim`) and flow
matching (:mod:`ddpo_env.flow`): a :class:`Schedule` maps an observation's integer timestep key to its step, gives
the step's Gaussian policy (``step``), its std, the deterministic ODE step, the network's timestep input and the
(noisy sample, timestep, target) pairs of the model's own training loss (reward-weighted regression uses them).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch


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


def check_eta(eta: Any, message: str) -> None:
    """The noise level must be a finite number > 0 (at 0 a step is deterministic: no log-probability)."""
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
        raise ValueError(message)


def match_step_index(timesteps: torch.Tensor, table: torch.Tensor, what: str) -> torch.Tensor:
    """Step indices k with ``table[k] == timesteps`` (any shape); a key not in the table is a ValueError."""
    t = torch.as_tensor(timesteps, dtype=torch.int64).cpu()
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
