"""Rewards for DenoisingDiffusion-v0: plain scorers that rate the terminal image (``scorer(images, prompts)``) and
thin wrappers that add a scorer's score to the env's reward at the last step, in Gymnasium's two forms.

    env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=16), JpegCompressibility(upscale=4))
    env = add_reward(gym.make("DenoisingDiffusion-v0"), "digit_margin")     # by name; single or vector env

Imports ``ddpo_env``, never ``agents``. ``import rewards`` loads the wrappers and the scorer base at once and each
built-in scorer on first use, so it imports no torch.
"""

from __future__ import annotations

from ddpo_env.lazy import lazy_attributes
from rewards.combine import add_reward, builtin_rewards, make_scorer, resolve_reward, weighted_sum
from rewards.scorer import (
    FunctionScorer,
    NonFiniteRewardError,
    RewardError,
    RewardShapeError,
    RewardTypeError,
    Scorer,
    checked_scores,
)
from rewards.wrappers import TerminalReward, VectorTerminalReward, from_callable, wrap_reward

#: The scorers' names → their modules, imported on first access (PEP 562): several import torch or load models, and
#: ``import rewards`` (the wrappers, ``RewardError``) needs none of them.
_LAZY = {
    "AestheticScore": "rewards.aesthetic",
    "AlignmentConfig": "rewards.alignment",
    "AlignmentScorer": "rewards.alignment",
    "PromptAlignment": "rewards.alignment",
    "DigitAlignment": "rewards.digits",
    "DigitMargin": "rewards.digits",
    "digit_agreement": "rewards.digits",
    "prompted_digit": "rewards.digits",
    "GenEval": "rewards.geneval",
    "GenEvalBinary": "rewards.geneval",
    "GenEvalStrict": "rewards.geneval",
    "Verdict": "rewards.geneval",
    "geneval_accuracy": "rewards.geneval",
    "verify": "rewards.geneval",
    "JpegCompressibility": "rewards.jpeg",
    "JpegIncompressibility": "rewards.jpeg",
    "jpeg_size_kb": "rewards.jpeg",
}
#: The built-in scorers by name (``add_reward(env, name)``, ``--reward name``), built on first access.
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, {"REWARDS": builtin_rewards})

__all__ = [
    "REWARDS",
    "AestheticScore",
    "AlignmentConfig",
    "AlignmentScorer",
    "DigitAlignment",
    "DigitMargin",
    "FunctionScorer",
    "GenEval",
    "GenEvalBinary",
    "GenEvalStrict",
    "JpegCompressibility",
    "JpegIncompressibility",
    "NonFiniteRewardError",
    "PromptAlignment",
    "RewardError",
    "RewardShapeError",
    "RewardTypeError",
    "Scorer",
    "TerminalReward",
    "VectorTerminalReward",
    "Verdict",
    "add_reward",
    "checked_scores",
    "digit_agreement",
    "from_callable",
    "geneval_accuracy",
    "jpeg_size_kb",
    "make_scorer",
    "prompted_digit",
    "resolve_reward",
    "verify",
    "weighted_sum",
    "wrap_reward",
]
