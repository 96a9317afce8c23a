"""What the grid benchmarks' reports share (:mod:`benchmarks.harness` runs the grids): the provenance header with
the split that chose the settings, the wall-time line, writing a report, the provenance of summary figures, and the
aggregation over seeds (mean, std and the value of each seed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.harness import SettingsSource


def provenance(env: Mapping[str, Any], settings_from: Mapping[str, str] | SettingsSource) -> list[str]:
    """A report's header lines: the command, date, machine and revision of its jobs; the command that rewrote the
    report from saved jobs (``--report-only``); how many jobs are missing; the split that chose the settings."""
    source = settings_from if isinstance(settings_from, SettingsSource) else SettingsSource.from_json(settings_from)
    lines = [f"`{env['command']}` — {env['date']}, {env['machine']}, rev {env['git_revision']}\n"]
    if env.get("report_command"):
        lines.append(f"(This report was written from the saved runs by `{env['report_command']}`.)\n")
    if env.get("runs_missing"):
        lines.append(f"**Partial: {env['runs_planned'] - env['runs_missing']} of {env['runs_planned']} runs "
                     "finished** (`--resume` runs the rest).\n")
    lines.append(source.line())
    return lines


def wall_time(env: Mapping[str, Any]) -> list[str]:
    """The report's wall-time line: this invocation's jobs and, with kept ones, all of them (none when unknown)."""
    total = env.get("wall_minutes_total")
    if "wall_minutes" not in env:
        return [f"\nWall time: {total} min in all for the kept runs."] if total else []
    more = f" ({total} min in all with the kept runs)" if total not in (None, env["wall_minutes"]) else ""
    return [f"\nWall time: {env['wall_minutes']} min for the {env.get('runs_timed', '?')} runs of this "
            f"invocation{more}."]


def write_report(results_dir: Path, name: str, text: str) -> None:
    """Write ``<results_dir>/<name>.md`` and print it."""
    (Path(results_dir) / f"{name}.md").write_text(text, encoding="utf-8")
    print(text)


def summary_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of summary figures: the command that wrote them (``--report-only``'s when it did)."""
    return {**env, "command": env.get("report_command", env["command"])}


class SeedStats(NamedTuple):
    mean: float
    std: float  # population std (ddof 0) over seeds
    per_seed: list[float]


def over_seeds(values: Sequence[float] | np.ndarray) -> SeedStats:
    """Mean, std and the values of one number per seed."""
    array = np.asarray(values, dtype=float)
    return SeedStats(float(array.mean()), float(array.std()), array.tolist())


def curve_stats(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Pointwise mean and std over seeds of equal-length curves."""
    array = np.asarray(curves, dtype=float)
    return array.mean(0).tolist(), array.std(0).tolist()


def mean_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def cell(value: float | None, fmt: str) -> str:
    """A table cell: ``value`` formatted, or – when missing."""
    return "–" if value is None else format(value, fmt)
