"""The training entry point, run as a user would (a subprocess) on a tiny budget."""

import json
import subprocess
import sys

from PIL import Image


def test_train_cli_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agents.train", "--model", "tiny", "--epochs", "2", "--samples-per-epoch", "6",
         "--num-envs", "3", "--batch-size", "3", "--num-steps", "4", "--device", "cpu", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ddpo-is on the tiny model, reward jpeg_compressibility: 2 epochs × 6 samples" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["config"]["agent"] == "ddpo-is"
    for name in ("before_after.png", "reward_curve.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert (out / "trained.safetensors").stat().st_size > 0


def test_train_cli_rejects_unknown_names(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "agents.train", "--reward", "beauty", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert ("ValueError: unknown reward 'beauty': use one of ['aesthetic', 'alignment', 'digit_alignment', "
            "'jpeg_compressibility', 'jpeg_incompressibility']") in result.stderr
