"""Release packages (.bmsfw): build, sign, verify, inspect.

A package is a zip any unzip can read::

    manifest.json            canonical JSON (see _manifest)
    manifest.sig             raw signature over manifest.json (absent until signed)
    certs/0.der ...          signer certificate, then its issuers
    crl/0.der ...            revocation lists shipped with the release (optional)
    components/NAME.bin[.zst] MCUboot images in their stored encoding

Everything a device must trust lives in the release header (manifest,
signature, chain, CRLs; see _header). ``verify_release`` rebuilds that header
from the zip and calls ``verify_header``, the same function a BMS runs on the
header alone, so host and device decide identically; it then checks every
component against the verified manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import struct
import zipfile
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bmsfw.package import _encoding
from bmsfw.package._crypto import (
    PrivateKey,
    key_hash,
    load_public_key,
    sign_message,
    verify_message,
)
from bmsfw.package._delta import create_delta
from bmsfw.package._encrypt import EncPublicKey, enc_scheme_of
from bmsfw.package._header import ReleaseHeader, decode_header, encode_header
from bmsfw.package._image import (
    ImageInfo,
    McubootImage,
    build_image_and_bank_digest,
    check_encrypted_image,
    check_image_integrity,
    parse_image,
    verify_image,
)
from bmsfw.package._manifest import Component, Manifest, SafetyClass
from bmsfw.package._model import DeviceFacts, HardwareCompat
from bmsfw.package._pki import SignerCredentials
from bmsfw.package._trust import (
    CertificateSummary,
    TrustAnchors,
    summarize_certificate,
    validate_chain,
)
from bmsfw.package.errors import (
    AntiRollbackError,
    BadSignatureError,
    BootloaderTooOldError,
    ComponentDecodeError,
    HashMismatchError,
    ImageKeyNotFusedError,
    ImageManifestMismatchError,
    IncompatibleHardwareError,
    InvalidManifestError,
    InvalidVersionError,
    MalformedPackageError,
    MissingSecurityCounterError,
    OtaDowngradeError,
    SafetyCriticalOverOtaError,
    SecurityCounterMismatchError,
    UnsignedPackageError,
)
from bmsfw.package.version import Version, as_version, image_version_of, parse_version

__all__ = [
    "ComponentSource",
    "ReleaseInspection",
    "VerifiedRelease",
    "build_release",
    "component_image",
    "image_key_refusal",
    "inspect_release",
    "release_header",
    "sign_release",
    "verify_header",
    "verify_release",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MEMBERS = 64
MAX_COMPONENT_BYTES = 64 * 1024 * 1024
MAX_TRUST_MEMBER_BYTES = 64 * 1024
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same inputs give the same package bytes
# Everything zipfile and zlib raise on hostile input; wrapped into MalformedPackageError.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class ComponentSource:
    """Input to ``build_release``: raw firmware to wrap, or an already signed MCUboot image."""

    name: str
    data: bytes
    kind: Literal["firmware", "image"] = "firmware"
    encoding: str | None = None  # None: the release default

    @classmethod
    def firmware(cls, name: str, data: bytes, encoding: str | None = None) -> ComponentSource:
        return cls(name, data, "firmware", encoding)

    @classmethod
    def image(cls, name: str, data: bytes, encoding: str | None = None) -> ComponentSource:
        return cls(name, data, "image", encoding)


@dataclass(frozen=True)
class VerifiedRelease:
    """A release that passed every check.

    ``images`` holds the decoded MCUboot images of full, clear components (what
    lands in flash). Delta and encrypted components cannot become that image on
    the host (no base image, no device key): ``payloads`` holds their decoded
    transfer payload instead (the detools patch; the encrypted image).
    """

    manifest: Manifest
    chain: tuple[CertificateSummary, ...]
    images: Mapping[str, bytes] = field(repr=False)
    image_info: Mapping[str, ImageInfo]
    payloads: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def image(self, name: str = "app") -> bytes:
        return self.images[name]


@dataclass(frozen=True)
class ComponentInspection:
    component: Component
    image: McubootImage | None
    problem: str | None


@dataclass(frozen=True)
class ReleaseInspection:
    """What ``inspect`` shows: no trust decision made."""

    manifest: Manifest
    signed: bool
    chain: tuple[CertificateSummary, ...]
    revocation_lists: int
    components: tuple[ComponentInspection, ...]
    package_sha256: str

    def to_dict(self) -> dict[str, object]:
        comps = []
        for item in self.components:
            entry: dict[str, object] = item.component.to_dict()
            if item.image is not None:
                hw = item.image.hardware
                entry["image"] = {
                    "version": str(item.image.version),
                    "security_counter": item.image.security_counter,
                    "hardware": None
                    if hw is None
                    else {"model": hw.model, "revisions": list(hw.revisions)},
                    "header_size": item.image.header_size,
                    "payload_size": item.image.payload_size,
                    "tlvs": [t.name for t in item.image.unprotected_tlvs],
                    "protected_tlvs": [t.name for t in item.image.protected_tlvs],
                }
            entry["problem"] = item.problem
            comps.append(entry)
        return {
            "manifest": self.manifest.to_dict(),
            "signed": self.signed,
            "chain": [c.to_dict() for c in self.chain],
            "revocation_lists": self.revocation_lists,
            "components": comps,
            "package_sha256": self.package_sha256,
        }


# --- zip handling ---------------------------------------------------------------------


PackageSource = bytes | IO[bytes]
"""A package's bytes, or a seekable binary file holding them (read in chunks, never whole)."""


