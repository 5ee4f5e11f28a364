"""Error codes a device or agent reported, explained from the troubleshooting catalogue.

The catalogue is the error classes themselves (``bmsfw.errors``): each has a code, a
diagnosis and a remedy, and docs/troubleshooting.md is checked against them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache

from bmsfw.errors import all_error_classes

__all__ = ["Explanation", "explain"]

# Every module that defines error classes (the catalogue is what is imported).
_ERROR_MODULES = (
    "bmsfw.package.errors",
    "bmsfw.protocol.device_errors",
    "bmsfw.link.errors",
    "bmsfw.protocol.errors",
    "bmsfw.update.errors",
    "bmsfw.fleet.errors",
    "bmsfw.fleet.agent_errors",
)


@dataclass(frozen=True)
class Explanation:
    code: str
    name: str
    diagnosis: str
    remedy: str


@cache
def _catalogue() -> dict[str, Explanation]:
    for name in _ERROR_MODULES:
        importlib.import_module(name)
    return {
        cls.code: Explanation(cls.code, cls.__name__, cls.diagnosis, cls.remedy)
        for cls in all_error_classes()
    }


def explain(code: str) -> Explanation | None:
    """The catalogue's entry for ``code`` (``BMSFW-E203`` or ``E203``), None if unknown."""
    code = code.strip().upper()
    if code and not code.startswith("BMSFW-"):
        code = f"BMSFW-{code}"
    return _catalogue().get(code)
