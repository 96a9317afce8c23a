"""The algorithms benchmark's report: the final-reward table, the per-run diagnostics (learning rate, optimizer steps,
clip fraction, KL to the base model, effective sample size, the digits-read floor on every seed), samples-to-score on
the evaluation-reward curves, and the curves' plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import samples_to_score as sts
from benchmarks.algorithms_sweep import LABELS, MIN_AGREEMENT
from benchmarks.reports import cell, mean_present, provenance, wall_time

#: Samples-to-score thresholds: the evaluation reward's gain over the untrained model in units of its per-sample std
#: (the 16-epoch runs of the earlier benchmark ended between +0.4 and +2.2).
GAIN_THRESHOLDS = (0.5, 1.0, 1.5)
REFERENCE = "ddpo-is"  # the agent whose final score the others' samples are compared at


def curve_label(table: dict[str, dict[str, Any]]) -> str:
    rows = [row for per_agent in table.values() for row in per_agent.values()]
    return "evaluation" if rows and all("eval_curve_mean" in row for row in rows) else "training"


def plot(table: dict[str, dict[str, Any]], samples_per_epoch: int, path: Path, title: str) -> None:
    """Per reward, each agent's evaluation reward (the training reward for runs without evaluation curves) against
    the samples trained on: mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = curve_label(table)
    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.4), dpi=120, squeeze=False)
    for ax, (reward, per_agent) in zip(axes[0], table.items(), strict=True):
        for agent, row in per_agent.items():
            if kind == "evaluation":
                samples = np.array(row["eval_curve_samples"])
                mean, std = np.array(row["eval_curve_mean"]), np.array(row["eval_curve_std"])
            else:
                mean, std = np.array(row["curve_mean"]), np.array(row["curve_std"])
                samples = samples_per_epoch * np.arange(1, len(mean) + 1)
            ax.plot(samples, mean, label=LABELS.get(agent, agent))
            ax.fill_between(samples, mean - std, mean + std, alpha=0.2)
        ax.axhline(next(iter(per_agent.values()))["eval_before"], color="grey", linestyle=":", label="untrained")
        ax.set_title(reward, fontsize=9)
        ax.set_xlabel("samples")
        ax.set_ylabel(f"{kind} reward (mean ± std over seeds)", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def samples_to_gain(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reward: each agent's samples-to-score table on its gain curves (:data:`GAIN_THRESHOLDS`) and, against
    :data:`REFERENCE`, its efficiency ratio at the reference's final gain (reward × agent without curves: left out)."""
    out: dict[str, dict[str, Any]] = {}
    for reward, per_agent in table.items():
        curves = {agent: row["eval_curve_gains"] for agent, row in per_agent.items() if row.get("eval_curve_gains")}
        if not curves:
            continue
        out[reward] = {"thresholds": {agent: sts.samples_to_score(c, GAIN_THRESHOLDS, key="gain")
                                      for agent, c in curves.items()}}
        if REFERENCE in curves:
            out[reward]["efficiency"] = {agent: sts.efficiency_ratio(curves[REFERENCE], c, key="gain")
                                         for agent, c in curves.items() if agent != REFERENCE}
    return out


def _samples_section(to_gain: dict[str, dict[str, Any]]) -> list[str]:
    if not to_gain:
        return []
    lines = ["\n## Samples to score\n",
             "Training samples until the evaluation reward's gain (in the untrained model's per-sample stds, on the "
             "fixed evaluation set every few epochs) first reaches each threshold: the median over seeds, an unreached "
             "seed counted as never, with minutes of training (evaluations left out) and the seeds that reached it."]
    for reward, row in to_gain.items():
        lines += [f"\n### {reward}\n", *sts.markdown(row["thresholds"], LABELS, score_format="+.1f")]
        if row.get("efficiency"):
            lines.append("")
        for agent, r in row.get("efficiency", {}).items():
            lines.append(f"* {LABELS.get(agent, agent)} to {LABELS[REFERENCE]}'s final gain ({r['score']:+.2f}): "
                         f"{sts.ratio_text(r, LABELS[REFERENCE])}.")
    return lines


def markdown(data: dict[str, Any], png: str, title: str = "RL algorithms on diffusion") -> str:
    table, env_info, settings = data["table"], data["environment"], data["settings"]
    agents = list(dict.fromkeys(a for per_agent in table.values() for a in per_agent))
    lines = [
        f"# {title}\n",
        *provenance(env_info, data["settings_from"]),
        "Final reward on the fixed evaluation set (the test set: 100 prompts × seeds), mean ± std over seeds; in "
        "brackets the gain over the untrained model in units of its per-sample std. Same settings and samples for "
        "all: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "; learning rates per algorithm and reward "
        "below.\n",
        "| reward | before | " + " | ".join(LABELS.get(a, a) for a in agents) + " |",
        "|---|---|" + "---|" * len(agents),
    ]
    for reward, per_agent in table.items():
        before = next(iter(per_agent.values()))["eval_before"]
        cells = [f"{per_agent[a]['eval_after_mean']:.3f} ± {per_agent[a]['eval_after_std']:.3f} "
                 f"({per_agent[a]['gain_in_initial_std']:+.2f})" if a in per_agent else "–" for a in agents]
        lines.append(f"| {reward} | {before:.3f} | " + " | ".join(cells) + " |")
    read_before = mean_present([r.get("agreement_before") for p in table.values() for r in p.values()])
    lines += ["\nPer run (means over seeds): learning rate, optimizer steps, mean clip fraction (DDPO-IS), KL to the "
              "base model along the evaluation trajectories, effective sample size of a rollout (RWR), digits the "
              f"classifier reads as prompted after training (before: {cell(read_before, '.0%')}; the worst seed, and "
              f"the seeds keeping the {MIN_AGREEMENT:.0%} floor).\n",
              "| reward | agent | lr | optimizer steps | clip fraction | KL to base | ESS | digits read (worst) | "
              "floor kept | gain per seed (std) | min/run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for reward, per_agent in table.items():
        for agent, r in per_agent.items():
            floor = (f"{r['floor_kept']}/{r['seeds']}" if r.get("floor_kept") is not None else "–")
            lines.append(
                f"| {reward} | {LABELS.get(agent, agent)} | {r['learning_rate']:g} "
                f"| {cell(r['optimizer_steps'], '.0f')} | {cell(r['clip_fraction'], '.3f')} "
                f"| {cell(r['kl_to_base'], '.3g')} "
                f"| {cell(r['effective_sample_size'], '.1f')} | {cell(r['agreement_after'], '.0%')} "
                f"({cell(r.get('agreement_min'), '.0%')}) | {floor} | "
                + ", ".join(f"{g:+.2f}" for g in r["gain_in_initial_std_per_seed"])
                + f" | {r['minutes_per_run']:.1f} |")
    lines += _samples_section(data.get("samples_to_score", {}))
    lines += [*wall_time(env_info), f"\n![{curve_label(table)} reward vs samples]({png})\n"]
    return "\n".join(lines)