def _as_file(source: PackageSource) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else source


class _Package:
    """The members of a .bmsfw zip, read defensively (sizes bounded before reading)."""

    def __init__(self, source: PackageSource) -> None:
        try:
            self._zip = zipfile.ZipFile(_as_file(source))
            infos = self._zip.infolist()
        except _ZIP_ERRORS as exc:
            raise MalformedPackageError(f"not a readable .bmsfw zip: {exc}") from None
        if len(infos) > MAX_MEMBERS:
            raise MalformedPackageError(f"package has {len(infos)} members, at most {MAX_MEMBERS}")
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.infos:
                raise MalformedPackageError(f"member {info.filename!r} appears twice")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise MalformedPackageError(f"member {info.filename!r} uses an unknown compression")
            self.infos[info.filename] = info

    def names(self) -> set[str]:
        return set(self.infos)

    def read(self, name: str, limit: int) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise MalformedPackageError(f"package has no member {name!r}")
        if info.file_size > limit:
            raise MalformedPackageError(f"member {name!r} is {info.file_size} bytes, limit {limit}")
        try:
            with self._zip.open(info) as member:
                data = member.read(limit + 1)
        except _ZIP_ERRORS as exc:
            raise MalformedPackageError(f"member {name!r} cannot be read: {exc}") from None
        if len(data) != info.file_size:
            raise MalformedPackageError(f"member {name!r} is truncated")
        return data

    def open(self, info: zipfile.ZipInfo) -> IO[bytes]:
        return self._zip.open(info)

    def numbered(self, prefix: str) -> list[bytes]:
        out = []
        index = 0
        while f"{prefix}/{index}.der" in self.infos:
            out.append(self.read(f"{prefix}/{index}.der", MAX_TRUST_MEMBER_BYTES))
            index += 1
        return out


def _zip_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.file_size = size  # known up front: streamed members get the same headers as writestr
    return info


def _write_zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(_zip_info(name, len(data)), data)
    return buffer.getvalue()


def _trust_members(header: ReleaseHeader | None) -> list[tuple[str, bytes]]:
    if header is None:
        return []
    members = [(SIGNATURE_NAME, header.signature)]
    members += [(f"certs/{i}.der", c) for i, c in enumerate(header.certificates)]
    members += [(f"crl/{i}.der", c) for i, c in enumerate(header.revocation_lists)]
    return members


