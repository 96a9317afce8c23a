"""Damaged and old checkpoints: a truncated file is named with the newest earlier checkpoint that reads,
``--resume auto`` falls back to that one and says so (or says it starts afresh), format-1 checkpoints load, and a
checkpoint folder is the agent's save format (``Class.load`` reads it onto another num_envs)."""

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from agents import DDPO_IS
from agents.job import checkpoint
from agents.job.checkpoint import checkpoint_problem, load_checkpoint, load_resumable, load_weights, read_meta
from agents.job.train import build_agent, build_env, resolve_resume, train
from agents.save_format import UnreadableFileError, numpy_to_torch, package_versions
from tests.test_checkpoints import assert_trees_equal, job, trained_job  # noqa: F401  (the module's fixture)

FILES = ["meta.json", "agent.json", "state.pt", "trainable.safetensors"]


def copy_run(trained_job, tmp_path) -> tuple[Path, Path, Path]:  # noqa: F811
    """(a copy of the baseline run folder, its epoch-2 and epoch-3 checkpoints)."""
    run = tmp_path / "run"
    shutil.copytree(trained_job[2].parent, run)
    return run, run / "checkpoints" / "epoch-000002", run / "checkpoints" / "epoch-000003"


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", FILES)
def test_each_truncated_file_is_named_with_the_newest_earlier_checkpoint_that_reads(trained_job, tmp_path, name):  # noqa: F811
    cfg, _, _ = trained_job
    run, epoch2, epoch3 = copy_run(trained_job, tmp_path)
    truncate(epoch3 / name)
    assert checkpoint_problem(epoch3).file == str(epoch3 / name) and checkpoint_problem(epoch2) is None
    fix = (f"): the newest earlier checkpoint that reads is {epoch2}: resume from it (--resume {epoch2}; --resume auto "
           "skips unreadable checkpoints)")
    fresh = build_agent(cfg, build_env(cfg))
    for load in (lambda: load_checkpoint(fresh, epoch3), lambda: resolve_resume(str(epoch3), str(run))):
        with pytest.raises(UnreadableFileError) as e:
            load()
        assert isinstance(e.value, ValueError)  # the CLI prints it as one line
        assert str(e.value).startswith(f"{epoch3 / name} is unreadable (") and str(e.value).endswith(fix), e.value
    assert fresh.num_epochs == 0  # every file is read before the agent changes
    assert load_checkpoint(fresh, epoch2)["epoch"] == 2


def test_with_no_readable_checkpoint_left_the_error_says_to_start_afresh(trained_job, tmp_path):  # noqa: F811
    cfg, _, _ = trained_job
    run, epoch2, epoch3 = copy_run(trained_job, tmp_path)
    truncate(epoch2 / "trainable.safetensors")
    truncate(epoch3 / "state.pt")
    with pytest.raises(UnreadableFileError) as e:
        load_checkpoint(build_agent(cfg, build_env(cfg)), epoch3)
    assert str(e.value).endswith(f"): no earlier checkpoint in {epoch3.parent} reads: start the run afresh "
                                 "(--overwrite)")
    with pytest.raises(ValueError) as e:
        resolve_resume("auto", str(run))
    assert str(e.value).startswith(f"--resume auto: no checkpoint in {epoch3.parent} reads ({epoch3 / 'state.pt'} "
                                   "is unreadable (")
    assert str(e.value).endswith("): restore one, or start the run afresh with --overwrite")


def test_resume_auto_falls_back_to_the_newest_good_checkpoint_and_says_so(trained_job, tmp_path, capsys):  # noqa: F811
    cfg, _, root = trained_job
    run, epoch2, epoch3 = copy_run(trained_job, tmp_path)
    truncate(epoch3 / "state.pt")
    result = train(cfg.replace(output_dir=str(run), resume="auto"))
    lines = capsys.readouterr().out.splitlines()
    skipped = [line for line in lines if line.startswith("--resume auto")]
    assert len(skipped) == 1 and skipped[0].startswith(
        f"--resume auto: skipping {epoch3}: {epoch3 / 'state.pt'} is unreadable (")
    assert f"resuming from {epoch2} (epoch 2 of 3)" in lines
    # epoch 3 trained again from epoch 2: bit for bit the epoch the damaged checkpoint held
    assert result.agent.num_epochs == 3
    assert_trees_equal(load_file(root / "epoch-000003" / "trainable.safetensors"),
                       load_file(epoch3 / "trainable.safetensors"), "weights")


