"""``compile_sampling``: torch.compile for the gradient-free passes, the same numbers as the eager network."""

import pytest
import torch
from conftest import tiny_env
from stable_baselines3.common.logger import Logger

from agents import DDPO_IS


def eager_and_compiled(backend, latents, timesteps, embeds):
    with torch.no_grad():
        assert backend.network is not backend.unet  # the compiled module runs here
        eager = backend.unet(latents, timesteps, encoder_hidden_states=embeds).sample
        return eager, backend.predict(latents, timesteps, embeds)


def test_compiled_sampling_equals_the_eager_network_before_and_after_updates_and_for_the_reference():
    agent = DDPO_IS(tiny_env(2, guidance_scale=3.0), samples_per_epoch=2, batch_size=2, compile_sampling=True,
                    learning_rate=1e-2)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    backend = agent.diffusion_env.backend
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, *agent.diffusion_env.latent_shape, generator=generator)
    timesteps = torch.tensor([999, 500, 250, 1])
    embeds = backend.encode_prompts(["a cat", "a dog", "a cat", "a dog"])
    assert backend.network is backend.unet  # gradient recording on: training passes stay eager

    eager, compiled = eager_and_compiled(backend, latents, timesteps, embeds)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    base = eager
    agent.learn(total_samples=2)  # samples through the compiled network, trains the LoRA adapter eagerly
    with torch.no_grad():
        for name, param in agent.policy.unet.named_parameters():
            if "lora_B" in name:  # a visible change on top of the update
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    eager, compiled = eager_and_compiled(backend, latents, timesteps, embeds)
    assert (eager - base).abs().max() > 1e-3  # the adapter moved the network...
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)  # ...and the compiled module follows it
    with agent.policy.reference():  # adapter off: the base model, compiled too
        eager, compiled = eager_and_compiled(backend, latents, timesteps, embeds)
    torch.testing.assert_close(eager, base)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)

    other = torch.nn.Identity()
    backend.unet, unet = other, backend.unet  # a module swapped in (a full fine-tune's reference) runs eager
    with torch.no_grad():
        assert backend.network is other
    backend.unet = unet


def test_matmul_attention_gives_the_same_network_outputs_and_gradients_as_sdpa():
    nets = []
    for attention in ("sdpa", "matmul"):
        agent = DDPO_IS(tiny_env(2, guidance_scale=3.0, attention=attention), samples_per_epoch=2, batch_size=2)
        nets.append((agent.diffusion_env.backend, agent.policy.trainable_parameters()))
    types = [{type(p).__name__ for p in backend.unet.attn_processors.values()} for backend, _ in nets]
    assert types == [{"AttnProcessor2_0"}, {"AttnProcessor"}]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, *agent.diffusion_env.latent_shape, generator=generator)
    embeds = nets[0][0].encode_prompts(["a cat", "a dog", "a cat", "a dog"])
    outs, grads = [], []
    for backend, params in nets:
        with torch.no_grad():
            for p in params:  # the same non-zero adapter on both, so gradients flow through attention
                if p.ndim == 2:
                    p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        out = backend.predict(latents, torch.tensor([999, 500, 250, 1]), embeds)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)
    assert grads[0].abs().max() > 0


def test_an_unknown_attention_kernel_or_one_the_model_lacks_is_refused():
    with pytest.raises(ValueError, match=r"unknown attention 'flash': use one of \['sdpa', 'matmul'\]"):
        tiny_env(2, attention="flash")
    with pytest.raises(ValueError, match=r"needs a diffusers UNet2DConditionModel.*use attention='sdpa'"):
        tiny_env(2, model="tiny-sd3", attention="matmul")
