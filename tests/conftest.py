"""Shared test setup: offline, CPU, tiny models built from configs (RELIABILITY.md's "tiny config")."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import socket

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


_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True, scope="session")
def offline():
    """RELIABILITY.md 23: the suite runs offline — any connection beyond this machine is refused (local test
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
