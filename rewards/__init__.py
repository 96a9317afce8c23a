"""Rewards as env wrappers over DenoisingDiffusion-v0: they score the terminal image in ``info["image"]`` and add
the score to the reward. ``env = JpegCompressibility(gym.make_vec(...))``. Imports ``ddpo_env``, never ``agents``.
"""

from rewards.base import SingleEnvReward, TerminalReward
from rewards.callable import CallableReward, from_callable
from rewards.digits import DigitAlignment, prompted_digit
from rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb

__all__ = [
    "CallableReward",
    "DigitAlignment",
    "JpegCompressibility",
    "JpegIncompressibility",
    "SingleEnvReward",
    "TerminalReward",
    "from_callable",
    "jpeg_size_kb",
    "prompted_digit",
]
