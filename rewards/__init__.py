"""Rewards as env wrappers over DenoisingDiffusion-v0 (issue #5): they score the terminal image in
``info["image"]`` and add the score to the reward. Imports ``ddpo_env``, never ``agents``."""
