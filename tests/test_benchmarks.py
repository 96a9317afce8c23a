"""The benchmark scripts run end to end on tiny settings and write what the README quotes (numbers come from the
committed runs, not from here)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import algorithms, algorithms_sweep, gpu, kl_frontier, overhead, peers_trl
from benchmarks.bare_ddpo import BareConfig, BareDDPO, Timers
from ddpo_env.backends import load_backend
from ddpo_env.ddim import DDIMSchedule, ddim_step


def test_algorithms_benchmark_writes_curves_table_and_summary_and_resumes(tmp_path):
    argv = ["--model", "tiny", "--agents", "ddpo-is,rwr-sparse", "--rewards", "jpeg_compressibility", "--seeds", "1",
            "--epochs", "2", "--samples-per-epoch", "8", "--num-steps", "2", "--workers", "1",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    data = algorithms.main(argv)
    table = data["table"]["jpeg_compressibility"]
    assert set(table) == {"ddpo-is", "rwr-sparse"}
    for row in table.values():
        assert len(row["curve_mean"]) == 2 and np.isfinite(row["eval_after_mean"]) and row["seeds"] == 1
    assert {r["agent"] for r in data["runs"]} == {"ddpo-is", "rwr-sparse"}
    md = (tmp_path / "algorithms.md").read_text()
    assert "| jpeg_compressibility |" in md and "DDPO-IS" in md and "RWR sparse" in md
    assert (tmp_path / "algorithms.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())["algorithms"]
    assert summary["value"]["jpeg_compressibility"]["ddpo-is"] == table["ddpo-is"]["eval_after_mean"]
    assert summary["command"].startswith("python -m benchmarks.algorithms --model tiny")
    steps = json.loads((tmp_path / "summary.json").read_text())["algorithms_optimizer_steps"]["value"]
    assert steps == {"ddpo-is": 2, "rwr-sparse": 2}  # 8 samples per epoch in one batch of 8: 1 step per epoch
    assert "| jpeg_compressibility | DDPO-IS | 0.003 | 2 |" in md  # lr, optimizer steps per run
    again = algorithms.main([*argv, "--resume"])  # nothing left to run: the same runs come back
    assert again["runs"] == data["runs"]
    # an unfinished benchmark (2 seeds planned, 1 run): the report says so and runs nothing
    report = algorithms.main([*argv[:7], "2", *argv[8:], "--report-only"])
    assert report["runs"] == data["runs"]
    md = (tmp_path / "algorithms.md").read_text()
    assert "**Partial: 2 of 4 runs finished**" in md
    assert "written from the saved runs by `python -m benchmarks.algorithms --model tiny" in md
    summary = json.loads((tmp_path / "summary.json").read_text())["algorithms"]
    assert summary["command"].endswith("--report-only")  # the command that wrote these figures


def test_algorithms_sweep_picks_each_agents_best_rate_on_the_validation_set_for_the_main_run(tmp_path):
    argv = ["--model", "tiny", "--agents", "ddpo-is", "--epochs", "1", "--samples-per-epoch", "4",
            "--num-steps", "2", "--workers", "1", "--rewards", "jpeg_compressibility",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    argv += ["--name", "mine"]  # the sweep writes mine_sweep.*, which the main run mine.* reads
    sweep = algorithms.main([*argv, "--sweep", "--rates", "1e-4,1e-2", "--seeds", "1"])
    assert {r["seed"] for r in sweep["runs"]} == {algorithms_sweep.SWEEP_SEEDS[0]}
    assert {r["eval_seed"] for r in sweep["runs"]} == {algorithms_sweep.VALIDATION_EVAL_SEED}
    assert {r["learning_rate"] for r in sweep["runs"]} == {1e-4, 1e-2}
    gains = {r["learning_rate"]: np.mean(r["eval_after"]) - np.mean(r["eval_before"]) for r in sweep["runs"]}
    best = max(gains, key=gains.get)
    assert algorithms_sweep.best_rates(tmp_path / "mine_sweep.json") == {"ddpo-is": {"jpeg_compressibility": best}}
    md = (tmp_path / "mine_sweep.md").read_text()
    other = next(rate for rate in gains if rate != best)  # gains can tie on a tiny model: not min(gains)
    assert f"| DDPO-IS | {best:g} | **" in md and f"| DDPO-IS | {other:g} | " in md
    assert f"| DDPO-IS | {other:g} | **" not in md
    main = algorithms.main([*argv, "--seeds", "1", "--lora-rank", "0"])
    assert [r["learning_rate"] for r in main["runs"]] == [best]
    assert main["settings"]["lora_rank"] == 0 and (tmp_path / "mine.md").is_file()
    assert main["settings_from"]["split"] == "validation"  # the rates were not chosen on the reported seeds
    # the main run reports the test set: the same prompts at other noise, so the untrained model scores otherwise
    assert main["runs"][0]["eval_seed"] == algorithms_sweep.TEST_EVAL_SEED
    assert main["runs"][0]["eval_before"] != sweep["runs"][0]["eval_before"]


def test_a_variant_of_an_agent_joins_a_finished_sweep_with_resume(tmp_path):
    argv = ["--model", "tiny", "--epochs", "1", "--samples-per-epoch", "4", "--num-steps", "2", "--workers", "1",
            "--rewards", "jpeg_compressibility", "--sweep", "--seeds", "1", "--rates", "1e-3",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    first = algorithms.main([*argv, "--agents", "ddpo-is"])
    both = algorithms.main([*argv, "--agents", "ddpo-is-balanced", "--resume", "--keep-outputs"])  # the first kept
    assert [r["agent"] for r in both["runs"]] == ["ddpo-is", "ddpo-is-balanced"]
    assert both["runs"][0] == first["runs"][0]
    assert set(algorithms_sweep.best_rates(tmp_path / "algorithms_sweep.json")) == {"ddpo-is", "ddpo-is-balanced"}
    assert "| DDPO-IS, gradient step weights | 0.001 |" in (tmp_path / "algorithms_sweep.md").read_text()
    # the variant trained with step weights: its run folder's config says so
    metrics = next((tmp_path / "runs").rglob("ddpo-is-balanced*/output/metrics.json"))
    config = json.loads(metrics.read_text())["config"]
    assert config["step_weights"] == "gradient" and config["agent"] == "ddpo-is"


def test_main_run_records_evaluation_curves_and_samples_to_score(tmp_path):
    argv = ["--model", "tiny", "--agents", "ddpo-is,awm", "--rewards", "jpeg_compressibility", "--seeds", "1",
            "--epochs", "3", "--samples-per-epoch", "8", "--num-steps", "2", "--workers", "1", "--curve-every", "1",
            "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    data = algorithms.main(argv)
    for run in data["runs"]:  # epochs 1, 2 by the callback and the job's own final evaluation at 3
        assert [p["samples"] for p in run["eval_curve"]] == [8, 16, 24]
        assert run["eval_curve"][-1]["reward"] == pytest.approx(np.mean(run["eval_after"]))
        assert all(np.isfinite(p["reward"]) for p in run["eval_curve"])
    row = data["table"]["jpeg_compressibility"]["awm"]
    assert row["eval_curve_samples"] == [8, 16, 24] and len(row["eval_curve_gains"]) == 1
    to_gain = data["samples_to_score"]["jpeg_compressibility"]
    assert set(to_gain["thresholds"]) == {"ddpo-is", "awm"} and set(to_gain["efficiency"]) == {"awm"}
    md = (tmp_path / "algorithms.md").read_text()
    assert "## Samples to score" in md and "![evaluation reward vs samples]" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["algorithms_samples_to_score"]["value"]["jpeg_compressibility"]) == {"ddpo-is", "awm"}


def test_sweep_rate_choice_skips_rates_that_destroy_the_digits_on_any_seed(tmp_path):
    def run(agent, rate, gain, agreement, reward="jpeg_compressibility"):  # before: mean 0, std 1 → gain = after
        return {"agent": agent, "learning_rate": rate, "eval_before": [-1.0, 1.0], "eval_after": [gain, gain],
                "agreement_after": agreement, "reward": reward}

    runs = [run("ddpo-is", 1e-3, 0.5, 1.0), run("ddpo-is", 3e-3, 1.5, 0.9), run("ddpo-is", 1e-2, 3.0, 0.5),
            run("rwr", 1e-3, 0.2, 0.7), run("rwr", 3e-3, 2.0, 0.6),  # no rate keeps 80 %: the one keeping most
            run("ddpo-sf", 1e-3, 0.1, None), run("ddpo-sf", 3e-3, 0.4, None),  # no digit measure: best gain
            # a second reward, two seeds a rate: 3e-3 gains most but one of its seeds falls under the floor
            run("ddpo-is", 1e-3, 0.5, 0.9, "r2"), run("ddpo-is", 1e-3, 0.7, 0.9, "r2"),
            run("ddpo-is", 3e-3, 2.0, 0.95, "r2"), run("ddpo-is", 3e-3, 2.0, 0.7, "r2")]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"runs": runs}))
    c = "jpeg_compressibility"
    assert algorithms_sweep.best_rates(path) == {"ddpo-is": {c: 3e-3, "r2": 1e-3}, "rwr": {c: 1e-3},
                                                 "ddpo-sf": {c: 3e-3}}
    assert algorithms_sweep.best_rates(path, min_agreement=0.0) == {"ddpo-is": {c: 1e-2, "r2": 3e-3},
                                                                    "rwr": {c: 3e-3}, "ddpo-sf": {c: 3e-3}}
    chosen = algorithms_sweep.best_rates(path)
    assert algorithms_sweep.rate_for(chosen, "ddpo-is", "r2", 5e-3) == 1e-3
    assert algorithms_sweep.rate_for(chosen, "rwr", "r2", 5e-3) == 1e-3  # not swept on r2: its rate on the other
    assert algorithms_sweep.rate_for(chosen, "awm", "r2", 5e-3) == 5e-3  # not swept at all: the default


def test_sweep_rates_flag_takes_shared_or_per_agent_rates():
    agents = ["ddpo-is", "rwr"]
    assert algorithms_sweep.parse_rates("1e-3,3e-3", agents) == {"ddpo-is": [1e-3, 3e-3], "rwr": [1e-3, 3e-3]}
    assert algorithms_sweep.parse_rates("rwr=2e-3,rwr=1.5e-3", agents) == {"rwr": [2e-3, 1.5e-3]}
    with pytest.raises(SystemExit, match="--rates names agent 'ddpo-sf'"):
        algorithms_sweep.parse_rates("ddpo-sf=1e-3", agents)


def test_kl_frontier_benchmark_writes_frontier_held_out_curves_and_summary(tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("a zebra\na scribbled three\n", encoding="utf-8")
    argv = ["--model", "tiny", "--held-out-prompts", str(held_out), "--variants", "DDPO-IS,DDPO-IS β=10",
            "--seeds", "1", "--epochs", "2", "--samples-per-epoch", "8", "--num-steps", "2", "--monitor-every", "1",
            "--workers", "1", "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    data = kl_frontier.main(argv)
    table = data["table"]
    assert list(table) == ["DDPO-IS", "DDPO-IS β=10"]
    for row in table.values():  # 1 update per epoch (8 samples / batch 8): before, and after each epoch
        assert row["samples"] == [0, 8, 16] and row["kl_held_out"]["initial"] == 0.0
        assert all(np.isfinite(row[m]["final_mean"]) for m in kl_frontier.METRICS)
    assert table["DDPO-IS"]["kl_held_out"]["final_mean"] > 0
    md = (tmp_path / "kl_frontier.md").read_text()
    assert "| DDPO-IS β=10 |" in md and "held-out reward" in md
    assert (tmp_path / "kl_frontier.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())["kl_frontier"]
    assert summary["value"]["DDPO-IS"]["kl_held_out"] == table["DDPO-IS"]["kl_held_out"]["final_mean"]
    assert kl_frontier.main([*argv, "--resume"])["runs"] == data["runs"]


def test_bare_loop_scores_its_own_samples_with_ratio_one_and_trains():
    backend = load_backend("tiny", "cpu")
    backend.unet.requires_grad_(True)
    schedule = DDIMSchedule.from_scheduler_config(backend.scheduler_config, 3, 1.0)
    bare = BareDDPO(backend, schedule, ["a cat", "a dog"], 1.0, lambda images, prompts: images.mean((1, 2, 3)),
                    BareConfig(samples_per_epoch=4, sample_batch=2, batch_size=2))
    batch = bare.sample()
    assert batch["latents"].shape == (4, 4, 4, 8, 8) and batch["log_probs"].shape == (4, 3)
    k = 1
    t = schedule.timesteps[k].repeat(4)
    with torch.no_grad():
        out = ddim_step(bare.model_output(batch["latents"][:, k], t, batch["prompt_idx"]), t, batch["latents"][:, k],
                        schedule, prev_sample=batch["latents"][:, k + 1])
    torch.testing.assert_close(out.log_prob, batch["log_probs"][:, k], rtol=0, atol=1e-5)
    before = [p.clone() for p in bare.params]
    bare.train(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, bare.params, strict=True))


def test_overhead_benchmark_times_both_loops_with_a_breakdown(tmp_path):
    rows = overhead.main(["--model", "tiny", "--epochs", "1", "--steps-per-pass", "1", "--threads", "1",
                          "--results-dir", str(tmp_path)])
    row = rows[0]
    assert 0.2 < row["ratio"] < 5
    for side in ("ours", "bare"):
        parts = row["breakdown_per_epoch"][side]
        for key in ("sampling/unet", "sampling/decode", "sampling/reward", "training/unet", "training/optimizer"):
            assert parts[key] > 0, (side, key)
        assert parts["sampling/total"] >= parts["sampling/unet"]
    assert row["breakdown_per_epoch"]["ours"]["training/buffer"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overhead_ratio"]["value"] == row["ratio"]
    assert "| 1 |" in (tmp_path / "overhead.md").read_text()


def test_gpu_benchmark_runs_its_code_on_a_tiny_architecture_on_cpu(tmp_path):
    out = gpu.main(["--tiny", "--device", "cpu", "--epochs", "1", "--num-steps", "2", "--dtype", "float32",
                    "--results-dir", str(tmp_path)])
    rows = out["rows"]
    assert [(r["trainer"], r["gradient_checkpointing"]) for r in rows] == [
        ("ddpo-env", False), ("bare loop", False), ("ddpo-env", True), ("bare loop", True)]
    assert all(r["samples_per_s"] > 0 and r["peak_gb"] is None for r in rows)
    assert (tmp_path / "gpu_tiny.md").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_benchmark_without_cuda_says_it_skipped(capsys):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--results-dir", "/nonexistent"])
    assert e.value.code == 0
    assert "no CUDA device here; skipped" in capsys.readouterr().err


def test_timers_split_phases_and_count_the_rest_as_other():
    timers = Timers(torch.device("cpu"))

    class Work:
        def run(self):
            return sum(range(10_000))

    work = Work()
    timers.wrap(work, "run", "part")
    with timers.phase("sampling"):
        work.run()
        sum(range(10_000))
    parts = timers.breakdown()
    assert parts["sampling/part"] > 0 and parts["sampling/other"] > 0
    assert parts["sampling/part"] + parts["sampling/other"] == pytest.approx(parts["sampling/total"])


def test_the_pipeline_folder_shared_with_trl_loads_the_same_weights_here(tmp_path):
    from ddpo_env.models.tiny import build_tiny_pipeline

    prompts = peers_trl.save_portable_tiny_pipeline(tmp_path, sample_size=8)
    assert (tmp_path / "tokenizer" / "vocab.json").exists() and (tmp_path / "tokenizer" / "merges.txt").exists()
    loaded, original = load_backend(str(tmp_path), "cpu"), build_tiny_pipeline(0, sample_size=8)
    reference = original.text_encoder(original.tokenizer(prompts, return_tensors="pt", padding="max_length",
                                                         max_length=original.tokenizer.model_max_length).input_ids)[0]
    torch.testing.assert_close(loaded.encode_prompts(prompts), reference, rtol=0, atol=0)
    for a, b in zip(loaded.unet.state_dict().values(), original.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


TRL_PYTHON = Path(__file__).resolve().parent.parent / ".venv-trl" / "bin" / "python"


@pytest.mark.skipif(not TRL_PYTHON.exists(), reason="TRL's venv is created by python -m benchmarks.peers_trl")
@pytest.mark.parametrize("processes", [1, 2])
def test_trl_worker_trains_one_epoch_on_the_shared_folder(tmp_path, processes):
    prompts = peers_trl.save_portable_tiny_pipeline(tmp_path / "model", sample_size=8)
    worker = ["benchmarks/trl_ddpo_worker.py", "--model", str(tmp_path / "model"), "--prompts", ",".join(prompts),
              "--epochs", "1", "--threads", "1", "--num-steps", "2", "--samples-per-epoch", "8",
              "--sample-batch-size", "4"]
    out = peers_trl.run_process(peers_trl.launch(str(TRL_PYTHON), processes, worker))
    # two processes are one accelerate job (not two copies): the same 8 samples and 2 optimizer steps, split
    assert len(out["epoch_seconds"]) == 1 and out["optimizer_steps"] == 2 and out["trl"] == "0.23.1"
    assert out["processes"] == processes
    assert out["distributed_type"] == ("DistributedType.MULTI_CPU" if processes == 2 else "DistributedType.NO")
    assert os.path.isdir(tmp_path / "model")


def test_our_worker_in_two_processes_is_one_data_parallel_job(tmp_path):
    prompts = peers_trl.save_portable_tiny_pipeline(tmp_path / "model", sample_size=8)
    name = next(v for v, (processes, _) in peers_trl.VARIANTS.items() if processes == 2)
    config = {"num_steps": 2, "samples_per_epoch": 8, "sample_batch_size": 2, "train_batch_size": 4}
    worker = ["-m", "benchmarks.peers_trl", "--worker", name, "--epochs", "2", "--threads", "1",
              "--model", str(tmp_path / "model"), "--prompts", ",".join(prompts), "--config", json.dumps(config)]
    out = peers_trl.run_process(peers_trl.launch(sys.executable, 2, worker))
    # 8 samples per epoch in global batches of 4: 2 optimizer steps per epoch on the two ranks together
    assert out["processes"] == 2 and out["optimizer_steps"] == 4 and len(out["epoch_seconds"]) == 2


def test_algorithms_gpu_preset_needs_a_model(capsys):
    with pytest.raises(SystemExit) as e:
        algorithms.main(["--preset", "gpu"])
    assert e.value.code == 2
    assert "--preset gpu needs --model: a local Stable Diffusion folder" in capsys.readouterr().err

