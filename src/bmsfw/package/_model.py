"""Small value types shared by images, manifests and verification."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bmsfw.package.errors import InvalidManifestError

__all__ = ["DeviceFacts", "HardwareCompat", "SemVer", "parse_semver"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-/ ]{0,63}$")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@dataclass(frozen=True)
class HardwareCompat:
    """Which BMS hardware a release or image runs on: one model, one or more revisions."""

    model: str
    revisions: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not _NAME_RE.match(self.model):
            raise InvalidManifestError(f"hardware model {self.model!r} is not a valid name")
        if not isinstance(self.revisions, tuple) or not self.revisions:
            raise InvalidManifestError("hardware compatibility needs at least one revision")
        for rev in self.revisions:
            if not isinstance(rev, str) or not _NAME_RE.match(rev) or len(rev) > 32:
                raise InvalidManifestError(f"hardware revision {rev!r} is not a valid name")
        if len(set(self.revisions)) != len(self.revisions):
            raise InvalidManifestError(f"hardware revisions repeat: {self.revisions}")

    def accepts(self, model: str, revision: str) -> bool:
        return model == self.model and revision in self.revisions


@dataclass(frozen=True)
class DeviceFacts:
    """What the verifier knows about the target BMS (read during identification)."""

    model: str
    hw_revision: str
    bootloader_version: str
    security_counter: int
    channel: Literal["wired", "ota"] = "wired"


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    def precedence_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        """Semver 2.0 precedence: a release sorts after its pre-releases; build is ignored."""
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self.precedence_key() < other.precedence_key()

    def __le__(self, other: SemVer) -> bool:
        return self.precedence_key() <= other.precedence_key()


def parse_semver(text: str, *, what: str = "version") -> SemVer:
    match = _SEMVER_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise InvalidManifestError(f"{what} {text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre, build = match.groups()
    return SemVer(
        int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or ""
    )
