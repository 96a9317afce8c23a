"""RL algorithms on diffusion (the paper's Fig. 4 on the embedded model): ``python -m benchmarks.algorithms``.

DDPO-IS, DDPO-SF, RWR, AWM and DiffusionNFT (sparse RWR with ``--agents``) × rewards {JPEG compressibility, JPEG
incompressibility} (``--rewards all`` adds the digit margin) × 3 seeds, each the training job of ``ddpo train``
(:func:`agents.job.train.train`) with the same settings and the same number of samples; only the learning rate is each
algorithm's own, per reward, chosen by a sweep run first (``--sweep``: each agent's rates of
``algorithms_sweep.SWEEP_RATES`` on 2 training seeds of its own, scored on the validation set, the evaluation prompts at
other sampling seeds; ``--rates`` to change; writes algorithms_sweep.{json,md}, NAME_sweep with ``--name``).
The main run takes per agent and reward the rate with the best gain among those that keep ≥ 80 % of the digits
readable on every sweep seed (``algorithms_sweep.MIN_AGREEMENT``), and reports the test set.
Reported per run: the evaluation reward every ``--curve-every`` epochs (the curves and samples-to-score), the fixed
evaluation set (100 prompts × seeds, the same for every run) before and after training, the optimizer steps taken,
the mean clip fraction, the KL to the base model along the evaluation trajectories, RWR's effective sample size and
the share of digits the classifier still reads as prompted on every seed (what a run destroys).

Settings (``cpu`` preset): the embedded model with 10-step episodes (``--num-steps 20``: its own 20), LoRA rank 4
(the paper's method), 64 samples per rollout in micro-batches of 32 (≥ 32 samples per optimizer step) trained on
every step, 3 steps per pass, matmul attention, DDPO-IS clip 1e-3, RWR at τ = 1 (effective sample size ≈ 37 % of a
rollout). Runs are independent one-thread processes run by :mod:`benchmarks.harness` (``--workers``; each job's log
in ``runs/benchmarks/NAME/JOB/job.log``); finished runs are kept in the JSON as they complete, so an interrupted
benchmark continues (``--resume``). The JSON's ``settings_from`` says which split chose the rates.
``--epochs`` makes it larger; ``--preset gpu`` runs a Stable Diffusion folder (``--model``) with the paper's settings.

Writes ``benchmarks/results/algorithms.{json,md,png}`` (the report: :mod:`benchmarks.algorithms_report`) and
summary.json's ``algorithms`` (final evaluation reward per reward × agent, mean over seeds),
``algorithms_optimizer_steps`` and ``algorithms_samples_to_score``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from agents.job.train import TrainConfig
from benchmarks.algorithms_report import markdown, plot, samples_to_gain
from benchmarks.algorithms_sweep import (
    SWEEP_RATES,
    SWEEP_SEEDS,
    VALIDATION_EVAL_SEED,
    best_rates,
    floor_stats,
    parse_rates,
    rate_for,
    rates_source,
    sweep_markdown,
    sweep_table,
)
from benchmarks.harness import Grid, GridRun, Job, add_arguments, job_id, output_dir, settings_with
from benchmarks.record import command_line, update_summary
from benchmarks.reports import (
    curve_stats,
    mean_present,
    over_seeds,
    summary_env,
    write_report,
)

AGENTS = ("ddpo-is", "ddpo-sf", "rwr", "awm", "diffusion-nft", "ddpo-is-balanced")
REWARDS = ("jpeg_compressibility", "jpeg_incompressibility")  # the paper's Fig. 4 pair: the default invocation
ALL_REWARDS = (*REWARDS, "digit_margin")  # --rewards all: with the prompt-dependent digit margin

# The settings every run shares (per-agent learning rates come from the sweep).
PRESETS: dict[str, dict[str, Any]] = {
    # 10-step episodes (Flow-GRPO's "denoising reduction": the embedded model reads 99 % of its digits as prompted at
    # 10 steps as at 20) halve every pass; `--num-steps 20` is the model's own episode, twice as long to run.
    # Micro-passes of 3 steps × 32 samples: on one CPU thread a pass over all 10 steps at once is slower (cache).
    "cpu": {"model": "default", "device": "cpu", "epochs": 16, "samples_per_epoch": 64, "num_envs": 16,
            "batch_size": 32, "lora_rank": 4, "num_steps": 10, "steps_per_pass": 3, "attention": "matmul"},
    "gpu": {"device": "cuda", "dtype": "bfloat16", "epochs": 100, "samples_per_epoch": 256, "num_envs": 32,
            "batch_size": 64, "lora_rank": 4},
}
#: Settings of one algorithm only.
#: DDPO-IS's clip range 1e-3: the ratio of a mean-reduced log-prob over 256 pixels varies ~8× more per update than
#: over Stable Diffusion's 16,384 latent values, so 1e-3 here plays the role of the paper's 1e-4 (with 1e-4 and
#: LoRA, make train's job moved +0.2 std in 12 epochs; configs/make_train.toml).
#: The matching losses (AWM, DiffusionNFT) take the advantages of GRPO-style groups of 8 samples of one prompt, as
#: both papers do. A row whose settings name an ``agent`` is a variant of that agent: ``ddpo-is-balanced`` is DDPO-IS
#: with each step's log-likelihood weighted by the measured norms of the steps' gradients (agents/step_weights.py).
AGENT_SETTINGS: dict[str, dict[str, Any]] = {"ddpo-is": {"clip_range": 1e-3}, "rwr": {"temperature": 1.0},
                                            "awm": {"group_advantages": True, "group_size": 8},
                                            "diffusion-nft": {"group_advantages": True, "group_size": 8},
                                            "ddpo-is-balanced": {"agent": "ddpo-is", "clip_range": 1e-3,
                                                                 "step_weights": "gradient"}}
DEFAULT_RATE = 3e-3  # an agent's rate until a sweep says better
CURVE_EVERY = 4  # epochs between the main run's evaluations (its last is the job's own final evaluation)


KEY_FIELDS = ("agent", "reward", "seed", "learning_rate")  # what names a run (its job id)


def train_job(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A harness job (in a worker process): one training run, its reward history, evaluations, diagnostics and
    time."""
    from agents.job.train import train
    from benchmarks.reward_curve import RewardCurve, with_final

    settings = dict(job)
    every = settings.pop("curve_every", 0)
    label = settings.pop("label", None)  # a variant's name (AGENT_SETTINGS), else the agent's
    cfg = TrainConfig.from_flat({**settings, "output_dir": output_dir(run_dir)})
    curve = RewardCurve(cfg, every) if every else None
    result = train(cfg, callbacks=[curve] if curve else [])
    m = result.metrics
    epochs = m["epochs"]

    def mean_of(key: str) -> float | None:
        return mean_present([e.get(key) for e in epochs])

    return {
        "agent": label or cfg.agent, "reward": cfg.reward, "seed": cfg.seed,
        "learning_rate": cfg.algorithm.learning_rate, "eval_seed": cfg.eval_seed,
        "train_reward_mean": [e["reward_mean"] for e in epochs],
        "eval_curve": with_final(curve.points, cfg, m["train_seconds"], float(result.after.rewards.mean()))
        if curve else None,
        "eval_before": result.before.rewards.tolist(), "eval_after": result.after.rewards.tolist(),
        "optimizer_steps": int(epochs[-1].get("optimizer_steps", 0)),
        "clip_fraction": mean_of("clip_fraction"), "effective_sample_size": mean_of("effective_sample_size"),
        "kl_to_base": m.get("eval_kl_to_base_after"),
        "agreement_before": m.get("digit_agreement_before"), "agreement_after": m.get("digit_agreement_after"),
        "train_seconds": m["train_seconds"],
    }


