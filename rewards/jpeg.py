"""JPEG (in)compressibility (Black et al. 2024 §5.1): the size of the image saved as JPEG at quality 95, in kB.

Compressibility rewards small files (−kB), incompressibility large ones (+kB). Small images can be enlarged
(nearest neighbour) before encoding: JPEG works on 8×8 blocks, so a 16×16 image has only four of them and its size
barely varies; ×4 gives the encoder room to differ.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rewards.scorer import Scorer


def jpeg_size_kb(image: np.ndarray, quality: int = 95, upscale: int = 1) -> float:
    """Size in kB (1000 bytes) of a uint8 (H, W, 3) image saved as JPEG, after ×``upscale`` nearest enlargement."""
    if upscale > 1:
        image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class _JpegSize(Scorer):
    sign = 1.0

    def __init__(self, *, quality: int = 95, upscale: int = 1) -> None:
        if not (isinstance(quality, int) and 1 <= quality <= 100):
            raise ValueError(f"{self.name}: quality must be an int in [1, 100], got {quality!r}")
        if not (isinstance(upscale, int) and upscale >= 1):
            raise ValueError(f"{self.name}: upscale must be an int >= 1, got {upscale!r}")
        self.quality, self.upscale = quality, upscale

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return np.array([self.sign * jpeg_size_kb(im, self.quality, self.upscale) for im in images])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality}, upscale={self.upscale})"


class JpegCompressibility(_JpegSize):
    """Reward −(JPEG size in kB): smaller files score higher."""

    name = "jpeg_compressibility"
    sign = -1.0


class JpegIncompressibility(_JpegSize):
    """Reward +(JPEG size in kB): larger files score higher."""

    name = "jpeg_incompressibility"
    sign = 1.0
