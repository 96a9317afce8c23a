"""Export: the trained LoRA loads into a diffusers pipeline with ``pipe.load_lora_weights()`` and gives the
fine-tuned samples; a full fine-tune exports a UNet that ``from_pretrained`` reads."""

import os

import numpy as np
import torch

from agents.job.export import export_weights
from agents.job.train import train
from ddpo_env.models.tiny import build_tiny_pipeline
from tests.test_checkpoints import job


def pipeline_images(pipe, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=5.0, eta=1.0, generator=generator,
                output_type="np").images


def test_lora_export_loads_into_the_tiny_sd_pipeline_with_load_lora_weights(tmp_path):
    agent = train(job(tmp_path, epochs=2, learning_rate=3e-2)).agent  # a large step so the change is visible
    folder = tmp_path / "run" / "lora"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (folder, folder / "pytorch_lora_weights.safetensors", tmp_path / "run" / "metrics.json"):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, path  # the same modes as any file the user writes

    pipe = build_tiny_pipeline(0)  # the base model the env was built from
    base_images = pipeline_images(pipe)
    pipe.load_lora_weights(str(folder))
    policy_unet = agent.policy.unet.eval()
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])
    context = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loaded = pipe.unet(x, t, encoder_hidden_states=context).sample
        trained = policy_unet(x, t, encoder_hidden_states=context).sample
        with_adapter_off = build_tiny_pipeline(0).unet(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-6)
    assert (loaded - with_adapter_off).abs().max() > 1e-4  # the export carries the training

    fine_tuned_images = pipeline_images(pipe)
    reference = build_tiny_pipeline(0)
    reference.unet = policy_unet  # the policy's own UNet, adapter active
    np.testing.assert_allclose(fine_tuned_images, pipeline_images(reference), rtol=0, atol=1e-6)
    assert np.abs(fine_tuned_images - base_images).max() > 1e-4


def test_full_fine_tune_exports_a_unet_folder(tmp_path):
    from diffusers import UNet2DConditionModel

    agent = train(job(tmp_path, epochs=1, lora_rank=0)).agent
    folder = export_weights(agent.policy, tmp_path / "again")  # also callable on its own
    assert folder == tmp_path / "again" / "unet"
    unet = UNet2DConditionModel.from_pretrained(str(folder))
    for name, value in unet.state_dict().items():
        assert torch.equal(value, agent.policy.unet.state_dict()[name]), name
