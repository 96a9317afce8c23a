"""Stable Diffusion 3 (flow matching) as a backend: the env steps it with the flow SDE of :mod:`ddpo_env.flow`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddpo_env.backends.base import DiffusionBackend
from ddpo_env.backends.sd import StableDiffusionBackend


class StableDiffusion3Backend(DiffusionBackend):
    """A diffusers ``StableDiffusion3Pipeline`` (flow matching): CLIP-L/G (+ optional T5) text encoders, an MMDiT
    transformer (the trainable network, ``unet`` here) in a VAE's latent space, ``FlowMatchEulerDiscreteScheduler``.

    Conditioning is one tensor like SD's: the token embeddings (B, L, D) followed by the pooled CLIP embedding
    (B, P), zero-padded to m·D and folded into m extra tokens; :meth:`predict` unfolds it for the transformer.
    """

    default_num_steps = 10  # Flow-GRPO trains SD3.5 on 10 SDE steps
    default_guidance_scale = 4.5
    default_prompts = StableDiffusionBackend.default_prompts
    max_sequence_length = 256  # T5 tokens (zeros without T5), as the pipeline's default

    def __init__(self, pipeline: Any, name: str = "stable-diffusion-3") -> None:
        self.pipeline = pipeline
        self.name = name
        self.unet = pipeline.transformer
        self.vae = pipeline.vae
        self.text_encoders = [e for e in (pipeline.text_encoder, pipeline.text_encoder_2,
                                          getattr(pipeline, "text_encoder_3", None)) if e is not None]
        self.scheduler_config = {**dict(pipeline.scheduler.config), "_class_name": type(pipeline.scheduler).__name__}
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pooled_dim = int(self.unet.config.pooled_projection_dim)
        self.embed_dim = int(self.unet.config.joint_attention_dim)
        self.pooled_tokens = -(-self.pooled_dim // self.embed_dim)  # m
        for module in (self.vae, *self.text_encoders):
            module.requires_grad_(False)
            module.eval()
        self.device, self.dtype = self.unet.device, self.unet.dtype

    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        native = self.unet.config.sample_size * self.vae_scale_factor
        height, width = image_size if image_size is not None else (native, native)
        f = self.vae_scale_factor * self.unet.config.patch_size
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"image_size {(height, width)} must be positive multiples of {f} (VAE factor × patch "
                             f"size; the native size of this model is {native})")
        return (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        folded = torch.nn.functional.pad(pooled, (0, self.pooled_tokens * self.embed_dim - self.pooled_dim))
        return torch.cat([embeds, folded.reshape(len(prompts), self.pooled_tokens, self.embed_dim)], 1).to(self.dtype)

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """The velocity v̂ for x_σ (B, C, h, w) at the network timesteps σ·N (B,), conditioning as encoded."""
        m = self.pooled_tokens
        tokens, folded = encoder_hidden_states[:, :-m], encoder_hidden_states[:, -m:]
        pooled = folded.reshape(folded.shape[0], -1)[:, : self.pooled_dim]
        with self.autocast():
            out = self.network(hidden_states=latents.to(self.dtype), timestep=timesteps,
                               encoder_hidden_states=tokens.to(self.dtype), pooled_projections=pooled.to(self.dtype),
                               return_dict=False)[0]
        return out.to(latents.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        scaled = latents.to(self.device, self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        return (self.vae.decode(scaled).sample.float() / 2 + 0.5).clamp(0, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> StableDiffusion3Backend:
        device = torch.device(device)
        for module in (self.unet, self.vae, *self.text_encoders):
            if module.device != device or module.dtype != dtype:
                module.to(device=device, dtype=dtype)
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"StableDiffusion3Backend({self.name!r}, device={self.device}, dtype={self.dtype})"


class TinySD3Backend(StableDiffusion3Backend):
    """The random tiny SD3 of :func:`ddpo_env.models.tiny.build_tiny_sd3_pipeline` (4×8×8 latents, 16×16 images)."""

    max_sequence_length = 16

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        from ddpo_env.models.tiny import build_tiny_sd3_pipeline

        super().__init__(build_tiny_sd3_pipeline(seed, **kwargs), name=f"tiny-sd3(seed={seed})")


def is_sd3_pipeline(model: Any) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(model, DiffusionPipeline) and all(
        hasattr(model, part) for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")
    )
