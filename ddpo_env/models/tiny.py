"""A tiny Stable Diffusion pipeline built from configs with random weights, offline and in about a second.

It has Stable Diffusion's architecture in miniature (CLIP text encoder → cross-attention UNet in a VAE's
latent space, DDIM schedule with SD's betas and ``steps_offset=1``), so every code path the env and the
agents run on real SD runs on it too: tests, smoke runs, and the env's default until the trained embedded
model ships. Latents are 4×8×8 and images 16×16 RGB at the default ``sample_size=8``.
"""

from __future__ import annotations

import torch

#: Stable Diffusion v1's noise schedule and DDIM settings (its scheduler_config.json), minus the class name.
SD_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def tiny_tokenizer(model_max_length: int = 77):
    """A CLIP BPE tokenizer with one token per printable ASCII character (no merges), built without files; 77
    tokens like CLIP's, so that prompts that differ after their first words still condition differently."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(33, 127)]
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_tiny_pipeline(
    seed: int = 0, *, sample_size: int = 8, prediction_type: str = "epsilon", scheduler_overrides: dict | None = None
):
    """A random-weight ``StableDiffusionPipeline`` (≈0.5M parameters) with a DDIM scheduler.

    Args:
        seed: fixes every weight, so two calls give identical pipelines.
        sample_size: latent height and width (images are twice that).
        prediction_type: the UNet's parameterisation ("epsilon" or "v_prediction").
        scheduler_overrides: entries that replace :data:`SD_SCHEDULER_CONFIG` ones.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=32,
            sample_size=sample_size * 2,
        )
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    scheduler = DDIMScheduler(
        **{**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type, **(scheduler_overrides or {})}
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


#: Stable Diffusion 3's flow-matching scheduler config (its scheduler_config.json), minus the class name.
SD3_SCHEDULER_CONFIG: dict = {"num_train_timesteps": 1000, "shift": 3.0}


def build_tiny_sd3_pipeline(seed: int = 0, *, sample_size: int = 8):
    """A random-weight ``StableDiffusion3Pipeline`` (MMDiT transformer, two CLIP text encoders with projections,
    no T5 — the pipeline then uses zeros for its embeddings, as diffusers allows — a 4-channel VAE with SD3's
    scaling and shift factors, and SD3's flow-matching scheduler), built offline from configs. Latents are
    4×sample_size², images twice that."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
            pooled_projection_dim=64, pos_embed_max_size=2 * sample_size,
        )  # fmt: skip
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=32,
            sample_size=sample_size * 2, scaling_factor=1.5305, shift_factor=0.0609,
        )  # fmt: skip
        tokenizers = [tiny_tokenizer(), tiny_tokenizer()]
        encoders = [
            CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(tokenizers[0]), hidden_size=32, intermediate_size=37, projection_dim=32,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizers[0].model_max_length,
                bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
            ))
            for _ in range(2)
        ]  # fmt: skip
    for module in (transformer, vae, *encoders):
        module.eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizers[0], text_encoder_2=encoders[1], tokenizer_2=tokenizers[1],
        text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
