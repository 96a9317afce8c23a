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


def save_side_by_side(grids: list[np.ndarray], rows: int, titles: list[str], path: str | Path, scale: int = 4,
                      title_px: int = 16) -> None:
    """Write grids of uint8 images (rows·cols, H, W, 3) next to each other as one PNG, each under its title (e.g.
    "before" and "after" on the same prompts and seeds)."""
    from PIL import ImageDraw

    if len(titles) != len(grids):
        raise ValueError(f"{len(titles)} titles for {len(grids)} grids")
    panels = [image_grid(images, rows, scale) for images in grids]
    gap = 8
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, title_px + max(p.shape[0] for p in panels)), "white")
    draw, left = ImageDraw.Draw(canvas), 0
    for panel, title in zip(panels, titles, strict=True):
        draw.text((left + 2, 2), title, fill="black")
        canvas.paste(Image.fromarray(panel), (left, title_px))
        left += panel.shape[1] + gap
    canvas.save(path)


def captioned_grid(images: np.ndarray, captions: list[str], cols: int, scale: int = 4, line_px: int = 11) -> np.ndarray:
    """uint8 images (N, H, W, 3) in a grid of ``cols`` columns, each enlarged ×scale with its caption (e.g. the
    prompt and the reward; lines wrapped to the cell's width) written under it."""
    import textwrap

    from PIL import ImageDraw

    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    rows = -(-len(images) // cols)
    h, w = images.shape[1] * scale, max(images.shape[2] * scale, 120)
    wrapped = [[piece for line in caption.split("\n") for piece in textwrap.wrap(line, w // 6) or [""]]
               for caption in captions]
    cell_h, gap = h + max(map(len, wrapped)) * line_px + 4, 6
    canvas = Image.new("RGB", (cols * (w + gap) + gap, rows * (cell_h + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, lines) in enumerate(zip(images, wrapped, strict=True)):
        r, c = divmod(i, cols)
        left, top = gap + c * (w + gap), gap + r * (cell_h + gap)
        tile = Image.fromarray(image).resize((images.shape[2] * scale, h), Image.NEAREST)
        canvas.paste(tile, (left + (w - tile.width) // 2, top))
        for j, line in enumerate(lines):
            draw.text((left, top + h + 2 + j * line_px), line, fill="black")
    return np.asarray(canvas)
