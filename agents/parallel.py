"""The backward passes of one update on worker threads, for CPUs.

A small diffusion model's convolutions use several cores poorly from one pass (docs/benchmarks.md measures it).
The passes whose gradients add up to one optimizer step are independent, so ``grad_workers`` threads each run a
contiguous share of them with one torch thread, and the shares' gradients are summed in worker order — the same
sum as sequential accumulation up to float rounding, and reproducible run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

Grads = list[torch.Tensor | None]


def _add(total: Grads, grads: Sequence[torch.Tensor | None]) -> Grads:
    return [a if b is None else b if a is None else a + b for a, b in zip(total, grads, strict=True)]


def parallel_gradients(
    passes: Sequence[Callable[[], torch.Tensor]], params: Sequence[torch.nn.Parameter], workers: int
) -> Grads:
    """Σ over ``passes`` of ∂loss/∂params, each pass a function returning its (already weighted) loss; the passes
    are split into ``workers`` contiguous shares run concurrently. Entries are None for parameters no loss uses."""
    n = len(passes)
    shares = [list(passes[n * w // workers : n * (w + 1) // workers]) for w in range(workers)]

    def run(share: list[Callable[[], torch.Tensor]]) -> Grads:
        torch.set_num_threads(1)
        total = [None] * len(params)
        for loss_fn in share:
            total = _add(total, torch.autograd.grad(loss_fn(), params, allow_unused=True))
        return total

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, shares))
    finally:
        torch.set_num_threads(threads)
    total: Grads = [None] * len(params)
    for grads in results:  # in worker order: the same sum every run
        total = _add(total, grads)
    return total