def _allowed_names(pkg: _Package, manifest: Manifest, signed: bool) -> set[str]:
    names = {MANIFEST_NAME} | {c.member for c in manifest.components}
    if signed:
        names.add(SIGNATURE_NAME)
        names |= {n for n in pkg.names() if n.startswith(("certs/", "crl/"))}
    return names


def _check_members(pkg: _Package, manifest: Manifest, signed: bool) -> None:
    extra = pkg.names() - _allowed_names(pkg, manifest, signed)
    missing = {c.member for c in manifest.components} - pkg.names()
    if extra or missing:
        raise MalformedPackageError(
            f"package members do not match the manifest: unexpected {sorted(extra)}, "
            f"missing {sorted(missing)}"
        )
    numbered = {n for n in pkg.names() if n.startswith(("certs/", "crl/"))}
    counted = {f"certs/{i}.der" for i in range(len(pkg.numbered("certs")))}
    counted |= {f"crl/{i}.der" for i in range(len(pkg.numbered("crl")))}
    if numbered != counted:
        raise MalformedPackageError(f"unexpected trust members {sorted(numbered - counted)}")


def _manifest_bytes(pkg: _Package) -> bytes:
    return pkg.read(MANIFEST_NAME, 64 * 1024)


# --- build and sign -------------------------------------------------------------------


