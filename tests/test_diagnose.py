"""Step conditioning: the sensitivity diagnostic on known numbers, the default model's schedule within target, the
env's warning, float64 schedule coefficients, and the agents' deterministic step choice and per-step statistics."""

import json
import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents import make_agent
from ddpo_env.conditioning import (
    IllConditionedStepWarning,
    env_conditioning,
    schedule_conditioning,
    warn_if_ill_conditioned,
)
from ddpo_env.ddim import DDIMSchedule
from ddpo_env.models.embedded import SCHEDULER_CONFIG
from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG
from ddpo_env.schedule import make_schedule
from tests.conftest import TINY, Recorder, tiny_env

#: The embedded model's schedule before it was changed: cosine, trailing spacing (first step at ᾱ ≈ 2.4e-9).
COSINE_TRAILING = {**SCHEDULER_CONFIG, "beta_schedule": "squaredcos_cap_v2", "steps_offset": 0,
                   "timestep_spacing": "trailing"}


def _hand_built(prediction_type="epsilon"):
    """Two steps with round numbers: ᾱ_t = 0.25 → ᾱ_t' = 0.64, then 0.64 → 0.81; η = 1."""
    a, a_prev = torch.tensor([0.25, 0.64]), torch.tensor([0.64, 0.81])
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    return DDIMSchedule(
        timesteps=torch.tensor([700, 300]), prev_timesteps=torch.tensor([300, -200]), alpha_prod_t=a,
        alpha_prod_t_prev=a_prev, std_dev_t=var.sqrt(), direction_coef=(1 - a_prev - var).sqrt(), eta=1.0,
        prediction_type=prediction_type, clip_sample=False, clip_sample_range=1.0, thresholding=False,
        dynamic_thresholding_ratio=0.995, sample_max_value=1.0, num_train_timesteps=1000,
    )


def test_sensitivity_on_a_hand_built_schedule_matches_the_formula():
    # step 0: σ² = (0.36/0.75)(1 − 0.25/0.64) = 0.2925; ∂μ/∂ε̂ = √(1−0.64−0.2925) − √0.64·√0.75/√0.25
    #         = 0.2598076 − 1.3856406 = −1.1258330; s = 1.1258330/√0.2925 = 2.0816660
    # step 1: σ² = (0.19/0.36)(1 − 0.64/0.81) = 0.1107682; ∂μ/∂ε̂ = √(1−0.81−0.1107682) − √0.81·√0.36/√0.64
    #         = 0.2814815 − 0.675 = −0.3935185; s = 0.3935185/0.3328186 = 1.1823811
    c = schedule_conditioning(_hand_built())
    np.testing.assert_allclose(c.sensitivity, [2.0816660, 1.1823811], rtol=1e-6)
    np.testing.assert_allclose(c.std, [math.sqrt(0.2925), 0.3328186], rtol=1e-6)
    assert c.max_ratio == pytest.approx(2.0816660 / ((2.0816660 + 1.1823811) / 2), rel=1e-6)
    # v-prediction: ∂μ/∂v̂ = −√ᾱ'·√(1−ᾱ) + √(1−ᾱ'−σ²)·√ᾱ; step 0: −0.8·0.8660254 + 0.2598076·0.5 = −0.5629165
    v = schedule_conditioning(_hand_built("v_prediction"))
    assert v.sensitivity[0] == pytest.approx(0.5629165 / math.sqrt(0.2925), rel=1e-6)


def test_at_real_states_without_clipping_the_sensitivity_is_the_schedules():
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY)  # Stable Diffusion's schedule, no clipping
    measured = env_conditioning(env, num_samples=2)
    expected = schedule_conditioning(env.unwrapped.schedule)
    np.testing.assert_allclose(measured.sensitivity, expected.sensitivity, rtol=1e-4)
    assert (measured.clipped_fraction == 0).all()


def test_the_old_cosine_schedule_shows_its_ill_conditioned_first_step():
    c = schedule_conditioning(DDIMSchedule.from_scheduler_config(COSINE_TRAILING, 20))
    assert int(np.argmax(c.sensitivity)) == 0 and c.max_ratio > 1000
    assert 10 < c.ratio_to_median[-1] < 30  # the last step: σ ≈ 0.006


def test_gradient_share_is_each_steps_part_of_the_sum_of_squared_sensitivities():
    c = schedule_conditioning(DDIMSchedule.from_scheduler_config(SCHEDULER_CONFIG, 10))
    np.testing.assert_allclose(c.gradient_share.sum(), 1.0)
    # leading spacing: the step landing at t = 1 (σ small, the jump in ᾱ large) has most of the gradient although
    # it is under 10× the median step's sensitivity
    assert int(np.argmax(c.gradient_share)) == 8 and c.gradient_share[8] > 0.5 and c.max_ratio < 10
    assert [r["gradient_share"] for r in c.rows()] == pytest.approx(c.gradient_share.tolist())


@pytest.mark.parametrize("num_steps", range(1, 51))
def test_default_model_every_step_within_ten_times_the_median(num_steps):
    schedule = DDIMSchedule.from_scheduler_config(SCHEDULER_CONFIG, num_steps)
    assert schedule_conditioning(schedule).max_ratio <= 10.0


def test_default_model_at_real_states_within_ten_times_the_median():
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=4, device="cpu")
    c = env_conditioning(env, num_samples=4)
    assert c.max_ratio <= 10.0 and np.isfinite(c.sensitivity).all()
    assert 0 <= c.clipped_fraction.min() and c.clipped_fraction.max() <= 1


