"""Scorers: plain objects that rate terminal images, ``scorer(images, prompts) -> (B,) floats``.

A scorer knows nothing of Gymnasium; :mod:`rewards.wrappers` adds its score to an env's reward. Any callable
``fn(images, prompts)`` is a scorer; subclass :class:`Scorer` for a name and options. ``images`` are uint8 arrays
(B, H, W, 3) — what the env puts in ``info["image"]`` — and ``prompts`` a list of B strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

ScoreFn = Callable[[np.ndarray, list[str]], Any]


class RewardError(RuntimeError):
    """A reward failed on a rollout's images: its scorer raised (the original error chained) or returned something
    other than one finite float per image. The message names the reward and what it raised or returned, so a
    training run can stop on one line (``ddpo train`` does; ``--debug`` shows the traceback)."""


class RewardTypeError(RewardError, TypeError):
    """A scorer returned no array of numbers (also a TypeError)."""


class RewardShapeError(RewardError, ValueError):
    """A scorer returned an array of the wrong shape (also a ValueError)."""


class NonFiniteRewardError(RewardError, FloatingPointError):
    """A scorer returned NaN or Inf (also a FloatingPointError, like the agents' other non-finite values)."""


class Scorer:
    """Base of the built-in scorers: a ``name`` (the info key is ``reward_<name>``) and ``__call__``."""

    name: ClassVar[str] = "reward"

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Rewards (B,) for uint8 images (B, H, W, 3) and their prompts."""
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> Scorer:
        # Shared like a function, never copied: a scorer may hold large models, and Gymnasium deep-copies the
        # wrappers' recorded arguments each time it builds an env's spec.
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FunctionScorer(Scorer):
    """A function ``fn(images, prompts) -> (B,)`` as a scorer called ``name`` (default: the function's name)."""

    def __init__(self, fn: ScoreFn, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a reward function needs the form fn(images, prompts) -> rewards, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or scorer_name(fn)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.fn(images, prompts)

    def __repr__(self) -> str:
        return f"FunctionScorer({getattr(self.fn, '__qualname__', self.fn)!r}, name={self.name!r})"


def scorer_name(scorer: Any) -> str:
    """The name a scorer's values go under in info (``reward_<name>``)."""
    return str(getattr(scorer, "name", None) or getattr(scorer, "__name__", None) or type(scorer).__name__)


def checked_scores(scorer: Any, images: np.ndarray, prompts: list[str], name: str | None = None) -> np.ndarray:
    """``scorer(images, prompts)`` as (B,) finite float64, else a :class:`RewardError` that names the reward: a
    scorer that raises is re-raised as one (the original chained); a wrong type, shape or a NaN/Inf raises
    :class:`RewardTypeError`, :class:`RewardShapeError` or :class:`NonFiniteRewardError` (also TypeError,
    ValueError and FloatingPointError)."""
    name = name or scorer_name(scorer)
    try:
        values = scorer(images, prompts)
    except Exception as error:
        raise RewardError(f"reward {name!r} raised {type(error).__name__}: {error}") from error
    if not isinstance(values, (np.ndarray, list, tuple)) and not hasattr(values, "__array__"):
        raise RewardTypeError(f"reward {name!r} returned {type(values).__name__}, expected an array of floats")
    values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if values.dtype == object or not np.issubdtype(values.dtype, np.number):
        raise RewardTypeError(f"reward {name!r} returned dtype {values.dtype}, expected floats")
    if values.shape != (len(images),):
        raise RewardShapeError(f"reward {name!r} returned shape {values.shape} for {len(images)} images, "
                         f"expected ({len(images)},)")
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values)).tolist()
        raise NonFiniteRewardError(f"reward {name!r} returned NaN or Inf for sample(s) {bad}")
    return values.astype(np.float64)