def _utc_stamp(when: dt.datetime | None) -> str:
    when = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_release(
    *,
    product: str,
    version: str,
    security_counter: int,
    hardware: HardwareCompat,
    min_bootloader_version: str,
    components: Sequence[ComponentSource],
    image_signing_key: PrivateKey | None = None,
    safety_class: SafetyClass = "standard",
    release_notes: str = "",
    created_at: dt.datetime | None = None,
    encoding: str = "zstd",
    header_size: int = 0x200,
    align: int = 8,
    delta_from: Mapping[str, bytes] | None = None,
    delta_compression: str = "crle",
    encrypt_to: EncPublicKey | None = None,
) -> bytes:
    """An unsigned .bmsfw package; sign it with :func:`sign_release`.

    Firmware components are wrapped into MCUboot images signed by
    ``image_signing_key`` carrying the release's version, security counter and
    hardware compatibility. Already-signed images (e.g. from imgtool) are
    parsed, integrity-checked and must agree with the manifest.

    ``delta_from`` maps component names to their base image (e.g. from
    :func:`component_image` of the previous release): those components are
    stored as a detools patch from that exact base (named by SHA-256 in the
    manifest), the manifest still naming the full image's size and SHA-256.
    ``encrypt_to`` (a device-class X25519/P-256 public key) encrypts firmware
    components per MCUboot; an already-encrypted ``image`` source (imgtool
    ``--encrypt``) is recognised by its header flag.
    """
    release_version = parse_version(version)
    header_version = image_version_of(release_version)  # refuses what the rule cannot carry
    stored_members: list[tuple[str, bytes]] = []
    records: list[Component] = []
    for source in components:
        if source.kind == "firmware":
            if image_signing_key is None:
                raise InvalidManifestError(
                    f"component {source.name!r} is raw firmware; an image-signing key is needed"
                )
            image, bank_sha256 = build_image_and_bank_digest(
                source.data,
                signing_key=image_signing_key,
                version=str(header_version),
                security_counter=security_counter,
                hardware=hardware,
                header_size=header_size,
                align=align,
                encrypt_to=encrypt_to,
            )
        else:
            image, bank_sha256 = source.data, b""  # encrypted elsewhere: plaintext unknown
        parsed = parse_image(image)
        encryption, enc_key = "none", b""
        if parsed.encrypted:
            enc_tlv = parsed.enc_tlv
            if enc_tlv is None:
                raise ImageManifestMismatchError(
                    f"component {source.name!r} is flagged encrypted but has no ENC TLV"
                )
            encryption = "ecies-x25519" if enc_tlv.name == "ENCX25519" else "ecies-p256"
            enc_key = enc_tlv.value
            if encrypt_to is not None and enc_scheme_of(encrypt_to) != encryption:
                raise ImageManifestMismatchError(
                    f"component {source.name!r} is encrypted with {encryption}"
                )
            info = check_encrypted_image(image)
        elif image_signing_key is not None:
            # The BMS boots only images signed by the vendor's image key: an image signed
            # with another key (e.g. an imgtool dev key) is refused here, not after a transfer.
            info = verify_image(
                image,
                key_hashes=[key_hash(image_signing_key)],
                public_keys=[image_signing_key.public_key()],
            )
        else:
            info = check_image_integrity(image)
        _check_image_against(source.name, info, release_version, security_counter, hardware)
        name_encoding = source.encoding or encoding
        base = (delta_from or {}).get(source.name)
        if base is not None:
            if parsed.encrypted:
                raise InvalidManifestError(
                    f"component {source.name!r}: an encrypted image cannot be a delta "
                    "(its ciphertext changes completely with every build)"
                )
            payload = create_delta(base, image, compression=delta_compression)
            # detools compresses the patch itself (crle by default): store raw.
            name_encoding = "raw" if source.encoding is None else name_encoding
        else:
            payload = image
        stored = _encoding.encode(name_encoding, payload)
        record = Component(
            name=source.name,
            image_size=len(image),
            image_sha256=hashlib.sha256(image).digest(),
            encoding=name_encoding,
            stored_size=len(stored),
            stored_sha256=hashlib.sha256(stored).digest(),
            delta_base_sha256=b"" if base is None else hashlib.sha256(base).digest(),
            delta_payload_size=len(payload) if base is not None else 0,
            encryption=encryption,
            enc_key=enc_key,
            decrypted_sha256=bank_sha256 if parsed.encrypted else b"",
        )
        records.append(record)
        stored_members.append((record.member, stored))
    manifest = Manifest(
        product=product,
        version=version,
        security_counter=security_counter,
        hardware=hardware,
        min_bootloader_version=min_bootloader_version,
        safety_class=safety_class,
        components=tuple(records),
        release_notes=release_notes,
        created_at=_utc_stamp(created_at),
    )
    log.info("built release %s %s with %d component(s)", product, version, len(records))
    return _write_zip([(MANIFEST_NAME, manifest.to_json_bytes()), *stored_members])


def sign_release(
    package: bytes,
    signer: SignerCredentials,
    *,
    revocation_lists: Sequence[bytes] = (),
) -> bytes:
    """Sign (or re-sign) a package's manifest; component hashes are checked first."""
    pkg = _Package(package)
    manifest_raw = _manifest_bytes(pkg)
    manifest = Manifest.from_json_bytes(manifest_raw)
    signed = SIGNATURE_NAME in pkg.names()
    _check_members(pkg, manifest, signed)
    stored = [(c.member, _read_component(pkg, c)) for c in manifest.components]
    header = ReleaseHeader(
        manifest=manifest_raw,
        signature=sign_message(signer.private_key, manifest_raw),
        certificates=tuple(
            c.public_bytes(serialization.Encoding.DER) for c in (signer.certificate, *signer.chain)
        ),
        revocation_lists=tuple(revocation_lists),
    )
    log.info("signed release %s %s", manifest.product, manifest.version)
    return _write_zip([(MANIFEST_NAME, manifest_raw), *_trust_members(header), *stored])


# --- verify ---------------------------------------------------------------------------


def release_header(package_bytes: bytes) -> bytes:
    """The canonical header blob (manifest, signature, chain, CRLs) of a signed package."""
    return encode_header(_header_of(_Package(package_bytes)))


