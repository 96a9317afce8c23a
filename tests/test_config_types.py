"""Config values are checked against their fields' types (ddpo_env.fields): in the dataclasses themselves, in
``TrainConfig.from_flat``, in config files and through ``gym.make``; the error names the field and the type."""

import json
import re
import typing
from dataclasses import MISSING, fields

import gymnasium as gym
import numpy as np
import pytest

from agents.config import AGENT_CONFIGS, AgentConfig, DDPOISConfig, RWRConfig
from agents.job.cli import build_parser, job_config
from agents.job.config import TrainConfig
from ddpo_env.config import EnvConfig
from ddpo_env.fields import FieldTypeError, describe, field_hints, matches


@pytest.mark.parametrize(("flat", "message"), [
    ({"epochs": "ten"}, "epochs must be an int, got 'ten' (str)"),
    ({"epochs": 1.5}, "epochs must be an int, got 1.5 (float)"),
    ({"epochs": 2.0}, "epochs must be an int, got 2.0 (float)"),
    ({"epochs": True}, "epochs must be an int, got True (bool)"),
    ({"evaluate": "no"}, "evaluate must be a bool, got 'no' (str)"),
    ({"evaluate": 0}, "evaluate must be a bool, got 0 (int)"),
    ({"learning_rate": "fast"}, "learning_rate must be a float, got 'fast' (str)"),
    ({"reward": 3}, "reward must be a string, got 3 (int)"),
    ({"reward_options": "jpeg"}, "reward_options must be a dict, got 'jpeg' (str)"),
    ({"lora_targets": ["to_q", 3]}, "lora_targets must be a tuple of strings, got ['to_q', 3] (list)"),
    ({"num_steps": 2.5}, "num_steps must be an int or None, got 2.5 (float)"),
    ({"eta": "1"}, "eta must be a float or None, got '1' (str)"),
    ({"image_size": [16, 24, 3]}, "image_size must be an int or a tuple of 2 ints or None, got [16, 24, 3] (list)"),
    ({"prompts": 3}, "prompts must be a list of strings, a string, a path or a function or None, got 3 (int)"),
    ({"autoreset_mode": 1}, "autoreset_mode must be an AutoresetMode ('NextStep', 'SameStep', 'Disabled') or a "
                            "string, got 1 (int)"),
    ({"agent": "rwr", "temperature": None}, "temperature must be a float, got None (NoneType)"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field_and_its_type(flat, message):
    with pytest.raises(FieldTypeError) as e:
        TrainConfig.from_flat(flat)
    assert str(e.value) == message
    assert isinstance(e.value, ValueError) and isinstance(e.value, TypeError)  # one line in the CLI; a TypeError


def test_the_dataclasses_and_gym_make_refuse_wrong_types_themselves():
    with pytest.raises(FieldTypeError) as e:
        DDPOISConfig(learning_rate="fast")
    assert str(e.value) == "learning_rate must be a float, got 'fast' (str)"
    with pytest.raises(FieldTypeError) as e:
        RWRConfig(temperature="hot")
    assert str(e.value) == "temperature must be a float, got 'hot' (str)"
    with pytest.raises(FieldTypeError, match=re.escape("num_steps must be an int or None, got 2.5 (float)")):
        gym.make("DenoisingDiffusion-v0", model="tiny", num_steps=2.5)
    with pytest.raises(FieldTypeError) as e:
        TrainConfig(env={"eta": "high"})
    assert str(e.value) == "eta must be a float or None, got 'high' (str)"
    with pytest.raises(FieldTypeError) as e:
        TrainConfig(algorithm="ddpo-is")
    assert str(e.value) == "algorithm must be an AgentConfig or None, got 'ddpo-is' (str)"


def test_sensible_values_are_accepted_and_stored_as_plain_python():
    config = DDPOISConfig(learning_rate=1, clip_range=np.float32(0.5), batch_size=np.int64(4),
                          group_advantages=np.bool_(True), lora_targets=["to_q", "to_v"])
    assert config.learning_rate == 1 and type(config.clip_range) is float and config.clip_range == 0.5
    assert type(config.batch_size) is int and config.group_advantages is True
    assert config.lora_targets == ("to_q", "to_v")
    env = EnvConfig(image_size=[16, 24], prompts=("a", "b"), num_steps=np.int32(4), model=object())
    assert env.image_size == (16, 24) and env.num_steps == 4 and type(env.num_steps) is int
    assert EnvConfig(prompts=lambda rng: "a").prompts("rng") == "a"
    cfg = TrainConfig.from_flat({"epochs": 3, "eta": 1, "lora_targets": "to_q", "image_size": 16})
    assert (cfg.epochs, cfg.env.eta, cfg.algorithm.lora_targets, cfg.env.image_size) == (3, 1, ("to_q",), (16, 16))
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg  # what checkpoints and metrics.json hold reads back


def test_every_default_matches_its_own_annotation():
    """Each field's annotation is one the checker understands, and each default satisfies it."""
    for cls in (TrainConfig, EnvConfig, AgentConfig, *AGENT_CONFIGS.values()):
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            assert matches(default, field_hints(cls)[f.name]), (cls.__name__, f.name)
    assert describe(field_hints(EnvConfig)["image_size"]) == "int or tuple of 2 ints or None"


def test_the_prompts_annotation_is_the_prompt_sources():
    """EnvConfig.prompts takes what the prompt source reads (one PromptsLike, defined where no torch is imported)."""
    from ddpo_env.prompts import PromptsLike

    hint = field_hints(EnvConfig)["prompts"]
    assert set(typing.get_args(hint)) == set(typing.get_args(PromptsLike)) | {type(None)}


def test_a_config_file_with_a_wrong_type_is_refused_naming_the_file(tmp_path):
    (tmp_path / "job.toml").write_text('epochs = "ten"\n[algorithm]\nlearning_rate = 3e-4\n')
    with pytest.raises(ValueError) as e:
        job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.toml")]))
    assert str(e.value) == f"config file {str(tmp_path / 'job.toml')!r}: epochs must be an int, got 'ten' (str)"
    (tmp_path / "job.json").write_text(json.dumps({"evaluate": "no"}))
    with pytest.raises(ValueError) as e:
        job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.json")]))
    assert str(e.value) == f"config file {str(tmp_path / 'job.json')!r}: evaluate must be a bool, got 'no' (str)"


def test_choices_and_job_ranges_are_checked_at_construction():
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat({"optimizer": "sgd"})
    assert str(e.value) == "unknown optimizer 'sgd': use one of ['adamw', 'adamw8bit']"
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat({"group_std": "local"})
    assert str(e.value) == "group_std must be one of ['group', 'global'], got 'local'"
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat({"epochs": 0})
    assert str(e.value) == "epochs must be >= 1, got 0"
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat({"keep_last": -1})
    assert str(e.value) == "keep_last must be >= 0, got -1"


def test_the_agent_names_of_the_config_are_the_algorithms():
    """agents.config.AGENT_CONFIGS (torch-free, for the command line) and agents.AGENTS name the same agents."""
    from agents import AGENTS

    assert {name: agent.config_class for name, agent in AGENTS.items()} == AGENT_CONFIGS