def test_a_file_damaged_past_the_quick_check_falls_back_at_load(trained_job, tmp_path, monkeypatch):  # noqa: F811
    """The quick check (headers, sizes, zip directory) misses some damage: loading then falls back the same way."""
    cfg, _, _ = trained_job
    run, epoch2, epoch3 = copy_run(trained_job, tmp_path)
    truncate(epoch3 / "state.pt")
    monkeypatch.setattr(checkpoint, "checkpoint_problem", lambda path: None)  # every checkpoint looks fine
    assert resolve_resume("auto", str(run)) == epoch3
    agent, said = build_agent(cfg, build_env(cfg)), []
    loaded, meta = load_resumable(agent, epoch3, fall_back=True, log=said.append)
    assert (loaded, meta["epoch"], agent.num_epochs) == (epoch2, 2, 2)
    assert len(said) == 1 and said[0].startswith(f"--resume auto: {epoch3 / 'state.pt'} is unreadable (")
    assert said[0].endswith(f"); falling back to {epoch2}")
    with pytest.raises(UnreadableFileError):  # an explicit --resume does not fall back
        load_resumable(build_agent(cfg, build_env(cfg)), epoch3, fall_back=False)


def test_resume_auto_without_a_checkpoint_says_it_starts_afresh(tmp_path, capsys):
    cfg = job(tmp_path, epochs=1, resume="auto")
    train(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--resume auto")]
    assert lines == [f"--resume auto: no checkpoint in {tmp_path / 'run' / 'checkpoints'} yet: starting afresh"]
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    said: list[str] = []
    assert resolve_resume("auto", str(tmp_path / "empty"), log=said.append) is None
    assert said == [f"--resume auto: no checkpoint in {tmp_path / 'empty' / 'checkpoints'} yet: starting afresh"]


@pytest.mark.parametrize(("keep", "reason"), [(0.5, "no end record at the end of the file (truncated)"),
                                             (-10, "File is not a zip file")])
def test_a_truncated_agent_zip_is_named(tmp_path, keep, reason):
    """Cut in half, the zip would still open on the end record of the torch zip stored in it: refused all the same."""
    from tests.conftest import tiny_env
    from tests.test_agent_state import SMALL

    agent = DDPO_IS(tiny_env(), **SMALL)
    agent.save(tmp_path / "agent")
    path = tmp_path / "agent.zip"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep > 0 else keep])
    for load in (lambda: DDPO_IS.load(path, env=tiny_env()), lambda: agent.set_parameters(path)):
        with pytest.raises(ValueError) as e:
            load()
        assert str(e.value) == (f"{path} is unreadable (not a readable zip: {reason}): save the agent again, or load "
                                "an earlier save")


def write_format_1(agent, folder: Path, config: dict) -> dict:
    """A checkpoint as format 1 wrote it: the agent's fields in meta.json, no agent.json. Returns the state written,
    as tensors."""
    folder.mkdir(parents=True)
    state = agent.state_dict()
    written = numpy_to_torch(state)
    save_file(state.pop("weights"), folder / "trainable.safetensors")
    torch.save(numpy_to_torch(state), folder / "state.pt")
    meta = {"format_version": 1, "epoch": agent.num_epochs, "num_timesteps": agent.num_timesteps,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "agent": type(agent).__name__,
            "agent_config": asdict(agent.config), "config": config, "env": agent.env_signature(),
            "packages": package_versions()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return written


def test_a_format_1_checkpoint_still_loads(trained_job, tmp_path):  # noqa: F811
    cfg, agent, _ = trained_job
    old = tmp_path / "checkpoints" / "epoch-000003"
    written = write_format_1(agent, old, {**cfg.to_flat(), "history": [{"reward_mean": 1.0, "reward_std": 0.0}]})
    meta = read_meta(old)
    assert meta["format_version"] == 1 and meta["config"]["model"] == "tiny" and meta["agent"] == "DDPO_IS"
    assert checkpoint_problem(old) is None and resolve_resume("auto", str(tmp_path)) == old
    fresh = build_agent(cfg, build_env(cfg))
    assert load_checkpoint(fresh, old)["epoch"] == 3
    assert_trees_equal(written, numpy_to_torch(fresh.state_dict()))  # everything, env state and RNGs included
    load_weights(fresh.policy, old, ema=True)  # what ddpo sample / eval read
    assert type(DDPO_IS.load(old, env=build_env(cfg))) is DDPO_IS


def test_a_checkpoint_folder_loads_as_a_saved_agent_onto_another_num_envs(trained_job):  # noqa: F811
    cfg, agent, root = trained_job
    path = root / "epoch-000003"
    assert json.loads((path / "agent.json").read_text())["agent_class"] == "agents.ddpo:DDPO_IS"
    two = cfg.replace(num_envs=2, batch_size=2)
    loaded = DDPO_IS.load(path, env=build_env(two))
    assert loaded.env.num_envs == 2 and loaded.num_epochs == 3
    assert_trees_equal(agent.policy.trainable_state_dict(), loaded.policy.trainable_state_dict(), "weights")
