"""Stable Diffusion 1/2 pipelines (and the tiny random one built for tests) as backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddpo_env.backends.base import DiffusionBackend


class StableDiffusionBackend(DiffusionBackend):
    """A diffusers ``StableDiffusionPipeline``: CLIP text encoder, VAE latent space, cross-attention UNet."""

    default_num_steps = 50
    default_guidance_scale = 5.0
    default_prompts = ("a cat", "a dog", "a horse", "a monkey", "a rabbit", "a zebra", "a spider", "a bird")

    def __init__(self, pipeline: Any, name: str = "stable-diffusion") -> None:
        self.pipeline = pipeline
        self.name = name
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.scheduler_config = dict(pipeline.scheduler.config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.device = self.unet.device
        self.dtype = self.unet.dtype

    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        native = self.unet.config.sample_size * self.vae_scale_factor
        height, width = image_size if image_size is not None else (native, native)
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(
                f"image_size {(height, width)} must be positive multiples of the VAE factor {f} "
                f"(the native size of this model is {native})"
            )
        return (self.unet.config.in_channels, height // f, width // f)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(scaled).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> StableDiffusionBackend:
        device = torch.device(device)
        for module in (self.unet, self.vae, self.text_encoder):
            if module.device != device or module.dtype != dtype:  # diffusers warns on every cast
                module.to(device=device, dtype=dtype)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"StableDiffusionBackend({self.name!r}, device={self.device}, dtype={self.dtype})"


class TinyBackend(StableDiffusionBackend):
    """The random tiny Stable Diffusion of :mod:`ddpo_env.models.tiny` (4×8×8 latents, 16×16 images)."""

    default_num_steps = 20
    default_guidance_scale = 1.0
    default_prompts = tuple(f"a handwritten digit {d}" for d in range(10))

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        from ddpo_env.models.tiny import build_tiny_pipeline

        super().__init__(build_tiny_pipeline(seed, **kwargs), name=f"tiny(seed={seed})")
