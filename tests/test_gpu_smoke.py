"""The one-call GPU check: ``benchmarks/gpu_smoke.sh --dry-run`` runs every section on the CPU and leaves files that
travel back from a remote GPU machine easily (≤ 8 files, plain names, ≤ 2 folders deep); ``benchmarks.gpu_bundle``
names the wheels the GPU image lacks, at the versions installed here, with every requirement met."""

import itertools
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from benchmarks import gpu_bundle, gpu_import

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_smoke_dry_run_runs_every_section_into_files_the_device_tool_returns(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "DDPO_REV": "abc1234"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), "--dry-run"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    smoke = json.loads((tmp_path / "smoke.json").read_text())
    assert [(s["section"], s["status"]) for s in smoke["sections"]] == [
        ("test_gpu", 0), ("gpu_ratio", 0), ("train", 0), ("gpu_bench", 0)]
    assert smoke["dry_run"] is True and smoke["failed"] is False and smoke["environment"]["torch"]
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(f.parts) <= 3 for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for f in files for part in f.parts)
    assert {"smoke.log", "test_gpu.txt", "gpu_ratio.json", "train.json", "gpu_tiny.json", "gpu_tiny.md"} <= {
        str(f) for f in files}

    rows = json.loads((tmp_path / "gpu_ratio.json").read_text())["combinations"]
    assert sorted((r["dtype"], r["compile"]) for r in rows) == sorted(
        itertools.product(("bfloat16", "float16", "float32"), (False, True)))
    for row in rows:
        assert row["status"] == "ok" and "error" not in row, row
        assert sorted(row["max_abs_log_ratio"]) == ["0", "1"]  # --num-steps 2
        assert all(v >= 0 for v in row["max_abs_log_ratio"].values()) and 0 <= row["zero_fraction"] <= 1
        assert isinstance(row["weights_changed"], bool) and isinstance(row["finite"], bool)

    train = json.loads((tmp_path / "train.json").read_text())
    assert [(r["epochs"], r["exit"]) for r in train["runs"]] == [(1, 0), (2, 0)]
    assert len(train["metrics"]["epochs"]) == 2 and train["metrics"]["config"]["kl_coef"] > 0
    rows = json.loads((tmp_path / "gpu_tiny.json").read_text())["rows"]
    assert [(r["trainer"], r["gradient_checkpointing"], r["lora_rank"]) for r in rows] == [
        ("ddpo-env", False, 4), ("ddpo-env", False, 0)]

    # back here: the files join benchmarks/results under the docs' names, with the revision the check was given
    results = tmp_path / "results"
    with pytest.raises(ValueError, match="dry run"):
        gpu_import.import_check(tmp_path, results)
    written = {p.name for p in gpu_import.import_check(tmp_path, results, allow_dry_run=True)}
    assert written == {"gpu_smoke.json", "gpu_smoke.log", "gpu_test.txt", "gpu_ratio.json", "gpu_train.json",
                       "gpu_tiny.json", "gpu_tiny.md"}
    imported = json.loads((results / "gpu_ratio.json").read_text())
    assert smoke["environment"]["git_revision"] == imported["environment"]["git_revision"] == "abc1234"
    assert str(tmp_path) not in (results / "gpu_ratio.json").read_text() + (results / "gpu_smoke.log").read_text()
    summary = json.loads((results / "summary.json").read_text())
    # no CUDA memory on a CPU, so no gpu_peak_memory_gb from a dry run
    assert set(summary) == {"gpu_samples_per_s", "gpu_first_update_log_ratio_without_recompute"}
    assert set(summary["gpu_first_update_log_ratio_without_recompute"]["value"]) == {"bfloat16", "float16", "float32"}
    assert summary["gpu_samples_per_s"]["value"] == max(r["samples_per_s"] for r in rows)


def test_the_gpu_bundle_is_what_the_image_lacks_at_the_versions_installed_here(capsys):
    assert gpu_bundle.main(["--list"]) == 0  # downloads nothing
    versions = gpu_bundle.wanted()
    assert set(versions) == {"diffusers", "gymnasium", "stable-baselines3", "farama-notifications",
                             "importlib-metadata", "lazy-importer"}
    assert all(v == metadata.version(name) for name, v in versions.items())
    assert f"diffusers=={versions['diffusers']}: " in capsys.readouterr().out
    bundled = {name: Version(v) for name, v in versions.items()}
    for name in versions:  # the installed packages' own requirements: all met by the bundle or the image
        assert gpu_bundle.unmet([Requirement(r) for r in metadata.requires(name) or []], bundled) == [], name


def test_the_gpu_bundle_check_reads_a_wheels_requirements_and_finds_unmet_ones(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
                         "Requires-Dist: numpy\nRequires-Dist: torch>=9\nRequires-Dist: nowhere-to-be-found\n"
                         "Requires-Dist: pytest; extra == \"test\"\nRequires-Dist: old; python_version < \"3.8\"\n")
    assert gpu_bundle.unmet(gpu_bundle.requirements(wheel), {}) == [
        "torch>=9 (have 2.11.0)", "nowhere-to-be-found (neither bundled nor in the image)"]