def _header_of(pkg: _Package) -> ReleaseHeader:
    manifest_raw = _manifest_bytes(pkg)
    if SIGNATURE_NAME not in pkg.names():
        raise UnsignedPackageError("the package has no manifest.sig")
    return ReleaseHeader(
        manifest=manifest_raw,
        signature=pkg.read(SIGNATURE_NAME, 1024),
        certificates=tuple(pkg.numbered("certs")),
        revocation_lists=tuple(pkg.numbered("crl")),
    )


def verify_header(
    header: bytes,
    trust: TrustAnchors,
    facts: DeviceFacts | None,
    *,
    now: dt.datetime | None = None,
) -> Manifest:
    """The device's decision on a release header: trusted, intact and allowed here?

    Order: header structure, signer chain (E106/E115/E107/E108/E109), manifest
    signature (E105), manifest contents (E102/E103), then with ``facts`` the
    policy: OTA safety class (E113), hardware (E110), bootloader (E111),
    anti-rollback (E112).
    """
    return _verify_header_bytes(header, trust, facts, now)[0]


def _verify_header_bytes(
    header: bytes,
    trust: TrustAnchors,
    facts: DeviceFacts | None,
    now: dt.datetime | None,
) -> tuple[Manifest, list[x509.Certificate]]:
    parsed = decode_header(header)
    now = now or dt.datetime.now(dt.UTC)
    chain = validate_chain(
        parsed.certificates, trust, now=now, extra_revocation_lists=parsed.revocation_lists
    )
    signer_key = load_public_key(
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if not verify_message(signer_key, parsed.signature, parsed.manifest):
        raise BadSignatureError(
            f"manifest signature does not verify with {chain[0].subject.rfc4514_string()}"
        )
    manifest = Manifest.from_json_bytes(parsed.manifest)
    if facts is not None:
        check_policy(manifest, facts)
    return manifest, chain


def check_policy(manifest: Manifest, facts: DeviceFacts) -> None:
    """Is this (already authenticated) release allowed on this device, over this channel?"""
    if facts.channel == "ota" and manifest.safety_class == "safety-critical":
        raise SafetyCriticalOverOtaError(
            f"release {manifest.version} is safety-critical and may only be installed wired"
        )
    if not manifest.hardware.accepts(facts.model, facts.hw_revision):
        raise IncompatibleHardwareError(
            f"release is for {manifest.hardware.model} "
            f"rev {'/'.join(manifest.hardware.revisions)}, "
            f"device is {facts.model} rev {facts.hw_revision}"
        )
    required = parse_version(manifest.min_bootloader_version)
    try:
        actual = as_version(facts.bootloader_version)
    except InvalidVersionError:
        raise BootloaderTooOldError(
            f"device bootloader version {facts.bootloader_version!r} cannot be compared with "
            f"the required {required}"
        ) from None
    if actual < required:
        raise BootloaderTooOldError(f"device bootloader {actual}, release needs >= {required}")
    if manifest.security_counter < facts.security_counter:
        raise AntiRollbackError(
            f"release security counter {manifest.security_counter} is below the device's "
            f"{facts.security_counter}"
        )
    _check_ota_version(manifest, facts)


def _check_ota_version(manifest: Manifest, facts: DeviceFacts) -> None:
    """Over the air a BMS never takes a lower version than it runs, even at an equal
    security counter, unless the staging request says a person authorised this downgrade
    (the host's update core allowed it with a recorded reason). A device that runs no
    readable version (its bootloader) leaves it to the counter."""
    if facts.channel != "ota" or not facts.running_version or facts.downgrade_authorised:
        return
    try:
        running = as_version(facts.running_version)
    except InvalidVersionError:
        return
    if parse_version(manifest.version) < running:
        raise OtaDowngradeError(
            f"release {manifest.version} is older than the running {facts.running_version}; "
            "over the air a downgrade is taken only when the request says it was authorised"
        )


def _read_component(pkg: _Package, comp: Component) -> bytes:
    stored = pkg.read(comp.member, min(comp.stored_size, MAX_COMPONENT_BYTES))
    if len(stored) != comp.stored_size or hashlib.sha256(stored).digest() != comp.stored_sha256:
        raise HashMismatchError(f"component {comp.name!r}: stored bytes differ from the manifest")
    return stored


def _decode_component(pkg: _Package, comp: Component) -> bytes:
    return _decode_stored(comp, _read_component(pkg, comp))


def _decode_stored(comp: Component, stored: bytes) -> bytes:
    payload = _encoding.decode(comp.encoding, stored, comp.payload_size)
    _check_payload(comp, payload)
    return payload


def _check_payload(comp: Component, payload: bytes | bytearray) -> None:
    if comp.is_delta:
        return  # checked against image_sha256 once applied to its base (device, or with base)
    if len(payload) != comp.image_size or hashlib.sha256(payload).digest() != comp.image_sha256:
        raise HashMismatchError(f"component {comp.name!r}: decoded image differs from the manifest")


class _CompareSink(io.RawIOBase):
    """A seekable file that checks what zipfile writes against ``expected`` (a seekable
    file: read back at the written offsets, a chunk at a time), without keeping a copy:
    member data is compared as it is written; headers (small, and rewritten after the
    data by zipfile) are kept until :meth:`check`."""

    def __init__(self, expected: IO[bytes]) -> None:
        self._expected = expected
        self._size = expected.seek(0, io.SEEK_END)
        self._pos = 0
        self._end = 0
        self._headers: dict[int, bytes] = {}
        self.data_mode = False
        self.mismatch = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: bytes) -> int:  # type: ignore[override]
        size = len(data)
        if self.data_mode:
            if self._read_at(self._pos, size) != data:
                self.mismatch = True
        else:
            self._headers[self._pos] = bytes(data)
        self._pos += size
        self._end = max(self._end, self._pos)
        return size

    def _read_at(self, offset: int, size: int) -> bytes:
        # zipfile re-seeks its own reads of the same file (zipfile._SharedFile).
        self._expected.seek(offset)
        return self._expected.read(size)

    def check(self) -> bool:
        if self.mismatch or self._end != self._size:
            return False
        return all(self._read_at(off, len(chunk)) == chunk for off, chunk in self._headers.items())


