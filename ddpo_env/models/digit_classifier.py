"""The digit classifier that judges the default model's images (the reward model of digit alignment).

A small CNN on 16×16 grayscale images, trained on the training split of :func:`digits_dataset` (the same split
as the diffusion model), evaluated on the held-out split. ``python -m ddpo_env.models.digit_classifier`` trains
it and writes ``classifier.safetensors`` and ``classifier.json`` next to the default model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddpo_env.models.digits import DEFAULT_DIR, IMAGE_SIZE, digits_dataset


class DigitClassifier(nn.Module):
    """CNN: (B, 1, 16, 16) in [-1, 1] → logits (B, 10). About 60k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, 10) for uint8 images (B, H, W, 3) or (B, H, W), resized to 16×16 if needed."""
        return torch.softmax(self(images_to_input(images, self.device)), dim=1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def images_to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images (B, H, W[, C]) → grayscale float (B, 1, 16, 16) in [-1, 1], the classifier's input."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images, device=device)
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (B, H, W[, C]), got dtype {x.dtype}")
    x = x.float() / 255.0
    x = x.mean(dim=-1) if x.ndim == 4 else x  # RGB → gray
    x = x.unsqueeze(1)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    return x * 2 - 1


def load_classifier(folder: Path | str = DEFAULT_DIR, device: torch.device | str = "cpu") -> DigitClassifier:
    """The shipped classifier (eval mode)."""
    from safetensors.torch import load_file

    path = Path(folder) / "classifier.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no digit classifier at {str(path)!r}: train it with python -m ddpo_env.models.digit_classifier"
        )
    model = DigitClassifier()
    model.load_state_dict(load_file(path))
    return model.to(device).eval()


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1 pixel (augmentation)."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(seed: int = 0, epochs: int = 40, split_seed: int = 0, out: Path | str = DEFAULT_DIR) -> dict:
    """Train on the training split, report held-out accuracy, write the weights atomically. Returns the record."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = digits_dataset(seed=split_seed)
    x, y = data["train_images"], data["train_labels"]
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    start = time.time()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb = _shift(x[idx], g) + 0.05 * torch.randn(x[idx].shape, generator=g)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data["heldout_images"]).argmax(1) == data["heldout_labels"]).float().mean().item()
    record = {
        "heldout_accuracy": accuracy,
        "num_heldout": len(data["heldout_labels"]),
        "num_train": len(y),
        "seed": seed,
        "split_seed": split_seed,
        "epochs": epochs,
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(staging, "c.safetensors"))
        Path(staging, "c.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for src, dst in (("c.safetensors", "classifier.safetensors"), ("c.json", "classifier.json")):
            os.chmod(os.path.join(staging, src), 0o644)
            os.replace(os.path.join(staging, src), out / dst)
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the digit classifier reward model.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_DIR))
    a = parser.parse_args()
    print(json.dumps(train_classifier(a.seed, a.epochs, a.split_seed, a.out), indent=2))
