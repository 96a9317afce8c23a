"""Which steps to train and how fast, on the compositional task: ``python -m benchmarks.compositional_sweep``.

GRPO-style DDPO-IS (groups of 8) on the shapes model with the ``geneval`` reward (``--reward geneval_strict``: the
partial credit that charges objects the prompt did not ask for) at the compositional benchmark's
budget (``cpu`` preset: 14 epochs × 64 samples), once per setting and seed, scored like that benchmark (the
verifier's binary accuracy, mean over categories, and the mean partial credit, on the same evaluation prompts and
seeds). The settings vary ``skip_last_steps`` (how many of the 10 steps, counted from the end, are never trained) at
one learning rate, then the learning rate at the chosen skip, then the skip again at the chosen rate, then other
settings at those (:data:`SWEEP`). Runs are one-thread processes run by :mod:`benchmarks.harness` (``--workers``,
``--resume``; each job's log in ``runs/benchmarks/NAME/JOB/job.log``). Every setting is reported: this sweep is where
the compositional benchmark's settings are chosen, on the evaluation prompts and seeds that benchmark reports.

Writes benchmarks/results/NAME.{json,md} (``--name``, default compositional_sweep).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from agents.config import LORA_TARGETS
from benchmarks import compositional_task as task
from benchmarks.harness import Grid, GridRun, Job, SettingsSource, add_arguments, job_id, settings_with
from benchmarks.record import command_line
from benchmarks.reports import provenance, wall_time, write_report

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


SETTINGS_FROM = SettingsSource(
    "none", "every setting is reported. This sweep is where benchmarks.compositional's settings are chosen: on the "
    "training and held-out evaluation prompts and sampling seeds that benchmark reports (training seeds 0 and 1 "
    "here, 0 to 2 there).")


def scores(job: Job, run: dict[str, Any]) -> dict[str, Any]:
    """A run's record without its images: accuracy, partial credit and KL per split."""
    record = {k: v for k, v in run.items() if k != "samples"}
    for split, s in run["samples"].items():
        record[split] = task.split_scores(s["images"], s["prompts"], s["kl"])
    return record


def _mean_and_each(values: list[float], fmt: str) -> str:
    return f"{np.mean(values):{fmt}} ({', '.join(f'{v:{fmt}}' for v in values)})"


def _extras(runs: list[dict[str, Any]]) -> str:
    values = [r["train"].get("extra_objects") for r in runs]
    return "–" if None in values else f"{np.mean(values):.2f}"


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    runs = data["runs"]
    base = next(r for r in runs if r["agent"] == task.BASE)
    lines = ["# Which steps to train and how fast: the compositional task", "",
             *provenance(env, data["settings_from"]),
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
    lines += wall_time(env)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.job.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the cpu preset's 14")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="override the preset's (smoke tests)")
    parser.add_argument("--num-steps", type=int, default=None, help="override the preset's 10 (smoke tests)")
    task.add_eval_arguments(parser)
    parser.add_argument("--only", default="", help="comma-separated indices into the sweep (default: all)")
    parser.add_argument("--reward", choices=task.REWARDS, default=task.REWARD, help="the training reward")
    add_arguments(parser, "compositional_sweep")
    args = parser.parse_args(argv)
    sweep = [SWEEP[int(i)] for i in args.only.split(",")] if args.only else list(SWEEP)
    settings = settings_with(task.PRESETS["cpu"], epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                             num_steps=args.num_steps)
    base = {**settings, **task.agent_settings("grpo", settings["num_steps"]), "reward": args.reward, **task.QUIET}
    grid = [(task.BASE, {}, 0)] + [(name, over, seed) for name, over in sweep
                              for seed in range(1 if over.get(UNTRAINED) else args.seeds)]
    jobs = [Job(job_id(name, seed), task.sample_args(
        name, TrainConfig.from_flat({**base, **{k: v for k, v in over.items() if k != UNTRAINED}, "seed": seed})
        .to_flat(), args.eval_seeds, args.eval_prompts, untrained=name == task.BASE or bool(over.get(UNTRAINED))))
        for name, over, seed in grid]
    signature = {"settings": settings, "agent": task.AGENT_SETTINGS["grpo"], "reward": args.reward,
                 **task.eval_signature(args.eval_seeds, args.eval_prompts)}
    runner = GridRun.from_args(
        Grid(args.name, task.sample_job, jobs, ("agent", "seed"), SETTINGS_FROM, signature,
             lambda saved: {**{k: saved.get(k) for k in ("settings", "agent", "reward")},
                            **task.saved_eval_signature(saved)}),
        args, parser, command_line("benchmarks.compositional_sweep", argv))

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        kept = {r["agent"] for r in records}  # rows of other --only values, kept by --resume
        rows = [*sweep, *(row for row in SWEEP if row[0] in kept and row not in sweep)]
        return {**signature, "sweep": rows, "runs": sorted(records, key=lambda r: (r["agent"], r["seed"]))}

    data = runner.run(document, scores, lambda r: f"{r['agent']} seed {r['seed']}: train {r['train']['overall']:.1%} "
                      f"(partial {r['train']['partial']:.3f})")
    write_report(Path(args.results_dir), args.name, markdown(data))
    return data


if __name__ == "__main__":
    main()
