"""Agents that train a diffusion policy on DenoisingDiffusion-v0 (issue #4): DDPO-IS, DDPO-SF, RWR.
Imports ``ddpo_env`` and ``rewards``."""
