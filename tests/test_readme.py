"""The README's ten-line example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_gym_make_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    section = text.split("## The environment in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["terminated"] is True and namespace["info"]["image"].shape == (16, 16, 3)
    assert "a handwritten digit" in capsys.readouterr().out


def test_readme_custom_reward_example_runs():
    import gymnasium as gym
    import numpy as np

    from ddpo_env import DDIMSampler
    from tests.conftest import TINY

    section = README.read_text(encoding="utf-8").split("Your own reward, in five lines:", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 5 + 2  # + two imports
    namespace: dict = {"env": gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY)}
    exec(compile(code, str(README), "exec"), namespace)
    env = namespace["env"]
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(DDIMSampler(env)(obs)[0])
    np.testing.assert_allclose(reward, info["image"].mean(axis=(1, 2, 3)) / 255.0)
    assert terminated.all() and np.array_equal(info["reward_brightness"], reward)


def test_readme_agents_example_runs(tmp_path, monkeypatch):
    """The block under "## Agents and rewards" as written, on the tiny model and one epoch: train, save, load back
    onto the env it trained on, state_dict."""
    from agents import DDPO_IS
    from tests.conftest import TINY

    section = README.read_text(encoding="utf-8").split("## Agents and rewards", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    model = ", ".join(f"{k}={v!r}" for k, v in TINY.items())
    for written, small in (('gym.make_vec("DenoisingDiffusion-v0", num_envs=16)',
                            f'gym.make_vec("DenoisingDiffusion-v0", num_envs=16, {model})'),
                           ("agent.learn(total_samples=64 * 70)", "agent.learn(total_samples=64 * 1)")):
        assert code.count(written) == 1, f"the README's agents example no longer has {written}: update this test"
        code = code.replace(written, small)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    agent, state = namespace["agent"], namespace["state"]
    assert type(agent) is DDPO_IS and agent.num_epochs == 1 and (tmp_path / "runs" / "agent.zip").is_file()
    assert agent.diffusion_env is namespace["env"].unwrapped  # loaded onto the env it trained on
    assert state["counters"]["num_epochs"] == 1 and state["weights"]
    agent.learn(total_samples=64)  # and it trains on
    assert agent.num_epochs == 2


def test_every_test_the_reliability_table_names_exists():
    import re

    text = (README.parent / "docs" / "reliability.md").read_text(encoding="utf-8")
    named, current = [], None
    for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)?::(test_\w+)", text):
        current = file or current  # "::test_x" continues the file named last
        named.append((current, name))
    assert len(named) > 30
    tests = README.parent / "tests"
    missing = [f"{file}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (tests / file).read_text(encoding="utf-8"), re.M)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
