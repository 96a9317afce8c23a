"""Data-parallel training on torch.distributed: one process per GPU (or CPU worker), launched by ``torchrun`` or
``accelerate launch`` (both set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR, which is all this module reads).

The semantics, fixed so that a run on W ranks is the same algorithm as a run on one process:

- ``samples_per_epoch`` and ``batch_size`` are global; each rank samples ``samples_per_epoch / W`` episodes with
  its own env seeds and noise, and trains on micro-batches of ``batch_size / W`` of its own samples.
- Rewards and prompts are gathered (in rank order) before advantages are computed, so per-prompt statistics,
  batch normalisation and RWR weights are computed over the global rollout, identically on every rank.
- The trainable gradients (the LoRA adapter, or the whole UNet) are averaged over ranks before every optimizer
  step in one flat all-reduce per dtype; every rank then takes the same step, so parameters stay identical.
- Ranks agree on the number of optimizer steps of an epoch (a rank with fewer, e.g. sparse RWR's uneven top
  samples, contributes zero gradients), and a non-finite rollout on any rank is refused on all of them: no rank is
  left waiting in a collective the others never reach.
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def init_from_environment(device: str, timeout_s: float = 3600) -> str:
    """Join the process group a launcher describes (WORLD_SIZE > 1 in the environment) unless already joined:
    NCCL on CUDA, gloo on CPU, each collective waiting up to ``timeout_s`` for the slowest rank (rank 0 evaluates
    and saves while the others wait). Returns the device this rank uses: any CUDA device becomes
    "cuda:<LOCAL_RANK>", one GPU per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Imported first on purpose: when torch._dynamo is first imported after the group exists (diffusers and
        # transformers import it while building a model), something keeps the group alive past
        # destroy_process_group, its gloo threads still run at interpreter exit, and one releasing the last
        # collective's tensors then needs the GIL and aborts the process ("terminate called without an active
        # exception", SIGABRT). Imported before, close_process_group() joins those threads.
        importlib.import_module("torch._dynamo")  # (a plain import here would make `torch` a local name)

        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if device.startswith("cuda") and dist.is_initialized():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def close_process_group() -> None:
    """Leave the process group at the end of a successful run: wait for every rank, then destroy it, so that its
    threads are joined while the interpreter is alive (see init_from_environment). Not after an error: a rank
    that failed may never reach the barrier."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Ranks:
    """This process's place in a data-parallel run, and the collectives the agents use."""

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @classmethod
    def current(cls) -> Ranks | None:
        """The running process group, or None for a single process (world size 1 counts as single)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls()
        return None

    def rows(self, local: int) -> slice:
        """This rank's rows of an array gathered in rank order from ``local`` rows per rank."""
        return slice(self.rank * local, (self.rank + 1) * local)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def max(self, value: int) -> int:
        return int(max(self.gather(int(value))))

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's ``.grad`` by its mean over ranks (a missing gradient counts as zeros), in one
        all-reduce of the flattened gradients per dtype and device (each gradient keeps its parameter's dtype)."""
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for param in params:
            groups.setdefault((param.dtype, param.device), []).append(param)
        for group in groups.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for param in group:
                n = param.numel()
                param.grad = flat[offset : offset + n].view_as(param).clone()
                offset += n

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's values into every rank's ``params`` (the same start, whatever each rank loaded)."""
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)

    def seed(self, *keys: int) -> int:
        """A seed for this rank derived from ``keys`` (different on every rank, reproducible)."""
        return int(np.random.SeedSequence([*keys, self.rank]).generate_state(1, np.uint64)[0] >> 1)

    def barrier(self) -> None:
        dist.barrier()
