"""The one save format of an agent, in a ``save`` zip and in a training job's checkpoint folder
(agents/job/checkpoint.py, which adds its own ``meta.json``):

    agent.json             format, agent class, algorithm config, env shape, package versions
    state.pt               the agent's state without the weights (``torch.load(weights_only=True)`` reads it); a
                           checkpoint's also holds the env's state and the last observation, a ``save`` zip's does not
    trainable.safetensors  the trained weights, by UNet parameter name (what diffusers' export reads)
    ema.safetensors        their EMA under the same names (only with ema_decay > 0)

Format 1 (a zip whose state.pt held the weights; a checkpoint folder with the agent's fields in meta.json) still
reads. A file that cannot be read raises :class:`UnreadableFileError` (a ValueError) naming it.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAVE_FORMAT = 2
AGENT_FILE, STATE_FILE, WEIGHTS_FILE, EMA_FILE = "agent.json", "state.pt", "trainable.safetensors", "ema.safetensors"
PACKAGES = ("ddpo-env", "torch", "diffusers", "transformers", "gymnasium", "stable-baselines3", "peft", "numpy")


def package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`PACKAGES` (None: not installed), recorded in agent.json."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def numpy_to_torch(tree: Any) -> Any:
    """numpy arrays → tensors, recursively (so ``torch.load(weights_only=True)`` reads the state back)."""
    if isinstance(tree, np.ndarray):  # unsigned ints travel as int64 (torch's uint32 support is partial)
        values = tree.astype(np.int64) if tree.dtype.kind == "u" else tree.copy()
        return {"__ndarray__": torch.from_numpy(values), "dtype": str(tree.dtype)}
    if isinstance(tree, dict):
        return {k: numpy_to_torch(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(numpy_to_torch(v) for v in tree)
    return tree


def torch_to_numpy(tree: Any) -> Any:
    """The inverse of :func:`numpy_to_torch`."""
    if isinstance(tree, dict):
        if set(tree) == {"__ndarray__", "dtype"}:
            return tree["__ndarray__"].numpy().astype(tree["dtype"])
        return {k: torch_to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(torch_to_numpy(v) for v in tree)
    return tree


class UnreadableFileError(ValueError):
    """A saved file that cannot be read (truncated, corrupt or missing); ``file`` names it, ``reason`` says why."""

    def __init__(self, file: Any, reason: str, fix: str = "save the agent again, or load an earlier save") -> None:
        self.file, self.reason = str(file), reason
        super().__init__(f"{file} is unreadable ({reason}): {fix}")


def write_folder(folder: Path, meta: dict[str, Any], state: dict[str, Any], weights: dict[str, torch.Tensor],
                 ema: dict[str, torch.Tensor] | None) -> None:
    """Write the format's files into ``folder``: agent.json (``meta``), state.pt (``state``, as torch.save takes
    it), the weights and their EMA (or None)."""
    from safetensors.torch import save_file

    torch.save(state, folder / STATE_FILE)
    save_file(weights, folder / WEIGHTS_FILE)
    if ema is not None:
        save_file(ema, folder / EMA_FILE)
    (folder / AGENT_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")


def write_zip(target: Any, meta: dict[str, Any], state: dict[str, Any], weights: dict[str, torch.Tensor],
              ema: dict[str, torch.Tensor] | None) -> None:
    """The same files in one zip (a path or a binary file object), stored uncompressed."""
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(state, buffer)
    files = {AGENT_FILE: json.dumps(meta, indent=2, default=str).encode(), STATE_FILE: buffer.getvalue(),
             WEIGHTS_FILE: save(weights), **({EMA_FILE: save(ema)} if ema is not None else {})}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def read_payload(source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(agent.json's content, the whole state with its weights) from a ``save`` zip (path or file object) or a
    folder holding the same files (a format-1 checkpoint folder has no agent.json: its meta.json stands in).
    A file that cannot be read raises :class:`UnreadableFileError` naming it."""
    folder = isinstance(source, (str, os.PathLike)) and Path(source).is_dir()
    if folder:
        source = Path(source)
        files: dict[str, Any] = {p.name: p for p in source.iterdir()}
    else:
        try:
            with zipfile.ZipFile(source) as archive:
                if not zip_ends_whole(archive.fp):
                    raise zipfile.BadZipFile("no end record at the end of the file (truncated)")
                files = {name: archive.read(name) for name in archive.namelist()}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
            raise UnreadableFileError(source, f"not a readable zip: {err}") from None

    def label(name: str) -> Any:
        return source / name if folder else f"{source} ({name} inside)"

    def read(name: str) -> Any:
        if name not in files:
            raise UnreadableFileError(label(name), "missing")
        try:
            return _parse(name, files[name])
        except Exception as err:  # json, safetensors, torch and zip each raise their own
            raise UnreadableFileError(label(name), f"{type(err).__name__}: {str(err)[:200]}") from None

    if AGENT_FILE in files:
        meta = read(AGENT_FILE)
    elif folder and "meta.json" in files:  # a format-1 checkpoint: the agent's fields were in the job's meta.json
        old = read("meta.json")
        meta = {"format": 1, "agent": old["agent"], "config": old["agent_config"], "env": old["env"]}
    else:
        raise ValueError(f"{source} was not written by a ddpo-env agent's save() or a training job's checkpoint "
                         f"(no {AGENT_FILE})")
    if meta.get("format", 0) > SAVE_FORMAT:
        raise ValueError(f"{source} has save format {meta['format']}; this ddpo-env reads up to {SAVE_FORMAT}: "
                         "upgrade ddpo-env")
    state = read(STATE_FILE)
    if "weights" not in state:  # format 2, and format-1 checkpoint folders: the weights in their own file
        state["weights"] = read(WEIGHTS_FILE)
    return meta, torch_to_numpy(state)


def zip_ends_whole(file: Any) -> bool:
    """Whether the open binary ``file`` ends with a zip end record, as every zip written here does (no comment). A
    truncated zip may still open, on an end record further up (e.g. of the torch zip stored inside)."""
    position = file.tell()
    try:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(size - 22, 0))
        return size >= 22 and file.read(4) == b"PK\x05\x06"
    finally:
        file.seek(position)


def _parse(name: str, data: Path | bytes) -> Any:
    """A save-format file's content, from its path (a folder) or its bytes (a zip)."""
    if name.endswith(".json"):
        return json.loads(data.read_bytes() if isinstance(data, Path) else data)
    if name.endswith(".safetensors"):
        from safetensors.torch import load, load_file

        return load_file(str(data)) if isinstance(data, Path) else load(data)
    return torch.load(data if isinstance(data, Path) else io.BytesIO(data), map_location="cpu", weights_only=True)
