"""Each agent's learning rate on the shapes task, chosen on the validation set: ``python -m benchmarks.agents_sweep``.

For every agent of :data:`benchmarks.compositional_task.AGENT_SETTINGS` (``--agents``), its settings at each of the
learning rates of :data:`RATES` (``--rates`` for all agents), ``--seeds`` training seeds each (default 2), on the
compositional benchmark's budget (``cpu`` preset) and training reward (``--reward``, default ``geneval_strict``). Every
run is scored on the **validation** set (:data:`benchmarks.compositional_task.EVAL_SETS`): the training prompts at
seeds of their own and the unseen prompts, never the prompts and seeds the benchmark reports. The chosen rate of an
agent is the one with the highest mean validation accuracy on the training prompts; the report gives every rate with
its seeds, its partial credit, its extra objects and its KL to the base model.

Runs are one-thread processes run by :mod:`benchmarks.harness` (``--workers``, ``--resume``). Writes
benchmarks/results/NAME.{json,md} (``--name``, default agents_sweep).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import compositional_task as task
from benchmarks.harness import Grid, GridRun, Job, SettingsSource, add_arguments, job_id, settings_with
from benchmarks.record import command_line
from benchmarks.reports import provenance, wall_time, write_report

#: Learning rates swept per agent: around the rate each kind of loss trains at on this model. GRPO gets three (the
#: earlier sweep on the test set found 3e-3 best of 1e-3, 3e-3 and 1e-2 with the partial-credit reward); its variants
#: and the other likelihood agents the two upper ones; the new matching losses three; RWR, which degrades the model
#: at 1e-3 (it regresses onto its own samples without a signed weight), 1e-4 and 3e-4.
RATES: dict[str, tuple[float, ...]] = {
    "grpo": (1e-3, 3e-3, 1e-2),
    "grpo-window": (3e-3, 1e-2),
    "grpo-balanced": (3e-3, 1e-2),
    "ddpo-is": (3e-3, 1e-2),
    "ddpo-sf": (3e-3, 1e-2),
    "rwr": (1e-4, 3e-4),
    "awm": (3e-4, 1e-3, 3e-3),
    "diffusion-nft": (3e-4, 1e-3, 3e-3),
}
REWARD = "geneval_strict"
SETTINGS_FROM = SettingsSource(
    "none", "every setting is reported, each scored on the validation set; this sweep chooses the learning rates "
    "benchmarks.compositional reports on the test set.")


def scores(job: Job, run: dict[str, Any]) -> dict[str, Any]:
    """A run's record without its images: accuracy, partial credit, extra objects and KL per split."""
    record = {k: v for k, v in run.items() if k != "samples"}
    for split, s in run["samples"].items():
        record[split] = task.split_scores(s["images"], s["prompts"], s["kl"])
    return record


def choose(runs: list[dict[str, Any]], agent: str) -> float | None:
    """The agent's learning rate with the highest mean validation accuracy on the training prompts (None: no runs)."""
    mine = [r for r in runs if r["agent"] == agent]
    rates = sorted({r["learning_rate"] for r in mine})
    if not rates:
        return None
    return max(rates, key=lambda lr: np.mean([r["train"]["overall"] for r in mine if r["learning_rate"] == lr]))


def _cell(values: list[float], fmt: str) -> str:
    return f"{np.mean(values):{fmt}} ({', '.join(f'{v:{fmt}}' for v in values)})"


