"""Half precision and compiled sampling train the same policy as float32 eager: the first update's ratios are exactly
1 (its old log-probs are what its own forward computes), and one optimizer step moves the trained weights by what
Adam asks (float32 master weights: nothing lost to rounding, nothing overflowing)."""

import pytest
import torch
from conftest import Recorder, tiny_env
from stable_baselines3.common.logger import Logger

from agents import DDPO_IS
from agents.step_stats import first_update_log_ratios

LR = 1e-5
COMBINATIONS = [
    pytest.param(dtype, compiled, rank, marks=[pytest.mark.slow] if compiled else [],
                 id=f"{dtype}-{'compiled' if compiled else 'eager'}-{'lora' if rank else 'full'}")
    for dtype in ("float32", "bfloat16", "float16") for compiled in (False, True) for rank in (4, 0)
]


def one_update_agent(dtype, compiled=False, rank=4, **kwargs):
    """DDPO-IS on the tiny model whose epoch is one optimizer step (2 samples × 4 steps in one accumulation)."""
    agent = DDPO_IS(tiny_env(2, dtype=dtype), samples_per_epoch=2, batch_size=2, lora_rank=rank, learning_rate=LR,
                    adam_weight_decay=0.0, compile_sampling=compiled, **kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


def weight_change(agent, before):
    params = agent.policy.trainable_parameters()
    return torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before, strict=True)])


@pytest.mark.parametrize(("dtype", "compiled", "rank"), COMBINATIONS)
def test_the_first_update_has_ratio_one_and_moves_every_trained_weight_by_the_learning_rate(dtype, compiled, rank):
    agent = one_update_agent(dtype, compiled, rank)
    params = agent.policy.trainable_parameters()
    assert {p.dtype for p in params} == {torch.float32}  # master weights, also for a half-precision full fine-tune
    agent.collect_rollout()
    assert first_update_log_ratios(agent) == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}  # exactly, at every step
    before = [p.detach().clone() for p in params]
    agent.train()
    assert agent.num_updates == 1 and agent.num_skipped_updates == 0
    delta = weight_change(agent, before)
    assert torch.isfinite(delta).all()
    moved = delta[delta != 0].abs()
    # Adam's first step moves each weight with a gradient by lr·|m̂/√v̂| = lr (LoRA: B, about half the adapter)
    assert moved.numel() >= 0.25 * delta.numel()
    assert abs(float(moved.median()) / LR - 1) < 0.05


@pytest.mark.slow
def test_compiled_sampling_keeps_its_samples_and_only_the_trained_old_log_probs_are_recomputed():
    agent = one_update_agent("bfloat16", compiled=True, skip_last_steps=1)
    agent.collect_rollout()
    stored = agent.buffer.log_probs.clone()
    with torch.no_grad():  # the last step is never trained: its log-probs stay the compiled sampler's
        batch = agent.buffer.transitions(torch.arange(2), torch.full((2,), 3))
        assert torch.equal(stored[:, 3], agent.transition_log_probs(batch))
    assert first_update_log_ratios(agent) == {0: 0.0, 1: 0.0, 2: 0.0}


def test_float16_scales_the_loss_so_gradients_below_its_smallest_number_still_train():
    agent = one_update_agent("float16")
    assert agent.grad_scaler is not None and one_update_agent("bfloat16").grad_scaler is None
    records = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[records]))
    compute_loss = agent.compute_loss

    def tiny_loss(samples, steps):  # unscaled, its gradients underflow to 0 in float16 (then no weight moves)
        loss, info = compute_loss(samples, steps)
        return loss * 1e-5, info

    agent.compute_loss = tiny_loss
    before = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.learn(total_samples=2)
    delta = weight_change(agent, before)
    assert torch.isfinite(delta).all() and (delta != 0).sum() >= 0.25 * delta.numel()
    assert records.records[-1]["train/loss_scale"] == 4096.0  # no overflow: the initial scale stands

    state = agent.state_dict()
    assert state["grad_scaler"]["scale"] == 4096.0
    agent.grad_scaler.update(1024.0)
    agent.load_state_dict(state)  # the scale is part of a checkpoint (bit-exact resume)
    assert agent.grad_scaler.get_scale() == 4096.0


def test_a_half_precision_full_fine_tune_keeps_the_base_model_as_reference_in_its_own_dtype():
    agent = one_update_agent("bfloat16", rank=0, kl_coef=0.1)
    reference = agent.policy._reference_unet
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    pairs = zip(reference.parameters(), agent.policy.unet.parameters(), strict=True)
    assert all(torch.equal(r.float(), p) for r, p in pairs)
    agent.collect_rollout()
    batch = agent.buffer.transitions(torch.arange(2), torch.zeros(2, dtype=torch.int64))
    penalty, info = agent.kl_penalty(batch)
    assert info["kl"] == 0.0  # the same weights, the same autocast kernels


def test_old_log_probs_are_recomputed_with_compiled_sampling_and_on_cuda_unless_turned_off():
    """On a CUDA device kernels are picked per batch shape, so the default (None) recomputes there; on a CPU it does
    not need to (the test above: exact ratio 1 without it). An explicit choice wins, except that compiled sampling
    always recomputes."""
    agent = one_update_agent("float32")
    assert agent.config.recompute_log_probs is None and not agent.recomputes_log_probs
    cpu = agent.device
    agent.device = torch.device("cuda")  # the decision only; nothing runs on it
    assert agent.recomputes_log_probs
    agent.config.recompute_log_probs = False
    assert not agent.recomputes_log_probs
    agent.device = cpu
    agent.config.recompute_log_probs = True
    assert agent.recomputes_log_probs
    agent.config.recompute_log_probs, agent.config.compile_sampling = False, True
    assert agent.recomputes_log_probs


def test_recomputing_old_log_probs_on_a_cpu_changes_nothing_and_keeps_ratio_one():
    agent = one_update_agent("bfloat16", recompute_log_probs=True)
    agent.collect_rollout()
    assert first_update_log_ratios(agent) == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
