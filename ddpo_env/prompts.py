"""The prompt distribution c ~ p(c) of the MDP, and the ids that stand for prompts in observations.

Observations carry a prompt *id*, not an embedding, so rollout storage holds one integer per step. Ids belong to
the model (:class:`PromptConditioning`, one per backend): every env built on the same backend — a training env
and an evaluation env, say — shares them, so a policy can look up any of their observations.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ddpo_env.config import PromptFn, PromptsLike, is_prompt_file

#: Ids are stored as float32 by stable-baselines3's preprocessing, exact up to 2**24.
MAX_PROMPT_IDS = 2**24


class PromptSource:
    """Draws prompts: uniformly from a list, from a text file (one prompt per line), or from a callable.

    Args:
        prompts: a non-empty list of strings; a path to a UTF-8 text file (``pathlib.Path``, or a ``str``
            that names an existing file or ends in ``.txt``) with one prompt per line (blank lines and lines
            starting with ``#`` are skipped); any other single ``str`` is one prompt; or a callable
            ``fn(rng: numpy.random.Generator) -> str`` that must draw its randomness from ``rng`` only.
    """

    def __init__(self, prompts: PromptsLike) -> None:
        self.fn: PromptFn | None = None
        self.prompts: tuple[str, ...] | None = None
        if callable(prompts):
            self.fn = prompts
            return
        if isinstance(prompts, os.PathLike) or (isinstance(prompts, str) and is_prompt_file(prompts)):
            prompts = _read_prompt_file(Path(prompts))
        elif isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence):
            raise TypeError(
                f"prompts must be a list of strings, a path to a text file or a callable, got {type(prompts).__name__}"
            )
        if len(prompts) == 0:
            raise ValueError(
                "prompts is empty: give at least one prompt string, a text file with one prompt per line, "
                "or a callable fn(rng) -> str"
            )
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"every prompt must be a str, got {bad[0]!r} ({type(bad[0]).__name__})")
        self.prompts = tuple(prompts)

    def sample(self, rng: np.random.Generator) -> str:
        """One prompt drawn with ``rng`` (uniform over the list, or the callable's choice)."""
        if self.prompts is not None:
            return self.prompts[int(rng.integers(len(self.prompts)))]
        prompt = self.fn(rng)  # type: ignore[misc]
        if not isinstance(prompt, str):
            raise TypeError(
                f"the prompt function {getattr(self.fn, '__name__', self.fn)!r} returned "
                f"{type(prompt).__name__}, expected str"
            )
        return prompt

    def __repr__(self) -> str:
        if self.prompts is not None:
            return f"PromptSource({len(self.prompts)} prompts)"
        return f"PromptSource(fn={getattr(self.fn, '__name__', self.fn)!r})"


def _read_prompt_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file {str(path)!r} does not exist: pass a text file with one prompt per line, "
            "or a list of prompt strings"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class PromptTable:
    """Bidirectional map prompt string ↔ id. Id 0 is always the empty prompt "" (the unconditional / negative
    prompt of classifier-free guidance); a list source gets ids 1..n in list order."""

    def __init__(self, initial: Sequence[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []
        for prompt in ("", *initial):
            self.id_of(prompt)

    def id_of(self, prompt: str) -> int:
        """The id of ``prompt``, assigning the next free id on first sight."""
        found = self._ids.get(prompt)
        if found is not None:
            return found
        if len(self._strings) >= MAX_PROMPT_IDS:
            raise RuntimeError(
                f"more than {MAX_PROMPT_IDS} distinct prompts in one env: a prompt function that never repeats "
                "exhausts the id space; draw from a finite set or recreate the env"
            )
        self._ids[prompt] = len(self._strings)
        self._strings.append(prompt)
        return self._ids[prompt]

    def strings(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Prompt strings for an array of ids (any shape, flattened)."""
        flat = np.asarray(ids).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self._strings)):
            raise KeyError(f"unknown prompt id in {flat.tolist()}: this table has ids 0..{len(self._strings) - 1}")
        return [self._strings[int(i)] for i in flat]

    def __len__(self) -> int:
        return len(self._strings)


class PromptConditioning:
    """Prompt ids ↔ strings ↔ embeddings for one model: a :class:`PromptTable` plus an LRU cache of
    ``encode(prompts) -> (B, L, D)`` results per id.

    Args:
        encode: the model's text encoder call.
        cache_size: embeddings kept (least recently used are dropped first, and re-encoded on demand).
    """

    def __init__(self, encode: Callable[[Sequence[str]], torch.Tensor], cache_size: int = 4096) -> None:
        self.table = PromptTable()
        self.encode = encode
        self.cache_size = cache_size
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def id_of(self, prompt: str) -> int:
        return self.table.id_of(prompt)

    def strings(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return self.table.strings(ids)

    def embeds(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Conditioning (B, L, D) for ids of any shape (flattened)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.cpu().numpy()
        flat = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        for i in sorted({i for i in flat if i not in self._cache}):
            # one prompt per encoder call: an embedding never depends on which prompts shared its batch, so a
            # resumed run (fresh cache) gets the very same bits as the uninterrupted one
            self._cache[i] = self.encode(self.strings([i]))[0]
        for i in flat:
            self._cache.move_to_end(i)
        embeds = torch.stack([self._cache[i] for i in flat])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds

    def prompt_list(self) -> list[str]:
        """Every prompt in id order (id 0 is ""): what a checkpoint saves so ids mean the same after resume."""
        return self.table.strings(range(len(self.table)))

    def restore_prompt_list(self, prompts: Sequence[str]) -> None:
        """Give ``prompts[i]`` id i again (a fresh table, or one that agrees on the ids it already has)."""
        for i, prompt in enumerate(prompts):
            if self.table.id_of(prompt) != i:
                raise ValueError(
                    f"prompt {prompt!r} already has id {self.table.id_of(prompt)} in this model's table, not {i}: "
                    "restore a checkpoint into a freshly built env"
                )

    def clear_cache(self) -> None:
        self._cache.clear()