def aggregate(runs: list[dict[str, Any]], agents: list[str], rewards: list[str]) -> dict[str, dict[str, Any]]:
    """Per reward × agent: final evaluation reward (mean, std over seeds), the gain in initial stds, the curves and
    the diagnostics (means over seeds)."""
    table: dict[str, dict[str, Any]] = {}
    for reward in rewards:
        for agent in agents:
            mine = [r for r in runs if r["agent"] == agent and r["reward"] == reward]
            if not mine:  # (an unfinished benchmark: not run yet)
                continue
            table.setdefault(reward, {})
            after = over_seeds([np.mean(r["eval_after"]) for r in mine])
            before = np.array([np.mean(r["eval_before"]) for r in mine])
            initial_std = np.mean([np.std(r["eval_before"]) for r in mine])
            gains = over_seeds((np.array(after.per_seed) - before) / max(initial_std, 1e-12))
            curve_mean, curve_std = curve_stats([r["train_reward_mean"] for r in mine])
            table[reward][agent] = {
                "seeds": len(mine),
                "learning_rate": mine[0]["learning_rate"],
                "eval_before": float(before.mean()),
                "eval_after_mean": after.mean,
                "eval_after_std": after.std,
                "gain_in_initial_std": gains.mean,
                "gain_in_initial_std_per_seed": gains.per_seed,
                "curve_mean": curve_mean,
                "curve_std": curve_std,
                "minutes_per_run": float(np.mean([r["train_seconds"] for r in mine]) / 60),
                **{key: mean_present([r.get(key) for r in mine]) for key in (
                    "optimizer_steps", "clip_fraction", "kl_to_base", "effective_sample_size", "agreement_before",
                    "agreement_after")},
                **floor_stats(mine), **_eval_curves(mine, float(initial_std)),
            }
    return table


