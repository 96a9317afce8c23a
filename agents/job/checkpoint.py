"""Checkpoints: atomic on disk, and complete enough that a resumed run continues bit for bit.

A checkpoint is a folder ``<root>/epoch-000012/`` holding the agent's save format (agents/save_format.py, the files of
``agent.save``'s zip) with the env's state in it, and the job's own metadata:

    agent.json            format, agent class, algorithm config, env shape (with num_envs), package versions
    state.pt              the agent's ``state_dict()`` without the weights: optimizer, counters, per-prompt statistics,
                          value head, EMA, every RNG, the env's state and the agent's last observation
    trainable.safetensors the trained weights (LoRA adapter, or the whole UNet with lora_rank 0)
    ema.safetensors       their exponential moving average, under the same names (only with ema_decay > 0)
    meta.json             the job's: format version, epoch, env steps, time, the job's config and its history

It is written into a hidden staging folder on the same filesystem and renamed into place: a folder named
``epoch-*`` is always complete (``meta.json`` is written last). Older checkpoints are pruned to ``keep_last`` only
after a save succeeded. Only rank 0 writes. Format 1 (no agent.json: meta.json held the agent's fields) still loads.

A file that cannot be read (a truncated copy, a full disk) raises :class:`~agents.save_format.UnreadableFileError` (a
ValueError) naming the file and the newest earlier checkpoint that reads; ``--resume auto`` skips such checkpoints
(:func:`newest_good`, :func:`load_resumable`) and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from agents.save_format import (
    AGENT_FILE,
    EMA_FILE,
    SAVE_FORMAT,
    STATE_FILE,
    WEIGHTS_FILE,
    UnreadableFileError,
    read_payload,
    zip_ends_whole,
)
from agents.state import write_payload

FORMAT_VERSION = SAVE_FORMAT  # one format version for a save zip and a checkpoint folder
PREFIX = "epoch-"
META_FILE = "meta.json"
#: Why a checkpoint must be loaded onto an env with its num_envs: it holds each env's state.
STRICT_FIX = ("build the agent with the saved run's config (a checkpoint holds each env's state, so resuming needs "
              "the same env; Class.load(path, env=env) loads the agent alone onto another num_envs)")


def is_writer() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes checkpoints."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def save_checkpoint(agent: Any, root: str | os.PathLike, *, config: dict[str, Any] | None = None,
                    keep_last: int = 3) -> Path | None:
    """Write ``<root>/epoch-<agent.num_epochs>`` atomically; prune to the newest ``keep_last`` (0: keep all).
    ``config`` (the job's config and history) goes into meta.json. Returns the folder (None on ranks other than 0)."""
    if not is_writer():
        return None
    root = Path(root)
    for stale in root.glob(".staging-*") if root.is_dir() else []:  # left by a writer killed mid-save
        shutil.rmtree(stale, ignore_errors=True)

    def write(staging: Path) -> None:
        write_payload(staging, agent, include_env=True)
        meta = {"format_version": FORMAT_VERSION, "epoch": agent.num_epochs, "num_timesteps": agent.num_timesteps,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config or {}}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    final = write_atomically(root / f"{PREFIX}{agent.num_epochs:06d}", write)
    if keep_last:
        for stale in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def write_atomically(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` fills a hidden staging folder next to ``folder``; its files are fsynced and the folder is
    renamed into place (an existing ``folder`` stays until the new one is complete). On any error the staging
    folder is removed and ``folder`` is untouched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        write(staging)
        mask = _umask()  # mkdtemp's folder is 0700 and some writers' files 0600: give them the user's usual modes
        os.chmod(staging, 0o777 & ~mask)
        for path in staging.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=folder.parent))
            os.rename(folder, old / folder.name)
            os.rename(staging, folder)
            shutil.rmtree(old)
        else:
            os.rename(staging, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (staging folders are hidden and never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _epoch(p) is not None and p.is_dir() and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: _epoch(p))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _epoch(path: Path) -> int | None:
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's metadata, refusing formats newer than this code reads: meta.json's fields (format_version,
    epoch, num_timesteps, created, config) and agent.json's (agent, agent_config, env, packages)."""
    path = Path(path)
    try:
        return _read_meta(path)
    except UnreadableFileError as err:
        raise unreadable(path, err) from None


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no {META_FILE}): pass a folder like <run>/checkpoints/"
                                f"{PREFIX}000010")
    meta = _read_json(path, META_FILE)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this ddpo-env reads versions up to "
            f"{FORMAT_VERSION}: upgrade ddpo-env to load it"
        )
    if version >= 2:
        agent = _read_json(path, AGENT_FILE)
        meta = {**meta, "agent": agent["agent"], "agent_class": agent.get("agent_class"),
                "agent_config": agent["config"], "env": agent["env"], "packages": agent["packages"]}
    return meta


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, truncated, not UTF-8
        raise UnreadableFileError(folder / name, f"{type(err).__name__}: {err}") from None


def unreadable(checkpoint: Path, err: UnreadableFileError) -> UnreadableFileError:
    """``err`` (a file of ``checkpoint`` that cannot be read) with the fix: the newest earlier checkpoint that reads."""
    earlier = newest_good(checkpoint.parent, before=_epoch(checkpoint)) if _epoch(checkpoint) is not None else None
    if earlier is not None:
        fix = (f"the newest earlier checkpoint that reads is {earlier}: resume from it (--resume {earlier}; "
               "--resume auto skips unreadable checkpoints)")
    elif _epoch(checkpoint) is not None:
        fix = f"no earlier checkpoint in {checkpoint.parent} reads: start the run afresh (--overwrite)"
    else:
        fix = "the checkpoint is damaged: use another one"
    return UnreadableFileError(err.file, err.reason, fix)


def checkpoint_problem(path: str | os.PathLike) -> UnreadableFileError | None:
    """What makes checkpoint ``path`` unreadable (a missing, truncated or unparsable file), or None. Cheap: the
    JSON files are parsed, the others' structure (safetensors header and size, zip directory) checked."""
    path = Path(path)
    try:
        _read_meta(path)
        for name in (STATE_FILE, WEIGHTS_FILE) + ((EMA_FILE,) if (path / EMA_FILE).exists() else ()):
            file = path / name
            try:
                _check_safetensors(file) if name.endswith(".safetensors") else _check_zip(file)
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise UnreadableFileError(file, f"{type(err).__name__}: {err}") from None
    except UnreadableFileError as err:
        return err
    return None


def _check_safetensors(file: Path) -> None:
    """A safetensors file whose header parses and whose size is what the header says."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or 8 + length > size:
            raise ValueError(f"truncated: a header of {length} bytes in a file of {size}")
        header = json.loads(f.read(length))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        raise ValueError(f"truncated: the header says {8 + length + end} bytes, the file has {size}")


def _check_zip(file: Path) -> None:
    """A zip (torch.save's format) whose directory reads and whose members lie within the file."""
    size = file.stat().st_size
    with zipfile.ZipFile(file) as archive:
        if not zip_ends_whole(archive.fp):
            raise ValueError("truncated: no zip end record at the end of the file")
        for info in archive.infolist():
            if info.header_offset + info.compress_size > size:
                raise ValueError(f"truncated: member {info.filename} ends past the file's {size} bytes")


def newest_good(root: str | os.PathLike, before: int | None = None,
                log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint under ``root`` (of an epoch before ``before``) that reads (:func:`checkpoint_problem`);
    ``log`` gets one line per newer checkpoint skipped."""
    for path in reversed(list_checkpoints(root)):
        if before is not None and _epoch(path) >= before:
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if log is not None:
            log(f"--resume auto: skipping {path}: {problem.file} is unreadable ({problem.reason})")
    return None


def load_weights(policy: Any, path: str | os.PathLike, ema: bool = False) -> None:
    """Only the trained weights of a checkpoint into ``policy`` (for sampling and evaluation); with ``ema``, its
    EMA weights when the run kept an average (``ema_decay`` > 0)."""
    from safetensors.torch import load_file

    path = Path(path)
    read_meta(path)
    file = path / (EMA_FILE if ema and (path / EMA_FILE).is_file() else WEIGHTS_FILE)
    try:
        weights = load_file(str(file))
    except Exception as err:  # safetensors raises its own for a truncated file
        raise unreadable(path, UnreadableFileError(file, f"{type(err).__name__}: {err}")) from None
    policy.load_trainable_state_dict(weights)


def load_checkpoint(agent: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote into a freshly built ``agent`` (same model, env shape with
    num_envs, agent class and lora_rank). Returns the checkpoint's meta (:func:`read_meta`). Every file is read
    before the agent changes: an unreadable one leaves it as it was."""
    path = Path(path)
    meta = read_meta(path)
    agent.check_env_signature(meta["env"], f"checkpoint {path}", STRICT_FIX)
    if meta["agent"] != type(agent).__name__:
        raise ValueError(f"checkpoint {path} holds a {meta['agent']}, not a {type(agent).__name__}")
    try:
        _, state = read_payload(path)
    except UnreadableFileError as err:
        raise unreadable(path, err) from None
    try:
        agent.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    return meta


def load_resumable(agent: Any, path: str | os.PathLike, fall_back: bool = False,
                   log: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """(the checkpoint loaded, its meta): :func:`load_checkpoint` of ``path``, or with ``fall_back`` (--resume
    auto), when a file of it cannot be read, of the newest earlier checkpoint that reads (``log`` says so)."""
    path = Path(path)
    while True:
        try:
            return path, load_checkpoint(agent, path)
        except UnreadableFileError as err:
            earlier = newest_good(path.parent, before=_epoch(path)) if fall_back and _epoch(path) is not None else None
            if earlier is None:
                raise
            if log is not None:
                log(f"--resume auto: {err.file} is unreadable ({err.reason}); falling back to {earlier}")
            path = earlier
