"""Shared test setup: offline, CPU, tiny models built from configs (the tiny config)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import socket

import gymnasium as gym
import pytest
import torch
from stable_baselines3.common.logger import KVWriter

#: latents 4×8×8, T = 4 steps, CPU: the tiny config.
TINY = {"model": "tiny", "num_steps": 4, "device": "cpu"}


def tiny_env(num_envs=3, **kwargs):
    """The tiny vector env with the JPEG-compressibility reward."""
    from rewards import JpegCompressibility, VectorTerminalReward

    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs, **{**TINY, **kwargs})
    return VectorTerminalReward(venv, JpegCompressibility(upscale=4))


class Recorder(KVWriter):
    """An SB3 logger output that keeps every dumped record."""

    def __init__(self):
        self.records: list[dict] = []

    def write(self, key_values, key_excluded, step=0):
        self.records.append(dict(key_values))

    def close(self):
        pass


#: Whole modules that start processes, compile or run benchmark scripts.
SLOW_MODULES = {"test_benchmarks", "test_compile", "test_distributed"}
#: What marks a test that starts a process: calls of these, or the CLI module's trained-run fixture.
SLOW_CALLS = ("subprocess.", "run_python(", "ddpo(")


def _is_slow(item) -> bool:
    import inspect

    module = item.module.__name__.rpartition(".")[2]
    if module in SLOW_MODULES or (module == "test_cli" and "run" in item.fixturenames):
        return True
    return any(call in inspect.getsource(item.function) for call in SLOW_CALLS)


def pytest_collection_modifyitems(config, items):
    """``slow``: tests that start processes (CLI, torchrun, a server, a SIGKILL), compile or run benchmark scripts
    (``make test-quick`` leaves them out; ``make test`` runs everything). ``gpu`` tests skip without a GPU."""
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True, scope="session")
def offline():
    """docs/reliability.md 23: the suite runs offline — any connection beyond this machine is refused (local test
    servers and torch.distributed's localhost rendezvous still work)."""
    real = socket.socket.connect, socket.socket.connect_ex

    def guard(method):
        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(_LOOPBACK):
                raise ConnectionRefusedError(f"the test suite is offline: a connection to {address[0]} was refused")
            return method(sock, address)

        return connect

    socket.socket.connect, socket.socket.connect_ex = guard(real[0]), guard(real[1])
    yield
    socket.socket.connect, socket.socket.connect_ex = real
