"""A user's own reward in one line: ``env = from_callable(env, fn)`` with ``fn(images, prompts) -> (B,) floats``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rewards.base import TerminalReward

RewardFn = Callable[[np.ndarray, list[str]], Any]


class CallableReward(TerminalReward):
    """Wraps ``fn(images uint8 (B, H, W, 3), prompts list[str]) -> (B,)`` as a terminal reward called ``name``."""

    def __init__(self, env: Any, fn: RewardFn, *, name: str | None = None, weight: float = 1.0) -> None:
        if not callable(fn):
            raise TypeError(f"from_callable needs a function fn(images, prompts) -> rewards, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        super().__init__(env, weight=weight, fn=fn, name=self.name)

    def score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.fn(images, prompts)


def from_callable(env: Any, fn: RewardFn, *, name: str | None = None, weight: float = 1.0) -> Any:
    """``env`` with ``fn``'s score added at the terminal step (vector or single env)."""
    return CallableReward(env, fn, name=name, weight=weight)
