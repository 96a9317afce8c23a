"""What ``make train`` shows, recorded: ``python -m benchmarks.make_train``.

Runs the job of ``make train`` (``ddpo train --config configs/make_train.toml``) into a temporary folder and keeps
its numbers and pictures: ``benchmarks/results/make_train_{metrics.json,reward_curve.png,before_after.png}`` and
summary.json's ``make_train_gain_std`` (evaluation reward gain in initial per-sample stds) and
``make_train_agreement`` (digits the classifier reads as prompted after training). ``--flags`` passes more
``ddpo train`` flags, e.g. ``--flags "--epochs 90"`` to show over-optimisation.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.job.cli import build_parser, job_config
from agents.job.train import train
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "make_train.toml"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", default="", help="more ddpo train flags (quoted)")
    parser.add_argument("--name", default="make_train", help="results file prefix")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    env_info = environment(command_line("benchmarks.make_train", argv))
    with tempfile.TemporaryDirectory() as out:
        cli = ["train", "--config", str(CONFIG), "--output-dir", out, *shlex.split(args.flags)]
        start = time.perf_counter()
        metrics = train(job_config(build_parser().parse_args(cli))).metrics
        metrics["wall_seconds"] = time.perf_counter() - start
        for name in ("reward_curve.png", "before_after.png"):
            shutil.copyfile(Path(out) / name, results_dir / f"{args.name}_{name}")
    metrics["environment"] = env_info
    write_json(results_dir / f"{args.name}_metrics.json", metrics)
    if args.name == "make_train":
        update_summary({
            "make_train_gain_std": (metrics["eval_gain_in_initial_std"],
                                    "evaluation reward gain of make train, in initial per-sample stds"),
            "make_train_agreement": (metrics.get("digit_agreement_after"),
                                     "digits the classifier reads as prompted after make train (fraction)"),
        }, env_info, results_dir)
    return metrics


if __name__ == "__main__":
    main()
