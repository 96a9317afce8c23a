"""Bring the GPU check's files into ``benchmarks/results/``: ``python -m benchmarks.gpu_import FOLDER``.

``benchmarks/gpu_smoke.sh`` runs on a GPU machine that holds a copy of the working tree without this repository's
``.git``, and writes its files into ``$OUT`` there (docs/gpu.md). Once they are back here, in ``FOLDER``, this
copies them under the names the docs cite, with the revision the smoke run was given (``DDPO_REV``, recorded in
``smoke.json``) in place of whatever the copy's own git said, and the device's output folder written as ``$OUT``:

========================  =====================================================
``smoke.json``            ``gpu_smoke.json`` (each section's exit status, seconds; GPU, torch, CUDA)
``smoke.log``             ``gpu_smoke.log`` (everything printed)
``test_gpu.txt``          ``gpu_test.txt`` (tests/test_gpu.py)
``gpu_ratio.json``        ``gpu_ratio.json`` (first-update ratios without the recompute, per step)
``train.json``            ``gpu_train.json`` (``ddpo train`` and ``--resume auto`` on CUDA)
``gpu_<arch>.json/.md``   the same names (``benchmarks.gpu``: samples/s and peak memory)
========================  =====================================================

and merges the headline figures into ``summary.json``: ``gpu_samples_per_s`` and ``gpu_peak_memory_gb`` (as
``benchmarks.gpu`` writes them when it runs here) and ``gpu_first_update_log_ratio_without_recompute`` (per dtype).
A dry run's files (``gpu_smoke.sh --dry-run``, CPU numbers) are refused unless ``--allow-dry-run``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.gpu import summary_figures
from benchmarks.record import RESULTS_DIR, update_summary

RENAMED = {"smoke.json": "gpu_smoke.json", "smoke.log": "gpu_smoke.log", "test_gpu.txt": "gpu_test.txt",
           "gpu_ratio.json": "gpu_ratio.json", "train.json": "gpu_train.json"}
OUT_MARK = "$OUT"


def bench_stems(folder: Path) -> list[str]:
    """The ``benchmarks.gpu`` result stems in ``folder`` (``gpu_sd15``, or ``gpu_tiny`` for a dry run)."""
    return sorted(p.stem for p in folder.glob("gpu_*.json") if p.name not in RENAMED)


def _fixed(text: str, out_dir: str, revision: str, device_revisions: set[str]) -> str:
    for wrong in device_revisions:
        text = text.replace(f'"git_revision": "{wrong}"', f'"git_revision": "{revision}"').replace(
            f"rev {wrong}", f"rev {revision}")
    return text.replace(out_dir, OUT_MARK) if out_dir else text


def import_check(folder: Path, results_dir: Path = RESULTS_DIR, allow_dry_run: bool = False) -> list[Path]:
    """Copy the GPU check's files from ``folder`` into ``results_dir`` (see the module doc); the paths written."""
    smoke_path = folder / "smoke.json"
    if not smoke_path.is_file():
        raise FileNotFoundError(f"{folder} holds no smoke.json: give the folder the GPU check wrote ($OUT)")
    smoke = json.loads(smoke_path.read_text(encoding="utf-8"))
    if smoke.get("dry_run") and not allow_dry_run:
        raise ValueError(f"{smoke_path} is a dry run's (CPU numbers): run gpu_smoke.sh on a GPU, or pass "
                         "--allow-dry-run to import it anyway")
    environment = smoke.get("environment") or {}
    revision = environment.get("git_revision")
    if not revision:
        raise ValueError(f"{smoke_path} names no revision: run gpu_smoke.sh with DDPO_REV=<commit>")
    bench = {f"{stem}{ext}": f"{stem}{ext}" for stem in bench_stems(folder) for ext in (".json", ".md")}
    sources = {**RENAMED, **bench}
    device_revisions = set()
    for name in sources:
        if name.endswith(".json") and (folder / name).is_file():
            found = (json.loads((folder / name).read_text(encoding="utf-8")).get("environment") or {}).get(
                "git_revision")
            if found and found != revision:
                device_revisions.add(found)
    out_dir = _device_out_dir(folder)
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, target in sources.items():
        if (folder / name).is_file():
            text = _fixed((folder / name).read_text(encoding="utf-8"), out_dir, revision, device_revisions)
            (results_dir / target).write_text(text, encoding="utf-8")
            written.append(results_dir / target)
    _summarise(results_dir, bench_stems(folder))
    return written


def _device_out_dir(folder: Path) -> str:
    """The device's ``$OUT``, read off the ``--out <dir>/gpu_ratio.json`` of gpu_ratio's recorded command, or ''."""
    ratio = folder / "gpu_ratio.json"
    command = json.loads(ratio.read_text(encoding="utf-8"))["environment"]["command"] if ratio.is_file() else ""
    return str(Path(command.split("--out ")[1].split()[0]).parent) if "--out " in command else ""


def _summarise(results_dir: Path, stems: list[str]) -> None:
    ratio_path = results_dir / "gpu_ratio.json"
    if ratio_path.is_file():
        ratio = json.loads(ratio_path.read_text(encoding="utf-8"))
        worst = {row["dtype"]: max(row["max_abs_log_ratio"].values()) for row in ratio["combinations"]
                 if row["status"] == "ok" and not row["compile"] and row["max_abs_log_ratio"]}
        if worst:
            s = ratio["settings"]
            update_summary({"gpu_first_update_log_ratio_without_recompute": (
                worst, f"largest |log ratio| of DDPO-IS's first update, log π_old as sampled (batch {s['sample_batch']}"
                       f") and not recomputed in the training shape (batch {s['batch_size']}), {ratio['architecture']}"
                       f" architecture, {s['num_steps']} steps; the clip range is 1e-4, and on CUDA the agents "
                       "recompute by default")}, ratio["environment"], results_dir)
    for stem in stems:
        bench = json.loads((results_dir / f"{stem}.json").read_text(encoding="utf-8"))
        figures = summary_figures(bench["rows"], bench["settings"])
        if figures:
            update_summary(figures, bench["environment"], results_dir)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the GPU check's output folder, as it came back from the device")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--allow-dry-run", action="store_true", help="import a --dry-run's CPU files too")
    args = parser.parse_args(argv)
    try:
        written = import_check(Path(args.folder), Path(args.results_dir), args.allow_dry_run)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
