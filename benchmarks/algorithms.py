"""RL algorithms on diffusion (the paper's Fig. 4 on the embedded model): ``python -m benchmarks.algorithms``.

DDPO-IS, DDPO-SF and RWR (sparse RWR with ``--agents``) × rewards {JPEG compressibility, JPEG incompressibility}
(``--rewards all`` adds the digit margin) × 3 seeds, each the training job of ``ddpo train``
(:func:`agents.job.train.train`) with the same settings and the same number of samples; only the learning rate is each
algorithm's own, chosen by a sweep run first on a separate seed (``--sweep``: JPEG compressibility, rates 1e-3, 3e-3,
1e-2, refined per agent with ``--rates agent=rate``; writes algorithms_sweep.{json,md}, NAME_sweep with ``--name``).
The main run takes per agent the rate with the best gain among those that keep ≥ 80 % of the digits readable
(``algorithms_sweep.MIN_AGREEMENT``).
Reported per run: the training reward of every rollout, the fixed evaluation set (100 prompts × seeds, the same for
every run) before and after training, the optimizer steps taken, the mean clip fraction, the KL to the base model
along the evaluation trajectories, RWR's effective sample size and the share of digits the classifier still reads
as prompted (what a run destroys).

Settings (``cpu`` preset): the embedded model with 10-step episodes (``--num-steps 20``: its own 20), LoRA rank 4
(the paper's method), 64 samples per rollout in micro-batches of 32 (≥ 32 samples per optimizer step) trained on
every step, 3 steps per pass, matmul attention, DDPO-IS clip 1e-3, RWR at τ = 1 (effective sample size ≈ 37 % of a
rollout). Runs are independent one-thread processes run by :mod:`benchmarks.harness` (``--workers``; each job's log
in ``runs/benchmarks/NAME/JOB/job.log``); finished runs are kept in the JSON as they complete, so an interrupted
benchmark continues (``--resume``). The rates are chosen on the evaluation set the main run reports (the sweep
trains on another seed but scores the same prompts and sampling seeds): the JSON's ``settings_from`` says so.
``--epochs`` makes it larger; ``--preset gpu`` runs a Stable Diffusion folder (``--model``) with the paper's settings.

Writes ``benchmarks/results/algorithms.{json,md,png}`` and summary.json's ``algorithms`` (final evaluation reward
per reward × agent, mean over seeds) and ``algorithms_optimizer_steps``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from agents.job.train import TrainConfig
from benchmarks.algorithms_sweep import (
    LABELS,
    SWEEP_RATES,
    SWEEP_REWARD,
    SWEEP_SEED,
    best_rates,
    parse_rates,
    rates_source,
    sweep_markdown,
    sweep_table,
)
from benchmarks.harness import Grid, GridRun, Job, add_arguments, job_id, output_dir, settings_with
from benchmarks.record import command_line, update_summary
from benchmarks.reports import (
    cell,
    curve_stats,
    mean_present,
    over_seeds,
    provenance,
    summary_env,
    wall_time,
    write_report,
)

AGENTS = ("ddpo-is", "ddpo-sf", "rwr")
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
AGENT_SETTINGS: dict[str, dict[str, Any]] = {"ddpo-is": {"clip_range": 1e-3}, "rwr": {"temperature": 1.0}}
DEFAULT_RATES = {"ddpo-is": 3e-3, "ddpo-sf": 3e-3, "rwr": 3e-3, "rwr-sparse": 3e-3}  # until a sweep says better


KEY_FIELDS = ("agent", "reward", "seed", "learning_rate")  # what names a run (its job id)


def train_job(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A harness job (in a worker process): one training run, its reward history, evaluations, diagnostics and
    time."""
    from agents.job.train import train

    cfg = TrainConfig.from_flat({**job, "output_dir": output_dir(run_dir)})
    result = train(cfg)
    m = result.metrics
    epochs = m["epochs"]

    def mean_of(key: str) -> float | None:
        return mean_present([e.get(key) for e in epochs])

    return {
        "agent": cfg.agent, "reward": cfg.reward, "seed": cfg.seed, "learning_rate": cfg.algorithm.learning_rate,
        "train_reward_mean": [e["reward_mean"] for e in epochs],
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
            }
    return table


