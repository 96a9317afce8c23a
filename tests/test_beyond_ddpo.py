"""Issue 9's additions to every agent: the KL penalty to the base model, group-relative advantages, EMA weights."""

import copy

import numpy as np
import pytest
import torch
from conftest import Recorder, tiny_env
from stable_baselines3.common.logger import Logger

from agents import DDPO_IS, DDPO_SF, RWR
from agents.advantages import group_advantages
from agents.ema import EMA
from agents.job.checkpoint import load_checkpoint, load_weights, save_checkpoint
from agents.kl import gaussian_kl
from agents.stat_tracking import EPS
from ddpo_env.ddim import ddim_step
from ddpo_env.sampler import guided_model_output


def quiet(agent, recorder=None):
    agent.set_logger(Logger(folder=None, output_formats=[recorder] if recorder else []))
    return agent


def perturb_lora(agent, scale=0.05, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in agent.policy.unet.named_parameters():
            if "lora_B" in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))


# ------------------------------------------------------------------------------------------------- KL


def test_gaussian_kl_is_the_closed_form_of_two_gaussians_with_one_std():
    torch.manual_seed(0)
    mean, ref, std = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.rand(3, 1, 1, 1) + 0.1
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std.expand_as(mean)),
                                                 torch.distributions.Normal(ref, std.expand_as(ref)))
    assert torch.allclose(gaussian_kl(mean, ref, std), expected.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert gaussian_kl(mean, mean, std).abs().max() == 0


def first_transitions(agent, n=4, step=1):
    samples, steps = torch.arange(n), torch.full((n,), step)
    return agent.buffer.transitions(samples, steps)


def test_kl_is_zero_with_the_adapter_disabled_and_matches_float64_otherwise():
    agent = quiet(DDPO_IS(tiny_env(4, guidance_scale=3.0), samples_per_epoch=4, batch_size=4, kl_coef=0.5))
    agent._last_obs = agent.env.reset()
    agent.collect_rollouts(agent.env, _NoCallback(), None, agent.num_steps)
    batch = first_transitions(agent)
    _, info = agent.kl_penalty(batch)
    assert info["kl"] == 0.0  # the fresh adapter (B = 0) is the base model
    perturb_lora(agent)
    penalty, info = agent.kl_penalty(batch)
    assert info["kl"] > 1e-6 and penalty.item() == pytest.approx(0.5 * info["kl"], rel=1e-6)
    with agent.policy.reference():  # the policy is the base model: no distance to itself
        assert agent.kl_penalty(batch)[1]["kl"] == 0.0
    assert agent.policy.trainable_parameters(), "the adapter is trainable again after the reference block"

    # float64 reference: the same UNet in double precision, adapter on and off, DDIM means, closed-form KL
    env = agent.diffusion_env
    backend64 = copy.copy(env.backend)
    backend64.unet, backend64.dtype = copy.deepcopy(agent.policy.unet).double(), torch.float64
    embeds = env.prompt_embeds(batch.prompt_ids.cpu().numpy()).double()
    negative = env.negative_prompt_embeds().double()
    x = batch.latents.double()

    @torch.no_grad()
    def mean64():
        out = guided_model_output(backend64, x, batch.timesteps, embeds, negative, env.guidance_scale)
        return ddim_step(out, batch.timesteps, x, env.schedule, prev_sample=batch.next_latents.double())

    policy_step = mean64()
    backend64.unet.disable_adapters()
    reference_step = mean64()
    std = policy_step.std_dev_t
    kl64 = (((policy_step.mean - reference_step.mean) / std) ** 2 / 2).mean(dim=(1, 2, 3)).mean()
    assert info["kl"] == pytest.approx(float(kl64), rel=1e-4)


class _NoCallback:
    def on_rollout_start(self):
        pass

    def on_rollout_end(self):
        pass

    def update_locals(self, _):
        pass

    def on_step(self):
        return True


@pytest.mark.parametrize("cls", [DDPO_IS, DDPO_SF, RWR])
def test_a_large_kl_coefficient_keeps_every_agent_closer_to_the_base_model(cls):
    """Same seed and rollouts; only β differs. The KL to the base model after training is smaller with β > 0."""
    kls = {}
    for beta in (0.0, 1e4):
        recorder = Recorder()
        agent = quiet(cls(tiny_env(4), samples_per_epoch=8, batch_size=4, learning_rate=3e-3, kl_coef=beta,
                          seed=3), recorder)
        agent.learn(total_samples=24)
        agent.policy.keep_reference()
        kls[beta] = gaussian_kl(*_means(agent), agent.policy.schedule.std_dev_t[1]).mean().item()
        if beta:
            assert all(np.isfinite(r["train/kl"]) for r in recorder.records)
    assert 0 < kls[1e4] < 0.5 * kls[0.0], kls


def _means(agent):
    batch = first_transitions(agent, n=8)
    return agent.transition_step(batch).mean.detach(), agent.transition_step(batch, reference=True).mean


def test_full_fine_tune_keeps_a_frozen_reference_copy():
    agent = quiet(DDPO_IS(tiny_env(4), samples_per_epoch=4, batch_size=4, lora_rank=0, learning_rate=1e-3,
                          kl_coef=1.0))
    reference = agent.policy._reference_unet
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    before = [p.detach().clone() for p in reference.parameters()]
    agent.learn(total_samples=8)
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters(), strict=True))
    _, info = agent.kl_penalty(first_transitions(agent))
    assert info["kl"] > 0  # the trained UNet moved away from its frozen copy


