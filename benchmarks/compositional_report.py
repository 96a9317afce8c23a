"""The compositional benchmark's tables, curves, sample grid and summary figures (``benchmarks.compositional``),
from its results JSON alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import reports
from benchmarks.compositional_task import BASE, REWARDS, SPLITS, training_prompts
from benchmarks.record import update_summary
from benchmarks.samples_to_score import samples_to_score

LABELS = {"base": "base model", "ddpo-is": "DDPO-IS", "grpo": "GRPO (groups of 8)", "ddpo-sf": "DDPO-SF",
          "rwr": "RWR", "grpo-window": "GRPO, SDE window (MixGRPO)", "grpo-balanced": "GRPO, gradient step weights",
          "awm": "AWM", "diffusion-nft": "DiffusionNFT"}
#: Where the agents table of the field's algorithms writes its summary keys (``--name``).
AGENTS_TABLE = "compositional_agents"
#: The grid's columns at most: (split, index in prompt_set(split)); categories alternate in both sets.
GRID_PROMPTS = [("train", i) for i in range(8)] + [("heldout", i) for i in range(4)]


def aggregate(runs: list[dict[str, Any]], agents: list[str]) -> dict[str, dict[str, Any]]:
    """Per agent (and the base model): means and stds over seeds of each split's score, categories, feature
    distance, diversity and KL, the gains over the base model and the training curves."""
    from ddpo_env.scenes import CATEGORIES

    table: dict[str, dict[str, Any]] = {}
    base = next((r for r in runs if r["agent"] == BASE), None)
    for agent in [BASE, *agents]:
        mine = [r for r in runs if r["agent"] == agent]
        if not mine:
            continue
        row: dict[str, Any] = {"seeds": len(mine), "minutes_per_run": float(np.mean([r["seconds"] for r in mine]) / 60)}
        for split in SPLITS:
            overall = reports.over_seeds([r[split]["overall"] for r in mine])
            row[split] = {
                "overall_mean": overall.mean, "overall_std": overall.std, "per_seed": overall.per_seed,
                "categories": {c: float(np.mean([r[split]["categories"][c]["accuracy"] for r in mine]))
                               for c in CATEGORIES if c in mine[0][split]["categories"]},
                **{k: reports.mean_present([r[split].get(k) for r in mine])
                   for k in ("partial", "feature_distance", "diversity", "kl_to_base", "extra_objects")},
            }
            relations = [r[split].get("relations") for r in mine]
            if all(relations):
                row[split]["relations"] = {k: float(np.mean([x[k] for x in relations])) for k in relations[0]}
            if base is not None:
                row[split]["gain"] = float(overall.mean - base[split]["overall"])
        if agent != BASE:
            row["curve_mean"], row["curve_std"] = reports.curve_stats([r["curve"] for r in mine])
            row["learning_rate"] = mine[0]["learning_rate"]
            row["updates"] = reports.mean_present([r.get("updates") for r in mine])
            curves = [r.get("eval_curve") or [] for r in mine]
            if all(curves):
                row["eval_samples"] = [p["samples"] for p in curves[0]]
                row["eval_curve_mean"], row["eval_curve_std"] = reports.curve_stats(
                    [[p["overall"] for p in c] for c in curves])
                row["samples_to_score"] = samples_to_score(curves)
        table[agent] = row
    return table


def markdown(data: dict[str, Any], name: str) -> str:
    from ddpo_env.scenes import CATEGORIES, HELDOUT_CATEGORIES

    table, settings, env_info = data["table"], data["settings"], data["environment"]
    floor = data["renders"]
    lines = [
        "# RL on a compositional task with a verifiable reward\n",
        *reports.provenance(env_info, data["settings_from"]),
        f"The shapes model fine-tuned with the `{data['reward']}` reward ({REWARDS[data['reward']]}) on the "
        f"{_trained_on(data.get('categories'))}; {settings['epochs']} epochs × {settings['samples_per_epoch']}"
        f" samples per run, " + ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("epochs",)) + ". "
        f"Scores: the verifier's binary accuracy, the mean over GenEval categories, on {data['eval_prompts']['train']} "
        f"training prompts × {data['eval_seeds']} samples with the same seeds for every row; mean ± std over seeds. "
        f"Held-out: {data['eval_prompts']['heldout']} prompts whose colour–shape pairs or counts neither the model "
        "nor RL saw.\n",
        "*Extra objects*: objects found beyond the number the prompt names, per image (outside counting the verdict "
        "accepts them, as GenEval's does).\n",
        "| agent | training prompts | gain | held-out prompts | held-out gain | feature distance to renders | "
        "diversity | extra objects | KL to base | lr | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, row in table.items():
        t, h = row["train"], row["heldout"]
        lines.append(
            f"| {LABELS.get(agent, agent)} ({row['seeds']}) | {t['overall_mean']:.1%} ± {t['overall_std']:.1%} | "
            f"{_signed(t.get('gain'))} | {h['overall_mean']:.1%} ± {h['overall_std']:.1%} | {_signed(h.get('gain'))} "
            f"| {t['feature_distance']:.2f} | {t['diversity']:.2f} | {reports.cell(t.get('extra_objects'), '.2f')} | "
            f"{reports.cell(t['kl_to_base'], '.3g')} | "
            f"{reports.cell(row.get('learning_rate'), 'g')} | {row['minutes_per_run']:.1f} |")
    extra = reports.cell(floor["train"].get("extra_objects"), ".2f")
    lines.append(f"| generator renders | 100 % | | 100 % | | {floor['train']['feature_distance']:.2f} (floor) | "
                 f"{floor['train']['diversity']:.2f} | {extra} | | | |")
    for split, categories in (("train", CATEGORIES), ("heldout", HELDOUT_CATEGORIES)):
        lines += [f"\n## Per category, {'training' if split == 'train' else 'held-out'} prompts\n",
                  "| agent | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
        for agent, row in table.items():
            cells = [reports.cell(row[split]["categories"].get(c), ".0%") for c in categories]
            lines.append(f"| {LABELS.get(agent, agent)} | " + " | ".join(cells) + " |")
    lines += _relation_table(table)
    lines += _samples_to_score_table(data)
    lines += _word_use_table(data)
    lines += [*reports.wall_time(env_info), f"\n![{_curve_name(table)}]({name}_curves.png)\n",
              f"![before and after]({name}_grid.png)\n"]
    return "\n".join(lines)


def _samples_to_score_table(data: dict[str, Any]) -> list[str]:
    """Samples (and minutes of training) to a score, from the runs' evaluation curves (none: no section)."""
    from benchmarks import samples_to_score as sts

    table = {a: r["samples_to_score"] for a, r in data["table"].items() if "samples_to_score" in r}
    if not table:
        return []
    lines = ["\n## Samples to score\n",
             f"Training samples until the evaluation score (one sample per training prompt, the test seeds, every "
             f"{data.get('curve_every', 0)} epochs) first reaches each threshold: the median over seeds, an unreached "
             "seed counted as never (so *not reached* when half of them never got there), with minutes of training "
             "(evaluations left out) and the seeds that reached it.\n", *sts.markdown(table, LABELS)]
    ratio = data.get("efficiency")
    if ratio:
        lines.append("")
        for agent, r in ratio.items():
            lines.append(f"* {LABELS.get(agent, agent)} to GRPO's final evaluation score ({r['score']:.1%}): "
                         f"{sts.ratio_text(r, 'GRPO')}.")
    return lines


