"""Shared test setup: offline, CPU, tiny models built from configs (RELIABILITY.md's "tiny config")."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

#: latents 4×8×8, T = 4 steps, CPU: the tiny config of RELIABILITY.md.
TINY = {"model": "tiny", "num_steps": 4, "device": "cpu"}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
