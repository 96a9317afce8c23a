"""Where benchmark numbers go: a results file per benchmark and one summary.json of headline figures.

Every figure is stored with the command that produced it, the date, the machine and the git revision, so any
number in the README can be traced to a rerunnable command.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "diffusers", "transformers", "gymnasium", "stable-baselines3", "peft", "numpy")


def git_revision() -> str:
    """The current commit (with "-dirty" when the tree has uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        # results written by an earlier benchmark in the same session do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reruns ``module`` with ``argv`` (the process's own arguments when None)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *args])


def machine() -> str:
    """One line: CPU count, torch threads, GPU if any."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}"


def environment(command: str) -> dict[str, Any]:
    """Machine, package versions, git revision, date and the command that reproduces this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
        "packages": versions,
        "git_revision": git_revision(),
        "command": command,
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(f.name, path)


def update_summary(figures: dict[str, tuple[Any, str]], env: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    """Merge headline figures {key: (value, unit)} into results/summary.json, each with its provenance."""
    path = Path(results_dir) / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for key, (value, unit) in figures.items():
        summary[key] = {
            "value": value,
            "unit": unit,
            "command": env["command"],
            "date": env["date"],
            "machine": env["machine"],
            "git_revision": env["git_revision"],
        }
    write_json(path, dict(sorted(summary.items())))
