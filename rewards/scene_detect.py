"""Object detection for shapes-world images, by program: colour segmentation, connected components, a shape test.

1. **Pixels.** A pixel is foreground when it is bright and saturated enough (HSV value ≥ 0.35, saturation ≥ 0.4);
   its hue names its colour (red, yellow, green, blue; hues between the bands, such as magenta, name none).
2. **Specks.** A pixel whose label fills at most 2 cells of its 3×3 neighbourhood takes the neighbourhood's most
   common label (:func:`despeckle`): noise in a generated background, an off-hue pixel inside an object and
   one-pixel bridges go; the corners and apexes of drawn shapes (3 or more cells) stay.
3. **Objects.** Each 4-connected component of one colour, holes filled, with at least :data:`MIN_AREA` pixels
   (scaled with the image's area from 32×32) is an object.
4. **Shape.** The object's mask is compared with the three shapes drawn into its bounding box (a filled box, the
   inscribed ellipse, the upright inscribed triangle); the best intersection-over-union names the shape when it
   reaches :data:`MIN_IOU` and the box is not elongated (sides within a factor :data:`MAX_ASPECT`). Anything else
   (merged objects, smears, slivers) is an object of that colour with no shape: it matches no prompt's object,
   which is how a malformed object fails a check.

On the generator's renders (hard-edged, apart) the three IoUs are ≈ 1 for the right shape and ≤ 0.8 for the
others; tests check ≥ 99 % of renders are read exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpo_env.scenes import COLOURS, SHAPES

MIN_AREA = 10  # pixels, at 32×32
MIN_VALUE, MIN_SATURATION = 0.35, 0.4
#: Hue bands in degrees, [start, end), of each colour word; red wraps around 0.
HUE_BANDS = {"red": ((330, 360), (0, 25)), "yellow": ((25, 80),), "green": ((80, 170),), "blue": ((170, 300),)}
MIN_IOU = 0.7
MAX_ASPECT = 1.6


@dataclass(frozen=True)
class Detection:
    """One detected object: colour word, shape (None when no shape fits), centroid (x right, y down, pixels),
    area in pixels, and the IoU of its mask with each shape's template (in SHAPES order)."""

    colour: str
    shape: str | None
    x: float
    y: float
    area: int
    ious: tuple[float, ...]


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int: index into COLOURS of each pixel's colour, -1 for background (or a hue between the bands)."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = high - low
    saturation = np.where(high > 0, chroma / np.maximum(high, 1e-12), 0.0)
    hue = _hue_degrees(rgb, high, chroma)
    labels = np.full(high.shape, -1, dtype=np.int64)
    coloured = (high >= MIN_VALUE) & (saturation >= MIN_SATURATION)
    for index, colour in enumerate(COLOURS):
        in_band = np.zeros_like(coloured)
        for start, end in HUE_BANDS[colour]:
            in_band |= (hue >= start) & (hue < end)
        labels[coloured & in_band] = index
    return labels


def _hue_degrees(rgb: np.ndarray, high: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(chroma > 0, hue * 60.0, 0.0)


def despeckle(labels: np.ndarray) -> np.ndarray:
    """Labels with every pixel whose label fills at most 2 cells of its 3×3 neighbourhood (a speck of background
    noise, an off-hue pixel inside an object, a one-pixel bridge) replaced by its neighbourhood's most common label.
    A corner or apex pixel of a drawn shape fills 3 or more and stays."""
    from scipy import ndimage

    counts = np.stack([ndimage.convolve((labels == c).astype(np.int64), np.ones((3, 3), np.int64), mode="constant",
                                        cval=int(c == -1)) for c in range(-1, len(COLOURS))])
    own = np.take_along_axis(counts, (labels + 1)[None], axis=0)[0]
    return np.where(own <= 2, counts.argmax(axis=0) - 1, labels)


def detect(image: np.ndarray) -> list[Detection]:
    """The objects in one uint8 image (H, W, 3), by colour, then in scan order of their components."""
    from scipy import ndimage

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect needs one RGB image (H, W, 3), got shape {image.shape}")
    labels = despeckle(colour_labels(image))
    min_area = max(3, round(MIN_AREA * image.shape[0] * image.shape[1] / 32**2))
    found = []
    for index, colour in enumerate(COLOURS):
        components, count = ndimage.label(labels == index)
        for k in range(1, count + 1):
            mask = ndimage.binary_fill_holes(components == k)
            if mask.sum() >= min_area:
                found.append(_describe(mask, colour))
    return found


def _describe(mask: np.ndarray, colour: str) -> Detection:
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[top : bottom + 1, left : right + 1]
    ious = tuple(_iou(box, _template(shape, *box.shape)) for shape in SHAPES)
    height, width = box.shape
    best = int(np.argmax(ious))
    round_enough = max(height, width) <= MAX_ASPECT * min(height, width)
    shape = SHAPES[best] if ious[best] >= MIN_IOU and round_enough else None
    return Detection(colour, shape, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, int(mask.sum()), ious)


def _template(shape: str, height: int, width: int) -> np.ndarray:
    """``shape`` filling a height × width box, drawn by pixel centres like the generator draws."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":  # a disc drawn by pixel centres reaches about half a pixel beyond its outermost centres
        return ((xs - width / 2) / (width + 0.5)) ** 2 + ((ys - height / 2) / (height + 0.5)) ** 2 <= 0.25
    u, v = xs / width - 0.5, ys / height  # u across in [-0.5, 0.5], v down in [0, 1]
    return np.abs(u) <= v / 2  # upright triangle: apex at the top centre, base along the bottom


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))
