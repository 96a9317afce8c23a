"""What a scene prompt asks for, in GenEval's six categories, and the vocabulary of the shapes world.

A :class:`SceneSpec` is a list of :class:`ObjectSpec` groups ("three green circles" is one group of count 3) plus,
for the position category, a relation between the first and the second group. GenEval's rules decide what an image
must show: *counting* asks for exactly ``count`` objects of the group, every other category for at least one.

Held-out combinations (:data:`HELDOUT_PAIRS`, :data:`HELDOUT_COUNTS`) never appear in the model's training images
nor in the RL training prompts; prompts that contain them measure generalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
#: Number words of the counting category (counts 2 to 4; "a"/"one" are the other categories' one).
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

#: Colour–shape pairs no training image or training prompt contains.
HELDOUT_PAIRS = frozenset({("yellow", "triangle"), ("blue", "circle")})
#: (count, shape) pairs no counting training image or prompt contains.
HELDOUT_COUNTS = frozenset({(3, "triangle")})


@dataclass(frozen=True)
class ObjectSpec:
    """A group of ``count`` objects of ``shape``, all of ``colour`` (None: any colour)."""

    shape: str
    colour: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}: use one of {SHAPES}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}: use one of {COLOURS} or None")
        if not 1 <= self.count <= max(COUNT_WORDS):
            raise ValueError(f"count must be 1 to {max(COUNT_WORDS)}, got {self.count}")


@dataclass(frozen=True)
class SceneSpec:
    """A prompt's meaning: its category, object groups and (position only) the relation of group 0 to group 1."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}: use one of {CATEGORIES}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}: use one of {RELATIONS}")
        if (self.relation is not None) != (self.category == "position") or (
            self.category == "position" and len(self.objects) != 2
        ):
            raise ValueError(f"{self.category}: a relation goes with the position category and two objects")

    @property
    def exact_count(self) -> bool:
        """Counting asks for exactly ``count`` objects; the other categories for at least one."""
        return self.category == "counting"

    @property
    def num_objects(self) -> int:
        return sum(o.count for o in self.objects)

    def is_heldout(self) -> bool:
        """Whether the spec contains a held-out colour–shape pair or (counting) a held-out count."""
        pairs = any((o.colour, o.shape) in HELDOUT_PAIRS for o in self.objects)
        counts = self.category == "counting" and any((o.count, o.shape) in HELDOUT_COUNTS for o in self.objects)
        return pairs or counts


#: Each relation and its reverse.
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def violations(spec: SceneSpec) -> dict[str, SceneSpec]:
    """Specs whose scenes break ``spec``, by kind: a group with another shape, another colour, another count
    (counting), a group missing, the relation reversed (position), the colours swapped (colour attribution).
    A scene drawn from any of them fails ``spec``'s check."""
    objects, out = list(spec.objects), {}
    used_shapes = {o.shape for o in objects}
    first = objects[0]
    other_shapes = [s for s in SHAPES if s not in used_shapes]
    if other_shapes:
        out["shape"] = _replace(spec, 0, ObjectSpec(other_shapes[0], first.colour, first.count))
    if first.colour is not None:
        taken = {o.colour for o in objects if o.shape == first.shape}
        colour = next(c for c in COLOURS if c not in taken)
        out["colour"] = _replace(spec, 0, ObjectSpec(first.shape, colour, first.count))
    if spec.category == "counting":
        count = first.count - 1 if first.count == max(COUNT_WORDS) else first.count + 1
        out["count"] = SceneSpec("counting", (ObjectSpec(first.shape, first.colour, count),))
        out["count_fewer"] = SceneSpec("counting", (ObjectSpec(first.shape, first.colour, first.count - 1),))
    if len(objects) == 2:
        rest = objects[1]
        out["missing"] = SceneSpec("colors" if rest.colour else "single_object", (rest,))
    if spec.relation is not None:
        out["relation"] = SceneSpec("position", spec.objects, OPPOSITE[spec.relation])
    if spec.category == "color_attr":
        a, b = objects
        out["binding"] = SceneSpec(spec.category, (ObjectSpec(a.shape, b.colour), ObjectSpec(b.shape, a.colour)))
    return out


def _replace(spec: SceneSpec, index: int, obj: ObjectSpec) -> SceneSpec:
    objects = list(spec.objects)
    objects[index] = obj
    return SceneSpec(spec.category, tuple(objects), spec.relation)
