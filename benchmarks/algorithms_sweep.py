"""The algorithms benchmark's learning-rate sweep (``python -m benchmarks.algorithms --sweep``): its grid, the rate it
picks per agent and reward for the main run, where the main run's rates came from (``settings_from``), and its report.

The sweep trains on seeds of its own (:data:`SWEEP_SEEDS`, never a reported run's 0, 1, 2, ...) and scores every rate
on the **validation** set: the task's evaluation prompts sampled at :data:`VALIDATION_EVAL_SEED`, other initial noise
and sampling noise than the test set the main run reports (the embedded model has ten prompts, one per digit, so the
split is on seeds). A rate is chosen per agent and per reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.job.config import TrainConfig
from benchmarks.harness import SettingsSource
from benchmarks.reports import cell, mean_present, provenance

LABELS = {"ddpo-is": "DDPO-IS", "ddpo-sf": "DDPO-SF", "rwr": "RWR", "rwr-sparse": "RWR sparse", "awm": "AWM",
          "diffusion-nft": "DiffusionNFT", "ddpo-is-balanced": "DDPO-IS, gradient step weights"}
SWEEP_SEEDS = (100, 101)  # the sweep's training seeds: never one of the reported runs' (0, 1, 2, ...)
TEST_EVAL_SEED = TrainConfig.eval_seed  # the evaluation set the main run reports
VALIDATION_EVAL_SEED = 20_000  # the evaluation set the sweep scores: the same prompts, other noise
#: Each agent's rates: two around the rate the earlier compressibility sweeps chose (DDPO-IS 7e-3, DDPO-SF 6e-3, RWR
#: 3e-3) and, for the matching losses, the rates that won on the shapes task (3e-3) and the one below.
SWEEP_RATES: dict[str, tuple[float, ...]] = {"ddpo-is": (3e-3, 1e-2), "ddpo-sf": (3e-3, 1e-2), "rwr": (1e-3, 3e-3),
                                            "rwr-sparse": (1e-3, 3e-3), "awm": (1e-3, 3e-3),
                                            "diffusion-nft": (1e-3, 3e-3), "ddpo-is-balanced": (1e-3, 3e-3, 1e-2)}
#: The main run's rate for an agent and reward is its best sweep rate among those that keep this share of the digits
#: readable on every sweep seed (make train's floor): a rate that gains reward by destroying the model is not the
#: algorithm doing better.
MIN_AGREEMENT = 0.8


def run_gain(run: dict[str, Any]) -> float:
    """A run's evaluation gain in units of the untrained model's per-sample std."""
    before = run["eval_before"]
    return float((np.mean(run["eval_after"]) - np.mean(before)) / max(np.std(before), 1e-12))


def best_rates(sweep_json: Path, min_agreement: float | None = None) -> dict[str, dict[str, float]]:
    """Per agent and reward, the learning rate with the best mean evaluation gain over the sweep's seeds among the
    rates whose every seed keeps at least ``min_agreement`` of the digits readable (default :data:`MIN_AGREEMENT`;
    rates without a digit measure qualify). When no rate qualifies, the one whose worst seed keeps the most digits."""
    if not sweep_json.is_file():
        return {}
    floor = MIN_AGREEMENT if min_agreement is None else min_agreement
    runs = json.loads(sweep_json.read_text(encoding="utf-8"))["runs"]
    best: dict[str, dict[str, float]] = {}
    for agent, reward in sorted({(r["agent"], r.get("reward", "")) for r in runs}):
        gains: dict[float, list[float]] = {}
        kept: dict[float, list[float]] = {}
        for r in runs:
            if (r["agent"], r.get("reward", "")) == (agent, reward):
                gains.setdefault(r["learning_rate"], []).append(run_gain(r))
                if r.get("agreement_after") is not None:
                    kept.setdefault(r["learning_rate"], []).append(r["agreement_after"])
        fine = [rate for rate in gains if rate not in kept or min(kept[rate]) >= floor]
        best.setdefault(agent, {})[reward] = (max(fine, key=lambda k: np.mean(gains[k])) if fine
                                              else max(kept, key=lambda k: min(kept[k])))
    return best


def floor_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The digits-read floor over seeds: the worst seed's share and how many seeds keep :data:`MIN_AGREEMENT` (none
    when no run measured it)."""
    read = [r["agreement_after"] for r in runs if r.get("agreement_after") is not None]
    return {"agreement_min": float(min(read)), "floor_kept": sum(a >= MIN_AGREEMENT for a in read)} if read else {}


def rate_for(chosen: dict[str, dict[str, float]], agent: str, reward: str, default: float) -> float:
    """The main run's rate for ``agent`` on ``reward``: the sweep's for that reward, else (a sweep of other rewards)
    its rate on the first reward swept, else ``default``."""
    mine = chosen.get(agent, {})
    return mine.get(reward, next(iter(mine.values()), default))


def parse_rates(text: str, agents: list[str]) -> dict[str, list[float]]:
    """``--rates``: ``1e-3,3e-3`` (every agent) or ``ddpo-is=5e-3,rwr=1.5e-3,rwr=2e-3`` (per agent)."""
    rates: dict[str, list[float]] = {}
    for item in text.split(","):
        agent, _, rate = item.rpartition("=")
        for a in [agent] if agent else agents:
            if a not in agents:
                raise SystemExit(f"--rates names agent {a!r}, which is not in --agents {','.join(agents)}")
            rates.setdefault(a, []).append(float(rate))
    return rates


