"""``ddpo train | sample | eval`` run as a user would (subprocesses) on a tiny budget; config files and flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agents.job.cli import build_parser, job_config

TINY_FLAGS = ["--model", "tiny", "--num-steps", "4", "--samples-per-epoch", "6", "--num-envs", "3",
              "--batch-size", "3", "--device", "cpu", "--lora-rank", "4", "--learning-rate", "1e-3"]


def ddpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.job.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = ddpo("train", *TINY_FLAGS, "--epochs", "2", "--save-every", "1", "--image-every", "3",
                  "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_pictures_metrics_checkpoints_tensorboard_and_export(run):
    out, result = run
    assert "ddpo-is on the tiny model, reward jpeg_compressibility: 2 epochs × 6 samples" in result.stdout
    for line in ("before_after.png", "reward_curve.png", "metrics.json", "checkpoints/epoch-000002", "lora",
                 f"tensorboard --logdir {out / 'logs'}"):
        assert line in result.stdout  # the one-screen summary says where everything is
    assert "samples_per_s=" in result.stderr and "reward=" in result.stderr  # the progress bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["config"]["agent"] == "ddpo-is"
    for name in ("before_after.png", "reward_curve.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert (out / "lora" / "pytorch_lora_weights.safetensors").stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    for tag in ("rollout/reward_mean", "train/approx_kl", "train/clip_fraction", "train/loss", "time/samples_per_s"):
        assert len(events.Scalars(tag)) == 2, tag
    grids = events.Images("samples/grid")
    assert len(grids) == 2  # before training and after the last epoch (also when not a multiple of image_every)
    assert grids[0].width > 400 and grids[0].height > 150  # 16 captioned samples, 8 per row


def test_sample_and_eval_from_a_checkpoint(run, tmp_path):
    out, _ = run
    checkpoint = out / "checkpoints" / "epoch-000002"
    sample = ddpo("sample", "--checkpoint", str(checkpoint), "--prompts", "a handwritten digit 3,a cat",
                  "--per-prompt", "2", "--output", str(tmp_path / "grid.png"))
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert f"4 samples from {checkpoint}: reward " in sample.stdout
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64
    evaluation = ddpo("eval", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "eval.json"))
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["samples"] == 100 and report["reward"] == "jpeg_compressibility"
    assert report["reward_mean"] == pytest.approx(metrics["eval_reward_after"]["mean"], abs=1e-9)  # same set
    assert "evaluate" in evaluation.stderr  # a progress bar over the 100 samples


def test_sample_and_eval_take_a_run_folder_and_a_prompt_file(run, tmp_path):
    out, _ = run
    (tmp_path / "prompts.txt").write_text("a handwritten digit 7\n\na scribbled two\n")
    evaluation = ddpo("eval", "--checkpoint", str(out), "--prompt-file", str(tmp_path / "prompts.txt"),
                      "--per-prompt", "3")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.loads(evaluation.stdout)
    assert report["checkpoint"] == str(out / "checkpoints" / "epoch-000002")  # the run's newest checkpoint
    assert report["samples"] == 6 and list(report["per_prompt"]) == ["a handwritten digit 7", "a scribbled two"]
    nowhere = ddpo("sample", "--checkpoint", str(tmp_path))
    assert nowhere.returncode == 2 and f"{tmp_path} holds no checkpoint: pass a run folder" in nowhere.stderr


def test_config_file_then_flags_win(tmp_path):
    (tmp_path / "job.toml").write_text('agent = "rwr"\nepochs = 3\nreward = "jpeg_incompressibility=2"\n'
                                       '[reward_options.jpeg_incompressibility]\nquality = 80\n')
    (tmp_path / "job.json").write_text(json.dumps({"agent": "ddpo-sf", "lora_rank": 8}))
    cfg = job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.toml"), "--epochs", "7"]))
    assert (cfg.agent, cfg.epochs, cfg.reward) == ("rwr", 7, "jpeg_incompressibility=2")
    assert cfg.reward_options == {"jpeg_incompressibility": {"quality": 80}} and cfg.algorithm.lora_rank == 4
    cfg = job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.json"), "--no-tensorboard"]))
    assert (cfg.agent, cfg.algorithm.lora_rank, cfg.tensorboard) == ("ddpo-sf", 8, False)
    (tmp_path / "tree.toml").write_text('agent = "rwr"\n[env]\neta = 0.5\nnum_steps = 7\n[algorithm]\n'
                                        'temperature = 2.0\nlora_targets = ["to_q", "to_v"]\n')
    cfg = job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "tree.toml")]))
    assert (cfg.env.eta, cfg.env.num_steps, cfg.algorithm.temperature) == (0.5, 7, 2.0)
    assert cfg.algorithm.lora_targets == ("to_q", "to_v")


def test_help_shows_each_fields_docstring():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "Checkpoint every N epochs (0: only at the end; the last epoch is always saved)." in text
    assert "--reward-options JSON" in text


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--reward", "beauty"], "ddpo train: error: unknown reward 'beauty': use one of ['aesthetic', "
                                      "'alignment', 'digit_alignment', 'digit_margin', 'geneval', 'geneval_binary', "
                                      "'geneval_strict', 'jpeg_compressibility', 'jpeg_incompressibility'] or an "
                                      "import path package.module:function"),
    (["train", "--reward", "jpeg_compressibility=0"], "ddpo train: error: bad reward 'jpeg_compressibility=0' in "
                                                      "'jpeg_compressibility=0': use a name from ['aesthetic', "
                                                      "'alignment', 'digit_alignment', 'digit_margin', "
                                                      "'geneval', 'geneval_binary', 'geneval_strict', "
                                                      "'jpeg_compressibility', 'jpeg_incompressibility'] or "
                                                      "package.module:function, optionally =weight (finite, "
                                                      "non-zero), comma-separated"),
    (["train", "--agent", "ppo"], "ddpo train: error: unknown agent 'ppo': use one of ['awm', 'ddpo-is', "
                                  "'ddpo-sf', 'diffusion-nft', 'rwr', 'rwr-sparse']"),
    (["train", "--config", "nowhere.json"], "ddpo train: error: config file 'nowhere.json' does not exist"),
    (["sample", "--checkpoint", "nowhere"], "ddpo sample: error: nowhere holds no checkpoint: pass a run folder "
                                            "(e.g. runs/train), its checkpoints/ folder or one checkpoint "
                                            "(…/checkpoints/epoch-000010)"),
])
def test_bad_input_is_one_clear_line_without_a_traceback(tmp_path, args, message):
    result = ddpo(*args, *(["--output-dir", str(tmp_path)] if args[0] == "train" else []))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


def test_unknown_config_keys_are_named(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError) as e:
        job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.json")]))
    assert str(e.value) == f"config file {str(tmp_path / 'job.json')!r}: unknown keys ['epochz']"


def test_a_setting_of_another_agent_is_refused_not_dropped(tmp_path):
    with pytest.raises(ValueError) as e:
        job_config(build_parser().parse_args(["train", "--agent", "ddpo-is", "--temperature", "0.5"]))
    assert str(e.value) == "temperature is a setting of rwr, not of agent 'ddpo-is': drop it or use --agent rwr"
    (tmp_path / "job.json").write_text(json.dumps({"agent": "rwr", "clip_range": 1e-3}))
    with pytest.raises(ValueError) as e:
        job_config(build_parser().parse_args(["train", "--config", str(tmp_path / "job.json")]))
    assert str(e.value) == (f"config file {str(tmp_path / 'job.json')!r}: clip_range is a setting of ddpo-is, not of "
                            "agent 'rwr': drop it or use --agent ddpo-is")
    result = ddpo("train", "--agent", "rwr-sparse", "--temperature", "2", "--output-dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "ddpo train: error: temperature is a setting of rwr, not of agent 'rwr-sparse': drop it or use --agent rwr")


def _value_for(name, default):
    """A valid value different from the default, as command-line text and as the parsed value."""
    special = {"model": ("tiny", "tiny"), "prompts": ("prompts.txt", "prompts.txt"), "image_size": ("16,24", (16, 24)),
               "device": ("cpu", "cpu"), "dtype": ("bfloat16", "bfloat16"), "attention": ("matmul", "matmul"),
               "autoreset_mode": ("same_step", "same_step"), "render_mode": ("rgb_array", "rgb_array"),
               "optimizer": ("adamw8bit", "adamw8bit"), "group_std": ("global", "global"),
               "group_reward": ("win_rate", "win_rate"), "step_weights": ("sensitivity", "sensitivity"),
               "lora_targets": ("to_q,to_v", ("to_q", "to_v")), "scheduler_overrides": ('{"eta": 1}', {"eta": 1}),
               "reward_options": ('{"jpeg_compressibility": {}}', {"jpeg_compressibility": {}}),
               "agent": ("rwr", "rwr"), "reward": ("jpeg_incompressibility", "jpeg_incompressibility"),
               "resume": ("", ""), "output_dir": ("elsewhere", "elsewhere"), "held_out_prompts": ("h.txt", "h.txt"),
               "recompute_log_probs": (None, True)}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return None, not default
    if isinstance(default, int) or default is None:
        return "7", 7
    return "0.5", 0.5


def test_every_env_and_agent_field_is_a_flag_that_reaches_its_place():
    """Each field of TrainConfig, EnvConfig and every agent's config, given as its flag, lands in the config tree."""
    from dataclasses import MISSING, fields

    from agents import AGENTS
    from agents.job.config import TrainConfig
    from ddpo_env.config import EnvConfig

    owners = [(TrainConfig, None), (EnvConfig, "env")] + [(a.config_class, name) for name, a in AGENTS.items()]
    checked, parser = set(), build_parser()
    for cls, where in owners:
        for f in fields(cls):
            if f.name in ("env", "algorithm") or (cls, f.name) in checked:
                continue
            checked.add((cls, f.name))
            default = f.default if f.default is not MISSING else f.default_factory()
            text, value = _value_for(f.name, default)
            agent = where if where in AGENTS else "ddpo-is"
            flag = f"--{f.name.replace('_', '-')}"
            argv = ["train", *(["--agent", agent] if f.name != "agent" else [])]
            argv += [flag] if text is None and value else [f"--no-{flag[2:]}"] if text is None else [flag, text]
            args = parser.parse_args(argv)
            assert getattr(args, f.name) == value, (f.name, argv)
            given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
            cfg = TrainConfig.from_flat(given) if f.name not in ("autoreset_mode",) else None
            if cfg is None:
                continue
            place = cfg if where is None else cfg.env if where == "env" else cfg.algorithm
            assert getattr(place, f.name) == value, (f.name, getattr(place, f.name))
    assert len(checked) > 60


