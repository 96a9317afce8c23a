"""The DDIM step and its log-probability against diffusers and torch.distributions (docs/reliability.md 6-8)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from ddpo_env.ddim import DDIMSchedule, ddim_step, gaussian_log_prob
from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG

COSINE = {**SD_SCHEDULER_CONFIG, "beta_schedule": "squaredcos_cap_v2"}


def _config(**overrides):
    return {**SD_SCHEDULER_CONFIG, **overrides}


CASES = {
    "eps-leading": _config(),
    "eps-trailing": _config(timestep_spacing="trailing", steps_offset=0),
    "v-leading": _config(prediction_type="v_prediction"),
    "v-trailing": _config(prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=0),
    "sample-trailing": _config(prediction_type="sample", timestep_spacing="trailing"),
    "eps-clip": _config(clip_sample=True, clip_sample_range=1.0),
    "eps-threshold": _config(thresholding=True, sample_max_value=1.5),
    "eps-cosine-trailing": {**COSINE, "timestep_spacing": "trailing", "steps_offset": 0},
}


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_step_equals_diffusers_on_every_timestep(case, eta):
    config, num_steps = CASES[case], 10
    schedule = DDIMSchedule.from_scheduler_config(config, num_steps, eta)
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(num_steps)
    assert torch.equal(schedule.timesteps, reference.timesteps.to(torch.int64))
    g = torch.Generator().manual_seed(0)
    for t in reference.timesteps:
        sample = torch.randn(3, 4, 8, 8, generator=g)
        model_output = torch.randn(3, 4, 8, 8, generator=g)
        z = torch.randn(3, 4, 8, 8, generator=g)
        ours = ddim_step(model_output, torch.full((3,), int(t)), sample, schedule, noise=z)
        theirs = reference.step(model_output, t, sample, eta=eta, variance_noise=z)
        # At ᾱ_t ≈ 2e-9 (cosine, t=999) the unclipped x̂₀ is ~1e4 and our float64 coefficients differ from diffusers'
        # float32 ones in the last bits: a relative bound there (the float64 test below bounds the error itself).
        rtol = 1e-5 if case == "eps-cosine-trailing" else 0
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, rtol=0, atol=1e-6)


def test_step_in_float32_is_close_to_float64_reference():
    """Rounding near t=999 of a cosine schedule is amplified by 1/√ᾱ_t; a looser bound against float64."""
    config = {**COSINE, "timestep_spacing": "trailing", "steps_offset": 0}
    schedule = DDIMSchedule.from_scheduler_config(config, 20)
    g = torch.Generator().manual_seed(1)
    for t in schedule.timesteps.tolist():
        x, eps, z = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        t_batch = torch.full((2,), t)
        fp32 = ddim_step(eps.float(), t_batch, x.float(), schedule, noise=z.float())
        fp64 = ddim_step(eps, t_batch, x, schedule, noise=z)
        torch.testing.assert_close(fp32.prev_sample.double(), fp64.prev_sample, rtol=0, atol=5e-3)


def test_mixed_timesteps_in_one_batch_equal_separate_steps():
    schedule = DDIMSchedule.from_scheduler_config(_config(), 10)
    g = torch.Generator().manual_seed(2)
    t = schedule.timesteps[[0, 4, 9]]
    x, eps, z = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    batched = ddim_step(eps, t, x, schedule, noise=z)
    for i in range(3):
        single = ddim_step(eps[i : i + 1], t[i : i + 1], x[i : i + 1], schedule, noise=z[i : i + 1])
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample, rtol=0, atol=0)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob, rtol=0, atol=0)


def test_log_prob_equals_torch_normal_mean_reduced():
    schedule = DDIMSchedule.from_scheduler_config(_config(), 10)
    g = torch.Generator().manual_seed(3)
    for t in schedule.timesteps.tolist():
        x, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
        out = ddim_step(eps, torch.full((4,), t), x, schedule, generator=g)
        expected = torch.distributions.Normal(out.mean, out.std_dev_t).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
        assert out.log_prob.shape == (4,)
        torch.testing.assert_close(out.log_prob, expected, rtol=0, atol=1e-5)
        assert torch.isfinite(out.log_prob).all()


def test_log_prob_recomputed_from_stored_action_reproduces_rollout_value():
    """At train time, scoring the stored x_{t-1} with unchanged weights gives ratio exactly 1."""
    schedule = DDIMSchedule.from_scheduler_config(_config(), 10)
    g = torch.Generator().manual_seed(4)
    x, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.full((4,), int(schedule.timesteps[3]))
    rollout = ddim_step(eps, t, x, schedule, generator=g)
    rescored = ddim_step(eps, t, x, schedule, prev_sample=rollout.prev_sample)
    assert torch.equal(torch.exp(rescored.log_prob - rollout.log_prob), torch.ones(4))


def test_log_prob_is_mean_not_sum_over_dims():
    x, mean, std = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.full((1, 1, 1, 1), 2.0)
    expected = -math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert gaussian_log_prob(x, mean, std).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_through_mean_only():
    schedule = DDIMSchedule.from_scheduler_config(_config(), 10)
    eps = torch.randn(2, 4, 8, 8, requires_grad=True)
    x = torch.randn(2, 4, 8, 8)
    out = ddim_step(eps, torch.full((2,), int(schedule.timesteps[0])), x, schedule, generator=torch.Generator())
    out.log_prob.sum().backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all() and eps.grad.abs().sum() > 0


def test_last_trailing_step_uses_final_alpha_cumprod():
    config = _config(timestep_spacing="trailing", steps_offset=0)
    schedule = DDIMSchedule.from_scheduler_config(config, 20)
    reference = DDIMScheduler.from_config(config)
    assert int(schedule.prev_timesteps[-1]) < 0
    assert float(schedule.alpha_prod_t_prev[-1]) == float(reference.final_alpha_cumprod)
    assert (schedule.std_dev_t > 0).all()


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan")])
def test_eta_not_positive_is_refused(eta):
    with pytest.raises(ValueError) as e:
        DDIMSchedule.from_scheduler_config(_config(), 10, eta)
    assert str(e.value) == (
        f"eta must be > 0, got {eta!r}: with eta=0 the denoising step is deterministic and has no "
        "log-probability (DDPO uses eta=1.0)"
    )


@pytest.mark.parametrize(
    "overrides, where",
    [
        ({"steps_offset": 0}, "step 9 of 10 (timestep 0 -> -100)"),  # leading spacing lands on t=0
        ({"timestep_spacing": "linspace", "steps_offset": 0}, "step 9 of 10 (timestep 0 -> -100)"),
        ({"set_alpha_to_one": True, "timestep_spacing": "trailing"}, "step 9 of 10 (timestep 99 -> -1)"),
    ],
)
def test_zero_std_schedules_are_refused(overrides, where):
    with pytest.raises(ValueError) as e:
        DDIMSchedule.from_scheduler_config(_config(**overrides), 10)
    assert str(e.value) == (
        f"{where} has std 0, so its log-probability is undefined. This happens when the last step lands on "
        "ᾱ_{t'} = ᾱ_t (timestep_spacing='leading' or 'linspace' with steps_offset=0) or ᾱ_{t'} = 1 "
        "(set_alpha_to_one=True): use timestep_spacing='trailing' or steps_offset=1, and set_alpha_to_one=False"
    )


def test_eta_too_large_is_refused():
    with pytest.raises(ValueError, match=r"^eta=3.0 is too large: .* use 0 < eta <= 1$"):
        DDIMSchedule.from_scheduler_config(_config(), 10, 3.0)


def test_bad_num_steps_and_prediction_type_are_refused():
    with pytest.raises(ValueError) as e:
        DDIMSchedule.from_scheduler_config(_config(), 1001)
    assert str(e.value) == "num_steps must be an int in [1, 1000] (the model's num_train_timesteps), got 1001"
    with pytest.raises(ValueError) as e:
        DDIMSchedule.from_scheduler_config(_config(prediction_type="flow"), 10)
    assert str(e.value) == (
        "prediction_type 'flow' is not supported: use one of ('epsilon', 'v_prediction', 'sample')"
    )


def test_unknown_timestep_is_refused():
    schedule = DDIMSchedule.from_scheduler_config(_config(), 4)
    with pytest.raises(ValueError) as e:
        schedule.step_index(torch.tensor([751, 500]))
    assert str(e.value) == (
        "timesteps [500] are not in this schedule [751, 501, 251, 1]: was the observation produced by an env "
        "with the same num_steps and scheduler?"
    )
