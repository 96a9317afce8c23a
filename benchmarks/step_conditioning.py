"""Step conditioning of the embedded model and of SD's schedule: ``python -m benchmarks.step_conditioning``.

For each configuration, the per-step sensitivity s_k = RMS|∂μ/∂f|/σ_k of the policy's log-probability
(:mod:`ddpo_env.diagnose`) and its ratio to the median step:

* the embedded default model at real states of its own sampler (20 steps, 16 episodes);
* its schedule alone for every num_steps in 1..50 (the worst step's ratio per num_steps);
* Stable Diffusion 1.5's scheduler config (50 steps, as the paper and ddpo-pytorch run it; no weights needed: the
  sensitivity of an unclipped element is a property of the schedule);
* with ``--before FOLDER``, another model at real states, e.g. the embedded model before its schedule changed
  (``git show 2e158e3:ddpo_env/models/default/unet.safetensors`` and ``model_index.json`` into FOLDER).

Writes ``benchmarks/results/step_conditioning.{md,json,png}`` and summary.json's ``step_sensitivity_max_ratio``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import ddpo_env  # noqa: F401  (registers the env)
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json
from ddpo_env.conditioning import IllConditionedStepWarning, env_conditioning, schedule_conditioning
from ddpo_env.ddim import DDIMSchedule
from ddpo_env.diagnose import plot_conditioning
from ddpo_env.models.embedded import SCHEDULER_CONFIG
from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG


def at_real_states(model: str, num_steps: int, samples: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedStepWarning)  # the old model warns: that is the point
        env = gym.make_vec("DenoisingDiffusion-v0", num_envs=min(samples, 16), model=model, num_steps=num_steps,
                           device="cpu")
    return env_conditioning(env, num_samples=samples)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="", help="a folder with another digits model (e.g. the old default)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results_dir = Path(args.results_dir)
    env_info = environment(command_line("benchmarks.step_conditioning", argv))

    curves = {"default model, 20 steps (real states)": at_real_states("default", 20, args.samples)}
    if args.before:
        curves["default model before the change, 20 steps (real states)"] = at_real_states(args.before, 20,
                                                                                          args.samples)
    curves["Stable Diffusion 1.5 scheduler, 50 steps"] = schedule_conditioning(
        DDIMSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG, 50))
    per_num_steps = {n: schedule_conditioning(DDIMSchedule.from_scheduler_config(SCHEDULER_CONFIG, n)).max_ratio
                     for n in range(1, 51)}

    sections = [f"# Step conditioning\n\n`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, "
                f"rev {env_info['git_revision']}\n",
                "Sensitivity s_k = RMS|∂μ/∂f| / σ_k of each denoising step's log-probability to the network output f "
                "(`python -m ddpo_env.diagnose`); a step far above the median dominates policy gradients with noise. "
                "Target for the embedded model: every step ≤ 10× the median, for every num_steps in 1..50.\n",
                "![per-step sensitivity](step_conditioning.png)\n"]
    for label, c in curves.items():
        sections.append(f"## {label}: worst step {int(np.argmax(c.sensitivity))}, {c.max_ratio:.1f}× the median\n\n"
                        f"{c.markdown()}\n")
    worst_n = max(per_num_steps, key=per_num_steps.get)
    sections.append("## The embedded model's schedule for every num_steps (schedule alone)\n\n"
                    f"Worst ratio over num_steps 1..50: {per_num_steps[worst_n]:.2f}× at num_steps={worst_n}.\n\n"
                    "| num_steps | " + " | ".join(str(n) for n in (1, 2, 5, 10, 20, 30, 40, 50)) + " |\n|---|"
                    + "---|" * 8 + "\n| worst step / median | "
                    + " | ".join(f"{per_num_steps[n]:.2f}" for n in (1, 2, 5, 10, 20, 30, 40, 50)) + " |\n")
    text = "\n".join(sections)
    (results_dir / "step_conditioning.md").write_text(text, encoding="utf-8")
    plot_conditioning(curves, str(results_dir / "step_conditioning.png"),
                      "sensitivity of each step's log-prob to the network output, relative to the median step")
    data = {"configurations": {label: {"max_ratio": c.max_ratio, "steps": c.rows()} for label, c in curves.items()},
            "default_schedule_max_ratio_per_num_steps": per_num_steps, "environment": env_info}
    write_json(results_dir / "step_conditioning.json", data)
    worst = max(max(per_num_steps.values()), curves["default model, 20 steps (real states)"].max_ratio)
    update_summary({"step_sensitivity_max_ratio": (worst, "worst step's sensitivity / median step's, default model, "
                                                   "num_steps 1..50 and real states at 20")}, env_info, results_dir)
    print(text)
    print(json.dumps({"step_sensitivity_max_ratio": worst}))
    return data


if __name__ == "__main__":
    main()
