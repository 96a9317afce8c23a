"""One runner for every benchmark grid of training jobs (agents × settings × seeds).

A benchmark describes its grid as a :class:`Grid`: its :class:`Job` s (an id and the picklable arguments of one
job), the module-level function that runs one job in a worker (``work(args, run_dir) -> record``), the record fields
that name a job (``key_fields``: how ``--resume`` finds a finished one) and :class:`SettingsSource`, which split of
prompts and seeds its settings were chosen on. :class:`GridRun` does the rest:

* one process per job from a spawn pool (``--workers``; ``maxtasksperchild=1``: a fresh interpreter for every job,
  nothing inherited; ``--threads`` torch threads each);
* a run folder per job, ``<runs-dir>/<grid name>/<job id>/`` (default ``runs/benchmarks/``, git-ignored): the job's
  stdout and stderr go to ``job.log`` there (a failed job's error names it), its training output to ``output/``,
  removed after a job succeeds unless ``--keep-outputs``; a job's folder is emptied when the job starts;
* the results JSON, ``<results-dir>/<grid name>.json``, rewritten after every finished job: the benchmark's own
  fields (``document``), ``settings_from`` and ``environment`` (:mod:`benchmarks.record`'s provenance, with
  ``runs_planned``, ``runs_missing``, ``wall_minutes``, ``runs_timed`` and ``wall_minutes_total``); ``--resume``
  keeps its finished jobs and runs the rest (refused when the grid's ``signature`` differs from the saved one),
  ``--report-only`` runs nothing and rewrites the reports from it.

What the grids' reports share (the provenance header with the ``settings_from`` line, wall time, the aggregation
over seeds) is in :mod:`benchmarks.reports`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.record import RESULTS_DIR, environment, write_json

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "benchmarks"
LOG = "job.log"  # a job's stdout and stderr, in its run folder
OUTPUT = "output"  # a job's training output_dir, in its run folder

#: What ``SettingsSource.split`` can say: the prompts and seeds a grid's settings were chosen on.
SPLITS = {
    "test": "the evaluation set this grid reports",
    "validation": "prompts or seeds kept apart from the ones this grid reports",
    "train": "the training prompts and rewards only",
    "none": "nothing: the settings were fixed in advance, or every setting is reported",
}


@dataclass(frozen=True)
class SettingsSource:
    """Which split of prompts/seeds chose a grid's settings (:data:`SPLITS`), and how, in a sentence."""

    split: str
    how: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"SettingsSource split {self.split!r}: use one of {', '.join(SPLITS)}")
        if not self.how.strip():
            raise ValueError("SettingsSource needs `how`: the sweep, seeds and prompts that chose the settings")

    def to_json(self) -> dict[str, str]:
        return {"split": self.split, "chosen_on": SPLITS[self.split], "how": self.how}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> SettingsSource:
        return cls(data["split"], data["how"])

    def line(self) -> str:
        """The report's line."""
        return f"Settings chosen on: {SPLITS[self.split]} (`{self.split}`): {self.how}\n"


@dataclass(frozen=True)
class Job:
    """One training job of a grid: ``id`` (unique in the grid; its run folder and its key in the results JSON, see
    :func:`job_id`) and ``args``, the picklable arguments of the grid's ``work`` function."""

    id: str
    args: Any


def job_id(*parts: Any) -> str:
    """A job's id from the values that name it: floats as ``format(x, "g")``, joined by ``|``."""
    return "|".join(format(p, "g") if isinstance(p, float) else str(p) for p in parts)


def folder_name(identifier: str) -> str:
    """A job id as a folder name: runs of characters other than letters, digits and ``.=+-`` become ``_``."""
    return re.sub(r"[^\w.=+-]+", "_", identifier).strip("_") or "_"


@dataclass
class Grid:
    """A benchmark's grid of jobs.

    Args:
        name: the results file stem (``<results-dir>/<name>.json``) and the run folder (``<runs-dir>/<name>/``).
        work: a module-level function (the workers import it by name) that runs one job in its worker process:
            ``work(job.args, run_dir) -> record`` (a picklable dict). Its output goes to the job's log.
        jobs: every job of the grid, in the order they start.
        key_fields: the record's fields whose values name its job: ``job_id(*(record[f] for f in key_fields))`` is
            the job's id.
        settings_from: which prompts and seeds chose the settings, recorded in the JSON and the report.
        signature: values the saved JSON must hold for ``--resume`` to add to it (a mismatch is refused).
        saved_signature: reads the signature from a saved JSON (default: its values under the same keys), e.g.
            with defaults for files written before a field existed.
    """

    name: str
    work: Callable[[Any, Path], dict[str, Any]]
    jobs: Sequence[Job]
    key_fields: tuple[str, ...]
    settings_from: SettingsSource
    signature: dict[str, Any] = field(default_factory=dict)
    saved_signature: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if "<" in getattr(self.work, "__qualname__", "<"):
            raise ValueError(f"Grid {self.name!r}: work must be a module-level function (the workers import it by "
                             f"name), not {self.work!r}")
        ids = [job.id for job in self.jobs]
        folders = [folder_name(i) for i in ids]
        if len(set(folders)) != len(folders):
            same = sorted({i for i, f in zip(ids, folders, strict=True) if folders.count(f) > 1})
            raise ValueError(f"Grid {self.name!r}: jobs {same} share an id or a run folder: give them distinct ids")

    def key(self, record: Mapping[str, Any]) -> str:
        """The id of the job that wrote ``record``."""
        return job_id(*(record[f] for f in self.key_fields))


