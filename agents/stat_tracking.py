"""Per-prompt reward normalisation (DDPO §5 / appendix: "per-prompt stat tracking").

For each prompt c the tracker keeps the last ``buffer_size`` rewards it has seen; a reward r of prompt c gets the
advantage A = (r − μ_c) / (σ_c + ε), where (μ_c, σ_c) are over that buffer once it holds ``min_count`` rewards,
and over the whole current batch before then (the batch fallback). Its state is part of a checkpoint.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

EPS = 1e-6


class PerPromptStatTracker:
    """Advantages normalised per prompt.

    Args:
        buffer_size: rewards remembered per prompt (DDPO: 16–32).
        min_count: rewards a prompt needs before its own statistics replace the batch's (DDPO: 16).
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16) -> None:
        if buffer_size < 1 or min_count < 1 or min_count > buffer_size:
            raise ValueError(
                f"need 1 <= min_count <= buffer_size, got buffer_size={buffer_size}, min_count={min_count}"
            )
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """Add this batch's rewards (N,) of ``prompts`` (N) and return their advantages (N,) float64."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if len(prompts) != len(rewards):
            raise ValueError(f"got {len(prompts)} prompts for {len(rewards)} rewards")
        batch_mean, batch_std = rewards.mean(), rewards.std()
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # unique, in order of first appearance
            members = np.array([p == prompt for p in prompts])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[members].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = float(np.mean(buffer)), float(np.std(buffer))
            advantages[members] = (rewards[members] - mean) / (std + EPS)
        return advantages

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {k: list(v) for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_size, self.min_count = int(state["buffer_size"]), int(state["min_count"])
        self.buffers = {k: deque(v, maxlen=self.buffer_size) for k, v in state["buffers"].items()}
