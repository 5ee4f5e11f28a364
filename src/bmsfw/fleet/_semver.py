"""Semantic versions (semver 2.0.0 precedence) and version-range selectors.

A range is a comma-separated list of comparisons, all of which must hold:
``">=1.2.0,<2.0.0"``; a bare version means ``==``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

__all__ = ["Version", "VersionRange"]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(\S+)\s*$")


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _SEMVER.match(text.strip())
        if match is None:
            raise ValueError(f"not a semantic version: {text!r}")
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A version without prerelease sorts above any prerelease of it (semver 11.3);
        # numeric identifiers sort below alphanumeric ones (semver 11.4).
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core


@dataclass(frozen=True)
class VersionRange:
    comparisons: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError("empty version range")
        comparisons = []
        for part in parts:
            match = _COMPARISON.match(part)
            if match is None:
                raise ValueError(f"bad comparison {part!r} in version range {text!r}")
            comparisons.append((match.group(1) or "==", Version.parse(match.group(2))))
        return cls(tuple(comparisons))

    def contains(self, version: Version) -> bool:
        for op, bound in self.comparisons:
            ok = {
                ">=": version >= bound,
                "<=": version <= bound,
                ">": version > bound,
                "<": version < bound,
                "==": version == bound,
                "!=": version != bound,
            }[op]
            if not ok:
                return False
        return True
