"""Lazy package exports (PEP 562): a package names what its modules define and imports a module
only when one of its names is first used, so importing the package stays free of torch (and of
the `evaluate` package) until the work needs them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, module_of: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> `package.<module_of[name]>.name`, imported
    on first use and then kept in the package (later lookups skip this function)."""

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
