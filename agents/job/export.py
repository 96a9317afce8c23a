"""The trained weights in diffusers' formats: a LoRA adapter that ``pipe.load_lora_weights(folder)`` reads, or the
whole fine-tuned UNet (``UNet2DConditionModel.from_pretrained(folder)``; an SD3 ``SD3Transformer2DModel``) when
training without LoRA."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agents.job.checkpoint import write_atomically
from agents.policy import ADAPTER_NAME

LORA_FILE = "pytorch_lora_weights.safetensors"


def export_lora(unet: Any, folder: str | os.PathLike) -> Path:
    """Write the network's 'ddpo' adapter as ``folder/pytorch_lora_weights.safetensors`` (keys ``unet.…lora_A``,
    or ``transformer.…`` for an SD3 transformer), with its LoRA config (rank, alpha, targets) in the metadata."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    config = unet.peft_config[ADAPTER_NAME].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    if is_transformer(unet):
        return write_atomically(folder, lambda tmp: StableDiffusion3Pipeline.save_lora_weights(
            str(tmp), transformer_lora_layers=state, transformer_lora_adapter_metadata=config, weight_name=LORA_FILE))
    return write_atomically(folder, lambda tmp: StableDiffusionPipeline.save_lora_weights(
        str(tmp), unet_lora_layers=state, unet_lora_adapter_metadata=config, weight_name=LORA_FILE))


def is_transformer(network: Any) -> bool:
    """An SD3-style MMDiT (exported as the pipeline's ``transformer``) rather than a UNet."""
    from diffusers import SD3Transformer2DModel

    return isinstance(network, SD3Transformer2DModel)


def export_weights(policy: Any, out: str | os.PathLike) -> Path:
    """``out/lora`` for a LoRA policy, ``out/unet`` (``out/transformer`` for SD3) for a full fine-tune; returns the
    folder."""
    out = Path(out)
    if policy.lora_rank > 0:
        return export_lora(policy.unet, out / "lora")
    name = "transformer" if is_transformer(policy.unet) else "unet"
    return write_atomically(out / name, lambda tmp: policy.unet.save_pretrained(str(tmp)))