def plot(table: dict[str, dict[str, Any]], samples_per_epoch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.4), dpi=120, squeeze=False)
    for ax, (reward, per_agent) in zip(axes[0], table.items(), strict=True):
        for agent, row in per_agent.items():
            mean, std = np.array(row["curve_mean"]), np.array(row["curve_std"])
            samples = samples_per_epoch * np.arange(1, len(mean) + 1)
            ax.plot(samples, mean, label=LABELS.get(agent, agent))
            ax.fill_between(samples, mean - std, mean + std, alpha=0.2)
        ax.set_title(reward, fontsize=9)
        ax.set_xlabel("samples")
        ax.set_ylabel("training reward (mean ± std over seeds)", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(data: dict[str, Any], png: str, title: str = "RL algorithms on diffusion") -> str:
    table, env_info, settings = data["table"], data["environment"], data["settings"]
    agents = list(dict.fromkeys(a for per_agent in table.values() for a in per_agent))
    lines = [
        f"# {title}\n",
        *provenance(env_info, data["settings_from"]),
        "Final reward on the fixed evaluation set (100 prompts × seeds), mean ± std over seeds; in brackets the "
        "gain over the untrained model in units of its per-sample std. Same settings and samples for all: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + "; learning rates per algorithm below.\n",
        "| reward | before | " + " | ".join(LABELS.get(a, a) for a in agents) + " |",
        "|---|---|" + "---|" * len(agents),
    ]
    for reward, per_agent in table.items():
        before = next(iter(per_agent.values()))["eval_before"]
        cells = [f"{per_agent[a]['eval_after_mean']:.3f} ± {per_agent[a]['eval_after_std']:.3f} "
                 f"({per_agent[a]['gain_in_initial_std']:+.2f})" if a in per_agent else "–" for a in agents]
        lines.append(f"| {reward} | {before:.3f} | " + " | ".join(cells) + " |")
    lines += ["\nPer run (means over seeds): learning rate, optimizer steps, mean clip fraction (DDPO-IS), KL to the "
              "base model along the evaluation trajectories, effective sample size of a rollout (RWR), digits the "
              "classifier reads as prompted after training (before: "
              + cell(mean_present([r.get("agreement_before") for p in table.values() for r in p.values()]), ".0%")
              + ").\n",
              "| reward | agent | lr | optimizer steps | clip fraction | KL to base | ESS | digits read | "
              "gain per seed (std) | min/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for reward, per_agent in table.items():
        for agent, r in per_agent.items():
            lines.append(
                f"| {reward} | {LABELS.get(agent, agent)} | {r['learning_rate']:g} "
                f"| {cell(r['optimizer_steps'], '.0f')} | {cell(r['clip_fraction'], '.3f')} "
                f"| {cell(r['kl_to_base'], '.3g')} "
                f"| {cell(r['effective_sample_size'], '.1f')} | {cell(r['agreement_after'], '.0%')} | "
                + ", ".join(f"{g:+.2f}" for g in r["gain_in_initial_std_per_seed"])
                + f" | {r['minutes_per_run']:.1f} |")
    lines += [*wall_time(env_info), f"\n![reward vs samples]({png})\n"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model", default=None, help="override the preset's model (gpu: a Stable Diffusion folder)")
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--rewards", default=None,
                        help=f"default: {','.join(REWARDS)}; 'all': {','.join(ALL_REWARDS)}; "
                             f"with --sweep: {SWEEP_REWARD}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="DDIM steps per episode (default: the preset's; cpu: 10, gpu: the model's 50)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="override the preset's LoRA rank 4; 0 fine-tunes the whole UNet (give it its own --name "
                             "and --sweep: its learning rates differ)")
    parser.add_argument("--sweep", action="store_true",
                        help=f"the learning-rate sweep: rates {SWEEP_RATES} on seed {SWEEP_SEED} (--rates to change)")
    parser.add_argument("--rates", default=",".join(str(r) for r in SWEEP_RATES),
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
    rewards = (args.rewards or (SWEEP_REWARD if args.sweep else ",".join(REWARDS))).replace(
        "all", ",".join(ALL_REWARDS)).split(",")
    results_dir = Path(args.results_dir)
    sweep_json = results_dir / f"{args.name}_sweep.json"
    chosen = best_rates(sweep_json)
    rates = {**DEFAULT_RATES, **chosen}
    if args.sweep:
        per_agent = parse_rates(args.rates, agents)
        grid = [(a, r, SWEEP_SEED, lr) for r in rewards for a in agents for lr in per_agent.get(a, [])]
    else:
        grid = [(a, r, s, rates[a]) for r in rewards for s in range(args.seeds) for a in agents]
    jobs = [Job(job_id(a, r, s, lr), TrainConfig.from_flat({**base, **AGENT_SETTINGS.get(a, {}), "agent": a,
                                                             "reward": r, "seed": s, "learning_rate": lr}).to_flat())
            for a, r, s, lr in grid]
    runner = GridRun.from_args(
        Grid(name, train_job, jobs, KEY_FIELDS, rates_source(args.sweep, sweep_json, chosen, agents),
             {"settings": settings, "agent_settings": AGENT_SETTINGS}),
        args, parser, command_line("benchmarks.algorithms", argv))

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        runs = sorted(records, key=lambda r: (r["reward"], r["agent"], r["seed"], r["learning_rate"]))
        table = sweep_table(runs) if args.sweep else aggregate(runs, agents, rewards)
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
         f"LoRA r{settings.get('lora_rank', 0)}, {args.seeds} seeds, "
         f"{settings['epochs']} × {settings['samples_per_epoch']} samples per run")
    write_report(results_dir, name, markdown(data, png.name))
    figures = {reward: {agent: row["eval_after_mean"] for agent, row in per_agent.items()}
               for reward, per_agent in table.items()}
    steps = {agent: row["optimizer_steps"] for per_agent in table.values() for agent, row in per_agent.items()}
    update_summary({name: (figures, "final evaluation reward, mean over seeds"),
                    f"{name}_optimizer_steps": (steps, "optimizer steps per run (equal samples per run)")},
                   summary_env(data["environment"]), results_dir)
    return data


if __name__ == "__main__":
    main()
