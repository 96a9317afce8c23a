"""The procedural scene generator: seeded layouts of 1–4 flat shapes on a dark background, rendered to small RGB
images with no download and no randomness outside the ``numpy.random.Generator`` it is given.

    rng = np.random.default_rng(0)
    spec = sample_spec("position", rng)                 # a SceneSpec
    scene = make_scene(spec, rng)                       # its objects placed and drawn: scene.image (32, 32, 3) uint8

Shapes are drawn without anti-aliasing (a pixel is inside when its centre is), objects never touch (a gap of at least
:data:`GAP` pixels between bounding boxes), and sizes, colours and background vary a little from scene to scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpo_env.scenes.spec import (
    CATEGORIES,
    COLOURS,
    COUNT_WORDS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
)

IMAGE_SIZE = 32
#: Nominal RGB of each colour word, in [0, 1]; a scene jitters each channel by up to :data:`COLOUR_JITTER`.
PALETTE = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.78, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
COLOUR_JITTER = 0.06
BACKGROUND = (0.02, 0.12)  # grey level range of the background
RADII = (4, 5, 6)  # half the side of an object's bounding box, in pixels
GAP = 2  # pixels between two objects' bounding boxes, at least
#: Distance between the two objects' centres along the relation's axis in position scenes, at least.
RELATION_OFFSET = 8


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: its shape, colour word, centre (x right, y down, in pixels) and half-size ``r``."""

    shape: str
    colour: str
    x: float
    y: float
    r: int


@dataclass(frozen=True)
class Scene:
    spec: SceneSpec
    objects: tuple[PlacedObject, ...]
    image: np.ndarray  # (H, W, 3) uint8


def sample_spec(category: str, rng: np.random.Generator, *, heldout: bool = False) -> SceneSpec:
    """A random spec of ``category``: one without any held-out combination, or (``heldout=True``) one with one.
    Raises ValueError for a category that has no held-out prompts (single_object and two_object name no colour)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}: use one of {CATEGORIES}")
    if heldout and category in ("single_object", "two_object"):
        raise ValueError(f"{category} prompts name no colour or count, so none is held out")
    for _ in range(10_000):
        spec = _draw_spec(category, rng)
        if spec.is_heldout() == heldout:
            return spec
    raise RuntimeError(f"no {'held-out' if heldout else 'training'} {category} spec found")  # pragma: no cover


def _draw_spec(category: str, rng: np.random.Generator) -> SceneSpec:
    def pick(options):
        return options[int(rng.integers(len(options)))]

    if category == "single_object":
        return SceneSpec(category, (ObjectSpec(pick(SHAPES)),))
    if category == "two_object":
        a, b = rng.choice(len(SHAPES), size=2, replace=False)
        return SceneSpec(category, (ObjectSpec(SHAPES[a]), ObjectSpec(SHAPES[b])))
    if category == "counting":
        colour = pick(COLOURS) if rng.random() < 0.5 else None
        return SceneSpec(category, (ObjectSpec(pick(SHAPES), colour, pick(tuple(COUNT_WORDS))),))
    if category == "colors":
        return SceneSpec(category, (ObjectSpec(pick(SHAPES), pick(COLOURS)),))
    if category == "position":
        pairs = [(c, s) for c in COLOURS for s in SHAPES]
        i, j = rng.choice(len(pairs), size=2, replace=False)
        objects = (ObjectSpec(pairs[i][1], pairs[i][0]), ObjectSpec(pairs[j][1], pairs[j][0]))
        return SceneSpec(category, objects, pick(RELATIONS))
    a, b = rng.choice(len(SHAPES), size=2, replace=False)
    c, d = rng.choice(len(COLOURS), size=2, replace=False)
    return SceneSpec(category, (ObjectSpec(SHAPES[a], COLOURS[c]), ObjectSpec(SHAPES[b], COLOURS[d])))


def layout(spec: SceneSpec, rng: np.random.Generator, *, avoid_heldout: bool = True) -> tuple[PlacedObject, ...]:
    """Objects that show ``spec``: each group's count, shape and colour (a random colour where the spec names none,
    never a held-out pair when ``avoid_heldout``), placed apart, and in position scenes the relation with at least
    :data:`RELATION_OFFSET` pixels along its axis (and less across it)."""
    wanted = [(o.shape, o.colour) for o in spec.objects for _ in range(o.count)]
    radii = RADII[:2] if len(wanted) > 3 else RADII  # four objects of the largest size rarely fit
    for _ in range(1000):
        placed: list[PlacedObject] = []
        for shape, colour in wanted:
            colour = colour or _free_colour(shape, rng, avoid_heldout)
            for _ in range(50):
                r = int(radii[int(rng.integers(len(radii)))])
                x, y = rng.uniform(r, IMAGE_SIZE - r, size=2)
                candidate = PlacedObject(shape, colour, float(x), float(y), r)
                if all(_apart(candidate, other) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break
        else:
            if spec.relation is None or _shows_relation(placed[0], placed[1], spec.relation):
                return tuple(placed)
    raise RuntimeError(f"could not lay out {spec}")  # pragma: no cover


def _free_colour(shape: str, rng: np.random.Generator, avoid_heldout: bool) -> str:
    options = [c for c in COLOURS if not (avoid_heldout and (c, shape) in HELDOUT_PAIRS)]
    return options[int(rng.integers(len(options)))]


def _apart(a: PlacedObject, b: PlacedObject) -> bool:
    reach = a.r + b.r + GAP
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def _shows_relation(a: PlacedObject, b: PlacedObject, relation: str) -> bool:
    along, across = (b.x - a.x, b.y - a.y) if relation in ("left of", "right of") else (b.y - a.y, b.x - a.x)
    if relation in ("right of", "below"):
        along = -along
    return along >= RELATION_OFFSET and abs(across) < along


def draw(objects: tuple[PlacedObject, ...], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The objects drawn on a dark grey background, (size, size, 3) uint8, colours jittered by ``rng``."""
    image = np.full((size, size, 3), rng.uniform(*BACKGROUND), dtype=np.float64)
    for obj in objects:
        colour = np.clip(np.asarray(PALETTE[obj.colour]) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 1)
        image[shape_mask(obj, size)] = colour
    return np.round(image * 255).astype(np.uint8)


def shape_mask(obj: PlacedObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool: the pixels whose centres lie inside the object."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - obj.x, ys - obj.y
    if obj.shape == "square":
        return (np.abs(dx) <= obj.r) & (np.abs(dy) <= obj.r)
    if obj.shape == "circle":
        return dx**2 + dy**2 <= obj.r**2
    # an upright isosceles triangle: apex at the top, base of width 2r at the bottom
    return (dy >= -obj.r) & (dy <= obj.r) & (np.abs(dx) <= (dy + obj.r) / 2)


def make_scene(spec: SceneSpec, rng: np.random.Generator, *, avoid_heldout: bool = True) -> Scene:
    """``spec`` laid out and drawn."""
    objects = layout(spec, rng, avoid_heldout=avoid_heldout)
    return Scene(spec, objects, draw(objects, rng))