def test_kl_penalty_with_gradient_workers_equals_one_thread():
    params = []
    for workers in (1, 2):
        agent = quiet(DDPO_IS(tiny_env(4), samples_per_epoch=8, batch_size=4, kl_coef=10.0, grad_workers=workers,
                              learning_rate=1e-5))
        agent.learn(total_samples=16)
        params.append(torch.cat([p.detach().flatten() for p in agent.policy.trainable_parameters()]))
    # each pass's μ_ref is its own (precomputed on the main thread): the sequential update up to float rounding
    torch.testing.assert_close(params[1], params[0], rtol=0, atol=1e-6)


def test_negative_kl_coefficient_is_refused():
    with pytest.raises(ValueError, match="kl_coef must be finite and >= 0"):
        DDPO_IS(tiny_env(2), samples_per_epoch=2, batch_size=2, kl_coef=-1.0)


# ------------------------------------------------------------------------------------- group advantages


def test_group_advantages_on_known_numbers():
    prompts = ["a", "a", "b", "b", "c", "c", "c"]
    rewards = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 7.0, 6.0])
    out = group_advantages(prompts, rewards)
    assert out.num_groups == 3 and out.zero_std_groups == 1
    c_std = np.std([5.0, 7.0, 6.0])
    expected = [-1 / (1 + EPS), 1 / (1 + EPS), 0, 0, -1 / (c_std + EPS), 1 / (c_std + EPS), 0]
    np.testing.assert_allclose(out.advantages, expected, rtol=1e-12)
    global_std = rewards.std()
    out = group_advantages(prompts, rewards, std="global")
    np.testing.assert_allclose(out.advantages, [-1 / (global_std + EPS), 1 / (global_std + EPS), 0, 0,
                                                -1 / (global_std + EPS), 1 / (global_std + EPS), 0], rtol=1e-12)
    with pytest.raises(ValueError, match="unknown group std"):
        group_advantages(prompts, rewards, std="batch")


def test_env_groups_share_prompts_and_need_a_multiple_of_the_group_size():
    env = tiny_env(6, group_size=3, prompts=[f"p{i}" for i in range(50)])
    obs, _ = env.reset(seed=0)
    ids = obs["prompt_id"].reshape(2, 3)
    assert (ids == ids[:, :1]).all() and ids[0, 0] != ids[1, 0]
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        tiny_env(6, group_size=4)


def test_group_advantages_in_a_rollout_sum_to_zero_per_group_and_count_masked_groups():
    recorder = Recorder()
    agent = quiet(DDPO_IS(tiny_env(4, group_size=2), samples_per_epoch=8, batch_size=4, group_advantages=True),
                  recorder)
    agent.learn(total_samples=8)
    prompts = agent.buffer.prompts
    advantages = agent.buffer.advantages.cpu().numpy()
    for prompt in set(prompts):
        members = [i for i, p in enumerate(prompts) if p == prompt]
        assert len(members) >= 2 and abs(advantages[members].sum()) < 1e-5
    record = recorder.records[-1]
    assert record["rollout/groups"] == len(set(prompts))
    assert record["rollout/zero_std_groups"] == sum(
        np.std(agent.rollout_rewards[[p == q for q in prompts]]) == 0 for p in set(prompts))
    with pytest.raises(ValueError, match="group_size=k"):
        DDPO_IS(tiny_env(4), samples_per_epoch=8, batch_size=4, group_advantages=True)


