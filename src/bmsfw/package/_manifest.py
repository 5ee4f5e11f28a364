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

from bmsfw.package._model import HardwareCompat
from bmsfw.package.errors import InvalidManifestError, UnsupportedFormatVersionError
from bmsfw.package.version import parse_version

__all__ = [
    "ENCRYPTION_SCHEMES",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "SAFETY_CLASSES",
    "Component",
    "Manifest",
]

FORMAT_VERSION = 2  # the newest this bmsfw writes and reads
FORMAT_VERSIONS = (1, 2)  # v2 adds delta and encryption fields to components
ENCRYPTION_SCHEMES = ("none", "ecies-x25519", "ecies-p256")
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
    encoding: str  # stored bytes: "raw", "zstd", "lz4", "heatshrink", "lzma2thumb"
    stored_size: int
    stored_sha256: bytes
    # format_version 2: the stored bytes decode to a detools patch that turns the
    # image with this SHA-256 (the device's active image) into the image above.
    delta_base_sha256: bytes = b""
    delta_payload_size: int = 0  # size of the decoded patch (bounds decompression)
    # format_version 2: the image body is encrypted per MCUboot (ECIES); ``enc_key``
    # is the image's ENC TLV value (ephemeral public key, MAC, wrapped AES key), so
    # a BMS can decrypt while it writes instead of waiting for the TLV at the end.
    encryption: str = "none"
    enc_key: bytes = b""
    # format_version 2, encrypted only (optional): SHA-256 of the image as the BMS holds
    # it after decrypting (header, plaintext body, TLVs), i.e. the active-image digest it
    # reports once this runs; b"": not known (an image encrypted by another tool).
    decrypted_sha256: bytes = b""

    @property
    def is_delta(self) -> bool:
        return bool(self.delta_base_sha256)

    @property
    def payload_size(self) -> int:
        """Size of the stored bytes once decompressed (the patch, for a delta)."""
        return self.delta_payload_size if self.is_delta else self.image_size

    @property
    def needs_v2(self) -> bool:
        return self.is_delta or self.encryption != "none"

    @property
    def member(self) -> str:
        """Its path inside the zip, derived (never read from the file) to avoid path tricks."""
        from bmsfw.package._encoding import suffix_for

        return f"components/{self.name}.bin{suffix_for(self.encoding)}"

    def to_dict(self, format_version: int = FORMAT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image_size": self.image_size,
            "image_sha256": self.image_sha256.hex(),
            "encoding": self.encoding,
            "stored_size": self.stored_size,
            "stored_sha256": self.stored_sha256.hex(),
        }
        if format_version >= 2:
            out["delta_base_sha256"] = self.delta_base_sha256.hex()
            out["patch_size"] = self.delta_payload_size
            out["encryption"] = self.encryption
            out["enc_key"] = self.enc_key.hex()
            if self.decrypted_sha256:
                out["decrypted_sha256"] = self.decrypted_sha256.hex()
        return out


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
    # 0: the lowest version that can express the components (1 unless delta/encryption),
    # so releases without the new features stay readable by v1-only devices.
    format_version: int = 0

    def __post_init__(self) -> None:
        if self.format_version == 0:
            needed = 2 if any(c.needs_v2 for c in self.components) else 1
            object.__setattr__(self, "format_version", needed)
        if self.format_version not in FORMAT_VERSIONS:
            raise UnsupportedFormatVersionError(f"format_version {self.format_version!r}")
        if self.format_version < 2 and any(c.needs_v2 for c in self.components):
            raise InvalidManifestError("delta or encrypted components need format_version 2")
        if not isinstance(self.product, str) or not _PRODUCT_RE.match(self.product):
            raise InvalidManifestError(f"product {self.product!r} is not a valid name")
        parse_version(self.version)
        parse_version(self.min_bootloader_version, what="min_bootloader_version")
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
            "components": [c.to_dict(self.format_version) for c in self.components],
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
        if version not in FORMAT_VERSIONS or isinstance(version, bool):
            raise UnsupportedFormatVersionError(
                f"manifest format_version {version!r}; this bmsfw reads {FORMAT_VERSIONS}"
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
            components=tuple(_component_from_dict(c, raw["format_version"]) for c in comps),
            release_notes=_typed(raw, "release_notes", str),
            created_at=_typed(raw, "created_at", str),
            format_version=raw["format_version"],
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


_V1_COMPONENT_KEYS = {
    "name",
    "image_size",
    "image_sha256",
    "encoding",
    "stored_size",
    "stored_sha256",
}
_V2_COMPONENT_KEYS = _V1_COMPONENT_KEYS | {
    "delta_base_sha256",
    "patch_size",
    "encryption",
    "enc_key",
}


def _component_from_dict(raw: Any, format_version: int) -> Component:
    if not isinstance(raw, dict):
        raise InvalidManifestError("each component must be an object")
    decrypted_hex = raw.get("decrypted_sha256", "") if format_version >= 2 else ""
    if "decrypted_sha256" in raw and format_version >= 2:
        raw = {k: v for k, v in raw.items() if k != "decrypted_sha256"}  # optional
    _exact_keys(raw, _V2_COMPONENT_KEYS if format_version >= 2 else _V1_COMPONENT_KEYS, "component")
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
    delta_base, patch_size, encryption, enc_key = b"", 0, "none", b""
    if format_version >= 2:
        base_hex = _typed(raw, "delta_base_sha256", str)
        if base_hex and not _HEX64_RE.match(base_hex):
            raise InvalidManifestError(f"component {name}: delta_base_sha256 must be 64 hex or ''")
        delta_base = bytes.fromhex(base_hex)
        patch_size = _typed(raw, "patch_size", int)
        if not (0 < patch_size <= _U32 if delta_base else patch_size == 0):
            raise InvalidManifestError(f"component {name}: patch_size {patch_size} invalid")
        encryption = _typed(raw, "encryption", str)
        if encryption not in ENCRYPTION_SCHEMES:
            raise InvalidManifestError(
                f"component {name}: encryption {encryption!r} not in {ENCRYPTION_SCHEMES}"
            )
        key_hex = _typed(raw, "enc_key", str)
        if not re.fullmatch(r"(?:[0-9a-f]{2}){0,256}", key_hex):
            raise InvalidManifestError(f"component {name}: enc_key must be lowercase hex")
        enc_key = bytes.fromhex(key_hex)
        if (encryption == "none") != (not enc_key):
            raise InvalidManifestError(f"component {name}: enc_key and encryption disagree")
        if delta_base and encryption != "none":
            raise InvalidManifestError(f"component {name}: a delta cannot also be encrypted")
        if not isinstance(decrypted_hex, str) or (
            decrypted_hex and (encryption == "none" or not _HEX64_RE.match(decrypted_hex))
        ):
            raise InvalidManifestError(
                f"component {name}: decrypted_sha256 must be 64 hex digits, on an encrypted "
                "component only"
            )
    return Component(
        name=name,
        image_size=sizes[0],
        image_sha256=bytes.fromhex(digests[0]),
        encoding=encoding,
        stored_size=sizes[1],
        stored_sha256=bytes.fromhex(digests[1]),
        delta_base_sha256=delta_base,
        delta_payload_size=patch_size,
        encryption=encryption,
        enc_key=enc_key,
        decrypted_sha256=bytes.fromhex(decrypted_hex),
    )