def _word_use_table(data: dict[str, Any]) -> list[str]:
    """The word-use check of the base model and each agent's seed-0 policy (none measured: no section)."""
    rows = [(r["agent"], r["word_use"]) for r in data["runs"] if r.get("word_use")]
    if not rows:
        return []
    kinds = [w["kind"] for w in rows[0][1]]
    order = list(dict.fromkeys(["base", *data["table"]]))
    rows.sort(key=lambda row: order.index(row[0]) if row[0] in order else len(order))
    lines = ["\n## Which words the policies use\n",
             "The change of the network's prediction when one word of a training prompt is swapped (`ddpo diagnose "
             "words`), relative to the prediction, for the base model and each agent's seed-0 policy after training: "
             "RL that taught the relation would raise its column.\n",
             "| policy | " + " | ".join(f"{w['kind']} ({w['swap']})" for w in rows[0][1]) + " |",
             "|---|" + "---|" * len(kinds)]
    for agent, words in rows:
        lines.append(f"| {LABELS.get(agent, agent)} | " + " | ".join(f"{100 * w['prediction_change']:.2f} %"
                                                                   for w in words) + " |")
    return lines


def _curve_name(table: dict[str, Any]) -> str:
    return "evaluation score" if any("eval_curve_mean" in r for r in table.values()) else "training reward"


def _relation_table(table: dict[str, Any]) -> list[str]:
    """Why position samples fail: both groups missing, or the relation itself (none for runs measured without it)."""
    rows = [(agent, row) for agent, row in table.items() if all("relations" in row[s] for s in SPLITS)]
    if not rows:
        return []
    from benchmarks.scene_metrics import RELATIONS_NOTE

    lines = ["\n## What fails in the position category\n", RELATIONS_NOTE,
             "| agent | both found, training | relation holds | opposite holds | both found, held-out | relation holds "
             "| opposite holds |", "|---|---|---|---|---|---|---|"]
    for agent, row in rows:
        cells = [f"{row[s]['relations'][k]:.0%}" for s in SPLITS
                 for k in ("both_found", "relation_given_both", "opposite_given_both")]
        lines.append(f"| {LABELS.get(agent, agent)} | " + " | ".join(cells) + " |")
    return lines


