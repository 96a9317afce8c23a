"""The ``geneval`` reward: a program that checks a shapes-world image against its prompt, GenEval's way.

The prompt is parsed into a spec (:func:`ddpo_env.scenes.parse_prompt`), the image's objects are found by colour
segmentation and a shape test (:mod:`rewards.scene_detect`), and each requirement of the spec is checked:

    single_object, two_object, colors, color_attr   at least one object of each group (shape, and colour if named)
    counting                                         exactly ``count`` objects of the group
    position                                         one of each group, the first's centroid at least
                                                     :data:`RELATION_MARGIN` pixels to the stated side of the second's

The binary verdict is 1 when every requirement holds. The dense score gives partial credit for training: each group
earns min(found, count) / count (counting: 1 − |found − count| / count, floored at 0), half of that for the shape
alone when the named colour is missing, and the relation 1 or 0; the score is their mean, and equals 1 exactly
when the verdict does.

Outside counting, GenEval (and the verdict) accept objects the prompt did not ask for, and a policy trained on that
score learns to draw extra objects: more tries at each group. ``geneval_strict`` (``GenEval(charge_extras=True)``)
charges them: its score is the partial credit × asked / max(asked, found), where asked is the number of objects the
prompt names and found the number detected (shapeless blobs included). It is 1 exactly when the verdict holds and
nothing else is drawn; the verdict itself is GenEval's.

    env = add_reward(gym.make_vec("DenoisingDiffusion-v0", model="shapes", num_envs=8), "geneval")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpo_env.scenes import SceneSpec, parse_prompt
from ddpo_env.scenes.spec import OPPOSITE
from rewards.scene_detect import Detection, detect
from rewards.scorer import Scorer

RELATION_MARGIN = 3.0  # pixels at 32×32, scaled with the image


@dataclass(frozen=True)
class Verdict:
    """The check of one image: its spec, the objects found, the partial-credit score and the binary verdict."""

    spec: SceneSpec
    detections: tuple[Detection, ...]
    score: float
    correct: bool

    @property
    def caption(self) -> str:
        found = ", ".join(f"{d.colour} {d.shape or 'blob'}" for d in self.detections) or "nothing"
        return f"{'OK' if self.correct else 'FAIL'} {self.score:.2f}: {found}"


def check(spec: SceneSpec, detections: list[Detection], image_size: int = 32) -> tuple[float, bool]:
    """(partial-credit score in [0, 1], binary verdict) of detections against spec."""
    terms = [_group_credit(spec, obj, detections) for obj in spec.objects]
    if spec.relation is not None:
        terms.append(float(_relation_holds(spec, detections, spec.relation, image_size)))
    score = float(np.mean(terms))
    return score, all(t == 1.0 for t in terms)


def _matches(d: Detection, obj, colour: bool = True) -> bool:
    return d.shape == obj.shape and (not colour or obj.colour is None or d.colour == obj.colour)


def _group_credit(spec: SceneSpec, obj, detections: list[Detection]) -> float:
    def credit(found: int) -> float:
        if spec.exact_count:
            return max(0.0, 1 - abs(found - obj.count) / obj.count)
        return min(found, obj.count) / obj.count

    full = credit(sum(_matches(d, obj) for d in detections))
    if obj.colour is None or full == 1.0:
        return full
    return max(full, 0.5 * credit(sum(_matches(d, obj, colour=False) for d in detections)))


def _relation_holds(spec: SceneSpec, detections, relation: str, image_size: int) -> bool:
    """Whether some object of the first group lies ``relation`` the second group's by the margin."""
    margin = RELATION_MARGIN * image_size / 32
    a, b = ([d for d in detections if _matches(d, o)] for o in spec.objects)
    return any(_holds(p, q, relation, margin) for p in a for q in b)


def _holds(a: Detection, b: Detection, relation: str, margin: float) -> bool:
    offset = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[relation]
    return offset >= margin


