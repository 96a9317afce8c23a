"""Agents on the tiny config: every algorithm trains, deterministically, with its diagnostics (docs/reliability.md
7, 12-15, 17); the policy works with stock stable-baselines3 PPO."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

from agents import AGENTS, DDPO_IS, DiffusionPolicy, make_agent
from ddpo_env.sb3 import SB3VecEnv
from rewards import JpegCompressibility, VectorTerminalReward, from_callable
from tests.conftest import TINY, Recorder, tiny_env

SMALL = {"samples_per_epoch": 6, "batch_size": 3, "seed": 0}


def trained(name, **overrides):
    agent = make_agent(name, tiny_env(), **{**SMALL, **overrides})
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    initial = {k: v.clone() for k, v in agent.policy.trainable_state_dict().items()}
    agent.learn(total_samples=2 * SMALL["samples_per_epoch"])
    return agent, recorder.records, initial


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_finishes_two_epochs_with_finite_losses_and_diagnostics(name):
    agent, records, initial = trained(name)
    assert len(records) == 2 and agent.num_epochs == 2 and agent._n_updates >= 2
    for record in records:
        for key in ("rollout/reward_mean", "rollout/reward_std", "train/loss", "train/grad_norm",
                    "time/samples_per_s", "train/learning_rate"):
            assert np.isfinite(record[key]), (key, record)
        assert record["rollout/reward_mean"] < 0  # -kB of JPEG
    assert all(np.isfinite(r["train/approx_kl"]) for r in records)  # RWR: measured after its update
    if name.startswith("rwr"):
        assert all(r["train/approx_kl"] > 0 for r in records)
    if name == "ddpo-is":  # the one loss with a clip
        assert all(0 <= r["train/clip_fraction"] <= 1 for r in records)
    changed = [not torch.equal(initial[k], v) for k, v in agent.policy.trainable_state_dict().items()]
    assert any(changed)
    assert all("lora_" in k for k in initial)  # LoRA by default: only adapter weights train


def test_two_runs_with_the_same_seed_give_exactly_equal_parameters():
    a, _, _ = trained("ddpo-is")
    b, _, _ = trained("ddpo-is")
    for (ka, va), (kb, vb) in zip(a.policy.trainable_state_dict().items(), b.policy.trainable_state_dict().items(),
                                  strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    c, _, _ = trained("ddpo-is", seed=1)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.policy.trainable_state_dict().values(),
                                                         c.policy.trainable_state_dict().values(), strict=True))


@pytest.mark.parametrize("name", ["ddpo-is", "ddpo-sf"])
@pytest.mark.parametrize("steps_per_pass", [0, 3])
def test_several_steps_per_pass_give_the_same_update_as_one(name, steps_per_pass):
    """Batched log-probs (k steps of a sample in one network call) only regroup a sum: same parameters."""
    one, _, initial = trained(name, timestep_fraction=0.75, num_inner_epochs=1 if name == "ddpo-sf" else 2)
    many, _, _ = trained(name, timestep_fraction=0.75, num_inner_epochs=1 if name == "ddpo-sf" else 2,
                         steps_per_pass=steps_per_pass)
    assert many.config.train_timesteps(many.num_steps) == 3  # of 4: groups of 3 or 0 (all) are one pass
    moved = max(float((v - initial[k]).abs().max()) for k, v in one.policy.trainable_state_dict().items())
    assert moved > 1e-4  # Adam moves weights by ~lr; float regrouping differs by ~1e-6 at most
    for key, value in one.policy.trainable_state_dict().items():
        torch.testing.assert_close(many.policy.trainable_state_dict()[key], value, rtol=0, atol=1e-5)
    assert many._n_updates == one._n_updates


def test_gradient_workers_give_the_update_of_one_thread_and_repeat_exactly():
    """Backward passes of an update on 2 threads: the sequential update up to float rounding, bit-identical run to
    run; an algorithm drawing noise in its loss (RWR) draws it per pass, so it repeats exactly too."""
    one, _, _ = trained("ddpo-is")
    two, _, _ = trained("ddpo-is", grad_workers=2)
    again, _, _ = trained("ddpo-is", grad_workers=2)
    for key, value in one.policy.trainable_state_dict().items():
        torch.testing.assert_close(two.policy.trainable_state_dict()[key], value, rtol=0, atol=1e-5)
        assert torch.equal(two.policy.trainable_state_dict()[key], again.policy.trainable_state_dict()[key])
    assert two._n_updates == one._n_updates
    rwr = [trained("rwr", grad_workers=2)[0].policy.trainable_state_dict() for _ in range(2)]
    assert all(torch.equal(rwr[0][k], rwr[1][k]) for k in rwr[0])


def test_ratio_is_one_before_the_first_update():
    """With one optimizer step per epoch every log-prob is recomputed under the sampling weights: ratio = 1."""
    _, records, _ = trained("ddpo-is", gradient_accumulation_steps=2)
    assert records[0]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert records[0]["train/approx_kl"] < 1e-10 and records[0]["train/clip_fraction"] == 0.0


def test_full_fine_tune_without_lora():
    agent, _, initial = trained("ddpo-sf", lora_rank=0, learning_rate=1e-5)
    assert not any("lora_" in k for k in initial) and len(initial) == len(list(agent.policy.unet.parameters()))


def test_evaluate_actions_on_flat_actions_returns_per_sample_log_probs():
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    policy = DiffusionPolicy(venv.single_observation_space, venv.single_action_space, lambda _: 1e-3,
                             diffusion_env=venv)
    obs, _ = venv.reset(seed=0)
    obs_t = {k: torch.as_tensor(v).float() for k, v in obs.items()}
    with torch.no_grad():
        actions, values, log_prob = policy(obs_t)
    assert actions.shape == (3, 4, 8, 8) and values.shape == (3, 1) and log_prob.shape == (3,)
    values, log_prob2, entropy = policy.evaluate_actions(obs_t, actions.reshape(3, -1))
    assert log_prob2.shape == (3,) and entropy.shape == (3,) and torch.isfinite(entropy).all()
    torch.testing.assert_close(log_prob2, log_prob, rtol=0, atol=1e-6)


def test_stock_sb3_ppo_trains_the_diffusion_policy():
    venv = tiny_env()
    model = PPO(DiffusionPolicy, SB3VecEnv(venv), n_steps=4, batch_size=6, n_epochs=1, gamma=1.0, gae_lambda=1.0,
                clip_range=1e-4, vf_coef=0.0, ent_coef=0.0, learning_rate=1e-3, device="cpu", seed=0,
                policy_kwargs={"diffusion_env": venv})
    before = {k: v.clone() for k, v in model.policy.trainable_state_dict().items()}
    model.learn(total_timesteps=2 * 4 * 3)
    after = model.policy.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"samples_per_epoch": 7}, "samples_per_epoch=7 must be a multiple of the env's num_envs=3"),
        ({"samples_per_epoch": 6, "batch_size": 4}, "samples_per_epoch=6 must be a multiple of batch_size=4"),
        ({"gradient_accumulation_steps": 3},
         "gradient_accumulation_steps=3 must divide the 2 micro-batches per epoch "
         "(samples_per_epoch=6 / batch_size=3)"),
        ({"clip_range": 0.0}, "clip_range must be finite and > 0, got 0.0"),
        ({"clip_range": -1e-4}, "clip_range must be finite and > 0, got -0.0001"),
        ({"timestep_fraction": 0.0}, "timestep_fraction must be in (0, 1], got 0.0"),
        ({"timestep_fraction": 1.5}, "timestep_fraction must be in (0, 1], got 1.5"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite and > 0, got nan"),
        ({"stat_min_count": 64}, "stat_min_count=64 must be <= stat_buffer_size=32"),
        ({"grad_workers": 0}, "grad_workers must be a positive int, got 0"),
        ({"steps_per_pass": -1}, "steps_per_pass must be an int >= 0 (0: all trained steps), got -1"),
    ],
)
def test_config_validation_names_the_offending_values(overrides, message):
    with pytest.raises(ValueError) as e:
        DDPO_IS(tiny_env(), **{**SMALL, **overrides})
    assert str(e.value) == message


def test_other_agents_validate_their_own_fields():
    with pytest.raises(ValueError) as e:
        make_agent("ddpo-sf", tiny_env(), num_inner_epochs=2, **SMALL)
    assert str(e.value) == ("DDPO-SF takes one on-policy gradient step per rollout: num_inner_epochs must be 1, "
                            "got 2")
    with pytest.raises(ValueError) as e:
        make_agent("rwr", tiny_env(), temperature=0, **SMALL)
    assert str(e.value) == "temperature must be finite and > 0, got 0"
    with pytest.raises(ValueError) as e:
        make_agent("rwr-sparse", tiny_env(), top_fraction=0, **SMALL)
    assert str(e.value) == "top_fraction must be in (0, 1], got 0"
    with pytest.raises(ValueError) as e:
        make_agent("ppo2", tiny_env())
    assert str(e.value) == ("unknown agent 'ppo2': use one of ['awm', 'ddpo-is', 'ddpo-sf', 'diffusion-nft', 'rwr', "
                            "'rwr-sparse']")
    with pytest.raises(TypeError):
        make_agent("ddpo-is", tiny_env(), clip_rnage=0.1)


def test_non_finite_reward_refuses_the_update_and_names_the_reward():
    calls = {"n": 0}

    def flaky(images, prompts):
        calls["n"] += 1
        return np.full(len(images), np.nan if calls["n"] == 3 else 1.0)

    venv = from_callable(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), flaky, name="flaky")
    agent = make_agent("ddpo-is", venv, **SMALL)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    agent.learn(total_samples=6)
    before = {k: v.clone() for k, v in agent.policy.trainable_state_dict().items()}
    with pytest.raises(FloatingPointError) as e:
        agent.learn(total_samples=6, reset_num_timesteps=False)
    assert str(e.value) == "reward 'flaky' returned NaN or Inf for sample(s) [0, 1, 2]"
    assert all(torch.equal(before[k], v) for k, v in agent.policy.trainable_state_dict().items())


def test_mixed_precision_keeps_lora_weights_in_float32():
    agent = make_agent("ddpo-is", tiny_env(dtype="bfloat16"), **SMALL)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    agent.learn(total_samples=6)
    trainable = agent.policy.trainable_state_dict()
    assert trainable and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in trainable.values())
    frozen = [p for n, p in agent.policy.unet.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)


def test_evaluation_is_repeatable_and_leaves_the_policy_noise_untouched():
    from agents.job.evaluation import evaluate_policy

    env = tiny_env()
    agent = make_agent("ddpo-is", env, **SMALL)
    eval_env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **{**TINY, "model":
                                                 env.unwrapped.backend}), JpegCompressibility())
    state = agent.policy.noise_generator.get_state()
    a = evaluate_policy(agent.policy, eval_env, ["a", "b", "c"], seed=5)
    b = evaluate_policy(agent.policy, eval_env, ["a", "b", "c"], seed=5)
    assert a.images.shape == (3, 16, 16, 3) and np.array_equal(a.images, b.images)
    assert np.array_equal(a.rewards, b.rewards) and (a.rewards < 0).all()
    assert torch.equal(agent.policy.noise_generator.get_state(), state)


def test_optional_value_head_is_trained_by_stock_ppo():
    venv = tiny_env()
    model = PPO(DiffusionPolicy, SB3VecEnv(venv), n_steps=4, batch_size=6, n_epochs=2, gamma=1.0, gae_lambda=1.0,
                clip_range=1e-4, vf_coef=0.5, ent_coef=0.0, learning_rate=1e-3, device="cpu", seed=0,
                policy_kwargs={"diffusion_env": venv, "value_head": True})
    head_before = {k: v.clone() for k, v in model.policy.value_net.state_dict().items()}
    obs, _ = venv.reset(seed=0)
    values = model.policy.predict_values({k: torch.as_tensor(v) for k, v in obs.items()})
    assert values.shape == (3, 1) and values.requires_grad
    model.learn(total_timesteps=2 * 4 * 3)
    assert any(not torch.equal(head_before[k], v) for k, v in model.policy.value_net.state_dict().items())
    no_head = DiffusionPolicy(venv.single_observation_space, venv.single_action_space, lambda _: 1e-3,
                              diffusion_env=tiny_env())
    assert no_head.value_net is None
