"""Which steps to train and how fast, on the compositional task: ``python -m benchmarks.compositional_sweep``.

GRPO-style DDPO-IS (groups of 8) on the shapes model with the ``geneval`` reward (``--reward geneval_strict``: the
partial credit that charges objects the prompt did not ask for) at the compositional benchmark's
budget (``cpu`` preset: 14 epochs × 64 samples), once per setting and seed, scored like that benchmark (the
verifier's binary accuracy, mean over categories, and the mean partial credit, on the same evaluation prompts and
seeds). The settings vary ``skip_last_steps`` (how many of the 10 steps, counted from the end, are never trained) at
one learning rate, then the learning rate at the chosen skip, then the skip again at the chosen rate, then other
settings at those (:data:`SWEEP`). Runs are one-thread processes (``--workers``).

Writes benchmarks/results/NAME.{json,md} (``--name``, default compositional_sweep).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.config import LORA_TARGETS
from benchmarks.compositional import AGENT_SETTINGS, BASE, PRESETS, REWARD, REWARDS, _run_star, agent_settings
from benchmarks.record import RESULTS_DIR, command_line, environment, write_json

UNTRAINED = "untrained"  # a row's override: evaluate the base model under the row's env settings, once

#: (name, overrides of the GRPO agent's settings): the skip at one rate, then the rate at skip 6, then the skip at that
#: rate, then other settings at skip 6 and 3e-3: the samples reused for a second pass (PPO's inner epochs), twice
#: the updates on half the micro-batch, a larger adapter, the adapter on the ResNet convolutions too (where the
#: layout is drawn), classifier-free guidance 2 in sampling and training (twice the UNet passes)
SWEEP: tuple[tuple[str, dict[str, Any]], ...] = (
    ("skip 2, lr 1e-3", {"skip_last_steps": 2, "learning_rate": 1e-3}),
    ("skip 4, lr 1e-3", {"skip_last_steps": 4, "learning_rate": 1e-3}),
    ("skip 6, lr 1e-3", {"skip_last_steps": 6, "learning_rate": 1e-3}),
    ("skip 7, lr 1e-3", {"skip_last_steps": 7, "learning_rate": 1e-3}),
    ("skip 8, lr 1e-3", {"skip_last_steps": 8, "learning_rate": 1e-3}),
    ("skip 6, lr 3e-3", {"skip_last_steps": 6, "learning_rate": 3e-3}),
    ("skip 6, lr 1e-2", {"skip_last_steps": 6, "learning_rate": 1e-2}),
    ("skip 4, lr 3e-3", {"skip_last_steps": 4, "learning_rate": 3e-3}),
    ("skip 8, lr 3e-3", {"skip_last_steps": 8, "learning_rate": 3e-3}),
    ("skip 6, lr 3e-3, 2 passes per epoch", {"skip_last_steps": 6, "learning_rate": 3e-3, "num_inner_epochs": 2}),
    ("skip 6, lr 3e-3, micro-batches of 16", {"skip_last_steps": 6, "learning_rate": 3e-3, "batch_size": 16}),
    ("skip 6, lr 3e-3, LoRA rank 16", {"skip_last_steps": 6, "learning_rate": 3e-3, "lora_rank": 16}),
    ("skip 6, lr 3e-3, LoRA on the convolutions too", {"skip_last_steps": 6, "learning_rate": 3e-3,
                                                       "lora_targets": [*LORA_TARGETS, "conv1", "conv2"]}),
    ("base model, guidance 2", {"guidance_scale": 2.0, UNTRAINED: True}),
    ("skip 6, lr 3e-3, guidance 2", {"skip_last_steps": 6, "learning_rate": 3e-3, "guidance_scale": 2.0}),
)


def scores(run: dict[str, Any]) -> dict[str, Any]:
    """A run's record without its images: accuracy, partial credit and KL per split."""
    from benchmarks.scene_metrics import category_scores

    record = {k: v for k, v in run.items() if k != "samples"}
    for split, s in run["samples"].items():
        sc = category_scores(s["images"], s["prompts"])
        record[split] = {"overall": sc["overall"], "partial": sc["partial"], "extra_objects": sc["extra_objects"],
                         "relations": sc["relations"],
                         "categories": {c: v["accuracy"] for c, v in sc["categories"].items()},
                         "kl_to_base": None if s["kl"] is None else float(np.mean(s["kl"]))}
    return record


def _mean_and_each(values: list[float], fmt: str) -> str:
    return f"{np.mean(values):{fmt}} ({', '.join(f'{v:{fmt}}' for v in values)})"


