"""Device bugs caught on a CPU: every tensor the agents create after setup says where it lives (a GPU run puts
nothing on the CPU by accident, nor the reverse), and the process-wide switches the agents touch are left as found."""

import pytest
import torch
from conftest import tiny_env
from stable_baselines3.common.logger import Logger

from agents import AGENT_CONFIGS, make_agent

CASES = [pytest.param(name, "tiny", {}, id=f"{name}-tiny") for name in AGENT_CONFIGS] + [
    pytest.param("rwr", "tiny-sd3", {}, id="rwr-flow"),
    pytest.param("ddpo-is", "tiny-sd3", {}, id="ddpo-is-flow"),
    pytest.param("ddpo-is", "tiny", {"group_advantages": True}, id="ddpo-is-groups"),
    pytest.param("ddpo-sf", "tiny", {"lora_rank": 0, "grad_workers": 2}, id="ddpo-sf-full-threads"),
    pytest.param("ddpo-is", "tiny", {"lora_rank": 0, "dtype": "float16"}, id="ddpo-is-full-float16"),
]


@pytest.mark.parametrize(("name", "model", "options"), CASES)
def test_a_whole_epoch_of_every_agent_creates_no_tensor_without_saying_its_device(name, model, options):
    """With the default device set to "meta", a tensor created without an explicit device holds no data, so any
    use of it beside real tensors fails: on a GPU such a tensor would silently land on the CPU (or the reverse)."""
    options = dict(options)
    env = tiny_env(4, model=model, guidance_scale=2.0, dtype=options.pop("dtype", "float32"),
                   **({"group_size": 2} if options.get("group_advantages") else {}))
    diagnostics = {} if name.startswith("rwr") else {"step_stats_every": 1}  # per-step gradients: DDPO's losses
    agent = make_agent(name, env, samples_per_epoch=4, batch_size=2, kl_coef=0.1, ema_decay=0.9, **diagnostics,
                       **options)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    diffusion = env.unwrapped
    diffusion.prompt_embeds(range(len(diffusion.conditioning.table)))  # the text encoder runs before: it is frozen
    before = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    torch.set_default_device("meta")
    try:
        agent.learn(total_samples=4)
    finally:
        torch.set_default_device(None)
    assert agent.num_updates >= 1
    params = agent.policy.trainable_parameters()
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def tiny_agent(**kwargs):
    agent = make_agent("ddpo-is", tiny_env(2), samples_per_epoch=2, batch_size=2, **kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


def test_seeding_on_a_gpu_leaves_the_processs_cudnn_switches_as_it_found_them(monkeypatch):
    from stable_baselines3.common.utils import set_random_seed

    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "deterministic", False)
    monkeypatch.setattr(cudnn, "benchmark", True)
    set_random_seed(0, using_cuda=True)  # what SB3 does for an agent on a GPU...
    assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
    cudnn.deterministic, cudnn.benchmark = False, True
    agent = tiny_agent()
    monkeypatch.setattr(agent, "device", torch.device("cuda"))  # SB3 asks for the switch by the agent's device
    agent.set_random_seed(3)  # ...and what the agents do instead
    assert (cudnn.deterministic, cudnn.benchmark) == (False, True)


def test_data_parallel_averages_gradients_of_mixed_dtypes_each_in_its_own_dtype(tmp_path):
    import torch.distributed as dist

    from agents.distributed import Ranks

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)),
                  torch.nn.Parameter(torch.ones(4))]
        params[0].grad = torch.tensor([1.0, 2.0, 3.0])
        params[1].grad = torch.tensor([0.5, 0.25], dtype=torch.bfloat16)  # params[2] has none: zeros
        Ranks().average_gradients(params)
    finally:
        dist.destroy_process_group()
    assert [p.grad.dtype for p in params] == [torch.float32, torch.bfloat16, torch.float32]
    assert params[0].grad.tolist() == [1.0, 2.0, 3.0] and params[1].grad.tolist() == [0.5, 0.25]
    assert params[2].grad.tolist() == [0.0] * 4


def test_the_collective_timeout_comes_from_the_job_config(monkeypatch):
    import datetime

    import torch.distributed as dist

    from agents.distributed import init_from_environment
    from agents.job.config import TrainConfig

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: joined.update(backend=backend, **kwargs))
    assert init_from_environment("cpu", TrainConfig(collective_timeout_s=7200).collective_timeout_s) == "cpu"
    assert joined == {"backend": "gloo", "timeout": datetime.timedelta(hours=2)}
    with pytest.raises(ValueError, match="collective_timeout_s"):
        TrainConfig(collective_timeout_s=0)


def test_a_checkpoint_whose_noise_was_drawn_on_another_device_resumes_with_a_derived_seed_and_says_so():
    agent = tiny_agent()
    state = agent.state_dict(include_env=False)
    state["rng"]["policy_noise"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: 16 bytes
    state["rng"]["policy_noise_device"] = "cuda"
    with pytest.warns(UserWarning, match="sampled its noise on cuda and this agent samples on cpu"):
        agent.load_state_dict(state)
    first = torch.randn(3, generator=agent.policy.noise_generator)
    with pytest.warns(UserWarning):
        agent.load_state_dict(state)
    assert torch.equal(torch.randn(3, generator=agent.policy.noise_generator), first)  # derived, reproducibly
