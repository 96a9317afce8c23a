"""The benchmark harness (benchmarks.harness): run folders and logs, resume, a failing job, the split that chose a
grid's settings, and the aggregation over seeds on hand-made numbers."""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import algorithms, algorithms_sweep, compositional_task, kl_frontier
from benchmarks.harness import (
    LOG,
    OUTPUT,
    Grid,
    GridRun,
    Job,
    JobFailed,
    ResumeMismatch,
    SettingsSource,
    add_arguments,
    folder_name,
    job_id,
)
from benchmarks.reports import curve_stats, mean_present, over_seeds, provenance

FIXED = SettingsSource("none", "fixed in advance for this test")


def toy_job(args: dict, run_dir: Path) -> dict:
    """A job that writes through every route a training job does, marks that it ran, and fails when asked."""
    print(f"stdout of {args['name']}")
    print(f"stderr of {args['name']}", file=sys.stderr)
    os.write(1, f"native output of {args['name']}\n".encode())  # as C++ or a subprocess would
    (run_dir / OUTPUT).mkdir()
    (run_dir / OUTPUT / "weights.bin").write_bytes(b"0" * 10)
    with open(args["ledger"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{args['name']}|{args['seed']}\n")
    if args.get("fail"):
        raise ValueError(f"{args['name']} diverged")
    return {"name": args["name"], "seed": args["seed"], "value": args["seed"] * 10.0}


def toy_grid(tmp_path: Path, seeds: int, signature: dict | None = None, fail: str = "") -> Grid:
    ledger = str(tmp_path / "ledger.txt")
    jobs = [Job(job_id(name, seed), {"name": name, "seed": seed, "ledger": ledger, "fail": name == fail})
            for name in ("a", "b") for seed in range(seeds)]
    return Grid("toy", toy_job, jobs, ("name", "seed"), FIXED, signature or {"settings": {"lr": 1e-3}})


def options(tmp_path: Path, *flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, "toy", workers=1)
    return parser.parse_args(["--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), *flags])


def document(records: list[dict]) -> dict:
    return {"settings": {"lr": 1e-3}, "runs": sorted(records, key=lambda r: (r["name"], r["seed"]))}


def ledger(tmp_path: Path) -> list[str]:
    return sorted((tmp_path / "ledger.txt").read_text().split())


@pytest.mark.slow  # starts worker processes
def test_each_job_runs_in_its_folder_with_its_log_and_resume_runs_only_the_missing_ones(tmp_path):
    data = GridRun(toy_grid(tmp_path, seeds=1), options(tmp_path), "python -m toy").run(document)
    assert [(r["name"], r["seed"]) for r in data["runs"]] == [("a", 0), ("b", 0)]
    assert ledger(tmp_path) == ["a|0", "b|0"]
    log = (tmp_path / "runs" / "toy" / "a_0" / LOG).read_text()
    for route in ("stdout of a", "stderr of a", "native output of a"):
        assert route in log
    assert not (tmp_path / "runs" / "toy" / "a_0" / OUTPUT).exists()  # training output removed: not --keep-outputs
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["settings_from"]["split"] == "none" and saved["environment"]["runs_missing"] == 0
    assert saved["environment"]["runs_timed"] == 2 and saved["environment"]["command"] == "python -m toy"

    # two more seeds: the finished jobs are kept, only the new ones run
    again = GridRun(toy_grid(tmp_path, seeds=2), options(tmp_path, "--resume", "--keep-outputs"), "python -m toy")
    assert [j.id for j in again.pending] == ["a|1", "b|1"] and set(again.finished) == {"a|0", "b|0"}
    data = again.run(document)
    assert ledger(tmp_path) == ["a|0", "a|1", "b|0", "b|1"]
    assert [r["value"] for r in data["runs"]] == [0.0, 10.0, 0.0, 10.0]
    assert (tmp_path / "runs" / "toy" / "b_1" / OUTPUT / "weights.bin").is_file()
    env = data["environment"]
    assert env["runs_planned"] == 4 and env["runs_timed"] == 2 and env["wall_minutes_total"] >= env["wall_minutes"]

    # nothing left to run: nothing runs, the runs come back
    kept = GridRun(toy_grid(tmp_path, seeds=2), options(tmp_path, "--resume"), "x").run(document)
    assert kept["runs"] == data["runs"]
    assert len(ledger(tmp_path)) == 4
    with pytest.raises(ResumeMismatch, match=r"was run with other settings .* give this run another --name"):
        GridRun(toy_grid(tmp_path, seeds=2, signature={"settings": {"lr": 1e-2}}), options(tmp_path, "--resume"), "x")
    report = GridRun(toy_grid(tmp_path, seeds=3), options(tmp_path, "--report-only"), "python -m toy --report-only")
    assert report.pending == [] and report.environment["runs_missing"] == 2
    assert report.environment["report_command"] == "python -m toy --report-only"


@pytest.mark.slow  # starts worker processes
def test_a_failing_job_stops_the_grid_keeps_its_log_and_names_it(tmp_path):
    runner = GridRun(toy_grid(tmp_path, seeds=1, fail="b"), options(tmp_path), "python -m toy")
    log = tmp_path / "runs" / "toy" / "b_0" / LOG
    with pytest.raises(JobFailed) as failure:
        runner.run(document)
    message = str(failure.value)
    assert "job 'b|0'" in message and "ValueError: b diverged" in message and str(log) in message
    assert "--resume" in message
    text = log.read_text()
    assert "stdout of b" in text and "Traceback" in text and "ValueError: b diverged" in text
    assert (log.parent / OUTPUT).is_dir()  # a failed job's output is kept for a look
    saved = json.loads((tmp_path / "toy.json").read_text())  # the job that finished first is kept
    assert [r["name"] for r in saved["runs"]] == ["a"] and saved["environment"]["runs_missing"] == 1


def test_report_only_without_results_and_bad_grids_are_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the grid first"):
        GridRun(toy_grid(tmp_path, seeds=1), options(tmp_path, "--report-only"), "x")
    with pytest.raises(ValueError, match="module-level function"):
        Grid("toy", lambda args, run_dir: {}, [], ("name",), FIXED)
    with pytest.raises(ValueError, match="share an id or a run folder"):
        Grid("toy", toy_job, [Job("a b", {}), Job("a|b", {})], ("name",), FIXED)
    assert job_id("ddpo-is", "jpeg", 0, 0.003) == "ddpo-is|jpeg|0|0.003"
    assert folder_name("DDPO-IS β=0.1|1") == "DDPO-IS_β=0.1_1"


def test_the_settings_source_is_a_known_split_recorded_in_the_json_and_the_report(tmp_path):
    with pytest.raises(ValueError, match="use one of test, validation, train, none"):
        SettingsSource("heldout", "a sweep")
    with pytest.raises(ValueError, match="needs `how`"):
        SettingsSource("test", " ")
    env = {"command": "python -m x", "date": "today", "machine": "m", "git_revision": "abc"}
    lines = provenance(env, SettingsSource("test", "a sweep on seed 100").to_json())
    assert lines[-1] == ("Settings chosen on: the evaluation set this grid reports (`test`): a sweep on seed 100\n")
    # today's grids, as they are: the rates and the compositional settings were chosen on the reported evaluation set
    assert compositional_task.SETTINGS_FROM.split == "test" and "seeds 0 and 1" in compositional_task.SETTINGS_FROM.how
    sweep = tmp_path / "algorithms_sweep.json"
    assert algorithms_sweep.rates_source(False, sweep, {}, ["rwr"]).split == "none"  # no sweep: the defaults
    rates = {"rwr": {"jpeg_compressibility": 3e-3}}
    sweep.write_text(json.dumps({"runs": [{"agent": "rwr", "eval_seed": algorithms_sweep.VALIDATION_EVAL_SEED}]}))
    chosen = algorithms_sweep.rates_source(False, sweep, rates, ["rwr", "ddpo-sf"])
    assert chosen.split == "validation" and "ddpo-sf at the default rate" in chosen.how
    sweep.write_text(json.dumps({"runs": [{"agent": "rwr"}]}))  # a sweep from before eval_seed: the test set's
    assert algorithms_sweep.rates_source(False, sweep, rates, ["rwr"]).split == "test"
    assert algorithms_sweep.rates_source(True, sweep, {}, ["rwr"]).split == "none"  # the sweep reports every rate
    assert kl_frontier.SETTINGS_FROM.split == "train"


def test_aggregation_over_seeds_on_hand_made_numbers():
    stats = over_seeds([1.0, 2.0, 6.0])
    assert stats.mean == 3.0 and stats.std == pytest.approx(np.sqrt(14 / 3)) and stats.per_seed == [1.0, 2.0, 6.0]
    mean, std = curve_stats([[0.0, 1.0], [2.0, 3.0]])
    assert mean == [1.0, 2.0] and std == [1.0, 1.0]
    assert mean_present([None, 1.0, 3.0]) == 2.0 and mean_present([None]) is None

    def run(seed, before, after, curve):
        return {"agent": "rwr", "reward": "r", "seed": seed, "learning_rate": 3e-3, "eval_before": before,
                "eval_after": after, "train_reward_mean": curve, "train_seconds": 60.0 * (seed + 1),
                "clip_fraction": None, "optimizer_steps": 4}

    # before: mean 0, std 1 in both seeds; after: means 1 and 3 → gains 1 and 3 initial stds
    runs = [run(0, [-1.0, 1.0], [1.0, 1.0], [0.0, 1.0]), run(1, [-1.0, 1.0], [2.0, 4.0], [1.0, 3.0])]
    row = algorithms.aggregate(runs, ["rwr"], ["r"])["r"]["rwr"]
    assert (row["eval_before"], row["eval_after_mean"], row["eval_after_std"]) == (0.0, 2.0, 1.0)
    assert row["gain_in_initial_std_per_seed"] == [1.0, 3.0] and row["gain_in_initial_std"] == 2.0
    assert row["curve_mean"] == [0.5, 2.0] and row["curve_std"] == [0.5, 1.0] and row["minutes_per_run"] == 1.5
    assert row["clip_fraction"] is None and row["optimizer_steps"] == 4 and row["seeds"] == 2

    monitor = [[{"samples": 0, **dict.fromkeys(kl_frontier.METRICS, 0.0), "kl_train": 0.0, "diversity_train": 0.0},
                {"samples": 8, **dict.fromkeys(kl_frontier.METRICS, final), "kl_train": 0.0, "diversity_train": 0.0}]
               for final in (1.0, 3.0)]
    table = kl_frontier.aggregate([{"variant": "DDPO-IS", "seed": s, "monitor": m} for s, m in enumerate(monitor)])
    kl = table["DDPO-IS"]["kl_held_out"]
    assert (kl["initial"], kl["final_mean"], kl["final_std"], kl["final_per_seed"]) == (0.0, 2.0, 1.0, [1.0, 3.0])
    assert kl["curve_mean"] == [0.0, 2.0] and table["DDPO-IS"]["samples"] == [0, 8]