def markdown(data: dict[str, Any]) -> str:
    runs, env = data["runs"], data["environment"]
    base = next((r for r in runs if r["agent"] == task.BASE), None)
    lines = ["# Each agent's learning rate on the shapes task, chosen on the validation set", "",
             *provenance(env, data["settings_from"]),
             f"Shapes model, `{data['reward']}` reward, {data['settings']['epochs']} epochs × "
             f"{data['settings']['samples_per_epoch']} samples per run. Scored on the validation set: the "
             f"{data['eval_prompts']['train']} training prompts and the {data['eval_prompts']['heldout']} unseen "
             f"prompts, {data['eval_seeds']} sample(s) each at seeds the test set does not use. Accuracy: the "
             "verifier's binary score, mean over categories (each seed in brackets). **Bold**: the rate chosen, the "
             "highest mean accuracy on the training prompts.", "",
             "| agent | learning rate | seeds | training prompts | partial credit | unseen prompts | extra objects "
             "| KL to base | updates |", "|---|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| base model | – | – | {base['train']['overall']:.1%} | {base['train']['partial']:.3f} | "
                     f"{base['heldout']['overall']:.1%} | {base['train']['extra_objects']:.2f} | 0 | 0 |")
    for agent in data["agents"]:
        chosen = choose(runs, agent)
        for lr in sorted({r["learning_rate"] for r in runs if r["agent"] == agent}):
            mine = [r for r in runs if r["agent"] == agent and r["learning_rate"] == lr]
            mark = "**" if lr == chosen else ""
            lines.append(
                f"| {agent} | {mark}{lr:g}{mark} | {len(mine)} | {_cell([r['train']['overall'] for r in mine], '.1%')}"
                f" | {np.mean([r['train']['partial'] for r in mine]):.3f} | "
                f"{_cell([r['heldout']['overall'] for r in mine], '.1%')} | "
                f"{np.mean([r['train']['extra_objects'] for r in mine]):.2f} | "
                f"{np.mean([r['train']['kl_to_base'] or 0 for r in mine]):.2g} | "
                f"{np.mean([r.get('updates', 0) for r in mine]):.0f} |")
    lines += ["", "Chosen: " + ", ".join(f"{a} {choose(runs, a):g}" for a in data["agents"]
                                         if choose(runs, a) is not None)]
    lines += wall_time(env)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.job.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default=",".join(RATES), help=f"from {', '.join(RATES)}")
    parser.add_argument("--rates", default="", help="comma-separated learning rates for every agent (default: RATES)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the cpu preset's")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="override the preset's (smoke tests)")
    parser.add_argument("--num-steps", type=int, default=None, help="override the preset's 10 (smoke tests)")
    parser.add_argument("--reward", choices=task.REWARDS, default=REWARD, help="the training reward")
    parser.add_argument("--eval-seeds", type=int, default=1, help="validation samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=0, help="the first N prompts of each split (0: all)")
    add_arguments(parser, "agents_sweep")
    args = parser.parse_args(argv)
    agents = args.agents.split(",")
    unknown = [a for a in agents if a not in task.AGENT_SETTINGS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}: use {', '.join(task.AGENT_SETTINGS)}")
    settings = settings_with(task.PRESETS["cpu"], epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                             num_steps=args.num_steps)
    steps = settings["num_steps"]
    base = {**settings, "reward": args.reward, **task.QUIET}
    evaluation = (args.eval_seeds, args.eval_prompts, "validation")

    def rates(agent: str) -> list[float]:
        return [float(r) for r in args.rates.split(",")] if args.rates else list(RATES.get(agent, RATES["grpo"]))

    def config(agent: str, lr: float | None, seed: int) -> dict[str, Any]:
        over = {**task.agent_settings(agent, steps), "seed": seed, **({"learning_rate": lr} if lr else {})}
        return TrainConfig.from_flat({**base, **over}).to_flat()

    jobs = [Job(job_id(task.BASE, float(task.agent_settings("grpo", steps)["learning_rate"]), 0),
                task.sample_args(task.BASE, config("grpo", None, 0), *evaluation[:2], untrained=True,
                                 eval_set="validation"))]
    jobs += [Job(job_id(a, lr, s), task.sample_args(a, config(a, lr, s), *evaluation[:2], eval_set="validation"))
             for a in agents for lr in rates(a) for s in range(args.seeds)]
    signature = {"settings": settings, "reward": args.reward, **task.eval_signature(*evaluation)}
    runner = GridRun.from_args(
        Grid(args.name, task.sample_job, jobs, ("agent", "learning_rate", "seed"), SETTINGS_FROM, signature,
             lambda saved: {**{k: saved.get(k) for k in ("settings", "reward")}, **task.saved_eval_signature(saved)}),
        args, parser, command_line("benchmarks.agents_sweep", argv))

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        swept = [*agents, *sorted({r["agent"] for r in records} - {task.BASE, *agents})]  # kept by --resume
        return {**signature, "agents": swept,
                "agent_settings": {a: task.agent_settings(a, steps) for a in swept},
                "chosen": {a: choose(records, a) for a in swept},
                "runs": sorted(records, key=lambda r: (r["agent"], r["learning_rate"], r["seed"]))}

    data = runner.run(document, scores, lambda r: f"{r['agent']} lr {r['learning_rate']:g} seed {r['seed']}: "
                      f"validation {r['train']['overall']:.1%} (unseen {r['heldout']['overall']:.1%})")
    write_report(Path(args.results_dir), args.name, markdown(data))
    return data


if __name__ == "__main__":
    main()
