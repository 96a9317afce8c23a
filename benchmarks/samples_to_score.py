"""Samples-to-score: how many training samples (and seconds of training) an agent needs before its evaluation score
first reaches a threshold, from the evaluation curves of its runs (:class:`benchmarks.compositional_task.
EvaluationCurve`: the verifier's accuracy on one sample per training prompt at the test seeds, every few epochs).

Per threshold and agent: each seed's samples and seconds at its first evaluation at or above the threshold (None: the
run never reached it), how many seeds reached it, and the median over seeds with an unreached seed counted as
infinite (so the median is None when half or more of the seeds never reach it). The efficiency ratio of two agents
at a score: the median samples of one to reach it over the other's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Evaluation scores (binary accuracy, mean over categories) the reports ask about: the shapes model starts at
#: about 56 % on its training prompts and the best 40-epoch runs end near 70 %.
THRESHOLDS = (0.60, 0.65, 0.70)


def first_reaching(points: Sequence[dict[str, float]], threshold: float, key: str = "overall"
                   ) -> dict[str, float] | None:
    """The first curve point whose ``key`` is at least ``threshold`` (None: none is)."""
    return next((p for p in points if p[key] >= threshold - 1e-12), None)


def median_with_misses(values: Sequence[float | None]) -> float | None:
    """The median of ``values`` with None counted as +∞; None when that median is infinite."""
    if not values:
        return None
    median = float(np.median([np.inf if v is None else v for v in values]))
    return None if not np.isfinite(median) else median


def samples_to_score(curves: Sequence[Sequence[dict[str, float]]], thresholds: Sequence[float] = THRESHOLDS,
                     key: str = "overall") -> dict[str, dict[str, Any]]:
    """Per threshold (as a string, e.g. "0.65"): each seed's samples and seconds to reach it (its points' ``key``),
    the seeds that did, and the medians (:func:`median_with_misses`)."""
    table = {}
    for threshold in thresholds:
        hits = [first_reaching(points, threshold, key) for points in curves]
        samples = [None if h is None else float(h["samples"]) for h in hits]
        seconds = [None if h is None else float(h["seconds"]) for h in hits]
        table[f"{threshold:g}"] = {"samples": samples, "seconds": seconds, "reached": sum(h is not None for h in hits),
                                   "seeds": len(hits), "median_samples": median_with_misses(samples),
                                   "median_seconds": median_with_misses(seconds)}
    return table


def final_score(curves: Sequence[Sequence[dict[str, float]]], key: str = "overall") -> float:
    """The mean over seeds of the last evaluation of each curve."""
    return float(np.mean([points[-1][key] for points in curves]))


def efficiency_ratio(reference: Sequence[Sequence[dict[str, float]]], other: Sequence[Sequence[dict[str, float]]],
                     key: str = "overall") -> dict[str, Any]:
    """How many times fewer samples ``other`` needs than ``reference`` to reach the reference's final score (the mean
    of its seeds' last evaluations): ratio = median samples of the reference / median samples of the other (None when
    the other's median never gets there)."""
    target = final_score(reference, key)
    ref = samples_to_score(reference, [target], key)[f"{target:g}"]
    mine = samples_to_score(other, [target], key)[f"{target:g}"]
    ratio = (None if mine["median_samples"] is None or ref["median_samples"] is None
             else ref["median_samples"] / mine["median_samples"])
    return {"score": target, "reference_samples": ref["median_samples"], "samples": mine["median_samples"],
            "reached": mine["reached"], "seeds": mine["seeds"], "ratio": ratio}


def ratio_text(r: dict[str, Any], reference: str) -> str:
    """One :func:`efficiency_ratio` in words, against the agent named ``reference``."""
    if r["reference_samples"] is None:
        return f"{reference}'s own median seed never reaches its mean final score, so there is no ratio"
    if r["samples"] is None:
        return f"not reached by the median seed ({r['reached']}/{r['seeds']} seeds)"
    if r["ratio"] == 1:
        return f"as many samples as {reference}"
    if r["ratio"] > 1:
        return f"{r['ratio']:.2f}× fewer samples than {reference}"
    return f"{1 / r['ratio']:.2f}× more samples than {reference}"


def markdown(table: dict[str, dict[str, dict[str, Any]]], labels: dict[str, str], score_format: str = ".0%"
             ) -> list[str]:
    """Per agent and threshold: the median samples and minutes of training, and the seeds that reached it
    (thresholds shown with ``score_format``)."""
    thresholds = list(next(iter(table.values())))
    lines = ["| agent | " + " | ".join(f"to {float(t):{score_format}}: samples (min)" for t in thresholds) + " |",
             "|---|" + "---|" * len(thresholds)]
    for agent, row in table.items():
        cells = []
        for t in thresholds:
            cell = row[t]
            if cell["median_samples"] is None:
                cells.append(f"not reached ({cell['reached']}/{cell['seeds']} seeds)")
            else:
                cells.append(f"{cell['median_samples']:.0f} ({cell['median_seconds'] / 60:.1f}; "
                             f"{cell['reached']}/{cell['seeds']} seeds)")
        lines.append(f"| {labels.get(agent, agent)} | " + " | ".join(cells) + " |")
    return lines