def _trained_on(categories: list[str] | None) -> str:
    from ddpo_env.scenes import prompt_set

    if not categories:
        return f"{len(prompt_set('train'))} training prompts"
    return (f"{len(training_prompts(categories))} training prompts of {', '.join(categories)} only (evaluated on "
            "every category)")


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} pts"


def plot_curves(table: dict[str, Any], samples_per_epoch: int, reward: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    evaluation = any("eval_curve_mean" in row for row in table.values())  # then the evaluation score, not the reward
    for agent, row in table.items():
        if evaluation and BASE in table and agent == BASE:
            ax.axhline(row["train"]["overall_mean"], color="gray", linestyle=":", label="base model")
        key = "eval_curve" if evaluation else "curve"
        if f"{key}_mean" not in row:
            continue
        mean, std = np.array(row[f"{key}_mean"]), np.array(row[f"{key}_std"])
        samples = (np.array(row["eval_samples"]) if evaluation
                   else samples_per_epoch * np.arange(1, len(mean) + 1))
        ax.plot(samples, mean, label=LABELS.get(agent, agent))
        ax.fill_between(samples, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("samples")
    ax.set_ylabel("evaluation accuracy (training prompts, test seeds)" if evaluation
                  else f"{reward} reward (training rollouts)", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_grid(grid_images: dict[str, np.ndarray], columns: list[tuple[str, int]], path: Path) -> None:
    """Rows: the base model, then each agent's seed-0 run; columns: prompts (split, index in its prompt set); every
    cell captioned with the verifier's verdict (the first row also with the prompt)."""
    from PIL import Image

    from ddpo_env.images import captioned_grid
    from ddpo_env.scenes import prompt_set
    from rewards.geneval import verify

    prompts = [prompt_set(split)[i] for split, i in columns]
    rows = [a for a in LABELS if a in grid_images]
    images, captions = [], []
    for agent in rows:
        verdicts = verify(grid_images[agent], prompts)
        images.append(grid_images[agent])
        captions += [(f"{'[held-out] ' if split == 'heldout' else ''}{p}\n" if agent == rows[0] else "")
                     + f"{LABELS[agent]}: {v.caption}" for (split, _), p, v in zip(columns, prompts, verdicts,
                                                                                   strict=True)]
    Image.fromarray(captioned_grid(np.concatenate(images), captions, cols=len(prompts))).save(path)


def write_reports(data: dict[str, Any], grid_images: dict[str, np.ndarray], results_dir: Path, name: str) -> str:
    """The markdown report (written and printed), curves, grid and summary figures; returns the markdown."""
    table = data["table"]
    plot_curves(table, data["settings"]["samples_per_epoch"], data["reward"], results_dir / f"{name}_curves.png")
    if grid_images:
        save_grid(grid_images, [tuple(c) for c in data["grid_columns"]], results_dir / f"{name}_grid.png")
    text = markdown(data, name)
    reports.write_report(results_dir, name, text)
    trained = {a: r["train"]["overall_mean"] for a, r in table.items() if a != BASE}
    if trained and name == AGENTS_TABLE:
        best = max(trained, key=trained.get)
        keys = {"compositional_best_agent": (best, f"highest mean accuracy on the training prompts, {data['reward']} "
                                             "reward, test set"),
                "compositional_best_score": (trained[best], "its accuracy, mean over seeds")}
        steps = {a: {t: c["median_samples"] for t, c in r["samples_to_score"].items()}
                 for a, r in table.items() if "samples_to_score" in r}
        if steps:
            keys["samples_to_score"] = (steps, "median training samples to first reach each evaluation accuracy "
                                               "(None: not reached by the median seed)")
        nft = (data.get("efficiency") or {}).get("diffusion-nft")
        if nft:
            keys["nft_vs_grpo_samples_ratio"] = (nft["ratio"], f"GRPO's samples / DiffusionNFT's to reach GRPO's final "
                                                               f"evaluation accuracy {nft['score']:.3f}")
        update_summary(keys, reports.summary_env(data["environment"]), results_dir)
    if BASE in table and trained and name == "compositional":
        update_summary({
            "compositional_base_score": (table[BASE]["train"]["overall_mean"],
                                         "GenEval-style accuracy of the shapes model, training prompts"),
            "compositional_trained_score": (trained, "after RL with the geneval reward, mean over seeds"),
            "compositional_heldout_gain": ({a: r["heldout"]["gain"] for a, r in table.items() if a != BASE},
                                           "held-out accuracy after − before (fraction)"),
        }, reports.summary_env(data["environment"]), results_dir)
    return text
