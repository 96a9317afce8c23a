"""Does one step along DDPO-IS's gradient raise the reward, at the algorithms benchmark's settings?
``python -m benchmarks.one_step``.

``ddpo diagnose gradients`` (:mod:`agents.one_step`) on the settings of ``benchmarks.algorithms`` (the embedded
default model, 10 steps, LoRA r4, DDPO-IS at its swept learning rate 7e-3, clip 1e-3, JPEG compressibility, 64
samples per rollout) for ``--seeds`` seeds: each step's share of the gradient, and the fixed evaluation reward's
change (100 samples) after one sign step along the whole gradient, without its largest step, without its two
largest, and along random directions; with DDPO's uniform loss and with ``step_weights`` "sensitivity" and
"gradient" (``--step-weights``), on the same rollouts: each seed's second rollout (the first measures the gradient
weights, and is discarded by the others). Writes ``benchmarks/results/one_step.{json,md}`` and summary.json's
``step_gradient_max_share`` (the largest step share, mean over seeds) and ``one_step_test_seeds_up`` (seeds whose
step along the whole gradient raises the reward by > 2 standard errors), each per weighting.

``--model shapes``: the same on the shapes task's benchmark settings (:mod:`benchmarks.compositional_task`: GRPO-style
DDPO-IS, groups of 8, steps 0-3 trained, lr 3e-3, ``geneval_strict``, the task's 100 evaluation samples); writes
one_step_shapes.{json,md} and the summary keys with ``_shapes`` appended.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.algorithms import AGENT_SETTINGS, PRESETS
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

WEIGHTS = ("uniform", "sensitivity", "gradient")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", choices=("default", "shapes"), default="default")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: DDPO-IS's 7e-3 on the default model (the algorithms sweep's best), GRPO's 3e-3 "
                             "on shapes (the agents sweep's)")
    parser.add_argument("--controls", type=int, default=3)
    parser.add_argument("--step-weights", default=",".join(WEIGHTS),
                        help="the step_weights settings measured, each on the same rollouts (comma-separated)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    from agents.job.config import TrainConfig
    from agents.job.diagnose_gradients import run

    env_info = environment(command_line("benchmarks.one_step", argv))
    if args.model == "shapes":
        from benchmarks import compositional_task as shapes

        settings = {**shapes.PRESETS["cpu"], **shapes.AGENT_SETTINGS["grpo"], "reward": "geneval_strict",
                    "threads": 1, "learning_rate": args.learning_rate or 3e-3}
        name, suffix, setting = "one_step_shapes", "_shapes", "the shapes benchmark's settings (GRPO)"
    else:
        settings = {**PRESETS["cpu"], **AGENT_SETTINGS["ddpo-is"], "agent": "ddpo-is",
                    "reward": "jpeg_compressibility", "learning_rate": args.learning_rate or 7e-3, "threads": 1}
        name, suffix, setting = "one_step", "", "the algorithms benchmark's settings"
    arms: dict[str, list[dict[str, Any]]] = {}
    start = time.perf_counter()
    for weights in args.step_weights.split(","):
        seeds = arms[weights] = []
        for seed in range(args.seeds):  # the same seed samples the same rollout under either weighting
            with contextlib.redirect_stdout(io.StringIO()):
                results, shares = run(TrainConfig.from_flat({**settings, "seed": seed, "step_weights": weights}),
                                      controls=args.controls, calibration_rollout=True)
            seeds.append({"seed": seed, "shares": {str(k): v for k, v in shares.items()},
                          "directions": [{"name": r.name, "steps": r.steps, "gain": r.gain, "stderr": r.stderr,
                                          "raises": r.raises} for r in results]})
            print(f"{weights} seed {seed}: max share {max(shares.values()):.3f}; " + ", ".join(
                f"{r.name} {r.gain:+.4f}±{r.stderr:.4f}" for r in results), flush=True)
    max_share = {w: float(np.mean([max(s["shares"].values()) for s in seeds])) for w, seeds in arms.items()}
    up = {w: sum(s["directions"][0]["raises"] for s in seeds) for w, seeds in arms.items()}
    results_dir = Path(args.results_dir)
    write_json(results_dir / f"{name}.json", {"settings": settings, "arms": arms, "max_share_mean": max_share,
                                               "seeds_up": up, "environment": env_info,
                                               "minutes": (time.perf_counter() - start) / 60})
    lines = [f"# One sign step along DDPO-IS's gradient, at {setting}\n",
             f"`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
             "Each step's share of the gradient (‖g_k‖²/Σ‖g‖²) and the fixed evaluation reward's change (100 "
             f"samples, {settings['reward']}) after one sign step of the learning rate, ± its standard error, on the "
             "second rollout of the seed (the first is sampled and discarded, or measures the *gradient* weights). "
             "*uniform*: DDPO's loss; *sensitivity*: `step_weights=\"sensitivity\"`, each step's log-likelihood "
             "scaled by median s / s_k; *gradient*: by median g / g_k, measured on the first rollout "
             "(agents/step_weights.py). Every weighting sees the same rollouts.\n"]
    for weights, seeds in arms.items():
        names = [d["name"] for d in seeds[0]["directions"]]
        lines += [f"## {weights}\n", "| seed | largest step share | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 2) + "|"]
        for s in seeds:
            top = max(s["shares"], key=s["shares"].get)
            cells = [f"{d['gain']:+.4f} ± {d['stderr']:.4f}{' ↑' if d['raises'] else ''}" for d in s["directions"]]
            lines.append(f"| {s['seed']} | step {top}: {100 * s['shares'][top]:.0f} % | " + " | ".join(cells) + " |")
        lines += ["", f"↑: more than 2 standard errors. The step along the whole gradient raises the reward on "
                  f"{up[weights]} of {len(seeds)} seeds; the largest step holds {100 * max_share[weights]:.0f} % of "
                  "the gradient (mean).\n"]
        lines += ["Shares per step (mean over seeds): " + ", ".join(
            f"{k}: {100 * np.mean([s['shares'][k] for s in seeds]):.0f} %" for k in seeds[0]["shares"]) + "\n"]
    (results_dir / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")
    update_summary({f"step_gradient_max_share{suffix}": (max_share, "largest step's share of DDPO-IS's gradient "
                                                         f"per step_weights, {setting}, mean of seeds"),
                    f"one_step_test_seeds_up{suffix}": (up, f"of {args.seeds} seeds, one sign step along the whole "
                                                        "gradient raises the reward by > 2 standard errors, per "
                                                        f"step_weights, {setting}")},
                   env_info, results_dir)
    print("\n".join(lines))
    return {"arms": arms, "max_share": max_share, "seeds_up": up}


if __name__ == "__main__":
    main()
