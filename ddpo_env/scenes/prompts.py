"""Free-text prompts for scene specs, in several wordings per category, and the parser that reads them back.

    prompt_for(spec, rng)   one wording, chosen by rng ("a photo of three green circles")
    wordings(spec)          every wording of the spec
    parse_prompt(text)      the spec a prompt asks for; ValueError naming the grammar when it cannot be read

The grammar: an optional lead-in ("a photo of", "an image of", "a picture of"), then one noun phrase ("a red
circle", "three squares", "exactly 2 blue triangles"), two joined by "and", or two joined by a relation ("to the
left of", "left of", "to the right of", "right of", "above", "below"). A noun phrase is an article or count, an
optional colour and a shape. Case and a final full stop are ignored.
"""

from __future__ import annotations

import re

import numpy as np

from ddpo_env.scenes.spec import COLOURS, COUNT_WORDS, RELATIONS, SHAPES, ObjectSpec, SceneSpec

LEAD_INS = ("", "a photo of ", "an image of ")
RELATION_WORDS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below",),
}
EXAMPLES = (
    "a circle",
    "a square and a triangle",
    "three green circles",
    "a yellow square",
    "a red circle to the left of a blue square",
    "a red square and a green circle",
)


def _noun_phrase(obj: ObjectSpec, numeral: bool = False) -> str:
    words = f"{obj.colour} {obj.shape}" if obj.colour else obj.shape
    if obj.count == 1:
        return f"a {words}"
    return f"{obj.count if numeral else COUNT_WORDS[obj.count]} {words}s"


def wordings(spec: SceneSpec) -> tuple[str, ...]:
    """Every prompt that states ``spec``, in a fixed order."""
    if spec.category == "position":
        a, b = (_noun_phrase(o) for o in spec.objects)
        cores = [f"{a} {rel} {b}" for rel in RELATION_WORDS[spec.relation]]
    elif len(spec.objects) == 2:
        cores = [" and ".join(_noun_phrase(o) for o in spec.objects)]
    elif spec.category == "counting":
        cores = [_noun_phrase(spec.objects[0]), _noun_phrase(spec.objects[0], numeral=True)]
    else:
        cores = [_noun_phrase(spec.objects[0]), "one " + _noun_phrase(spec.objects[0])[2:]]
    return tuple(lead + core for core in cores for lead in LEAD_INS)


def prompt_for(spec: SceneSpec, rng: np.random.Generator) -> str:
    """One wording of ``spec``, drawn by ``rng``."""
    options = wordings(spec)
    return options[int(rng.integers(len(options)))]


_COUNT = {"a": 1, "an": 1, "one": 1, "1": 1, **{w: n for n, w in COUNT_WORDS.items()}}
_COUNT.update({str(n): n for n in COUNT_WORDS})
_NP = re.compile(
    rf"(?:exactly )?(?P<count>{'|'.join(_COUNT)}) (?:(?P<colour>{'|'.join(COLOURS)}) )?(?P<shape>{'|'.join(SHAPES)})"
    r"(?P<plural>s?)"
)
_RELATION = re.compile(
    "(?P<a>.+?) (?P<rel>" + "|".join(w for ws in RELATION_WORDS.values() for w in ws) + ") (?P<b>.+)"
)
_LEAD_IN = re.compile(r"(?:a photo of|an image of|a picture of) ")


def parse_prompt(prompt: str) -> SceneSpec:
    """The :class:`SceneSpec` ``prompt`` asks for. Raises ValueError, naming the grammar, for anything else."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt is a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    text = text[_LEAD_IN.match(text).end():] if _LEAD_IN.match(text) else text
    relation = _RELATION.fullmatch(text)
    if relation:
        objects = (_parse_np(relation["a"], prompt), _parse_np(relation["b"], prompt))
        name = next(r for r in RELATIONS if relation["rel"] in RELATION_WORDS[r])
        _single_objects(objects, prompt)
        return SceneSpec("position", objects, name)
    parts = text.split(" and ")
    if len(parts) == 2:
        objects = (_parse_np(parts[0], prompt), _parse_np(parts[1], prompt))
        _single_objects(objects, prompt)
        return SceneSpec("color_attr" if all(o.colour for o in objects) else "two_object", objects)
    if len(parts) == 1:
        obj = _parse_np(text, prompt)
        if obj.count > 1:
            return SceneSpec("counting", (obj,))
        return SceneSpec("colors" if obj.colour else "single_object", (obj,))
    raise _unreadable(prompt, "it joins more than two objects")


def _parse_np(text: str, prompt: str) -> ObjectSpec:
    match = _NP.fullmatch(text)
    if not match:
        raise _unreadable(prompt, f"{text!r} is not a noun phrase like 'a red circle' or 'three squares'")
    count = _COUNT[match["count"]]
    if (count > 1) != bool(match["plural"]):
        raise _unreadable(prompt, f"{text!r}: the count and the plural disagree")
    return ObjectSpec(match["shape"], match["colour"], count)


def _single_objects(objects: tuple[ObjectSpec, ...], prompt: str) -> None:
    if any(o.count != 1 for o in objects):
        raise _unreadable(prompt, "counts go with a single group ('three circles'), not with 'and' or a relation")


def _unreadable(prompt: str, why: str) -> ValueError:
    return ValueError(
        f"cannot read the scene prompt {prompt!r} ({why}). The geneval reward reads prompts like "
        + "; ".join(repr(e) for e in EXAMPLES)
        + f", with shapes {', '.join(SHAPES)}, colours {', '.join(COLOURS)} and counts two to four: see "
        "ddpo_env.scenes.prompts"
    )
