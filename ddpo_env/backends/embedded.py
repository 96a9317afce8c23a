"""The embedded models (MiniLM text encoder, cross-attention UNet, pixel space) as a backend: the default digits
model, the shapes model, and any model trained like them into a folder."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

from ddpo_env.backends.base import DiffusionBackend


class EmbeddedBackend(DiffusionBackend):
    """An embedded model (the default digits model, the shapes model) or one trained like them into a folder
    (:mod:`ddpo_env.models.embedded`): pixel space, so x_0 is the image itself.

    Args:
        folder: the model's folder (``unet.safetensors``, ``model_index.json``).
        name: for reprs and checkpoints; default ``"<world>(<folder>)"``.
        default_prompts: the prompts an env draws from when given none (:func:`ddpo_env.backends.load_backend`
            gives a folder those of the registered task of its world, ``model_index.json``'s "world").
    """

    default_num_steps = 20
    default_guidance_scale = 1.0

    def __init__(self, folder: str | os.PathLike, name: str | None = None,
                 default_prompts: Sequence[str] | None = None) -> None:
        from ddpo_env.models.embedded import load_unet, read_model_index

        index = read_model_index(folder)
        self.world = index.get("world", "digits")  # what the model draws: "digits" or "shapes"
        self.name = name or f"{self.world}({folder})"
        self.unet = load_unet(folder)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.scheduler_config = dict(index["scheduler"])
        self.image_size = int(index["image_size"])
        self.default_prompts = tuple(default_prompts or ())
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

    def to(self, device: torch.device | str, dtype: torch.dtype) -> EmbeddedBackend:
        if self.unet.device != torch.device(device) or self.unet.dtype != dtype:  # diffusers warns on every cast
            self.unet.to(device=device, dtype=dtype)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"EmbeddedBackend({self.name!r}, device={self.device}, dtype={self.dtype})"


@functools.lru_cache(maxsize=4)
def _shared_minilm(device: str):
    """The frozen MiniLM encoder on ``device``, loaded once per process and shared by every env (it never trains)."""
    from ddpo_env.models.embedded import MiniLMTextEncoder

    return MiniLMTextEncoder(device)
