"""Rewards as env wrappers over DenoisingDiffusion-v0: they score the terminal image in ``info["image"]`` and add
the score to the reward. ``env = JpegCompressibility(gym.make_vec(...))``. Imports ``ddpo_env``, never ``agents``.
"""

from rewards.aesthetic import AestheticScore
from rewards.alignment import AlignmentScorer, PromptAlignment
from rewards.base import RewardError, SingleEnvReward, TerminalReward
from rewards.callable import CallableReward, from_callable
from rewards.combine import weighted_sum
from rewards.digits import DigitAlignment, DigitMargin, digit_agreement, prompted_digit
from rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb

REWARDS: dict[str, type[TerminalReward]] = {
    "jpeg_compressibility": JpegCompressibility,
    "jpeg_incompressibility": JpegIncompressibility,
    "digit_alignment": DigitAlignment,
    "digit_margin": DigitMargin,
    "aesthetic": AestheticScore,
    "alignment": PromptAlignment,
}


def make_reward(name: str, env, **kwargs) -> TerminalReward:
    """Wrap ``env`` with the reward called ``name`` (see ``REWARDS``)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(REWARDS)}")
    return REWARDS[name](env, **kwargs)


__all__ = [
    "REWARDS",
    "AestheticScore",
    "AlignmentScorer",
    "CallableReward",
    "DigitAlignment",
    "DigitMargin",
    "JpegCompressibility",
    "JpegIncompressibility",
    "PromptAlignment",
    "RewardError",
    "SingleEnvReward",
    "TerminalReward",
    "digit_agreement",
    "from_callable",
    "jpeg_size_kb",
    "make_reward",
    "prompted_digit",
    "weighted_sum",
]
