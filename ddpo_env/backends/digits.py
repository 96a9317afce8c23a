"""The embedded models (MiniLM text encoder, cross-attention UNet, pixel space) as a backend: the default one
(handwritten digits) and the ``shapes`` one (compositional scenes of coloured shapes)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

from ddpo_env.backends.base import DiffusionBackend


class DigitsBackend(DiffusionBackend):
    """An embedded model (:mod:`ddpo_env.models.digits`, :mod:`ddpo_env.models.shapes`) or one trained like them
    into a folder: pixel space, so x_0 is the image itself.
    Default prompts: "a handwritten digit 0".."9", or for a shapes model the shapes world's fixed training prompts
    (:func:`ddpo_env.scenes.prompt_set`)."""

    default_num_steps = 20
    default_guidance_scale = 1.0

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        from ddpo_env.models import digits, shapes

        folder = folder if folder is not None else digits.DEFAULT_DIR
        index = digits.read_model_index(folder)
        self.world = index.get("world", "digits")  # what the model draws: "digits" or "shapes"
        names = {digits.DEFAULT_DIR: "default", shapes.SHAPES_DIR: "shapes"}
        self.name = names.get(folder, f"{self.world}({folder})")
        self.unet = digits.load_unet(folder)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.scheduler_config = dict(index["scheduler"])
        self.image_size = int(index["image_size"])
        if self.world == "shapes":  # RL trains on the fixed training prompts, never a held-out one
            from ddpo_env.scenes import prompt_set

            self.default_prompts = prompt_set("train")
        else:
            self.default_prompts = tuple(digits.prompt_for(d, "a handwritten digit {n}") for d in range(10))
        self.device, self.dtype = self.unet.device, self.unet.dtype

    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        size = self.image_size
        if image_size is not None and tuple(image_size) != (size, size):
            raise ValueError(
                f"the {self.name} model makes {size}x{size} images only, got image_size {tuple(image_size)}"
            )
        return (self.unet.config.in_channels, size, size)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder(prompts).to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = (latents.float() / 2 + 0.5).clamp(0, 1)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def to(self, device: torch.device | str, dtype: torch.dtype) -> DigitsBackend:
        if self.unet.device != torch.device(device) or self.unet.dtype != dtype:  # diffusers warns on every cast
            self.unet.to(device=device, dtype=dtype)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"DigitsBackend({self.name!r}, device={self.device}, dtype={self.dtype})"


@functools.lru_cache(maxsize=4)
def _shared_minilm(device: str):
    """The frozen MiniLM encoder on ``device``, loaded once per process and shared by every env (it never trains)."""
    from ddpo_env.models.digits import MiniLMTextEncoder

    return MiniLMTextEncoder(device)