def _extras(runs: list[dict[str, Any]]) -> str:
    values = [r["train"].get("extra_objects") for r in runs]
    return "–" if None in values else f"{np.mean(values):.2f}"


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    runs = data["runs"]
    base = next(r for r in runs if r["agent"] == BASE)
    lines = ["# Which steps to train and how fast: the compositional task", "",
             f"`{env['command']}` — {env['date']}, {env['machine']}, rev {env['git_revision']}", "",
             f"GRPO-style DDPO-IS (groups of 8) on the shapes model with the `{data['reward']}` reward, "
             f"{data['settings']['epochs']} epochs × {data['settings']['samples_per_epoch']} samples per run, one run "
             "per seed. Scored on the compositional benchmark's evaluation prompts and seeds: binary accuracy (mean "
             "over categories) and mean partial credit, training prompts × 2 and held-out prompts × 2. "
             "*Skip k*: the last k of the 10 denoising steps are never trained.", "",
             "*Extra objects*: objects found per image beyond the number the prompt names (training prompts).", "",
             "| setting | seeds | training prompts | partial credit | held-out | extra objects | KL to base "
             "| min/run |",
             "|---|---|---|---|---|---|---|---|",
             f"| base model | – | {base['train']['overall']:.1%} | {base['train']['partial']:.3f} | "
             f"{base['heldout']['overall']:.1%} | {_extras([base])} | 0 | – |"]
    for name, _ in data["sweep"]:
        mine = [r for r in runs if r["agent"] == name]
        if not mine:
            continue
        kl = np.mean([r["train"]["kl_to_base"] for r in mine])
        minutes = np.mean([r["train_seconds"] for r in mine]) / 60
        lines.append(f"| {name} | {len(mine)} | {_mean_and_each([r['train']['overall'] for r in mine], '.1%')} | "
                     f"{_mean_and_each([r['train']['partial'] for r in mine], '.3f')} | "
                     f"{_mean_and_each([r['heldout']['overall'] for r in mine], '.1%')} | {_extras(mine)} | {kl:.2g} | "
                     f"{minutes:.1f} |")
    lines += ["", f"Wall time: {env.get('wall_minutes', '?')} min for {env.get('runs_timed', '?')} runs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.job.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the cpu preset's 14")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="override the preset's (smoke tests)")
    parser.add_argument("--num-steps", type=int, default=None, help="override the preset's 10 (smoke tests)")
    parser.add_argument("--eval-seeds", type=int, default=2, help="evaluation samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=0, help="first N prompts of each split only (0: all)")
    parser.add_argument("--only", default="", help="comma-separated indices into the sweep (default: all)")
    parser.add_argument("--reward", choices=REWARDS, default=REWARD, help="the training reward")
    parser.add_argument("--name", default="compositional_sweep", help="results file stem")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    sweep = [SWEEP[int(i)] for i in args.only.split(",")] if args.only else list(SWEEP)
    settings = dict(PRESETS["cpu"])
    for key in ("epochs", "samples_per_epoch", "num_steps"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    for key in ("num_envs", "batch_size"):
        settings[key] = min(settings[key], settings["samples_per_epoch"])
    base = {**settings, **agent_settings("grpo", settings["num_steps"]), "reward": args.reward, "tensorboard": False,
            "image_every": 0, "save_every": 0, "keep_last": 1}
    grid = [(BASE, {}, 0)] + [(name, over, seed) for name, over in sweep
                              for seed in range(1 if over.get(UNTRAINED) else args.seeds)]
    jobs = [{**TrainConfig.from_flat({**base, **{k: v for k, v in over.items() if k != UNTRAINED}, "seed": seed})
             .to_flat(), "benchmark_agent": name, "benchmark_untrained": name == BASE or bool(over.get(UNTRAINED))}
            for name, over, seed in grid]
    env_info = environment(command_line("benchmarks.compositional_sweep", argv))
    env_info["machine"] += f"; {args.workers} workers × 1 thread"
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        tasks = [(job, 1, args.eval_seeds, args.eval_prompts) for job in jobs]
        for run in pool.imap_unordered(_run_star, tasks):
            record = scores(run)
            runs.append(record)
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {record['agent']} seed {record['seed']}: "
                  f"train {record['train']['overall']:.1%} (partial {record['train']['partial']:.3f})", flush=True)
    env_info["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
    env_info["runs_timed"] = len(jobs)
    data = {"settings": settings, "agent": AGENT_SETTINGS["grpo"], "reward": args.reward, "sweep": sweep,
            "runs": sorted(runs, key=lambda r: (r["agent"], r["seed"])), "environment": env_info}
    results_dir = Path(args.results_dir)
    write_json(results_dir / f"{args.name}.json", data)
    text = markdown(data)
    (results_dir / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)
    return data


if __name__ == "__main__":
    main()