_STREAM_CHUNK = 64 * 1024


def _stream_components(
    source: IO[bytes], pkg: _Package, header: ReleaseHeader, manifest: Manifest
) -> dict[str, bytes]:
    """One pass over the package: re-serialise it canonically against the input (no copy),
    hash each component's stored bytes and decode them in a stream.

    Only bmsfw writes packages, deterministically: the canonical form of the
    verified members must be the input byte for byte. This rejects changes to
    bytes zip readers ignore (timestamps, attributes, comments, extra fields).
    Memory: the decoded payloads (one copy) plus a chunk; the package itself is read
    from ``source`` a chunk at a time.
    """
    sink = _CompareSink(source)
    payloads: dict[str, bytes] = {}
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in [(MANIFEST_NAME, header.manifest), *_trust_members(header)]:
            zf.writestr(_zip_info(name, len(blob)), blob)
        for comp in manifest.components:
            payloads[comp.name] = _stream_one(pkg, comp, zf, sink)
    if not sink.check():
        raise MalformedPackageError("package is not in canonical .bmsfw form (altered zip)")
    return payloads


def _stream_one(pkg: _Package, comp: Component, zf: zipfile.ZipFile, sink: _CompareSink) -> bytes:
    info = pkg.infos[comp.member]
    if info.file_size != comp.stored_size or comp.stored_size > MAX_COMPONENT_BYTES:
        raise HashMismatchError(f"component {comp.name!r}: stored bytes differ from the manifest")
    stored_hash = hashlib.sha256()
    decoder = _encoding.new_decoder(comp.encoding, comp.payload_size)
    out = io.BytesIO()
    limit = comp.payload_size

    def emit(parts: Iterator[bytes]) -> None:
        for part in parts:
            if out.tell() + len(part) > limit:
                raise ComponentDecodeError(
                    f"component {comp.name!r} decodes to more than the declared {limit} bytes"
                )
            out.write(part)

    try:
        with (
            pkg.open(info) as member,
            zf.open(_zip_info(comp.member, comp.stored_size), "w") as dst,
        ):
            while chunk := member.read(_STREAM_CHUNK):
                sink.data_mode = True
                dst.write(chunk)
                sink.data_mode = False
                stored_hash.update(chunk)
                emit(decoder.feed(chunk))
    except _ZIP_ERRORS as exc:
        raise MalformedPackageError(f"member {comp.member!r} cannot be read: {exc}") from None
    finally:
        sink.data_mode = False
    if stored_hash.digest() != comp.stored_sha256:
        raise HashMismatchError(f"component {comp.name!r}: stored bytes differ from the manifest")
    emit(decoder.finish())
    if out.tell() != limit:
        raise ComponentDecodeError(
            f"component {comp.name!r} decodes to {out.tell()} bytes, manifest says {limit}"
        )
    # getvalue() hands over BytesIO's buffer without copying it (CPython).
    payload = out.getvalue()
    _check_payload(comp, payload)
    return payload


