"""The release manifest: canonical JSON, strictly parsed.

Canonical means: UTF-8, keys sorted, no insignificant whitespace, no floats.
A parsed manifest must re-encode to exactly the signed bytes, so two parsers
can never read different meanings out of one signature.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from bmsfw.package._model import HardwareCompat, parse_semver
from bmsfw.package.errors import InvalidManifestError, UnsupportedFormatVersionError

__all__ = ["FORMAT_VERSION", "SAFETY_CLASSES", "Component", "Manifest"]

FORMAT_VERSION = 1
SAFETY_CLASSES = ("standard", "safety-critical")
MAX_MANIFEST_BYTES = 64 * 1024
_COMPONENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,63}$")
_U32 = 0xFFFFFFFF

SafetyClass = Literal["standard", "safety-critical"]


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


@dataclass(frozen=True)
class Component:
    """One component: the decoded MCUboot image (what lands in flash) and its stored form."""

    name: str
    image_size: int
    image_sha256: bytes
    encoding: str  # "raw" or "zstd"; later "lz4", "heatshrink", "delta"
    stored_size: int
    stored_sha256: bytes

    @property
    def member(self) -> str:
        """Its path inside the zip, derived (never read from the file) to avoid path tricks."""
        from bmsfw.package._encoding import suffix_for

        return f"components/{self.name}.bin{suffix_for(self.encoding)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_size": self.image_size,
            "image_sha256": self.image_sha256.hex(),
            "encoding": self.encoding,
            "stored_size": self.stored_size,
            "stored_sha256": self.stored_sha256.hex(),
        }


@dataclass(frozen=True)
class Manifest:
    product: str
    version: str
    security_counter: int
    hardware: HardwareCompat
    min_bootloader_version: str
    safety_class: SafetyClass
    components: tuple[Component, ...]
    release_notes: str
    created_at: str  # ISO 8601 UTC, "YYYY-MM-DDTHH:MM:SSZ"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.product, str) or not _PRODUCT_RE.match(self.product):
            raise InvalidManifestError(f"product {self.product!r} is not a valid name")
        parse_semver(self.version)
        parse_semver(self.min_bootloader_version, what="min_bootloader_version")
        if (
            not isinstance(self.security_counter, int)
            or isinstance(self.security_counter, bool)
            or not 0 <= self.security_counter <= _U32
        ):
            raise InvalidManifestError(f"security_counter {self.security_counter!r} not in u32")
        if self.safety_class not in SAFETY_CLASSES:
            raise InvalidManifestError(
                f"safety_class {self.safety_class!r} not in {SAFETY_CLASSES}"
            )
        if not isinstance(self.release_notes, str) or len(self.release_notes) > 16_000:
            raise InvalidManifestError("release_notes must be text of at most 16,000 characters")
        if not isinstance(self.created_at, str) or not _TIME_RE.match(self.created_at):
            raise InvalidManifestError(
                f"created_at {self.created_at!r} is not YYYY-MM-DDTHH:MM:SSZ"
            )
        if not self.components:
            raise InvalidManifestError("a release needs at least one component")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise InvalidManifestError(f"component names repeat: {names}")

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "product": self.product,
            "version": self.version,
            "security_counter": self.security_counter,
            "hardware": {"model": self.hardware.model, "revisions": list(self.hardware.revisions)},
            "min_bootloader_version": self.min_bootloader_version,
            "safety_class": self.safety_class,
            "components": [c.to_dict() for c in self.components],
            "release_notes": self.release_notes,
            "created_at": self.created_at,
        }

    def to_json_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(
                f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}"
            )
        try:
            raw = json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InvalidManifestError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidManifestError("manifest must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise UnsupportedFormatVersionError(
                f"manifest format_version {version!r}; this bmsfw reads {FORMAT_VERSION}"
            )
        manifest = cls._from_dict(raw)
        if manifest.to_json_bytes() != data:
            raise InvalidManifestError("manifest is not in canonical form (sorted keys, compact)")
        return manifest

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> Manifest:
        expected = {
            "format_version",
            "product",
            "version",
            "security_counter",
            "hardware",
            "min_bootloader_version",
            "safety_class",
            "components",
            "release_notes",
            "created_at",
        }
        _exact_keys(raw, expected, "manifest")
        hw = raw["hardware"]
        if not isinstance(hw, dict):
            raise InvalidManifestError("hardware must be an object")
        _exact_keys(hw, {"model", "revisions"}, "hardware")
        if not isinstance(hw["revisions"], list):
            raise InvalidManifestError("hardware.revisions must be a list")
        comps = raw["components"]
        if not isinstance(comps, list):
            raise InvalidManifestError("components must be a list")
        return cls(
            product=_typed(raw, "product", str),
            version=_typed(raw, "version", str),
            security_counter=_typed(raw, "security_counter", int),
            hardware=HardwareCompat(_typed(hw, "model", str), tuple(hw["revisions"])),
            min_bootloader_version=_typed(raw, "min_bootloader_version", str),
            safety_class=cast(SafetyClass, _typed(raw, "safety_class", str)),
            components=tuple(_component_from_dict(c) for c in comps),
            release_notes=_typed(raw, "release_notes", str),
            created_at=_typed(raw, "created_at", str),
            format_version=FORMAT_VERSION,
        )


def _no_float(text: str) -> Any:
    raise InvalidManifestError(f"manifest contains a non-integer number {text!r}")


def _exact_keys(raw: dict[str, Any], expected: set[str], what: str) -> None:
    missing = expected - raw.keys()
    extra = raw.keys() - expected
    if missing or extra:
        raise InvalidManifestError(
            f"{what}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}"
        )


def _typed(raw: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidManifestError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _component_from_dict(raw: Any) -> Component:
    if not isinstance(raw, dict):
        raise InvalidManifestError("each component must be an object")
    _exact_keys(
        raw,
        {"name", "image_size", "image_sha256", "encoding", "stored_size", "stored_sha256"},
        "component",
    )
    name = _typed(raw, "name", str)
    if not _COMPONENT_NAME_RE.match(name):
        raise InvalidManifestError(
            f"component name {name!r} must match {_COMPONENT_NAME_RE.pattern}"
        )
    sizes = [_typed(raw, "image_size", int), _typed(raw, "stored_size", int)]
    if any(not 0 < s <= _U32 for s in sizes):
        raise InvalidManifestError(f"component {name}: sizes must be 1..2^32-1")
    digests = [_typed(raw, "image_sha256", str), _typed(raw, "stored_sha256", str)]
    if any(not _HEX64_RE.match(d) for d in digests):
        raise InvalidManifestError(f"component {name}: SHA-256 must be 64 lowercase hex digits")
    from bmsfw.package._encoding import suffix_for

    encoding = _typed(raw, "encoding", str)
    suffix_for(encoding)  # unknown encodings fail here with UnsupportedEncodingError
    return Component(
        name=name,
        image_size=sizes[0],
        image_sha256=bytes.fromhex(digests[0]),
        encoding=encoding,
        stored_size=sizes[1],
        stored_sha256=bytes.fromhex(digests[1]),
    )
