"""stable-baselines3's ways to load, as SB3 users call them: ``Class.load(path, env=env)`` onto the very env the agent
trained on (the new agent takes the env's UNet over, the old one refuses to run), onto an env with another
num_envs, ``set_parameters`` from a saved file or a dict, and the saved class found without the package top."""

import ast
import copy
import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import DDPO_IS, DiffusionAgent, make_agent
from tests.conftest import tiny_env
from tests.test_agent_state import SMALL, seeded_action
from tests.test_checkpoints import assert_trees_equal

OWNER_ERROR = ("this agent's policy no longer owns its env's UNet: a later agent was built on the same env "
               "(make_agent or load), which took the UNet over with its own weights; use that newer agent, or build "
               "each agent that should stay usable on its own env")


def trained_then_saved(folder: Path, **overrides):
    """(env, agent trained one epoch on it, its saved weights); the agent is saved to folder/agent.zip."""
    env = tiny_env()
    agent = make_agent("ddpo-is", env, **{**SMALL, **overrides})
    agent.learn(total_samples=6)
    agent.save(folder / "agent")
    return env, agent, {k: v.clone() for k, v in agent.policy.trainable_state_dict().items()}


def weights_equal(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_load_onto_the_env_the_agent_trained_on(tmp_path, lora_rank):
    env, agent, saved = trained_then_saved(tmp_path, lora_rank=lora_rank)
    expected_action, optimizer = seeded_action(agent), copy.deepcopy(agent.policy.optimizer.state_dict())
    agent.learn(total_samples=6)  # the env's UNet moves on past the saved weights
    assert not weights_equal(saved, agent.policy.trainable_state_dict())

    loaded = type(agent).load(tmp_path / "agent.zip", env=env)
    assert loaded.diffusion_env is env.unwrapped and loaded.policy.unet is agent.policy.unet
    assert_trees_equal(saved, loaded.policy.trainable_state_dict(), "weights")
    assert_trees_equal(optimizer, loaded.policy.optimizer.state_dict(), "optimizer")
    np.testing.assert_array_equal(seeded_action(loaded), expected_action)
    for use in (lambda: seeded_action(agent), lambda: agent.learn(total_samples=6),
                lambda: agent.save(tmp_path / "old")):  # the earlier agent would share the new one's weights
        with pytest.raises(RuntimeError) as e:
            use()
        assert str(e.value) == OWNER_ERROR
    loaded.learn(total_samples=6)
    assert loaded.num_epochs == 2 and not weights_equal(saved, loaded.policy.trainable_state_dict())


def test_a_full_fine_tune_trained_in_place_cannot_be_the_reference_of_a_later_one(tmp_path):
    env, _, _ = trained_then_saved(tmp_path, lora_rank=0)
    with pytest.raises(ValueError) as e:
        DDPO_IS.load(tmp_path / "agent.zip", env=env, kl_coef=0.1)  # KL to the base model: its weights are gone
    assert str(e.value) == (
        "a full fine-tune's reference model is its UNet before training, but an earlier full fine-tune on this env "
        "trained that UNet in place: build this agent on a fresh env (same settings) to keep the base model as "
        "reference (kl_coef > 0, the held-out monitor)")
    assert DDPO_IS.load(tmp_path / "agent.zip", env=tiny_env(), kl_coef=0.1).policy.has_reference  # a fresh env


def test_make_agent_twice_on_one_env_starts_the_second_afresh():
    env = tiny_env()
    first = make_agent("ddpo-is", env, **SMALL)
    first.learn(total_samples=6)
    second = make_agent("ddpo-is", env, **SMALL)
    fresh = make_agent("ddpo-is", tiny_env(), **SMALL)
    assert_trees_equal(fresh.policy.trainable_state_dict(), second.policy.trainable_state_dict(), "weights")
    np.testing.assert_array_equal(seeded_action(second), seeded_action(fresh))
    with pytest.raises(RuntimeError, match="no longer owns its env's UNet"):
        first.learn(total_samples=6)


def test_load_onto_an_env_with_another_num_envs(tmp_path):
    _, agent, saved = trained_then_saved(tmp_path)  # 3 envs, samples_per_epoch 6
    path = tmp_path / "agent.zip"
    two = DDPO_IS.load(path, env=tiny_env(num_envs=2))
    assert two.env.num_envs == 2 and two.config == agent.config and (two.num_epochs, two.num_timesteps) == (1, 24)
    assert_trees_equal(saved, two.policy.trainable_state_dict(), "weights")
    assert_trees_equal(agent.policy.optimizer.state_dict(), two.policy.optimizer.state_dict(), "optimizer")
    two.learn(total_samples=6, reset_num_timesteps=False)  # three rollouts of 2 per epoch
    assert (two.num_epochs, two.num_timesteps) == (2, 48)

    with pytest.raises(ValueError) as e:
        DDPO_IS.load(path, env=tiny_env(num_envs=4))
    assert str(e.value) == (
        f"{path} trains samples_per_epoch=6, not a multiple of this env's num_envs=4: pass a multiple, e.g. "
        "DDPO_IS.load(path, env=env, samples_per_epoch=8) (and a batch_size dividing it), or build the env with a "
        "num_envs dividing 6")
    four = DDPO_IS.load(path, env=tiny_env(num_envs=4), samples_per_epoch=8, batch_size=4)  # what it names
    assert (four.config.samples_per_epoch, four.env.num_envs) == (8, 4)
    assert_trees_equal(saved, four.policy.trainable_state_dict(), "weights")


def test_set_parameters_from_a_saved_file_or_a_dict(tmp_path):
    _, agent, saved = trained_then_saved(tmp_path)
    other = make_agent("ddpo-is", tiny_env(), **SMALL)
    other.set_parameters(str(tmp_path / "agent.zip"))  # SB3's call, on a file save() wrote
    assert_trees_equal(saved, other.policy.trainable_state_dict(), "weights")
    assert_trees_equal(agent.policy.optimizer.state_dict(), other.policy.optimizer.state_dict(), "optimizer")
    assert other.num_epochs == 0  # parameters only, as in SB3: the counters stay
    np.testing.assert_array_equal(seeded_action(other), seeded_action(agent))

    params = agent.get_parameters()
    assert set(params) == {"policy", "policy.optimizer"}
    assert {k.removeprefix("unet.") for k in params["policy"]} == set(saved)
    from_dict = make_agent("ddpo-is", tiny_env(), **SMALL)
    from_dict.set_parameters(params)
    assert_trees_equal(saved, from_dict.policy.trainable_state_dict(), "weights")

    only_weights = make_agent("ddpo-is", tiny_env(), **SMALL)
    only_weights.set_parameters({"policy": params["policy"]}, exact_match=False)
    assert_trees_equal(saved, only_weights.policy.trainable_state_dict(), "weights")
    assert only_weights.policy.optimizer.state_dict()["state"] == {}  # not given: untouched
    with pytest.raises(ValueError) as e:
        only_weights.set_parameters({"policy": params["policy"]})
    assert str(e.value) == ("set_parameters takes a dict with the keys ['policy', 'policy.optimizer'] (as "
                            "get_parameters() returns it; exact_match=False for some of them), got ['policy']")
    with pytest.raises(ValueError) as e:
        only_weights.set_parameters({"policy": {"encoder.weight": torch.zeros(1)}}, exact_match=False)
    assert str(e.value) == ("parameters ['encoder.weight'] are not trained by this policy: pass the names "
                            "get_parameters()['policy'] has")


def rewrite_agent_json(path: Path, **changes) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["agent.json"] = json.dumps({**json.loads(files["agent.json"]), **changes}).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_the_saved_class_is_found_without_importing_the_package_top(tmp_path):
    tree = ast.parse((Path(__file__).parent.parent / "agents" / "state.py").read_text(encoding="utf-8"))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert [m for m in imported if m.split(".")[0] == "agents"] == ["agents.save_format"], imported  # only below it

    class MyAgent(DDPO_IS):  # registered when defined, as every DiffusionAgent subclass
        pass

    MyAgent(tiny_env(), **SMALL).save(tmp_path / "mine")
    assert type(DiffusionAgent.load(tmp_path / "mine.zip", env=tiny_env())) is MyAgent
    rewrite_agent_json(tmp_path / "mine.zip", agent_class="mypkg.agents:Mine", agent="Mine")
    with pytest.raises(ValueError) as e:
        DiffusionAgent.load(tmp_path / "mine.zip", env=tiny_env())
    assert str(e.value) == (f"{tmp_path / 'mine.zip'} holds a Mine (mypkg.agents:Mine), a class not imported here: "
                            "import its module (mypkg.agents) before loading")


def test_a_format_1_save_still_loads(tmp_path):
    """Format 1 (before the save format was one for zips and checkpoints): agent.json without the class path and a
    state.pt holding the weights, as the writer of that version made them."""
    from agents.save_format import numpy_to_torch, package_versions

    _, agent, saved = trained_then_saved(tmp_path)
    state = io.BytesIO()
    torch.save(numpy_to_torch(agent.state_dict(include_env=False)), state)
    meta = {"format": 1, "agent": "DDPO_IS", "config": asdict(agent.config), "env": agent.env_signature(),
            "packages": package_versions()}
    with zipfile.ZipFile(tmp_path / "old.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("agent.json", json.dumps(meta, indent=2, default=str))
        archive.writestr("state.pt", state.getvalue())
    loaded = DiffusionAgent.load(tmp_path / "old.zip", env=tiny_env())
    assert type(loaded) is DDPO_IS and loaded.num_epochs == 1
    assert_trees_equal(saved, loaded.policy.trainable_state_dict(), "weights")