def test_documented_beyond_ddpo_flags_reach_the_job_config():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    line = re.search(r"^ddpo train (--kl-coef .*)$", readme, re.M).group(1)
    cfg = job_config(build_parser().parse_args(["train", *line.split()]))
    a = cfg.algorithm
    assert (a.kl_coef, cfg.env.group_size, a.group_advantages, a.ema_decay, cfg.monitor_every) == (
        10.0, 4, True, 0.9, 24)


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[1] / "configs").glob("*.toml")))
def test_every_shipped_config_file_builds_a_job_config(path):
    from agents.job.cli import read_config_file

    assert read_config_file(path)  # unknown keys and invalid settings raise


BEFORE_TORCH = """
import sys
from agents.job.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--epochs", "ten"], "ddpo train: error: argument --epochs: invalid int value: 'ten'"),
    (["train", "--no-such-flag"], "ddpo: error: unrecognized arguments: --no-such-flag"),
    (["train", "--agent", "nope"], "ddpo train: error: unknown agent 'nope': use one of ['awm', 'ddpo-is', "
                                   "'ddpo-sf', 'diffusion-nft', 'rwr', 'rwr-sparse']"),
    (["train", "--optimizer", "sgd"], "ddpo train: error: unknown optimizer 'sgd': use one of ['adamw', 'adamw8bit']"),
    (["train", "--epochs", "0"], "ddpo train: error: epochs must be >= 1, got 0"),
    (["train", "--config", "{tmp}/job.toml"], "ddpo train: error: config file '{tmp}/job.toml': evaluate must be a "
                                              "bool, got 'no' (str)"),
    (["sample"], "ddpo sample: error: the following arguments are required: --checkpoint"),
    (["eval", "--checkpoint"], "ddpo eval: error: argument --checkpoint: expected one argument"),
])
def test_bad_arguments_are_answered_before_torch_is_imported(tmp_path, args, message):
    (tmp_path / "job.toml").write_text('evaluate = "no"\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run([sys.executable, "-c", BEFORE_TORCH, *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.stdout.strip() == "exit 2 False"  # exit code 2, and torch never imported
    assert result.stderr.strip().splitlines()[-1] == message.replace("{tmp}", str(tmp_path))


def test_prompts_mean_the_same_for_train_and_sample(tmp_path):
    from agents.job.cli import chosen_prompts

    parser = build_parser()
    assert parser.parse_args(["train", "--prompts", "a cat, a dog"]).prompts == ("a cat", "a dog")
    assert job_config(parser.parse_args(["train", "--prompts", "a cat,a dog"])).env.prompts == ("a cat", "a dog")
    assert parser.parse_args(["train", "--prompts", "mine.txt"]).prompts == "mine.txt"  # a file: read by the env
    sample = parser.parse_args(["sample", "--checkpoint", "x", "--prompts", "a cat, a dog", "--per-prompt", "2"])
    assert chosen_prompts(sample) == ["a cat", "a cat", "a dog", "a dog"]
    (tmp_path / "p.txt").write_text("a bird\n\na fish\n")
    from_file = parser.parse_args(["sample", "--checkpoint", "x", "--prompts", str(tmp_path / "p.txt")])
    assert chosen_prompts(from_file) == ["a bird", "a fish"]
    help_text = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "On the command line: comma-separated prompts, or the path of a text file with one prompt per line." in (
        help_text)


def test_sample_writes_its_grid_into_the_run_folder(run, tmp_path):
    out, _ = run
    result = subprocess.run([sys.executable, "-m", "agents.job.cli", "sample", "--checkpoint", str(out), "--prompts",
                             "a cat"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"  grid written to {out / 'samples.png'}"
    with Image.open(out / "samples.png") as grid:
        assert grid.size[0] > 64
    assert list(tmp_path.iterdir()) == []  # nothing in the current folder


def test_model_help_names_every_registered_task():
    from agents.job.cli import field_docs
    from ddpo_env.config import EnvConfig
    from ddpo_env.tasks import task_names

    doc = field_docs(EnvConfig)["model"]
    assert all(f"'{name}'" in doc for name in task_names()), (task_names(), doc)
    assert "package.module:TASK" in doc
