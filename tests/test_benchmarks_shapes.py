"""The shapes-task benchmarks: compositional RL, the base model's scores, the settings sweep, where the reward is
decided, the supervised oracle and the position probe (issue #19)."""

import json

import numpy as np
import pytest
import torch


@pytest.mark.slow  # starts worker processes (benchmarks.harness)
def test_compositional_benchmark_writes_scores_grid_and_summary_and_resumes(tmp_path, capsys):
    from benchmarks import compositional

    argv = ["--agents", "grpo", "--seeds", "1", "--epochs", "1", "--samples-per-epoch", "8", "--num-steps", "3",
            "--eval-prompts", "6", "--eval-seeds", "2", "--feature-steps", "50", "--workers", "2",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    data = compositional.main(argv)
    table = data["table"]
    assert set(table) == {"base", "grpo"} and data["eval_prompts"] == {"train": 6, "heldout": 6}
    base = next(r for r in data["runs"] if r["agent"] == "base")
    for agent in ("grpo",):
        row = table[agent]
        assert len(row["curve_mean"]) == 1 and row["train"]["kl_to_base"] >= 0
        assert row["heldout"]["gain"] == pytest.approx(row["heldout"]["overall_mean"] - base["heldout"]["overall"])
        assert np.isfinite(row["train"]["feature_distance"]) and row["train"]["diversity"] > 0
        assert row["train"]["extra_objects"] >= 0
    assert data["renders"]["train"]["extra_objects"] == 0  # the generator draws what is asked, nothing more
    # every category of the training prompts is scored; the held-out ones only have their four categories
    assert set(base["train"]["categories"]) == {"single_object", "two_object", "counting", "colors", "position",
                                                "color_attr"}
    assert len(base["train"]["correct"]) == 12 and set(base["train"]["correct"]) <= {0, 1}
    md = (tmp_path / "compositional.md").read_text()
    assert "| GRPO (groups of 8) (1) |" in md and "| base model (1) |" in md and "## Per category, held-out" in md
    assert "| extra objects |" in md and "## What fails in the position category" in md
    relations = table["base"]["train"]["relations"]
    assert relations["samples"] == 2 and 0 <= relations["relation_given_both"] <= 1
    assert (tmp_path / "compositional_grid.png").stat().st_size > 10_000
    assert (tmp_path / "compositional_curves.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compositional_base_score"]["value"] == table["base"]["train"]["overall_mean"]
    assert set(summary["compositional_heldout_gain"]["value"]) == {"grpo"}
    again = compositional.main([*argv, "--resume"])  # nothing left to run
    assert again["runs"] == data["runs"]
    with pytest.raises(SystemExit):  # other settings never mix with the saved runs
        compositional.main([*argv, "--epochs", "2", "--resume"])
    assert "was run with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor do runs trained on some categories only
        compositional.main([*argv, "--categories", "position", "--resume"])
    assert "was run with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compositional.main([*argv, "--categories", "positions"])
    assert "unknown categories ['positions']: use single_object" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # another model's runs never take the shipped model's name and summary keys
        compositional.main(["--model", "some/folder"])
    assert "give the results a --name of their own" in capsys.readouterr().err


def test_compositional_categories_train_on_those_training_prompts_only():
    from benchmarks.compositional_task import training_prompts
    from ddpo_env.scenes import parse_prompt, prompt_set

    position = training_prompts(["position"])
    assert len(position) == 20 and {parse_prompt(p).category for p in position} == {"position"}
    assert set(training_prompts(["position", "counting"])) < set(prompt_set("train"))


def test_shapes_model_benchmark_keeps_its_files_for_the_shipped_model(capsys):
    """Another model or a subset of categories needs a --name: shapes_model.* and summary.json describe the shipped
    model on every category; categories without held-out prompts alone are refused."""
    from benchmarks import shapes_model

    for argv in (["--categories", "position"], ["--model", "some/folder"]):
        with pytest.raises(SystemExit):
            shapes_model.main(argv)
        assert "give the results a --name of their own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shapes_model.main(["--categories", "single_object", "--name", "x"])
    assert "none of their prompts is held out" in capsys.readouterr().err


def test_step_gradients_benchmark_measures_each_trained_step_and_skips_the_rest(tmp_path):
    from benchmarks import step_gradients

    data = step_gradients.main(["--model", "tiny", "--reward", "jpeg_compressibility", "--num-steps", "3",
                                "--samples", "4", "--group-size", "2", "--skip", "0,1",
                                "--results-dir", str(tmp_path)])
    every, skipped = data["runs"]
    assert all(v is not None for v in every["steps"]["grad_norm"])
    assert sum(every["steps"]["grad_share"]) == pytest.approx(1.0)
    assert skipped["steps"]["grad_norm"][2] is None and skipped["steps"]["grad_share"][2] == 0.0
    assert all(-1.0 <= c <= 1.0 for c in skipped["steps"]["grad_cosine"][:2])
    md = (tmp_path / "step_gradients_tiny.md").read_text()
    assert "## skip_last_steps = 1" in md and "| 2 |" in md and "not trained" in md


@pytest.mark.slow  # starts worker processes (benchmarks.harness)
def test_compositional_sweep_scores_each_setting_against_the_base_model(tmp_path):
    from benchmarks import compositional_sweep

    # two groups of 8: with one group, all 8 samples of a prompt can tie on the strict reward, and a tie has no
    # advantage, so no update (the 3600-step shapes model ties where the first one did not)
    data = compositional_sweep.main(["--only", "0", "--seeds", "1", "--epochs", "1", "--samples-per-epoch", "16",
                                     "--num-steps", "3", "--eval-prompts", "4", "--eval-seeds", "1",
                                     "--reward", "geneval_strict", "--name", "strict", "--results-dir", str(tmp_path),
                                     "--runs-dir", str(tmp_path / "runs")])
    (name, over), = data["sweep"]
    assert [r["agent"] for r in data["runs"]] == ["base", name]
    base, run = data["runs"]
    assert run["learning_rate"] == over["learning_rate"] and len(run["curve"]) == 1
    assert base["train"]["kl_to_base"] == 0 < run["train"]["kl_to_base"]
    assert data["reward"] == "geneval_strict" and run["train"]["extra_objects"] >= 0
    md = (tmp_path / "strict.md").read_text()
    assert f"| {name} | 1 |" in md and "| base model |" in md and "`geneval_strict` reward" in md


def test_reward_decided_shares_recover_a_known_split_of_the_variance():
    from benchmarks.reward_decided import decided_shares

    # R = u_0 + ... + u_T, u_j ~ N(0, v_j): u_0 is the starting noise, step k draws u_(k+1); E[R | x_k] = Σ_{j<=k} u_j
    rng = np.random.default_rng(0)
    v = np.array([0.5, 2.0, 1.0, 0.25, 0.25])
    p, g, m, t = 400, 4, 4, len(v) - 1
    drawn = rng.normal(0, np.sqrt(v), (p, g, len(v)))
    offsets = rng.normal(0, 3.0, (p, 1, 1))  # each prompt's own mean: not part of the within-prompt variance
    rewards = np.zeros((p, g, t, m))
    for k in range(t):  # continue from x_k: keep u_0..u_k, redraw the rest
        rest = rng.normal(0, np.sqrt(v[k + 1:]), (p, g, m, t - k)).sum(axis=3)
        rewards[:, :, k, :] = drawn[:, :, : k + 1].sum(axis=2)[..., None] + rest + offsets
    shares = decided_shares(rewards)
    expected = np.append(np.cumsum(v)[:-1] / v.sum(), 1.0)
    np.testing.assert_allclose(shares, expected, atol=0.05)  # without the 1/M correction: +0.2


def test_reward_decided_writes_a_table_per_reward(tmp_path):
    from benchmarks import reward_decided

    data = reward_decided.main(["--cases", "default", "--prompts", "2", "--trajectories", "2", "--continuations", "2",
                                "--num-steps", "3", "--results-dir", str(tmp_path)])
    result = data["cases"]["default"]["rewards"]["jpeg_compressibility"]
    assert len(result["decided"]) == 4 and result["decided"][-1] == 1.0 and len(result["step_share"]) == 3
    assert "## default model, jpeg_compressibility (2 prompts)" in (tmp_path / "reward_decided.md").read_text()


def test_reward_decided_scores_the_number_of_objects_as_a_measure():
    from benchmarks.reward_decided import CASES, MEASURES
    from benchmarks.scene_metrics import renders

    prompts = ["three red circles", "a blue square and a yellow circle", "a green triangle"]
    np.testing.assert_array_equal(MEASURES["objects_found"](renders(prompts, seed=0), prompts), [3, 2, 1])
    assert "objects_found" in CASES["shapes"][1]


def test_compositional_oracle_renders_training_scenes_and_scores_every_variant_from_one_base(tmp_path):
    from benchmarks import compositional_oracle
    from ddpo_env.scenes import HELDOUT_PAIRS, parse_prompt, prompt_set
    from rewards import verify

    prompts, scenes = compositional_oracle.render_batch(prompt_set("train"), np.random.default_rng(0), 300)
    assert not any((o.colour, o.shape) in HELDOUT_PAIRS for s in scenes for o in s.objects)  # "a circle" included
    assert {parse_prompt(p).category for p in prompts} == {"single_object", "two_object", "counting", "colors",
                                                            "position", "color_attr"}
    assert all(v.correct for v in verify(np.stack([s.image for s in scenes]), prompts))

    runs = [compositional_oracle.fit(v, seed=0, checkpoints=(0, 2), eval_seeds=1, limit=3) for v in (0, 2)]
    lora, whole = runs
    assert [s["updates"] for s in lora["scores"]] == [0, 2] and whole["lora_rank"] == 0
    assert lora["scores"][0]["train"] == whole["scores"][0]["train"]  # both start from the same model and seeds
    assert set(lora["scores"][1]["heldout"]["categories"]) <= {"counting", "colors", "position", "color_attr"}
    rows = compositional_oracle.table(runs, (0, 2))
    assert [(r["variant"], r["updates"], r["renders"]) for r in rows] == [
        ("LoRA rank 4, lr 1e-3", 0, 0), ("LoRA rank 4, lr 1e-3", 2, 64), ("whole UNet, lr 1e-4", 0, 0),
        ("whole UNet, lr 1e-4", 2, 64)]
    assert rows[0]["train_overall"] == lora["scores"][0]["train"]["overall"]


def test_position_probe_coordinate_input_starts_as_the_model_and_checks_its_control(tmp_path, capsys):
    """The coordinate arm's widened UNet gives the shipped model's outputs until trained (its new input weights are
    zero, and the coordinates do reach it); a --control trained with other settings is refused with the command."""
    from benchmarks import position_probe
    from ddpo_env.models.embedded import load_unet
    from ddpo_env.models.shapes import SHAPES_DIR

    unet = load_unet(SHAPES_DIR)
    wide = position_probe.with_coordinates(unet).eval()
    x, t, cond = torch.randn(2, 3, 32, 32), torch.tensor([500, 20]), torch.randn(2, 16, 384)
    with torch.no_grad():
        assert torch.allclose(wide(x, t, cond).sample, unet(x, t, encoder_hidden_states=cond).sample, atol=1e-5)
        wide.unet.conv_in.weight[:, 3:] = 1.0  # the coordinate channels' weights now count
        assert not torch.allclose(wide(x, t, cond).sample, unet(x, t, encoder_hidden_states=cond).sample, atol=1e-3)
    assert torch.equal(wide.grid[0, 0], torch.linspace(-1, 1, 32)) and torch.equal(wide.grid[1, :, 0], wide.grid[0, 0])
    with pytest.raises(SystemExit):
        position_probe.main(["--control", str(SHAPES_DIR), "--results-dir", str(tmp_path)])
    assert "was trained with other settings" in capsys.readouterr().err


def test_the_validation_set_shares_no_prompt_or_seed_with_the_test_set():
    from benchmarks import compositional_task as task
    from ddpo_env.scenes import parse_prompt, prompt_set

    unseen = task.eval_prompts("heldout", 1, eval_set="validation")
    assert len(unseen) > 50 and not set(unseen) & (set(prompt_set("train")) | set(prompt_set("heldout")))
    assert {parse_prompt(p).category for p in unseen} == {"counting", "colors", "position", "color_attr"}
    assert task.eval_prompts("train", 2, eval_set="validation") == task.eval_prompts("train", 2)  # same prompts ...
    assert task.eval_seed("validation") != task.eval_seed("test")  # ... at other seeds
    with pytest.raises(ValueError, match="unknown evaluation set 'val'"):
        task.eval_prompts("train", 1, eval_set="val")


@pytest.mark.slow  # starts worker processes (benchmarks.harness)
def test_agents_sweep_scores_on_the_validation_set_and_chooses_each_agents_rate(tmp_path):
    from benchmarks import agents_sweep

    argv = ["--agents", "awm,grpo", "--rates", "1e-3,3e-3", "--seeds", "1", "--epochs", "1", "--samples-per-epoch",
            "8", "--num-steps", "3", "--eval-prompts", "4", "--results-dir", str(tmp_path), "--runs-dir",
            str(tmp_path / "runs")]
    data = agents_sweep.main(argv)
    assert data["eval_set"] == "validation" and data["eval_prompts"] == {"train": 4, "heldout": 4}
    assert sorted((r["agent"], r["learning_rate"]) for r in data["runs"]) == [
        ("awm", 1e-3), ("awm", 3e-3), ("base", 3e-3), ("grpo", 1e-3), ("grpo", 3e-3)]
    assert all(r["updates"] > 0 for r in data["runs"] if r["agent"] != "base")
    assert set(data["chosen"]) == {"awm", "grpo"} and data["chosen"]["awm"] in (1e-3, 3e-3)
    assert "| awm | " in (tmp_path / "agents_sweep.md").read_text()


def test_the_evaluation_curve_scores_the_policy_every_few_epochs_without_counting_its_own_time(tmp_path):
    from agents.job.config import TrainConfig
    from agents.job.train import train
    from benchmarks import compositional_task as task

    cfg = TrainConfig.from_flat({**task.PRESETS["cpu"], **task.agent_settings("grpo", 3), **task.QUIET,
                                 "num_steps": 3, "skip_last_steps": 1, "epochs": 3, "samples_per_epoch": 16,
                                 "num_envs": 16, "batch_size": 16, "evaluate": False, "output_dir": str(tmp_path)})
    curve = task.EvaluationCurve(cfg, every=2, limit=3)
    train(cfg, callbacks=[curve])
    assert [p["epoch"] for p in curve.points] == [2, 3] and [p["samples"] for p in curve.points] == [32, 48]
    assert 0 < curve.points[0]["seconds"] < curve.points[1]["seconds"] and curve.clock.evaluating_seconds > 0
    assert 0 < curve.points[0]["cpu_seconds"] < curve.points[1]["cpu_seconds"]
    assert all(0 <= p["overall"] <= 1 and 0 <= p["partial"] <= 1 for p in curve.points)


def test_samples_to_score_takes_each_seeds_first_evaluation_at_the_threshold_and_counts_misses():
    from benchmarks.samples_to_score import efficiency_ratio, ratio_text, samples_to_score

    def curve(*scores):
        return [{"samples": 64 * (i + 1), "seconds": 10.0 * (i + 1), "overall": s} for i, s in enumerate(scores)]

    curves = [curve(0.55, 0.66, 0.62), curve(0.61, 0.64, 0.71), curve(0.5, 0.55, 0.58)]
    table = samples_to_score(curves, [0.6, 0.65, 0.7])
    assert table["0.6"]["samples"] == [128, 64, None] and table["0.6"]["median_samples"] == 128
    assert table["0.65"]["reached"] == 2 and table["0.65"]["median_samples"] == 192  # 128, 192, never
    assert table["0.7"]["median_samples"] is None and table["0.7"]["reached"] == 1  # 2 of 3 seeds never got there
    assert table["0.6"]["median_seconds"] == 20.0
    fast = [curve(0.7, 0.7, 0.7)] * 3  # reaches the reference's final score (mean 0.637) at its first evaluation
    ratio = efficiency_ratio(curves, fast)
    assert ratio["score"] == pytest.approx((0.62 + 0.71 + 0.58) / 3)
    assert ratio["reference_samples"] == 128 and ratio["samples"] == 64 and ratio["ratio"] == 2.0
    assert efficiency_ratio(curves, [curve(0.5, 0.5, 0.5)] * 3)["ratio"] is None
    assert ratio_text(ratio, "GRPO") == "2.00× fewer samples than GRPO"
    later = efficiency_ratio([curve(0.6, 0.6, 0.6)] * 3, [curve(0.5, 0.6, 0.6)] * 3)  # 128 samples against 64
    assert ratio_text(later, "NFT") == "2.00× more samples than NFT"
    assert ratio_text(efficiency_ratio(fast, fast), "GRPO") == "as many samples as GRPO"
    assert ratio_text(efficiency_ratio(curves, [curve(0.5, 0.5, 0.5)] * 3), "GRPO").startswith("not reached")
    slow_reference = [curve(0.5, 0.5, 0.7), curve(0.5, 0.5, 0.5), curve(0.5, 0.5, 0.5)]  # its median never gets there
    assert "own median seed never reaches" in ratio_text(efficiency_ratio(slow_reference, fast), "GRPO")
    # another score key, as the algorithms benchmark's gain curves use
    gains = [[{**p, "gain": 10 * p["overall"]} for p in c] for c in curves]
    assert samples_to_score(gains, [6.5], key="gain")["6.5"]["median_samples"] == 192


@pytest.mark.slow  # starts worker processes (benchmarks.harness)
def test_the_agents_table_records_evaluation_curves_samples_to_score_and_its_summary_keys(tmp_path):
    from benchmarks import compositional

    argv = ["--agents", "grpo,diffusion-nft,grpo-window", "--seeds", "1", "--epochs", "2", "--samples-per-epoch", "8",
            "--num-steps", "3", "--eval-prompts", "4", "--curve-every", "1", "--feature-steps", "50", "--name",
            "compositional_agents", "--reward", "geneval_strict", "--word-use", "--results-dir", str(tmp_path),
            "--runs-dir", str(tmp_path / "runs")]
    data = compositional.main(argv)
    words = {r["agent"]: r["word_use"] for r in data["runs"]}
    assert set(words) == {"base", "grpo", "diffusion-nft", "grpo-window"}
    assert [w["kind"] for w in words["grpo"]] == ["relation", "colour"]
    assert words["grpo"][1]["prediction_change"] > 0 and words["grpo"] != words["base"]  # the adapter is in use
    for agent in ("grpo", "diffusion-nft", "grpo-window"):
        row = data["table"][agent]
        assert row["eval_samples"] == [8, 16] and len(row["eval_curve_mean"]) == 2 and row["updates"] > 0
        assert set(row["samples_to_score"]) == {"0.6", "0.65", "0.7"}
    assert set(data["efficiency"]) == {"diffusion-nft", "grpo-window"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compositional_best_agent"]["value"] in data["table"]
    assert set(summary["samples_to_score"]["value"]) == {"grpo", "diffusion-nft", "grpo-window"}
    assert "nft_vs_grpo_samples_ratio" in summary
    report = (tmp_path / "compositional_agents.md").read_text()
    assert "## Samples to score" in report and "| relation (left → right) | colour (red → blue) |" in report
    more = compositional.main([*argv[:1], "grpo,diffusion-nft,grpo-window,awm", *argv[2:], "--resume"])  # awm joins
    assert {r["agent"] for r in more["runs"]} == {"base", "grpo", "diffusion-nft", "grpo-window", "awm"}
    assert [r for r in more["runs"] if r["agent"] == "grpo"] == [r for r in data["runs"] if r["agent"] == "grpo"]
    sweep = {"chosen": {"grpo": 1e-2, "diffusion-nft": 3e-4, "grpo-window": None}, "eval_set": "validation",
             "reward": "geneval_strict", "runs": [{"seed": 0}, {"seed": 1}],
             "environment": {"git_revision": "abc1234", "date": "2026-12-04 06:00 UTC"}}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    chosen, source = compositional.chosen_settings(str(tmp_path / "sweep.json"), ["grpo", "diffusion-nft"], 10,
                                                   "geneval_strict")
    assert chosen["grpo"]["learning_rate"] == 1e-2 and chosen["grpo"]["group_size"] == 8
    assert chosen["diffusion-nft"]["learning_rate"] == 3e-4 and source.split == "validation"
    with pytest.raises(ValueError, match=r"chose no learning rate for \['grpo-window'\]"):
        compositional.chosen_settings(str(tmp_path / "sweep.json"), ["grpo-window"], 10, "geneval_strict")
    with pytest.raises(ValueError, match="chose its rates training on 'geneval_strict', not 'geneval'"):
        compositional.chosen_settings(str(tmp_path / "sweep.json"), ["grpo"], 10, "geneval")
