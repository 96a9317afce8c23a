"""Package tops that import nothing heavy: a public name loads its module on first use (PEP 562), so ``import
ddpo_env`` / ``import rewards`` / ``import agents`` load no torch and the command line answers before any model code
loads, while ``from package import Name`` keeps working for every name in ``__all__``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str],
                    computed: Mapping[str, Callable[[], Any]] | None = None
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        names: each public name → the module that defines it, imported on first access.
        computed: names whose value a function builds on first access (e.g. a registry of classes).

    Any other name is looked up as a submodule (``ddpo_env.backends`` after a plain ``import ddpo_env``). A value is
    cached in the package, so later lookups skip ``__getattr__``."""
    computed = dict(computed or {})

    def __getattr__(name: str) -> Any:
        if name in computed:
            value = computed[name]()
        elif name in names:
            value = getattr(importlib.import_module(names[name]), name)
        else:
            if not name.startswith("_"):
                try:
                    return importlib.import_module(f"{package}.{name}")
                except ModuleNotFoundError as error:
                    if error.name != f"{package}.{name}":
                        raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names, *computed})

    return __getattr__, __dir__