# ------------------------------------------------------------------------------------------------ EMA


def test_ema_update_on_known_numbers():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([param], decay=0.9, update_interval=2)
    with torch.no_grad():
        param.copy_(torch.tensor([2.0, 0.0]))
    assert not ema.update(1)  # not due
    assert ema.update(2)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.1, -1.8]))
    assert ema.update(4)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([0.9 * 1.1 + 0.2, 0.9 * -1.8]))
    with ema.applied():
        torch.testing.assert_close(param.detach(), ema.shadow[0])
    torch.testing.assert_close(param.detach(), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="decay must be in"):
        EMA([param], decay=1.0)


def test_agent_ema_follows_the_updates_and_survives_a_checkpoint(tmp_path):
    agent = quiet(DDPO_IS(tiny_env(4), samples_per_epoch=8, batch_size=4, learning_rate=3e-3, ema_decay=0.5))
    initial = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.learn(total_samples=16)
    assert agent.ema.num_updates == agent._n_updates > 0
    trained = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    moved = [not torch.equal(s, t) and not torch.equal(s, i)
             for s, t, i in zip(agent.ema.shadow, trained, initial, strict=True)]
    assert any(moved)
    with agent.ema_weights():
        assert all(torch.equal(p, s) for p, s in zip(agent.policy.trainable_parameters(), agent.ema.shadow,
                                                    strict=True))
    assert all(torch.equal(p, t) for p, t in zip(agent.policy.trainable_parameters(), trained, strict=True))

    path = save_checkpoint(agent, tmp_path)
    fresh = quiet(DDPO_IS(tiny_env(4), samples_per_epoch=8, batch_size=4, learning_rate=3e-3, ema_decay=0.5))
    load_checkpoint(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.ema.shadow, agent.ema.shadow, strict=True))
    sampler = quiet(DDPO_IS(tiny_env(4), samples_per_epoch=8, batch_size=4))
    load_weights(sampler.policy, path, ema=True)  # what `ddpo sample` / `ddpo eval` load
    assert all(torch.equal(a, b) for a, b in zip(sampler.policy.trainable_parameters(), agent.ema.shadow,
                                                 strict=True))


# ---------------------------------------------------------------------------------------- held-out monitor


def test_diversity_on_known_images():
    from agents.job.monitor import diversity

    images = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    images[1] = 255  # prompt a: black vs white, RMS 1; prompt b: two equal images, 0
    assert diversity(images, ["a", "a", "b", "b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        diversity(images[:2], ["a", "b"])


def test_monitor_records_train_and_held_out_curves_and_resumes(tmp_path):
    from PIL import Image

    from agents.job.train import TrainConfig, train

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("a zebra\na scribbled three\n", encoding="utf-8")
    cfg = TrainConfig.from_flat(dict(
        model="tiny", num_steps=4, device="cpu", samples_per_epoch=6, num_envs=3, batch_size=3, lora_rank=4,
        learning_rate=3e-3, epochs=2, monitor_every=2, held_out_prompts=str(held_out), evaluate=False,
        tensorboard=False, output_dir=str(tmp_path / "run"), save_every=1))
    records = train(cfg).metrics["monitor"]
    # 2 updates per epoch (6 samples / batch 3): before training, then after each epoch's 2 updates
    assert [r["updates"] for r in records] == [0, 2, 4] and [r["samples"] for r in records] == [0, 6, 12]
    assert records[0]["kl_train"] == 0.0 and records[0]["kl_held_out"] == 0.0  # the fresh adapter is the base
    assert records[-1]["kl_held_out"] > 0 and records[-1]["diversity_train"] > 0
    assert all(np.isfinite(r[f"reward_{s}"]) for r in records for s in ("train", "held_out"))
    with Image.open(tmp_path / "run" / "monitor.png") as image:
        assert image.size[0] > 600
    resumed = train(TrainConfig.from_flat({**cfg.to_flat(), "epochs": 3, "resume": "auto"})).metrics["monitor"]
    assert resumed[:3] == records and [r["updates"] for r in resumed] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="--held-out-prompts"):
        train(TrainConfig.from_flat({**cfg.to_flat(), "held_out_prompts": "", "output_dir": str(tmp_path / "other")}))
    with pytest.raises(ValueError, match="never trained on"):
        held_out.write_text("a handwritten digit 1\n", encoding="utf-8")
        train(TrainConfig.from_flat({**cfg.to_flat(), "output_dir": str(tmp_path / "third")}))
