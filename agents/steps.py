"""Which denoising steps an agent samples stochastically and trains on, and each trained step's likelihood weight: the
config's skipped steps, MixGRPO's SDE window (``sde_window``) and the step weights (:mod:`agents.step_weights`).
:class:`agents.base.DiffusionAgent` inherits these methods."""

from __future__ import annotations

import math

import torch


class TrainedSteps:
    """The step methods of :class:`agents.base.DiffusionAgent` (see the module docstring)."""

    def trainable_steps(self) -> range:
        """Step indices k this agent trains on in the current epoch: the config's skip_first_steps / skip_last_steps
        left out, and with ``sde_window`` only the window's steps."""
        steps = self.config.trainable_steps(self.num_steps)
        window = getattr(self.config, "sde_window", 0)
        if not window:
            return steps
        every = self.config.sde_window_shift_every
        start = steps.start + ((self.num_epochs // every) % (len(steps) - window + 1) if every else 0)
        return range(start, start + window)

    def stochastic_step(self, k: int) -> bool:
        """Whether the rollout samples step k from the policy's Gaussian (else the deterministic ODE step): every
        step, or with ``sde_window`` the window's."""
        return not getattr(self.config, "sde_window", 0) or k in self.trainable_steps()

    def train_timesteps(self) -> int:
        """Timesteps trained per sample and inner epoch: ⌈(trainable steps) · timestep_fraction⌉ (at least 1)."""
        return max(1, math.ceil(len(self.trainable_steps()) * self.config.timestep_fraction - 1e-9))

    def step_weight(self, steps: torch.Tensor) -> torch.Tensor | float:
        """The likelihood weight w_k of each transition's step index k (B,) under the config's ``step_weights``
        (:mod:`agents.step_weights`); 1.0 when uniform or for an agent without the setting."""
        if self._step_weights is None:
            return 1.0
        return self._step_weights[steps]