def _eval_curves(runs: list[dict[str, Any]], initial_std: float) -> dict[str, Any]:
    """The evaluation-reward curves' mean and std over seeds and each run's curve as gains (none without curves)."""
    from benchmarks.reward_curve import gains

    curves = [r.get("eval_curve") for r in runs]
    if not all(curves) or len({len(c) for c in curves}) != 1:
        return {}
    mean, std = curve_stats([[p["reward"] for p in c] for c in curves])
    return {"eval_curve_samples": [p["samples"] for p in curves[0]], "eval_curve_mean": mean, "eval_curve_std": std,
            "eval_curve_gains": [gains(c, float(np.mean(r["eval_before"])), initial_std)
                                 for c, r in zip(curves, runs, strict=True)]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model", default=None, help="override the preset's model (gpu: a Stable Diffusion folder)")
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--rewards", default=None,
                        help=f"default: {','.join(REWARDS)}; 'all': {','.join(ALL_REWARDS)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"training seeds per agent and reward (default 3; the sweep: 2 of {SWEEP_SEEDS})")
    parser.add_argument("--curve-every", type=int, default=CURVE_EVERY,
                        help="epochs between the main run's evaluations of the curves and samples-to-score (0: none)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="DDIM steps per episode (default: the preset's; cpu: 10, gpu: the model's 50)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="override the preset's LoRA rank 4; 0 fine-tunes the whole UNet (give it its own --name "
                             "and --sweep: its learning rates differ)")
    parser.add_argument("--sweep", action="store_true",
                        help="the learning-rate sweep: each agent's rates of algorithms_sweep.SWEEP_RATES on its own "
                             "training seeds, scored on the validation set (--rates to change)")
    parser.add_argument("--rates", default=None,
                        help="the sweep's rates: 1e-3,3e-3 for every agent, or ddpo-is=5e-3,rwr=2e-3 per agent "
                             "(with --resume, added to the runs already there)")
    add_arguments(parser, "algorithms", name_help="results file stem: NAME.{json,md,png}; the sweep writes (and the "
                  "main run reads) NAME_sweep.{json,md}")
    args = parser.parse_args(argv)
    name = f"{args.name}_sweep" if args.sweep else args.name

    settings = settings_with(PRESETS[args.preset], model=args.model, epochs=args.epochs,
                             samples_per_epoch=args.samples_per_epoch, num_steps=args.num_steps,
                             lora_rank=args.lora_rank)
    if "model" not in settings:
        parser.error("--preset gpu needs --model: a local Stable Diffusion folder (save_pretrained)")
    base = {**settings, "tensorboard": False, "image_every": 0, "save_every": 0, "keep_last": 1}
    agents = args.agents.split(",")
    rewards = (args.rewards or ",".join(REWARDS)).replace(
        "all", ",".join(ALL_REWARDS)).split(",")
    results_dir = Path(args.results_dir)
    sweep_json = results_dir / f"{args.name}_sweep.json"
    chosen = best_rates(sweep_json)
    if args.sweep:
        if args.seeds is not None and args.seeds > len(SWEEP_SEEDS):
            parser.error(f"--sweep --seeds {args.seeds}: the sweep has {len(SWEEP_SEEDS)} seeds of its own")
        per_agent = (parse_rates(args.rates, agents) if args.rates
                     else {a: list(SWEEP_RATES.get(a, (DEFAULT_RATE,))) for a in agents})
        seeds = SWEEP_SEEDS[:args.seeds or len(SWEEP_SEEDS)]
        grid = [(a, r, s, lr) for r in rewards for a in agents for lr in per_agent.get(a, []) for s in seeds]
        extra: dict[str, Any] = {"eval_seed": VALIDATION_EVAL_SEED}
    else:
        grid = [(a, r, s, rate_for(chosen, a, r, DEFAULT_RATE)) for r in rewards for s in range(args.seeds or 3)
                for a in agents]
        extra = {}
    jobs = [Job(job_id(a, r, s, lr), {**TrainConfig.from_flat({
        **base, **AGENT_SETTINGS.get(a, {}), **extra, "agent": AGENT_SETTINGS.get(a, {}).get("agent", a), "reward": r,
        "seed": s, "learning_rate": lr,
    }).to_flat(), **({"curve_every": args.curve_every} if args.curve_every and not args.sweep else {}),
        **({"label": a} if "agent" in AGENT_SETTINGS.get(a, {}) else {})})
        for a, r, s, lr in grid]

    def saved_signature(saved: dict[str, Any]) -> dict[str, Any]:  # agents added since the file was written may join
        return {"settings": saved.get("settings"),
                "agent_settings": {**AGENT_SETTINGS, **saved.get("agent_settings", {})}}

    runner = GridRun.from_args(
        Grid(name, train_job, jobs, KEY_FIELDS, rates_source(args.sweep, sweep_json, chosen, agents),
             {"settings": settings, "agent_settings": AGENT_SETTINGS}, saved_signature),
        args, parser, command_line("benchmarks.algorithms", argv))

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        runs = sorted(records, key=lambda r: (r["reward"], r["agent"], r["seed"], r["learning_rate"]))
        table = sweep_table(runs) if args.sweep else aggregate(
            runs, list(dict.fromkeys([*agents, *(r["agent"] for r in runs)])),
            list(dict.fromkeys([*rewards, *(r["reward"] for r in runs)])))
        return {"settings": settings, "agent_settings": AGENT_SETTINGS, "table": table, "runs": runs}

    data = runner.run(document, describe=lambda run: (
        f"{run['agent']:>10} {run['reward']:<22} seed {run['seed']} lr {run['learning_rate']:g}: eval "
        f"{np.mean(run['eval_before']):.3f} → {np.mean(run['eval_after']):.3f}"))
    if args.sweep:
        write_report(results_dir, name, sweep_markdown(data, best_rates(runner.path)))
        return data
    table = data["table"]
    png = results_dir / f"{name}.png"
    plot(table, settings["samples_per_epoch"], png,
         f"{settings['model']} model, {settings.get('num_steps', 'default')} steps, "
         f"LoRA r{settings.get('lora_rank', 0)}, {args.seeds or 3} seeds, "
         f"{settings['epochs']} × {settings['samples_per_epoch']} samples per run")
    data["samples_to_score"] = samples_to_gain(table)
    write_report(results_dir, name, markdown(data, png.name))
    figures = {reward: {agent: row["eval_after_mean"] for agent, row in per_agent.items()}
               for reward, per_agent in table.items()}
    steps = {agent: row["optimizer_steps"] for per_agent in table.values() for agent, row in per_agent.items()}
    entries = {name: (figures, "final evaluation reward, mean over seeds"),
               f"{name}_optimizer_steps": (steps, "optimizer steps per run (equal samples per run)")}
    if data["samples_to_score"]:
        medians = {reward: {agent: {t: c["median_samples"] for t, c in per.items()}
                            for agent, per in row["thresholds"].items()}
                   for reward, row in data["samples_to_score"].items()}
        entries[f"{name}_samples_to_score"] = (medians, "median training samples to first reach each evaluation "
                                                        "gain (untrained model's stds; None: not reached)")
    update_summary(entries, summary_env(data["environment"]), results_dir)
    return data


if __name__ == "__main__":
    main()