class JobFailed(RuntimeError):
    """A job of a grid raised: the message names the job, the error and its log."""


class ResumeMismatch(ValueError):
    """``--resume`` of a results JSON that was run with other settings."""


def add_arguments(parser: argparse.ArgumentParser, name: str, workers: int = 2, name_help: str | None = None) -> None:
    """The grid options every benchmark takes: --workers, --threads, --resume, --report-only, --results-dir,
    --runs-dir, --keep-outputs and --name (default ``name``; ``name_help`` for what else it names)."""
    parser.add_argument("--workers", type=int, default=workers, help="jobs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished jobs of the results JSON and run the rest")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the reports from the jobs in the results JSON (e.g. of an unfinished "
                             "grid; --resume later runs the rest)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--runs-dir", default=str(RUNS_DIR),
                        help="each job's folder is RUNS_DIR/NAME/JOB: its log (job.log) and, with --keep-outputs, "
                             "its training output")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep each job's training output (checkpoints, weights, logs) in its run folder")
    parser.add_argument("--name", default=name, help=name_help or "results file stem: NAME.json, NAME.md, ...")


class GridRun:
    """A grid's invocation: the finished jobs kept from its results JSON, the jobs still to run and the provenance.

    ``options`` is the parsed :func:`add_arguments` namespace; ``command`` reruns the invocation
    (:func:`benchmarks.record.command_line`). Raises :class:`ResumeMismatch` for ``--resume`` of a grid saved with
    another signature, and ``FileNotFoundError`` for ``--report-only`` without results."""

    def __init__(self, grid: Grid, options: argparse.Namespace, command: str) -> None:
        if options.workers < 1 or options.threads < 1:
            raise ValueError(f"--workers and --threads must be >= 1, got {options.workers} and {options.threads}")
        self.grid, self.options = grid, options
        self.path = Path(options.results_dir) / f"{grid.name}.json"
        self.runs_dir = Path(options.runs_dir) / folder_name(grid.name)
        env = environment(command)
        env["machine"] += f"; {_count(options.workers, 'worker')} × {_count(options.threads, 'thread')}"
        self.finished: dict[str, dict[str, Any]] = {}
        self.earlier_minutes = 0.0  # wall time of the invocations whose jobs are kept
        if (options.resume or options.report_only) and self.path.exists():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if options.resume:
                self._check_signature(saved)
            self.finished = {grid.key(r): r for r in saved["runs"]}
            saved_env = saved["environment"]
            self.earlier_minutes = saved_env.get("wall_minutes_total", saved_env.get("wall_minutes", 0.0))
            if options.report_only:
                env = {**saved_env, "report_command": env["command"]}
            elif self.earlier_minutes:
                env["wall_minutes_total"] = self.earlier_minutes
        elif options.report_only:
            raise FileNotFoundError(f"--report-only: no results at {self.path}; run the grid first (or give its "
                                    "--name and --results-dir)")
        self.pending = [] if options.report_only else [j for j in grid.jobs if j.id not in self.finished]
        env["runs_planned"], env["runs_missing"] = len(grid.jobs), sum(j.id not in self.finished for j in grid.jobs)
        self.environment = env

    @classmethod
    def from_args(cls, grid: Grid, options: argparse.Namespace, parser: argparse.ArgumentParser,
                  command: str) -> GridRun:
        """:class:`GridRun`, with its errors given as the parser's (usage, message, exit 2)."""
        try:
            return cls(grid, options, command)
        except (ResumeMismatch, FileNotFoundError, ValueError) as e:
            parser.error(str(e))

    def _check_signature(self, saved: dict[str, Any]) -> None:
        mine = json.loads(json.dumps(self.grid.signature))
        read = self.grid.saved_signature or (lambda data: {k: data.get(k) for k in self.grid.signature})
        theirs = read(saved)
        if mine != theirs:
            raise ResumeMismatch(f"--resume: {self.path} was run with other settings ({theirs}, now {mine}): give "
                                 "this run another --name, or drop --resume to start over")

    def records(self) -> list[dict[str, Any]]:
        return list(self.finished.values())

    def save(self, document: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
        """Write the results JSON: ``document(records)`` (the benchmark's fields, its ``runs`` among them), then
        ``settings_from`` and ``environment``; returns what it wrote."""
        data = {**document(self.records()), "settings_from": self.grid.settings_from.to_json(),
                "environment": self.environment}
        write_json(self.path, data)
        return data

    def run(self, document: Callable[[list[dict[str, Any]]], dict[str, Any]],
            collect: Callable[[Job, dict[str, Any]], dict[str, Any]] | None = None,
            describe: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
        """Run the pending jobs and save after each; returns the results as last written.

        ``collect(job, result)`` turns a worker's result into the record kept (in this process, e.g. scores that
        need a model loaded once); ``describe(record)`` is its progress line. A failed job stops the grid with
        :class:`JobFailed` (the finished jobs stay saved: ``--resume`` runs the rest)."""
        opts = self.options
        print(f"{len(self.pending)} runs to do ({len(self.finished)} kept), {_count(opts.workers, 'worker')} × "
              f"{_count(opts.threads, 'thread')}", flush=True)
        jobs = {job.id: job for job in self.pending}
        start = time.perf_counter()
        if jobs:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            tasks = [(self.grid.work, job, self.runs_dir / folder_name(job.id), opts.threads, opts.keep_outputs)
                     for job in self.pending]
            # spawn: fresh interpreters, no torch thread pool or RNG state inherited; one job per process
            with mp.get_context("spawn").Pool(opts.workers, maxtasksperchild=1) as pool:
                for identifier, result, error in pool.imap_unordered(_run_job, tasks):
                    job = jobs[identifier]
                    if error is not None:
                        raise JobFailed(f"job {identifier!r} of grid {self.grid.name!r} failed: {error}; its output "
                                        f"and traceback are in {self.runs_dir / folder_name(identifier) / LOG}. The "
                                        f"{len(self.finished)} finished jobs are kept in {self.path}: fix the cause "
                                        "and rerun with --resume to run the rest")
                    record = collect(job, result) if collect else result
                    if self.grid.key(record) != identifier:
                        raise ValueError(f"grid {self.grid.name!r}: job {identifier!r} returned a record of "
                                         f"{self.grid.key(record)!r}: its key_fields {self.grid.key_fields} must "
                                         "give the job's id")
                    self.finished[identifier] = record
                    self.environment["runs_missing"] -= 1
                    if describe:
                        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {describe(record)}", flush=True)
                    self.save(document)
            minutes = round((time.perf_counter() - start) / 60, 1)
            self.environment.update(wall_minutes=minutes, runs_timed=len(jobs),
                                    wall_minutes_total=round(self.earlier_minutes + minutes, 1))
        return self.save(document)


def _run_job(task: tuple[Callable[[Any, Path], dict[str, Any]], Job, Path, int, bool]
             ) -> tuple[str, dict[str, Any] | None, str | None]:
    """In a worker: one job in its emptied run folder, its output to the log; (id, record, None) or (id, None,
    the error's last line)."""
    import torch

    work, job, run_dir, threads, keep_outputs = task
    torch.set_num_threads(threads)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with captured(run_dir / LOG):
        try:
            record = work(job.args, run_dir)
        except (Exception, SystemExit) as e:
            traceback.print_exc()
            return job.id, None, f"{type(e).__name__}: {e}".strip()
        if not keep_outputs and (run_dir / OUTPUT).exists():
            shutil.rmtree(run_dir / OUTPUT)
            print(f"\n(benchmarks.harness: {run_dir / OUTPUT} removed after the job; --keep-outputs keeps it)")
    return job.id, record, None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


@contextlib.contextmanager
def captured(path: Path) -> Iterator[None]:
    """Everything written to stdout and stderr in this block, by Python or by native code, goes to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def output_dir(run_dir: Path) -> str:
    """Where a job in ``run_dir`` writes its training output (the TrainConfig's ``output_dir``)."""
    return str(run_dir / OUTPUT)


def settings_with(preset: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """A copy of a preset's job settings with the overrides that are given (not None); ``num_envs`` and
    ``batch_size`` at most ``samples_per_epoch`` (a smaller rollout takes them down with it)."""
    settings = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("num_envs", "batch_size"):
        if key in settings:
            settings[key] = min(settings[key], settings["samples_per_epoch"])
    return settings
