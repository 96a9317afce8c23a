"""Typed dataclass fields, checked: a config value must match its field's annotation.

The config dataclasses (``EnvConfig``, ``AgentConfig`` and its subclasses, ``TrainConfig``) call
:func:`check_fields` first thing in ``__post_init__``, so a wrong value is refused wherever it comes from (keyword
arguments, ``gym.make``, a config file, a command-line flag, a checkpoint's saved config), with a message that names
the field and the type it takes:

    >>> AgentConfig(learning_rate="fast")
    FieldTypeError: learning_rate must be a float, got 'fast' (str)

The rules: ``bool`` takes only bools (not 0/1); ``int`` takes ints but not bools or floats (``1.5`` is refused, and
so is ``2.0``); ``float`` takes ints and floats; numpy scalars count as their Python kind and are stored as it; a
``tuple[...]`` field takes a tuple or a list (stored as a tuple: config files have lists), its items checked; a
``Sequence[...]`` field any list or tuple (its items are left to the code that reads them); ``X | None`` and other
unions take any of their arms; ``Literal[...]`` takes one of its values; ``Any`` takes anything. Annotations are
resolved with :func:`typing.get_type_hints`, so modules may use ``from __future__ import annotations``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import os
import types
import typing
from typing import Any

import numpy as np


class FieldTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type. A TypeError, and a ValueError so that everything that
    reports bad settings (the ``ddpo`` command line, config-file loading) shows it as one line."""


class _Mismatch(Exception):
    """Internal: the value does not match the hint."""


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotation of every dataclass field of ``cls`` (its bases' included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(instance: Any) -> None:
    """Check every field of the dataclass ``instance`` against its annotation; raise :class:`FieldTypeError`
    naming the first wrong one and the type it takes. Accepted values are stored normalised: numpy scalars as
    Python ``int``/``float``/``bool``, lists given for tuple fields as tuples."""
    for name, hint in field_hints(type(instance)).items():
        value = getattr(instance, name)
        try:
            conformed = conform(value, hint)
        except _Mismatch:
            raise FieldTypeError(f"{name} must be {describe(hint, article=True)}, got {value!r} "
                                 f"({type(value).__name__})") from None
        if conformed is not value:
            setattr(instance, name, conformed)


def conform(value: Any, hint: Any) -> Any:
    """``value`` as a value of type ``hint`` (normalised as :func:`check_fields` says), or raise the internal
    mismatch error; :func:`matches` is the public yes/no."""
    if hint is Any or hint is object:
        return value
    if hint is type(None) or hint is None:
        if value is None:
            return value
        raise _Mismatch
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return conform(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        raise _Mismatch
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch
    if hint is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return value if type(value) is int else int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            return value if type(value) in (int, float) else value.item()
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple or hint is tuple:
        return _conform_tuple(value, args)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        if callable(value):
            return value
        raise _Mismatch
    if origin is collections.abc.Sequence:  # (its items are the consumer's to check, with its own message)
        if isinstance(value, collections.abc.Sequence) and not isinstance(value, (str, bytes)):
            return value
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    raise TypeError(f"check_fields cannot check the annotation {hint!r}: add it to ddpo_env.fields.conform or "
                    "annotate the field as Any")


def _conform_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(value, (tuple, list)):
        raise _Mismatch
    if not args:
        return tuple(value)
    kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(kinds) != len(value):
        raise _Mismatch
    items = [conform(item, kind) for item, kind in zip(value, kinds, strict=True)]
    if isinstance(value, tuple) and all(a is b for a, b in zip(items, value, strict=True)):
        return value
    return tuple(items)


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is acceptable for a field annotated ``hint`` (the rules of :func:`check_fields`)."""
    try:
        conform(value, hint)
    except _Mismatch:
        return False
    return True


def describe(hint: Any, article: bool = False) -> str:
    """The annotation as a reader says it: 'an int', 'a float or None', 'a tuple of 2 ints', "one of 'a', 'b'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [describe(arm, article) for arm in args if arm is not type(None)]
        text = ", ".join(arms[:-1]) + " or " + arms[-1] if len(arms) > 1 else arms[0]
        return text + (" or None" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"tuple of {_plural(args[0])}"
        elif args and len(set(args)) == 1:
            text = f"tuple of {len(args)} {_plural(args[0])}"
        else:
            text = "tuple"
        return ("a " if article else "") + text
    if origin is collections.abc.Sequence:
        return ("a " if article else "") + f"list of {_plural(args[0])}" if args else "list"
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return ("a " if article else "") + "function"
    if hint is type(None) or hint is None:
        return "None"
    name = _name(hint)
    if not article:
        return name
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


_NAMES = {str: "string", bool: "bool", int: "int", float: "float", dict: "dict", tuple: "tuple", os.PathLike: "path"}


def _name(hint: Any) -> str:
    if hint in _NAMES:
        return _NAMES[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"{hint.__name__} ({', '.join(repr(m.value) for m in hint)})"
    origin = typing.get_origin(hint)
    if origin is not None:
        return _name(origin)
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return describe(hint) + "s" if isinstance(hint, type) else describe(hint)