def sweep_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per agent × learning rate × reward: the evaluation gain (initial stds) per seed and its mean, the digits read
    (worst seed and mean), the clip fraction and the KL to the base model (means over seeds)."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        grouped.setdefault((r["agent"], str(r["learning_rate"]), r["reward"]), []).append(r)
    table: dict[str, Any] = {}
    for (agent, rate, reward), mine in grouped.items():
        gains = [run_gain(r) for r in mine]
        table.setdefault(agent, {}).setdefault(rate, {})[reward] = {
            "seeds": [r["seed"] for r in mine], "gain_per_seed": gains, "gain_in_initial_std": float(np.mean(gains)),
            "agreement_min": None, **floor_stats(mine),
            **{key: mean_present([r.get(key) for r in mine]) for key in ("agreement_after", "clip_fraction",
                                                                         "kl_to_base")}}
    return table


def scored_on(sweep_json: Path) -> set[int]:
    """The evaluation seeds the sweep's runs were scored on (a run from before ``eval_seed`` was recorded: the test
    set's, which is what those sweeps used)."""
    runs = json.loads(sweep_json.read_text(encoding="utf-8"))["runs"] if sweep_json.is_file() else []
    return {r.get("eval_seed", TEST_EVAL_SEED) for r in runs}


def rates_source(sweep: bool, sweep_json: Path, chosen: dict[str, dict[str, float]], agents: list[str]
                 ) -> SettingsSource:
    """Where a grid's learning rates came from: for the sweep, nowhere (it reports every rate); for the main run, the
    sweep in ``sweep_json`` (its ``chosen`` rates), on the split its runs were scored on, or the defaults for the
    agents it has no rate for."""
    if sweep:
        return SettingsSource("none", f"every rate is reported; the main run takes its rates from this sweep, which "
                                      f"trains on seeds {', '.join(map(str, SWEEP_SEEDS))} and scores the evaluation "
                                      f"prompts at sampling seed {VALIDATION_EVAL_SEED} (validation), not the seed "
                                      f"{TEST_EVAL_SEED} the main run reports.")
    defaults = [a for a in agents if a not in chosen]
    if len(defaults) == len(agents):
        return SettingsSource("none", f"no sweep at {sweep_json}: every agent at its default learning rate; the other "
                                      "settings fixed in advance (PRESETS, AGENT_SETTINGS).")
    rest = f"; {', '.join(defaults)} at the default rate (not in the sweep)" if defaults else ""
    seeds = scored_on(sweep_json)
    split = "test" if TEST_EVAL_SEED in seeds else "validation"
    where = (f"scored on the evaluation prompts at sampling seed(s) {', '.join(map(str, sorted(seeds)))}"
             + (", the ones these runs report" if split == "test" else f", not the seed {TEST_EVAL_SEED} reported"))
    return SettingsSource(split, f"learning rates from the sweep {sweep_json.name} (training seeds other than the "
                                 f"reported ones, {where}; per agent and reward the best mean gain among the rates "
                                 f"keeping ≥ {MIN_AGREEMENT:.0%} of the digits readable on every seed){rest}; the "
                                 "other settings fixed in advance (PRESETS, AGENT_SETTINGS).")


def sweep_markdown(data: dict[str, Any], chosen: dict[str, dict[str, float]]) -> str:
    table, settings = data["table"], data["settings"]
    rewards = sorted({reward for rates in table.values() for row in rates.values() for reward in row})
    seeds = sorted({s for rates in table.values() for row in rates.values() for c in row.values() for s in c["seeds"]})
    lines = [f"# Learning-rate sweep of the algorithms benchmark (seeds {', '.join(map(str, seeds))})\n",
             *provenance(data["environment"], data["settings_from"]),
             "Evaluation gain in initial stds on the validation set, mean over seeds (each seed's gain; the digits "
             "read as prompted after training, worst seed; KL to the base model per step) per agent and learning "
             "rate; settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ". The main benchmark takes, "
             f"per agent and reward, the rate with the best mean gain among those that keep ≥ {MIN_AGREEMENT:.0%} of "
             "the digits readable on every seed (**bold**).\n",
             "| agent | lr | " + " | ".join(rewards) + " |", "|---|---|" + "---|" * len(rewards)]
    for agent, rates in table.items():
        for rate, row in sorted(rates.items(), key=lambda kv: float(kv[0])):
            cells = []
            for w in rewards:
                if w not in row:
                    cells.append("–")
                    continue
                c = row[w]
                gain = f"{c['gain_in_initial_std']:+.2f}"
                if chosen.get(agent, {}).get(w) == float(rate):
                    gain = f"**{gain}**"
                cells.append(f"{gain} ({', '.join(f'{g:+.2f}' for g in c['gain_per_seed'])}; "
                             f"{cell(c.get('agreement_min'), '.0%')}, KL {cell(c['kl_to_base'], '.2g')})")
            lines.append(f"| {LABELS.get(agent, agent)} | {float(rate):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
