"""The training job on the embedded model: what a user reads after it (agreement, gain, labelled before/after)."""

import json

import numpy as np
import pytest
from PIL import Image

from agents.job.train import TrainConfig, train


def test_job_on_the_default_model_reports_digit_agreement_and_labels_its_pictures(tmp_path, capsys):
    cfg = TrainConfig.from_flat(dict(model="default", num_steps=2, epochs=1, samples_per_epoch=4, num_envs=4,
                                     batch_size=4, device="cpu", tensorboard=False, output_dir=str(tmp_path)))
    metrics = train(cfg).metrics
    for key in ("digit_agreement_before", "digit_agreement_after"):
        assert 0 <= metrics[key] <= 1
    assert np.isfinite(metrics["eval_gain_in_initial_std"]) and metrics["eval_kl_to_base_after"] >= 0
    out = capsys.readouterr().out
    assert (f"digits the classifier reads as prompted: {100 * metrics['digit_agreement_before']:.0f} % → "
            f"{100 * metrics['digit_agreement_after']:.0f} %") in out
    with Image.open(tmp_path / "before_after.png") as png:
        picture = np.asarray(png.convert("L"))
    title, grid = picture[:16], picture[16:]
    assert (title < 128).any() and grid.shape[0] == 10 * (16 * 4 + 2) + 2  # a title over ten rows of digits
    assert (title[:, picture.shape[1] // 2 + 10 :] < 128).any()  # the right half has its own title


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    import json

    import pytest

    from agents.job.cli import main

    flat = dict(model="tiny", num_steps=2, epochs=1, samples_per_epoch=4, num_envs=4, batch_size=4, device="cpu",
                tensorboard=False, evaluate=False, image_every=0, output_dir=str(tmp_path))
    train(TrainConfig.from_flat(flat))
    (tmp_path / "notes.txt").write_text("an earlier run's file")
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume auto.*--overwrite"):
        train(TrainConfig.from_flat({**flat, "seed": 1}))
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["seed"] == 0  # nothing was touched
    with pytest.raises(SystemExit):  # the CLI: one line naming the fix
        main(["train", "--model", "tiny", "--output-dir", str(tmp_path)])
    assert "error: output_dir" in capsys.readouterr().err
    train(TrainConfig.from_flat({**flat, "seed": 1, "overwrite": True}))
    assert not (tmp_path / "notes.txt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["seed"] == 1


def test_a_users_reward_goes_through_the_job_alone_or_in_a_weighted_sum(tmp_path):
    import csv

    from agents.job.cli import main
    from rewards import Scorer
    from tests.test_rewards import brightness

    flags = ["--model", "tiny", "--num-steps", "2", "--epochs", "1", "--samples-per-epoch", "4", "--num-envs", "4",
             "--batch-size", "4", "--device", "cpu", "--no-tensorboard", "--image-every", "0"]
    main(["train", *flags, "--reward", "jpeg_compressibility=1,tests.test_rewards:brightness=0.5",
          "--output-dir", str(tmp_path / "cli")])
    epoch = json.loads((tmp_path / "cli" / "metrics.json").read_text())["epochs"][0]
    total = epoch["reward_jpeg_compressibility"] + 0.5 * epoch["reward_brightness"]
    assert epoch["reward_mean"] == pytest.approx(total)  # each term logged, and they add up
    rows = list(csv.DictReader((tmp_path / "cli" / "logs" / "progress.csv").read_text().splitlines()))
    assert float(rows[0]["rollout/reward_brightness"]) == pytest.approx(epoch["reward_brightness"])

    flat = dict(model="tiny", num_steps=2, epochs=1, samples_per_epoch=4, num_envs=4, batch_size=4, device="cpu",
                tensorboard=False, image_every=0, output_dir=str(tmp_path / "api"), reward="mine")
    metrics = train(TrainConfig.from_flat(flat), rewards={"mine": brightness}).metrics
    assert 0 < metrics["eval_reward_before"]["mean"] < 1  # the evaluation scores with the user's reward too

    class Contrast(Scorer):  # a scorer class with an option, set from the job's reward_options
        name = "contrast"

        def __init__(self, *, scale: float = 1.0):
            self.scale = scale

        def __call__(self, images, prompts):
            return self.scale * images.std(axis=(1, 2, 3))

    flat.update(output_dir=str(tmp_path / "class"), reward="mine,contrast=0.5",
                reward_options={"contrast": {"scale": 1e-3}})
    epoch = train(TrainConfig.from_flat(flat), rewards={"mine": brightness, "contrast": Contrast}).metrics["epochs"][0]
    assert 0 < epoch["reward_contrast"] < 0.255  # 1e-3 × a std of uint8 pixels
    assert epoch["reward_mean"] == pytest.approx(epoch["reward_mine"] + 0.5 * epoch["reward_contrast"])


def test_a_run_that_failed_before_its_first_checkpoint_is_replaced_by_a_plain_rerun(tmp_path, capsys):
    import gc

    from rewards import RewardError

    def fails_in_training(images, prompts):  # scores the 25-env evaluation, fails on the 4-env training rollout
        if len(images) < 25:
            raise ConnectionError("scoring server went away")
        return images.mean(axis=(1, 2, 3)) / 255

    flat = dict(model="tiny", num_steps=2, epochs=1, samples_per_epoch=4, num_envs=4, batch_size=4, device="cpu",
                tensorboard=False, image_every=0, output_dir=str(tmp_path), reward="score")
    with pytest.raises(RewardError):
        train(TrainConfig.from_flat(flat), rewards={"score": fails_in_training})
    gc.collect()  # a file the failed run left open would warn here (warnings are errors): train() closes its logs
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "before.npz" in left and "logs" in left and not (tmp_path / "checkpoints" / "epoch-000001").exists()
    capsys.readouterr()
    train(TrainConfig.from_flat(flat), rewards={"score": lambda images, prompts: images.mean(axis=(1, 2, 3))})
    assert capsys.readouterr().out.splitlines()[0] == (
        f"output_dir {tmp_path} holds a run that stopped before its first checkpoint ({', '.join(left)}): "
        "replacing it")
    assert (tmp_path / "checkpoints" / "epoch-000001" / "meta.json").is_file()
    with pytest.raises(FileExistsError) as e:  # now it holds a checkpoint: a plain rerun is refused
        train(TrainConfig.from_flat(flat), rewards={"score": fails_in_training})
    assert str(e.value) == (
        f"output_dir {tmp_path} already holds a run (before.npz, before_after.png, checkpoints, logs, lora; newest "
        "checkpoint epoch-000001): continue it with --resume auto, start afresh with --overwrite (deletes it), or "
        "choose another --output-dir")


def test_a_folder_with_files_no_run_writes_is_refused_unless_overwrite(tmp_path, capsys):
    from agents.job.train import claim_output_dir

    (tmp_path / "logs").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as e:
        claim_output_dir(tmp_path, overwrite=False, main=True)
    assert str(e.value) == (f"output_dir {tmp_path} holds files but no checkpoint to continue (notes.txt): choose "
                            "another --output-dir, or --overwrite (deletes them)")
    assert (tmp_path / "notes.txt").is_file()
    claim_output_dir(tmp_path, overwrite=True, main=True)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""
    (tmp_path / "logs").mkdir()
    claim_output_dir(tmp_path, overwrite=False, main=False)  # another rank: neither deletes nor prints
    assert (tmp_path / "logs").is_dir() and capsys.readouterr().out == ""


def test_a_run_that_failed_after_a_checkpoint_is_continued_by_resume_auto(tmp_path, capsys):
    """A reward that fails in epoch 2 ends the run; --resume auto continues from epoch 1's checkpoint and ends
    with the weights of a run that never failed."""
    import torch

    from rewards import RewardError

    calls = {"n": 0}

    def fails_once(images, prompts):  # the 4-env training batches: the 3rd call is epoch 2's
        if len(images) < 25:
            calls["n"] += 1
            if calls["n"] == 3:
                raise ConnectionError("scoring server went away")
        return images.mean(axis=(1, 2, 3)) / 255

    flat = dict(model="tiny", num_steps=2, epochs=2, samples_per_epoch=8, num_envs=4, batch_size=4, device="cpu",
                tensorboard=False, image_every=0, evaluate=False, save_every=1, reward="score")
    steady = train(TrainConfig.from_flat({**flat, "output_dir": str(tmp_path / "steady")}),
                   rewards={"score": lambda images, prompts: images.mean(axis=(1, 2, 3)) / 255})
    failed = TrainConfig.from_flat({**flat, "output_dir": str(tmp_path / "failed")})
    with pytest.raises(RewardError):
        train(failed, rewards={"score": fails_once})
    capsys.readouterr()
    resumed = train(failed.replace(resume="auto"), rewards={"score": fails_once})
    assert f"resuming from {tmp_path / 'failed' / 'checkpoints' / 'epoch-000001'} (epoch 1 of 2)" in (
        capsys.readouterr().out)
    assert resumed.agent.num_epochs == 2
    expected = steady.agent.policy.trainable_state_dict()
    assert all(torch.equal(expected[k], v) for k, v in resumed.agent.policy.trainable_state_dict().items())
