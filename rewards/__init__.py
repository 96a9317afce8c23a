"""Rewards for DenoisingDiffusion-v0: plain scorers that rate the terminal image (``scorer(images, prompts)``) and
thin wrappers that add a scorer's score to the env's reward at the last step, in Gymnasium's two forms.

    env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=16), JpegCompressibility(upscale=4))
    env = add_reward(gym.make("DenoisingDiffusion-v0"), "digit_margin")     # by name; single or vector env

Imports ``ddpo_env``, never ``agents``.
"""

from rewards.aesthetic import AestheticScore
from rewards.alignment import AlignmentConfig, AlignmentScorer, PromptAlignment
from rewards.combine import add_reward, make_scorer, resolve_reward, weighted_sum
from rewards.digits import DigitAlignment, DigitMargin, digit_agreement, prompted_digit
from rewards.geneval import GenEval, GenEvalBinary, GenEvalStrict, Verdict, geneval_accuracy, verify
from rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb
from rewards.scorer import FunctionScorer, RewardError, Scorer, checked_scores
from rewards.wrappers import TerminalReward, VectorTerminalReward, from_callable, wrap_reward

#: The built-in scorers by name (``add_reward(env, name, **options)``, ``ddpo train --reward name``).
REWARDS: dict[str, type[Scorer]] = {
    "jpeg_compressibility": JpegCompressibility,
    "jpeg_incompressibility": JpegIncompressibility,
    "digit_alignment": DigitAlignment,
    "digit_margin": DigitMargin,
    "aesthetic": AestheticScore,
    "alignment": PromptAlignment,
    "geneval": GenEval,
    "geneval_binary": GenEvalBinary,
    "geneval_strict": GenEvalStrict,
}

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
    "PromptAlignment",
    "RewardError",
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
