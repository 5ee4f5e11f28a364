"""Release versions: semver 2.0.0 and the MCUboot header version, mapped by one rule.

A release manifest names a semantic version (``1.4.0``, ``1.1.1-rc1``,
``1.4.0+17``); an MCUboot image header holds ``major.minor.revision+build``
(u8, u8, u16, u32) and a BMS that runs a plain MCUboot image reports exactly
that (``1.4.0+0``). Both denote the same release through **one rule**
(:func:`image_version_of`, and :func:`version_of_image` back):

* ``MAJOR.MINOR.PATCH`` go to major, minor and revision unchanged
  (limits: major and minor 0–255, patch 0–65535).
* A release (no pre-release) carries decimal build metadata in the build
  number (``1.4.0+17`` → ``1.4.0+17``); a number above 4,294,967,295 or one
  that is a pre-release code (below) is refused. Other build metadata
  (``+sha.5e1f``) is not carried (build 0). Build metadata never counts for
  precedence (semver §10), but a header build number is part of the image's
  identity.
* A pre-release is carried in the build number as a code of ten digits: the
  stage (1 = ``alpha``, 2 = ``beta``, 3 = ``rc``) times 1,000,000,000, plus
  0 for the bare stage (``rc``), N for ``rc.N`` (N 1–899,999,999), or
  900,000,000 + D for the compact ``rcD`` (one digit D, 0–9).
  ``1.1.1-rc1`` → ``1.1.1+3900000001``; ``1.1.1-rc.2`` → ``1.1.1+3000000002``;
  ``2.0.0-beta`` → ``2.0.0+2000000000``. A pre-release carries no build metadata.
* Back: a build number that is such a code is that pre-release; any other
  build number is the build metadata of a release (0 = none). Every header
  version maps back, and maps forward again to itself.

Pre-releases outside this set (``-dev``, ``-rc.0``, ``-alpha.1.2``, ``-rc10``:
semver sorts ``rc10`` before ``rc2``) cannot be carried and are refused by
``bmsfw package build`` (:class:`VersionNotCarriedError`). Within the carried
set the mapping is exact both ways and keeps semver precedence: comparing
two header versions through this module gives the order of their semvers.
MCUboot itself compares only major.minor.revision (the build number only with
``MCUBOOT_VERSION_CMP_USE_BUILD_NUMBER``), so to the bootloader a pre-release
and its release are the same version; anti-rollback is the security counter.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import total_ordering

from bmsfw.package.errors import InvalidVersionError, VersionNotCarriedError

__all__ = [
    "ImageVersion",
    "Version",
    "VersionRange",
    "as_version",
    "compare_versions",
    "device_runs",
    "image_version_of",
    "parse_image_version",
    "parse_version",
    "version_of_image",
]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
# The MCUboot form as devices and imgtool print it, a decimal build number required
# (``1.5.0+0``), or as Zephyr's MCUmgr image list does (``1.5.0.7``: ``.BUILD``, left out
# when 0); without a build a string is read as a semver.
_IMAGE_FORM = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,5})[+.](\d{1,10})$")
_MAX_TEXT = 256

_STAGES = ("alpha", "beta", "rc")  # codes 1, 2, 3
_STAGE_UNIT = 1_000_000_000
_COMPACT_BASE = 900_000_000
_MAX_DOTTED = _COMPACT_BASE - 1
_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFFFFFF


def _identifier_key(ident: str) -> tuple[int, int, str]:
    # Numeric identifiers sort below alphanumeric ones and compare as numbers (semver 11.4).
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version (semver 2.0.0); ``<`` and ``==`` follow semver precedence.

    Build metadata is kept (``str`` shows it) but, as semver §10 says, does not
    take part in precedence: ``Version`` values that differ only in build
    metadata compare equal (and hash alike).
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = field(default="", compare=False)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    @classmethod
    def parse(cls, text: str) -> Version:
        return parse_version(text)

    @property
    def core(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def precedence_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        """Semver precedence: a release sorts after its pre-releases; build is ignored."""
        pre = tuple(_identifier_key(p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.precedence_key() < other.precedence_key()


@dataclass(frozen=True, order=True)
class ImageVersion:
    """MCUboot image header version: u8 major, u8 minor, u16 revision, u32 build.

    Ordered field by field (MCUboot's numeric order, build included); to order
    releases, compare their :class:`Version` (:func:`version_of_image`).
    """

    major: int
    minor: int
    revision: int
    build: int = 0

    def __post_init__(self) -> None:
        limits = (self.major, _U8), (self.minor, _U8), (self.revision, _U16), (self.build, _U32)
        if not all(isinstance(v, int) and 0 <= v <= top for v, top in limits):
            raise InvalidVersionError(
                f"image version {self.major}.{self.minor}.{self.revision}+{self.build} "
                "does not fit u8.u8.u16+u32"
            )

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}+{self.build}"

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        return parse_image_version(text)


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        raise InvalidVersionError(f"{what} is not a version string")
    return text.strip()


def parse_version(text: str, *, what: str = "version") -> Version:
    """Parse a semantic version ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``."""
    match = _SEMVER.match(_check_text(text, what))
    if match is None:
        raise InvalidVersionError(
            f"{what} {text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])"
        )
    major, minor, patch, pre, build = match.groups()
    return Version(
        int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or ""
    )


def parse_image_version(text: str) -> ImageVersion:
    """Parse an MCUboot version as imgtool takes it: ``1.2.3`` or ``1.2.3+4``."""
    core, plus, build = _check_text(text, "image version").partition("+")
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or (plus and not build.isdigit()):
        raise InvalidVersionError(f"image version {text!r} is not MAJOR.MINOR.REVISION[+BUILD]")
    major, minor, revision = (int(p) for p in parts)
    return ImageVersion(major, minor, revision, int(build) if plus else 0)


def _prerelease_code(version: Version) -> int:
    pre = version.prerelease
    stage = pre[0].rstrip("0123456789") if len(pre) == 1 else pre[0]
    if stage in _STAGES:
        base = (_STAGES.index(stage) + 1) * _STAGE_UNIT
        if pre == (stage,):
            return base
        if len(pre) == 1 and len(pre[0]) == len(stage) + 1:  # compact rcD
            return base + _COMPACT_BASE + int(pre[0][-1])
        if len(pre) == 2 and pre[1].isdigit() and 1 <= int(pre[1]) <= _MAX_DOTTED:
            return base + int(pre[1])
    raise VersionNotCarriedError(
        f"pre-release {'.'.join(pre)!r} of {version} cannot be carried in an MCUboot "
        "header version; use alpha, beta or rc, alone, with .N (N >= 1) or one digit "
        "(e.g. 1.2.0-rc.1 or 1.2.0-rc1)"
    )


def image_version_of(version: Version | str) -> ImageVersion:
    """The MCUboot header version that carries this release version (the rule above).

    Raises :class:`VersionNotCarriedError` for a version the rule cannot carry.
    """
    v = parse_version(version) if isinstance(version, str) else version
    if v.major > _U8 or v.minor > _U8 or v.patch > _U16:
        raise VersionNotCarriedError(
            f"version {v} does not fit an MCUboot header (major and minor up to 255, "
            "patch up to 65535)"
        )
    if v.prerelease:
        return ImageVersion(v.major, v.minor, v.patch, _prerelease_code(v))
    if not v.build.isdigit():
        return ImageVersion(v.major, v.minor, v.patch, 0)  # not carried (and not compared)
    build = int(v.build)
    if build > _U32 or _decode_prerelease(build):
        raise VersionNotCarriedError(
            f"build number {v.build} of {v} cannot be carried in an MCUboot header version: "
            "it must be below 4294967296 and not a pre-release code "
            "(e.g. 1.2.0+17, or 1.2.0-rc.1 for a pre-release)"
        )
    return ImageVersion(v.major, v.minor, v.patch, build)


def _decode_prerelease(build: int) -> tuple[str, ...]:
    stage, rest = divmod(build, _STAGE_UNIT)
    if not 1 <= stage <= len(_STAGES):
        return ()
    name = _STAGES[stage - 1]
    if rest == 0:
        return (name,)
    if rest <= _MAX_DOTTED:
        return (name, str(rest))
    if rest - _COMPACT_BASE <= 9:
        return (f"{name}{rest - _COMPACT_BASE}",)
    return ()


def version_of_image(image: ImageVersion) -> Version:
    """The release version a header version denotes (inverse of :func:`image_version_of`)."""
    pre = _decode_prerelease(image.build)
    build = "" if pre or image.build == 0 else str(image.build)
    return Version(image.major, image.minor, image.revision, pre, build)


def _reported_image_version(text: str) -> ImageVersion | None:
    match = _IMAGE_FORM.match(text.strip())
    if match is None:
        return None
    major, minor, revision, build = (int(g) for g in match.groups())
    try:
        return ImageVersion(major, minor, revision, build)
    except InvalidVersionError:
        return None


def as_version(text: str) -> Version:
    """A version string in either form, as the release version it denotes.

    ``MAJOR.MINOR.REVISION+BUILD`` with a decimal build (what an MCUboot device
    reports), or ``MAJOR.MINOR.REVISION.BUILD`` (MCUmgr's image list), is read as
    a header version and mapped back by the rule; anything else must be a semver.
    """
    image = _reported_image_version(_check_text(text, "version"))
    return version_of_image(image) if image is not None else parse_version(text)


def device_runs(release_version: str, reported: str) -> bool:
    """Does a device that reports ``reported`` run the release ``release_version``?

    ``reported`` is either the MCUboot header version (``1.5.0+0``, or MCUmgr's
    ``1.5.0.7``; it must be exactly the header version the rule gives for the
    release, build included)
    or a semver from the application's descriptor (equal precedence: build
    metadata ignored). An unreadable report runs no release (False).
    """
    release = parse_version(release_version, what="release version")
    if not isinstance(reported, str) or len(reported) > _MAX_TEXT:
        return False
    image = _reported_image_version(reported)
    if image is not None:
        try:
            return image_version_of(release) == image
        except VersionNotCarriedError:
            return False
    try:
        return parse_version(reported) == release
    except InvalidVersionError:
        return False


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as release ``a`` precedes, equals or follows ``b`` (either form each)."""
    va, vb = as_version(a), as_version(b)
    return (va > vb) - (va < vb)


_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(\S+)\s*$")
_OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class VersionRange:
    """A version selector: comparisons that must all hold, e.g. ``">=1.2.0,<2.0.0"``.

    A bare version means ``==``; comparisons use semver precedence.
    """

    comparisons: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        parts = [p for p in _check_text(text, "version range").split(",") if p.strip()]
        if not parts:
            raise InvalidVersionError("empty version range")
        comparisons = []
        for part in parts:
            match = _COMPARISON.match(part)
            if match is None:
                raise InvalidVersionError(f"bad comparison {part!r} in version range {text!r}")
            comparisons.append((match.group(1) or "==", parse_version(match.group(2))))
        return cls(tuple(comparisons))

    def contains(self, version: Version | str) -> bool:
        """Does ``version`` (a :class:`Version`, or a string in either form) match?"""
        v = as_version(version) if isinstance(version, str) else version
        return all(_OPERATORS[op](v, bound) for op, bound in self.comparisons)