def component_image(package_bytes: bytes, name: str = "app") -> bytes:
    """The decoded full image of one component (hash-checked against the manifest, no
    trust decision): the base for ``build_release(delta_from=...)``."""
    pkg = _Package(package_bytes)
    manifest = Manifest.from_json_bytes(_manifest_bytes(pkg))
    try:
        comp = manifest.component(name)
    except KeyError:
        raise InvalidManifestError(f"the package has no component {name!r}") from None
    if comp.is_delta or comp.encryption != "none":
        raise InvalidManifestError(
            f"component {name!r} is a delta or encrypted; a delta base must be a full clear image"
        )
    return _decode_component(pkg, comp)


def _check_image_against(
    name: str,
    info: ImageInfo,
    version: Version,
    security_counter: int,
    hardware: HardwareCompat,
) -> None:
    if info.hardware is not None and info.hardware != hardware:
        raise ImageManifestMismatchError(
            f"component {name!r} image is for {info.hardware}, manifest says {hardware}"
        )
    if name != "app":
        return
    # The BMS accepts the app only when its SEC_CNT equals the manifest's counter: refuse
    # here, before a byte is sent, what it would refuse after the whole transfer.
    if info.security_counter is None:
        raise MissingSecurityCounterError(
            f"app image has no security counter; the release's is {security_counter} "
            f"(sign it with `imgtool sign --security-counter {security_counter}`)"
        )
    if info.security_counter != security_counter:
        raise SecurityCounterMismatchError(
            f"app image security counter {info.security_counter}, manifest {security_counter}"
        )
    expected = image_version_of(version)
    if info.version != expected:
        raise ImageManifestMismatchError(
            f"app image header version {info.version}, but release {version} is carried as "
            f"{expected} (docs/packages.md, 'Versions'); sign the image with "
            f"`imgtool sign --version {expected}`"
        )


def image_key_refusal(image_keys: Mapping[str, bytes], fused: Collection[bytes]) -> str:
    """Why a BMS whose secure boot holds the ``fused`` key hashes would refuse these images
    ("" when it would not): MCUboot first matches an image's KEYHASH (or the hash of its
    PUBKEY) against its own keys. ``image_keys``: component name -> the key hash its image
    names. The one place this rule lives: ``package verify`` with device facts and the
    update's decision core (:func:`bmsfw.update.core.decide_start`) both ask it.
    """
    fused = frozenset(bytes(h) for h in fused)
    foreign = {name: key for name, key in image_keys.items() if key not in fused}
    if not fused or not foreign:
        return ""
    keys = ", ".join(f"{h.hex()[:16]}…" for h in sorted(fused))
    signed = "; ".join(
        f"component {n!r} is signed by key {k.hex()[:16]}…" for n, k in foreign.items()
    )
    return f"{signed}; the BMS boots only images signed by key {keys}"


