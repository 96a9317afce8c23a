"""The embedded ``shapes`` model: a text-to-image diffusion model of compositional scenes (1–4 coloured circles,
squares and triangles; :mod:`ddpo_env.scenes`) from free-text prompts in GenEval's six categories.

The default model's code path at 32×32 RGB: the frozen MiniLM-L6 sentence encoder conditions a
``UNet2DConditionModel`` through cross-attention at 8×8 and 4×4, in pixel space, on Stable Diffusion's noise
schedule.
Trained briefly on purpose (``python -m ddpo_env.models.train_shapes``, 39 min on 2 CPU cores): it draws
shapes and colours but often miscounts, misplaces and mis-binds them, which leaves room for RL with the ``geneval``
reward. Files: ``ddpo_env/models/shapes/`` (``unet.safetensors``, ``model_index.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpo_env.scenes import IMAGE_SIZE

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"

UNET_CONFIG: dict = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}


def build_unet(seed: int = 0):
    """The shapes model's UNet2DConditionModel with fresh weights (≈2.4M parameters)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)
