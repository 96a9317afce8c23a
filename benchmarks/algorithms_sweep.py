"""The algorithms benchmark's learning-rate sweep (``python -m benchmarks.algorithms --sweep``): its grid, the rate it
picks per agent for the main run, where the main run's rates came from (``settings_from``), and its report.

The sweep trains on its own seed (:data:`SWEEP_SEED`) but scores every rate on the job's fixed evaluation set, the
same 100 prompts and sampling seeds the main run reports: the main run's rates are chosen on its test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import SettingsSource
from benchmarks.reports import cell, provenance

LABELS = {"ddpo-is": "DDPO-IS", "ddpo-sf": "DDPO-SF", "rwr": "RWR", "rwr-sparse": "RWR sparse"}
SWEEP_SEED = 100  # the learning-rate sweep's seed: never one of the reported runs' (0, 1, 2, ...)
SWEEP_RATES = (1e-3, 3e-3, 1e-2)
SWEEP_REWARD = "jpeg_compressibility"
#: The main run's rate for an agent is its best sweep rate among those that keep this share of the digits readable
#: (make train's floor): a rate that gains reward by destroying the model is not the algorithm doing better.
MIN_AGREEMENT = 0.8


def run_gain(run: dict[str, Any]) -> float:
    """A run's evaluation gain in units of the untrained model's per-sample std."""
    before = run["eval_before"]
    return float((np.mean(run["eval_after"]) - np.mean(before)) / max(np.std(before), 1e-12))


def best_rates(sweep_json: Path, min_agreement: float | None = None) -> dict[str, float]:
    """Per agent, the learning rate with the best mean evaluation gain over the sweep's rewards among the rates that
    keep at least ``min_agreement`` of the digits readable (default :data:`MIN_AGREEMENT`; rates without a digit
    measure qualify). When no rate qualifies, the one that keeps the most digits."""
    if not sweep_json.is_file():
        return {}
    floor = MIN_AGREEMENT if min_agreement is None else min_agreement
    runs = json.loads(sweep_json.read_text(encoding="utf-8"))["runs"]
    best: dict[str, float] = {}
    for agent in {r["agent"] for r in runs}:
        gains: dict[float, list[float]] = {}
        kept: dict[float, list[float]] = {}
        for r in runs:
            if r["agent"] == agent:
                gains.setdefault(r["learning_rate"], []).append(run_gain(r))
                if r.get("agreement_after") is not None:
                    kept.setdefault(r["learning_rate"], []).append(r["agreement_after"])
        fine = [rate for rate in gains if rate not in kept or np.mean(kept[rate]) >= floor]
        if fine:
            best[agent] = max(fine, key=lambda k: np.mean(gains[k]))
        else:
            best[agent] = max(kept, key=lambda k: np.mean(kept[k]))
    return best


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
    """Per agent × learning rate: the evaluation gain (initial stds) per reward."""
    table: dict[str, Any] = {}
    for r in runs:
        row = table.setdefault(r["agent"], {}).setdefault(str(r["learning_rate"]), {})
        row[r["reward"]] = {"gain_in_initial_std": run_gain(r), "agreement_after": r.get("agreement_after"),
                            "clip_fraction": r.get("clip_fraction"), "kl_to_base": r.get("kl_to_base")}
    return table


def rates_source(sweep: bool, sweep_json: Path, chosen: dict[str, float], agents: list[str]) -> SettingsSource:
    """Where a grid's learning rates came from: for the sweep, nowhere (it reports every rate); for the main run, the
    sweep in ``sweep_json`` (its ``chosen`` rates), scored on the evaluation set the main run reports, or the
    defaults for the agents it has no rate for."""
    if sweep:
        return SettingsSource("none", f"every rate is reported; the main run takes its rates from this sweep, which "
                                      f"trains on seed {SWEEP_SEED} but scores the same 100 evaluation prompts and "
                                      "sampling seeds the main run reports.")
    defaults = [a for a in agents if a not in chosen]
    if len(defaults) == len(agents):
        return SettingsSource("none", f"no sweep at {sweep_json}: every agent at its default learning rate; the other "
                                      "settings fixed in advance (PRESETS, AGENT_SETTINGS).")
    rest = f"; {', '.join(defaults)} at the default rate (not in the sweep)" if defaults else ""
    return SettingsSource("test", f"learning rates from the sweep {sweep_json.name} (training seed {SWEEP_SEED}, not a "
                                  "reported seed, but scored on the same 100 evaluation prompts and sampling seeds as "
                                  f"these runs; best gain keeping ≥ {MIN_AGREEMENT:.0%} of the digits readable){rest}; "
                                  "the other settings fixed in advance (PRESETS, AGENT_SETTINGS).")


def sweep_markdown(data: dict[str, Any], chosen: dict[str, float]) -> str:
    table, settings = data["table"], data["settings"]
    rewards = sorted({reward for rates in table.values() for row in rates.values() for reward in row})
    lines = [f"# Learning-rate sweep of the algorithms benchmark (seed {SWEEP_SEED})\n",
             *provenance(data["environment"], data["settings_from"]),
             "Evaluation gain in initial stds (digits read as prompted after training, KL to the base model per step) "
             "per agent and learning rate; "
             "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f". The main benchmark takes, per "
             f"agent, the rate with the best mean gain among those that keep ≥ {MIN_AGREEMENT:.0%} of the digits "
             "readable (**bold**).\n",
             "| agent | lr | " + " | ".join(rewards) + " | mean gain |", "|---|---|" + "---|" * (len(rewards) + 1)]
    for agent, rates in table.items():
        for rate, row in sorted(rates.items(), key=lambda kv: float(kv[0])):
            gains = [row[w]["gain_in_initial_std"] for w in rewards if w in row]
            cells = [f"{row[w]['gain_in_initial_std']:+.2f} ({cell(row[w]['agreement_after'], '.0%')}, "
                     f"KL {cell(row[w]['kl_to_base'], '.2g')})" if w in row else "–" for w in rewards]
            shown = f"**{float(rate):g}**" if chosen.get(agent) == float(rate) else f"{float(rate):g}"
            lines.append(f"| {LABELS.get(agent, agent)} | {shown} | " + " | ".join(cells)
                         + f" | {np.mean(gains):+.2f} |")
    return "\n".join(lines) + "\n"
