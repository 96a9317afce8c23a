"""Which denoising steps carry the policy gradient, measured: ``python -m benchmarks.step_gradients``.

For a model and reward, one rollout per configuration (by default the shapes model with the ``geneval`` reward,
DDPO-IS with GRPO-style groups of 8, 256 samples, 10 steps, the compositional benchmark's learning rate), trained
once with ``step_stats_every=1``, with every step trained and with the last 2 and the last 6 steps skipped (that
benchmark's setting). Per denoising step k (agents/step_stats.py):

* ``grad_norm``: the norm of step k's loss gradient on the rollout, and its share of the sum of squares;
* ``grad_cosine``: the cosine between the step-k gradients of the rollout's two halves (≈ 0: noise);
* ``clip_fraction`` and ``log_ratio`` of the update that follows.

Next to them the prediction from the sensitivities at real states, s_k²/Σs_j² (ddpo_env/diagnose.py).
Writes benchmarks/results/step_gradients_<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.record import RESULTS_DIR, command_line, environment, write_json

STATS = ("grad_norm", "grad_cosine", "clip_fraction", "log_ratio")


def probe(settings: dict[str, Any], skip_last_steps: int) -> dict[str, Any]:
    """One epoch with per-step statistics; returns them per step k (None for steps that were not trained)."""
    from agents.job.config import TrainConfig
    from agents.job.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.from_flat({**settings, "skip_last_steps": skip_last_steps, "output_dir": out,
                                     "epochs": 1, "step_stats_every": 1, "evaluate": False, "monitor_every": 0,
                                     "image_every": 0, "tensorboard": False})
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = train(cfg)
        with open(Path(out) / "logs" / "progress.csv", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    num_steps = result.agent.num_steps
    values = {k: v for row in rows for k, v in row.items() if v}
    per_step = {name: [float(values[f"steps/{name}_k{k:02d}"]) if f"steps/{name}_k{k:02d}" in values else None
                       for k in range(num_steps)] for name in STATS}
    norms = np.array([n or 0.0 for n in per_step["grad_norm"]])
    per_step["grad_share"] = (norms**2 / max(float((norms**2).sum()), 1e-30)).tolist()
    sensitivity = [float(values[f"steps/sensitivity_to_median_k{k:02d}"]) for k in range(num_steps)]
    return {"skip_last_steps": skip_last_steps, "steps": per_step, "sensitivity_to_median": sensitivity,
            "reward_mean": result.metrics["epochs"][-1]["reward_mean"]}


def markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [f"# Per-step policy gradients: {s['model']} model, reward {s['reward']}", "",
             f"`{data['environment']['command']}` — {data['environment']['date']}, {data['environment']['machine']}",
             "", f"One rollout of {s['samples_per_epoch']} samples per row ({s['agent']}, "
             f"{'groups of ' + str(s['group_size']) if s.get('group_advantages') else 'per-prompt stat tracking'}, "
             f"{s['num_steps']} steps, clip range {s['clip_range']}, lr {s['learning_rate']}). Gradient share: the "
             "step's part of Σ_k ‖g_k‖²; predicted share: s_k²/Σ s_j² from the sensitivities at real states; cosine "
             "between the rollout's halves (≈ 0: noise). Clip fraction and log-ratio: the update after the probe.", ""]
    for run in data["runs"]:
        steps, sens = run["steps"], np.array(run["sensitivity_to_median"])
        predicted = sens**2 / (sens**2).sum()
        lines += [f"## skip_last_steps = {run['skip_last_steps']}", "",
                  "| step k | predicted share | gradient share | ‖g_k‖ | cosine of halves | clip fraction "
                  "| log-ratio |",
                  "|---|---|---|---|---|---|---|"]
        for k in range(len(sens)):
            if steps["grad_norm"][k] is None:
                lines.append(f"| {k} | {100 * predicted[k]:.0f} % | not trained | | | | |")
                continue
            lines.append(f"| {k} | {100 * predicted[k]:.0f} % | {100 * steps['grad_share'][k]:.0f} % "
                         f"| {steps['grad_norm'][k]:.2e} | {steps['grad_cosine'][k]:+.2f} "
                         f"| {100 * steps['clip_fraction'][k]:.1f} % | {steps['log_ratio'][k]:+.1e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--reward", default="geneval")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=256, help="rollout size (its halves give the cosines)")
    parser.add_argument("--skip", default="0,2,6", help="skip_last_steps values, one probe each")
    parser.add_argument("--learning-rate", type=float, default=3e-3,
                        help="of the update after the probe (the compositional benchmark's)")
    parser.add_argument("--group-size", type=int, default=8, help="GRPO-style groups (1: per-prompt tracking)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    groups = args.group_size > 1
    settings = {"agent": "ddpo-is", "model": args.model, "reward": args.reward, "num_steps": args.num_steps,
                "samples_per_epoch": args.samples, "num_envs": min(16, args.samples),
                "batch_size": min(32, args.samples), "steps_per_pass": 3,
                "lora_rank": 4, "learning_rate": args.learning_rate, "clip_range": 1e-3, "attention": "matmul",
                "seed": args.seed,
                "group_size": args.group_size, "group_advantages": groups}
    start = time.perf_counter()
    runs = []
    for skip in (int(s) for s in args.skip.split(",")):
        runs.append(probe(settings, skip))
        print(f"skip_last_steps={skip}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    data = {"settings": settings, "runs": runs, "seconds": time.perf_counter() - start,
            "environment": environment(command_line("benchmarks.step_gradients", argv))}
    out = Path(args.results_dir)
    write_json(out / f"step_gradients_{args.model}.json", data)
    (out / f"step_gradients_{args.model}.md").write_text(markdown(data) + "\n", encoding="utf-8")
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
