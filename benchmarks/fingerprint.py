"""Behaviour fingerprint of the training job: ``python -m benchmarks.fingerprint``.

Runs the ``make train`` job (configs/make_train.toml, ``--make-train-epochs`` of its epochs) and a short run of each
agent on the tiny test model, all at seed 0 with one torch thread, and records per run a SHA-256 of the trained
parameters and of the metrics (timings and the config echo left out). Run it at two revisions: a refactor that
preserves behaviour gives equal digests. Writes ``benchmarks/results/fingerprint_<rev>.json``; ``--against`` prints
the comparison with another revision's file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from agents.job.cli import read_config_file
from agents.job.train import TrainConfig, train
from benchmarks.record import RESULTS_DIR, environment, write_json

TINY = {"model": "tiny", "device": "cpu", "num_steps": 3, "epochs": 2, "samples_per_epoch": 8, "num_envs": 4,
        "batch_size": 4, "tensorboard": False, "image_every": 0, "save_every": 0, "seed": 0}
AGENT_RUNS: dict[str, dict[str, Any]] = {
    "ddpo-is": {"agent": "ddpo-is", "reward": "jpeg_compressibility"},
    "ddpo-sf": {"agent": "ddpo-sf", "reward": "jpeg_compressibility"},
    "rwr": {"agent": "rwr", "reward": "jpeg_incompressibility"},
    "rwr-sparse": {"agent": "rwr-sparse", "reward": "jpeg_incompressibility"},
    "ddpo-is-lora": {"agent": "ddpo-is", "reward": "jpeg_compressibility", "lora_rank": 2},
    "rwr-flow": {"agent": "rwr", "reward": "jpeg_incompressibility", "model": "tiny-sd3"},  # flow matching's loss
}
TIMING_KEYS = ("seconds", "per_s", "fps", "minutes", "output_dir")  # and the scratch folder


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in sorted(value.items())
                if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def digest(cfg: TrainConfig) -> dict[str, str]:
    """Train ``cfg`` in a scratch folder; SHA-256 of its parameters (name order) and of its metrics."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        result = train(TrainConfig.from_flat({**cfg.to_flat(), "output_dir": out}))
    params = hashlib.sha256()
    for name, tensor in sorted(result.agent.policy.state_dict().items()):
        params.update(name.encode())
        params.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    measured = {k: v for k, v in result.metrics.items() if k != "config"}  # a new setting is not new behaviour
    metrics = json.dumps(_without_timings(measured), sort_keys=True, default=str)
    return {"parameters": params.hexdigest(), "metrics": hashlib.sha256(metrics.encode()).hexdigest()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-train-epochs", type=int, default=2, help="epochs of the make train job (0: skip)")
    parser.add_argument("--against", default=None, help="a fingerprint JSON of another revision to compare with")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    runs: dict[str, dict[str, str]] = {}
    if args.make_train_epochs:
        flat = read_config_file(str(Path(__file__).parent.parent / "configs" / "make_train.toml"))
        cfg = TrainConfig.from_flat({**flat, "epochs": args.make_train_epochs, "tensorboard": False})
        runs[f"make_train ({args.make_train_epochs} epochs)"] = digest(cfg)
    for name, flat in AGENT_RUNS.items():
        runs[f"tiny {name}"] = digest(TrainConfig.from_flat({**TINY, **flat}))
    env_info = environment("python -m benchmarks.fingerprint")
    data = {"runs": runs, "environment": env_info}
    path = Path(args.results_dir) / f"fingerprint_{env_info['git_revision']}.json"
    write_json(path, data)
    print(f"wrote {path}")
    if args.against:
        other = json.loads(Path(args.against).read_text(encoding="utf-8"))["runs"]
        for name, mine in runs.items():
            same = other.get(name) == mine
            print(f"{'identical' if same else 'DIFFERENT':>9}  {name}")
    return data


if __name__ == "__main__":
    main()