def relation_found(verdict: Verdict, image_size: int = 32) -> tuple[bool, bool, bool] | None:
    """For a position prompt's verdict: (both groups found, the stated relation holds between some pair of them, the
    opposite relation holds); None for other categories. A model that ignores the relation draws the two sides
    about equally often."""
    spec, found = verdict.spec, verdict.detections
    if spec.relation is None:
        return None
    both = all(any(_matches(d, o) for d in found) for o in spec.objects)
    return (both, _relation_holds(spec, found, spec.relation, image_size),
            _relation_holds(spec, found, OPPOSITE[spec.relation], image_size))


def objects_asked(spec: SceneSpec) -> int:
    """How many objects the prompt names (the counts of its groups)."""
    return sum(obj.count for obj in spec.objects)


def extras_factor(spec: SceneSpec, detections: list[Detection] | tuple[Detection, ...]) -> float:
    """asked / max(asked, found): 1 when the image holds no more objects than the prompt names, less for each extra."""
    asked = objects_asked(spec)
    return asked / max(asked, len(detections))


def verify(images: np.ndarray, prompts: list[str]) -> list[Verdict]:
    """The verdict for each uint8 image (B, H, W, 3) against its prompt; ValueError for a prompt it cannot read."""
    specs = [parse_prompt(p) for p in prompts]  # every prompt first, so a bad one fails before any work
    if len(specs) != len(images):
        raise ValueError(f"verify got {len(images)} images and {len(prompts)} prompts")
    verdicts = []
    for image, spec in zip(images, specs, strict=True):
        found = detect(image)
        score, correct = check(spec, found, image_size=int(np.asarray(image).shape[0]))
        verdicts.append(Verdict(spec, tuple(found), score, correct))
    return verdicts


def geneval_accuracy(images: np.ndarray, prompts: list[str]) -> float | None:
    """Share of images the verifier passes (None when a prompt is not a shapes-world prompt): how much of what the
    prompts ask for a model draws."""
    try:
        return float(np.mean([v.correct for v in verify(images, prompts)]))
    except ValueError:
        return None


class GenEval(Scorer):
    """GenEval-style prompt–image check for the shapes model: the partial-credit score in [0, 1] (``binary=False``,
    the training reward) or the 0/1 verdict (``binary=True``); ``charge_extras=True`` scales the partial credit by
    :func:`extras_factor`, so objects the prompt did not ask for cost reward. Prompts must follow the shapes-world
    grammar (:mod:`ddpo_env.scenes.prompts`); any other prompt raises an error that names it and the grammar."""

    name = "geneval"

    def __init__(self, *, binary: bool = False, charge_extras: bool = False) -> None:
        if binary and charge_extras:
            raise ValueError("GenEval: charge_extras scales the partial credit, and binary=True has none: "
                             "drop one of them")
        self.binary = bool(binary)
        self.charge_extras = bool(charge_extras)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        verdicts = verify(images, prompts)
        if self.binary:
            return np.array([float(v.correct) for v in verdicts])
        if self.charge_extras:
            return np.array([v.score * extras_factor(v.spec, v.detections) for v in verdicts])
        return np.array([v.score for v in verdicts])

    def __repr__(self) -> str:
        return f"GenEval(binary={self.binary}, charge_extras={self.charge_extras})"


class GenEvalBinary(GenEval):
    """The 0/1 verdict of :class:`GenEval` (GenEval's own score), by name ``geneval_binary``."""

    name = "geneval_binary"

    def __init__(self) -> None:
        super().__init__(binary=True)

    def __repr__(self) -> str:
        return "GenEvalBinary()"


class GenEvalStrict(GenEval):
    """:class:`GenEval`'s partial credit that charges objects the prompt did not ask for, by name
    ``geneval_strict``: a training reward without the extra-objects hack."""

    name = "geneval_strict"

    def __init__(self) -> None:
        super().__init__(charge_extras=True)

    def __repr__(self) -> str:
        return "GenEvalStrict()"