@pytest.mark.parametrize("num_steps", [1, 5])
def test_num_steps_1_and_5_work_on_the_default_model(num_steps):
    from ddpo_env import DDIMSampler

    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, device="cpu", num_steps=num_steps)
    obs, _ = env.reset(seed=0)
    sampler = DDIMSampler(env)
    for _ in range(num_steps):
        action, log_prob = sampler(obs)
        assert np.isfinite(log_prob).all()
        obs, reward, terminated, truncated, info = env.step(action)
    assert terminated.all() and np.isfinite(info["image"]).all()


def test_float64_coefficients_accept_rounding_but_not_a_too_large_eta():
    for n in (1, 5):  # 1 − ᾱ' − σ² rounded to −6e-8 in float32 at ᾱ_t ≈ 2e-9
        schedule = DDIMSchedule.from_scheduler_config(COSINE_TRAILING, n)
        assert torch.isfinite(schedule.direction_coef).all() and (schedule.direction_coef >= 0).all()
    with pytest.raises(ValueError, match=r"^eta=1.5 is too large"):
        DDIMSchedule.from_scheduler_config(COSINE_TRAILING, 5, 1.5)


def test_env_warns_once_naming_the_step_and_the_fix():
    with pytest.warns(IllConditionedStepWarning) as caught:
        gym.make_vec("DenoisingDiffusion-v0", num_envs=1, **{**TINY, "num_steps": 20},
                     scheduler_overrides={k: COSINE_TRAILING[k] for k in ("beta_schedule", "timestep_spacing",
                                                                          "steps_offset")})
    message = str(caught[0].message)
    assert message.startswith("DenoisingDiffusion-v0 on 'tiny(seed=0)' with 20 steps: step 0 (timestep 999: ")
    assert "Train without it (skip_first_steps=1 in the agent's config)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_ill_conditioned(DDIMSchedule.from_scheduler_config(
            {**SD_SCHEDULER_CONFIG, **{k: COSINE_TRAILING[k] for k in ("beta_schedule", "timestep_spacing",
                                                                        "steps_offset")}}, 20))  # once only


def test_flow_matching_schedules_are_diagnosed_too():
    from ddpo_env.models.tiny import SD3_SCHEDULER_CONFIG

    c = schedule_conditioning(make_schedule({**SD3_SCHEDULER_CONFIG,
                                             "_class_name": "FlowMatchEulerDiscreteScheduler"}, 4, None))
    assert np.isfinite(c.sensitivity).all() and (c.sensitivity > 0).all() and c.max_ratio < 20


def _agent(name="ddpo-is", **overrides):
    agent = make_agent(name, tiny_env(), **{"samples_per_epoch": 6, "batch_size": 3, **overrides})
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    return agent, recorder


def test_skipped_steps_are_never_trained():
    agent, _ = _agent(skip_first_steps=1, skip_last_steps=1)
    agent.learn(total_samples=6)
    trained_steps = {int(k) for _, steps, _ in agent.micro_batches() for k in steps}
    assert trained_steps == {1, 2} and agent.config.train_timesteps(4) == 2


def test_skipping_every_step_is_refused():
    with pytest.raises(ValueError) as e:
        _agent(skip_first_steps=2, skip_last_steps=2)
    assert str(e.value) == ("skip_first_steps=2 + skip_last_steps=2 leave none of the env's 4 denoising steps to "
                            "train on: skip fewer")


def test_per_step_statistics_are_logged():
    agent, recorder = _agent(step_stats_every=1, skip_first_steps=1)
    agent.learn(total_samples=6)
    record = recorder.records[-1]
    for k in (1, 2, 3):
        assert record[f"steps/grad_norm_k{k:02d}"] > 0
        assert -1 <= record[f"steps/grad_cosine_k{k:02d}"] <= 1
        assert 0 <= record[f"steps/clip_fraction_k{k:02d}"] <= 1
        assert np.isfinite(record[f"steps/log_ratio_k{k:02d}"])
    assert "steps/grad_norm_k00" not in record and "steps/log_ratio_k00" not in record


def test_rwr_refuses_per_step_gradients():
    with pytest.raises(ValueError) as e:
        _agent("rwr", step_stats_every=1)
    assert str(e.value) == ("step_stats_every=1: per-step gradients need a loss per denoising step (ddpo-is, "
                            "ddpo-sf); RWR regresses on final samples: use step_stats_every=0")


def test_diagnose_command_writes_table_json_and_png(tmp_path):
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps(SD_SCHEDULER_CONFIG))
    out = subprocess.run([sys.executable, "-m", "ddpo_env.diagnose", "--scheduler-config", str(config),
                          "--num-steps", "50", "--png", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, check=True)
    assert "| step k | timestep |" in out.stdout and "worst step 48: 7.8× the median" in out.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert len(data["steps"]) == 50 and data["max_ratio"] == pytest.approx(7.8, abs=0.05)
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_rwr_logs_its_effective_sample_size():
    """Kish's ESS (Σw)²/Σw² of the softmax weights: between 1 and N, → N as τ → ∞ (uniform weights)."""
    agent, recorder = _agent("rwr", temperature=1.0)
    agent.learn(total_samples=6)
    assert 1 <= recorder.records[-1]["train/effective_sample_size"] <= 6
    agent, recorder = _agent("rwr", temperature=1e6)
    agent.learn(total_samples=6)
    assert recorder.records[-1]["train/effective_sample_size"] == pytest.approx(6, abs=1e-4)
