"""Image grids for people to look at (samples, before/after comparisons)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, rows: int, scale: int = 4, gap: int = 2) -> np.ndarray:
    """uint8 images (rows·cols, H, W, 3), row-major → one uint8 grid, each image enlarged ×scale (nearest)."""
    if len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows")
    cols = len(images) // rows
    h, w = images.shape[1] * scale, images.shape[2] * scale
    grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        grid[top : top + h, left : left + w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_grid(images: np.ndarray, rows: int, path: str | Path, scale: int = 4) -> None:
    """Write :func:`image_grid` as a PNG."""
    Image.fromarray(image_grid(images, rows, scale)).save(path)
