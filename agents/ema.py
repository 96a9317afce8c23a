"""Exponential moving average of the trainable weights (Flow-GRPO, DanceGRPO), for evaluation and export.

Every ``update_interval`` optimizer steps:   θ_ema ← decay · θ_ema + (1 − decay) · θ
The average starts at the initial weights. :meth:`EMA.applied` swaps it into the model for a block (evaluation,
export) and swaps the trained weights back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """EMA of ``params`` (the policy's trainable parameters).

    Args:
        params: the parameters to average (their order is the state's order).
        decay: in [0, 1); 0.99 averages over ~100 updates.
        update_interval: optimizer steps between updates (≥ 1).
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float, update_interval: int = 1) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        if not isinstance(update_interval, int) or update_interval < 1:
            raise ValueError(f"ema update_interval must be a positive int, got {update_interval!r}")
        self.params = list(params)
        self.decay, self.update_interval = float(decay), update_interval
        self.shadow = [p.detach().clone() for p in self.params]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Fold in the current weights if optimizer step number ``step`` (1, 2, …) is due; returns whether it was."""
        if step % self.update_interval:
            return False
        for average, param in zip(self.shadow, self.params, strict=True):
            average.lerp_(param.detach().to(average.dtype), 1 - self.decay)
        self.num_updates += 1
        return True

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block; the trained ones back after it (also on error)."""
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for param, average in zip(self.params, self.shadow, strict=True):
                    param.copy_(average)
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved, strict=True):
                    param.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "update_interval": self.update_interval, "num_updates": self.num_updates,
                "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"the saved EMA has {len(state['shadow'])} tensors, this policy {len(self.shadow)}: "
                             "build the agent with the saved run's model and lora_rank")
        self.decay, self.update_interval = float(state["decay"]), int(state["update_interval"])
        self.num_updates = int(state["num_updates"])
        for average, saved in zip(self.shadow, state["shadow"], strict=True):
            average.copy_(saved)