def verify_release(
    data: PackageSource,
    trust: TrustAnchors,
    facts: DeviceFacts | None = None,
    *,
    now: dt.datetime | None = None,
) -> VerifiedRelease:
    """Verify a whole package (pure): header via :func:`verify_header`, then each component.

    ``data`` is the package's bytes or a seekable binary file (a server's spooled upload):
    a file is read a chunk at a time, never whole; what stays in memory is the decoded
    component images the signed manifest declares (a BMS image is a few hundred KiB)."""
    source = _as_file(data)
    pkg = _Package(source)
    header = _header_of(pkg)
    # The same code path and the same bytes a BMS sees: host and device cannot disagree.
    manifest, chain = _verify_header_bytes(encode_header(header), trust, facts, now)
    _check_members(pkg, manifest, signed=True)
    release_version = parse_version(manifest.version)
    decoded = _stream_components(source, pkg, header, manifest)
    images: dict[str, bytes] = {}
    payloads: dict[str, bytes] = {}
    infos: dict[str, ImageInfo] = {}
    key_hashes = trust.image_key_hashes or None
    for comp in manifest.components:
        payload = decoded.pop(comp.name)
        if comp.is_delta:
            payloads[comp.name] = payload
            continue  # the image exists only on the device (or with the base at hand)
        if comp.encryption != "none":
            info = check_encrypted_image(payload, key_hashes=key_hashes)
            enc = parse_image(payload).enc_tlv
            if enc is None or enc.value != comp.enc_key:
                raise ImageManifestMismatchError(
                    f"component {comp.name!r}: ENC TLV differs from the manifest's enc_key"
                )
            payloads[comp.name] = payload
        else:
            info = (
                verify_image(payload, key_hashes=key_hashes, public_keys=trust.image_public_keys)
                if key_hashes
                else check_image_integrity(payload)
            )
            images[comp.name] = payload
        _check_image_against(
            comp.name, info, release_version, manifest.security_counter, manifest.hardware
        )
        infos[comp.name] = info
    if facts is not None:
        refusal = image_key_refusal(
            {name: info.key_hash for name, info in infos.items()}, facts.image_key_hashes
        )
        if refusal:
            raise ImageKeyNotFusedError(refusal)
    return VerifiedRelease(
        manifest=manifest,
        chain=tuple(summarize_certificate(c) for c in chain),
        images=images,
        image_info=infos,
        payloads=payloads,
    )


def inspect_release(data: bytes) -> ReleaseInspection:
    """Read a package for display without trusting it (manifest must still parse)."""
    from bmsfw.errors import BmsfwError
    from bmsfw.package._trust import _load_certificate

    pkg = _Package(data)
    manifest = Manifest.from_json_bytes(_manifest_bytes(pkg))
    signed = SIGNATURE_NAME in pkg.names()
    chain = tuple(summarize_certificate(_load_certificate(d)) for d in pkg.numbered("certs"))
    comps = []
    for comp in manifest.components:
        image: McubootImage | None = None
        problem: str | None = None
        try:
            payload = _decode_component(pkg, comp)
            if not comp.is_delta:  # a patch is no image; it becomes one on the BMS
                image = parse_image(payload)
        except BmsfwError as exc:
            problem = str(exc)
        comps.append(ComponentInspection(comp, image, problem))
    return ReleaseInspection(
        manifest=manifest,
        signed=signed,
        chain=chain,
        revocation_lists=len(pkg.numbered("crl")),
        components=tuple(comps),
        package_sha256=hashlib.sha256(data).hexdigest(),
    )
