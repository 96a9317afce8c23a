"""The hooks an agent gives SB3 callbacks beyond SB3's own: an epoch's update is done (``on_epoch_end``), and
then its records are written to the logger's outputs (``on_epoch_logged``)."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback


class EpochEndCallback(BaseCallback):
    """An SB3 callback that is also told when an epoch's update is done (``on_epoch_end``), the moment to save
    checkpoints or log images: the rollout and the update of ``model.num_epochs`` are both finished."""

    def _on_step(self) -> bool:
        return True

    def on_epoch_end(self) -> None:
        pass

    def on_epoch_logged(self) -> None:
        """After the epoch's records reached the logger's outputs (progress.csv, TensorBoard): the moment to save
        a checkpoint, so that every saved epoch has its row."""


def notify_epoch_end(callback: BaseCallback) -> None:
    """Tell ``callback`` (and a CallbackList's children) that an epoch's update is done."""
    if isinstance(callback, EpochEndCallback):
        callback.on_epoch_end()
    for child in getattr(callback, "callbacks", []):  # a CallbackList
        notify_epoch_end(child)


def notify_epoch_logged(callback: BaseCallback) -> None:
    """Tell ``callback`` (and a CallbackList's children) that the epoch's records are written."""
    if isinstance(callback, EpochEndCallback):
        callback.on_epoch_logged()
    for child in getattr(callback, "callbacks", []):
        notify_epoch_logged(child)
