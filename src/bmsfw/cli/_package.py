"""``bmsfw package build | sign | verify | inspect``: thin over bmsfw.package."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from bmsfw.cli._keys import read_passphrase
from bmsfw.cli._render import Table, console, line, paragraph, print_json
from bmsfw.errors import UsageError
from bmsfw.package import (
    ENCODINGS,
    SAFETY_CLASSES,
    ComponentSource,
    DeviceFacts,
    HardwareCompat,
    Manifest,
    PkiPaths,
    ReleaseInspection,
    SignerCredentials,
    TrustAnchors,
    VerifiedRelease,
    build_release,
    inspect_release,
    load_certificate_file,
    load_key_file,
    load_signer,
    release_header,
    sign_release,
    verify_release,
)
from bmsfw.package._firmware import FirmwareInput, load_firmware
from bmsfw.package._header import HEADER_FORMAT_VERSION
from bmsfw.package._trust import CertificateSummary, load_certificates_pem
from bmsfw.package.errors import BadImageMagicError, ImageKeyNotGivenError
from bmsfw.package.version import ImageVersion, version_of_image

__all__ = ["package_group", "render_inspection", "render_verified"]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _named_files(values: Sequence[str], option: str) -> list[tuple[str, Path]]:
    out = []
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"{option} expects NAME=FILE, got {value!r}")
        out.append((name, Path(file)))
    return out


def _byte_value(text: str, option: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFF:
        raise UsageError(f"{option} expects a byte value such as 0xff or 0, got {text!r}")
    return value


_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group("package")
def package_group() -> None:
    """Build, sign, verify and inspect .bmsfw release packages."""


@package_group.command("build")
@click.option("--product", required=True)
@click.option("--version", "version", required=True, help="Semantic version, e.g. 1.4.0.")
@click.option("--security-counter", type=click.IntRange(0, 0xFFFFFFFF), required=True)
@click.option("--hw-model", required=True)
@click.option("--hw-revision", "hw_revisions", multiple=True, required=True)
@click.option("--min-bootloader", default="0.0.0", show_default=True)
@click.option("--safety-class", type=click.Choice(SAFETY_CLASSES), default="standard")
@click.option("--notes", default="", help="Release notes text.")
@click.option("--notes-file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--app",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="App firmware: raw .bin, Intel HEX, S-record or ELF (or an imgtool-signed image).",
)
@click.option(
    "--component", "components", multiple=True, help="NAME=FILE firmware (formats as --app)."
)
@click.option(
    "--image", "images", multiple=True, help="NAME=FILE MCUboot image signed already (imgtool)."
)
@click.option(
    "--fill",
    default="0xff",
    show_default=True,
    callback=lambda _ctx, _param, value: _byte_value(value, "--fill"),
    help="Byte that fills gaps between HEX/S-record/ELF segments (0xff, 0x00, 255).",
)
@click.option("--image-key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--pki", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--encoding", type=click.Choice(sorted(ENCODINGS)), default="zstd")
@click.option(
    "--delta-from",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Previous release (.bmsfw): store the app as a detools patch against its image.",
)
@click.option(
    "--delta-compression",
    type=click.Choice(["crle", "heatshrink", "lzma", "none"]),
    default="crle",
    show_default=True,
)
@click.option(
    "--encrypt-to",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Device-class public key (PEM, X25519 or P-256): encrypt images per MCUboot.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True)
@_json_option
def build_cmd(  # click passes options as keywords
    *,
    product: str,
    version: str,
    security_counter: int,
    hw_model: str,
    hw_revisions: tuple[str, ...],
    min_bootloader: str,
    safety_class: str,
    notes: str,
    notes_file: Path | None,
    app: Path | None,
    components: tuple[str, ...],
    images: tuple[str, ...],
    fill: int,
    image_key: Path | None,
    pki: Path | None,
    passphrase_file: Path | None,
    encoding: str,
    delta_from: Path | None,
    delta_compression: str,
    encrypt_to: Path | None,
    output: Path,
    as_json: bool,
) -> None:
    """Build an unsigned package from firmware binaries and/or signed MCUboot images."""
    from bmsfw.package._encrypt import load_encryption_public_key
    from bmsfw.package._release import component_image

    firmware_files = [("app", app)] if app is not None else []
    firmware_files += _named_files(components, "--component")
    inputs: dict[str, FirmwareInput] = {}
    sources: list[ComponentSource] = []
    for name, path in firmware_files:
        inputs[name] = load_firmware(_read(path), fill=fill)
        sources.append(_source_of(name, inputs[name]))
    for name, path in _named_files(images, "--image"):
        inputs[name] = load_firmware(_read(path), fill=fill)
        if inputs[name].format != "mcuboot":
            raise BadImageMagicError(
                f"--image {name}={path} is {inputs[name].format} firmware, not a signed MCUboot "
                f"image; pass it with --component {name}=FILE (or --app) to have it signed"
            )
        sources.append(_source_of(name, inputs[name]))
    if not sources:
        raise UsageError("give at least one of --app, --component or --image")
    key_path = image_key or (PkiPaths(pki).image_key if pki else None)
    signing_key = (
        load_key_file(key_path, read_passphrase(passphrase_file)) if key_path is not None else None
    )
    if notes_file is not None:
        notes = _read(notes_file).decode("utf-8", errors="replace")
    package = build_release(
        product=product,
        version=version,
        security_counter=security_counter,
        hardware=HardwareCompat(hw_model, hw_revisions),
        min_bootloader_version=min_bootloader,
        components=sources,
        image_signing_key=signing_key,
        safety_class=safety_class,  # type: ignore[arg-type]
        release_notes=notes,
        encoding=encoding,
        delta_from=None if delta_from is None else {"app": component_image(_read(delta_from))},
        delta_compression=delta_compression,
        encrypt_to=None if encrypt_to is None else load_encryption_public_key(_read(encrypt_to)),
    )
    _write_atomic(output, package)
    if not as_json:
        for name, fw in inputs.items():
            console.print(f"{name}: {_describe_input(fw)}")
    _report_written(
        output, package, "built (unsigned)", as_json, {n: i.to_dict() for n, i in inputs.items()}
    )


def _source_of(name: str, fw: FirmwareInput) -> ComponentSource:
    if fw.format == "mcuboot":  # already signed (imgtool): kept byte for byte
        return ComponentSource.image(name, fw.data)
    return ComponentSource.firmware(name, fw.data)


def _describe_input(fw: FirmwareInput) -> str:
    if fw.format == "mcuboot":
        inside = f" in {fw.container}" if fw.container else ""
        return f"signed MCUboot image{inside} ({len(fw.data):,} bytes), kept as signed"
    if fw.load_address is None:
        return f"raw binary, {len(fw.data):,} bytes"
    text = (
        f"{fw.format}, {len(fw.data):,} bytes from {fw.load_address:#010x} "
        f"({len(fw.segments)} segment{'s' if len(fw.segments) != 1 else ''}"
    )
    return text + (f", {fw.gap_bytes:,} gap bytes filled)" if fw.gap_bytes else ")")


def _report_written(
    output: Path,
    package: bytes,
    what: str,
    as_json: bool,
    inputs: dict[str, dict[str, object]] | None = None,
) -> None:
    digest = hashlib.sha256(package).hexdigest()
    if as_json:
        record: dict[str, object] = {"output": str(output), "size": len(package), "sha256": digest}
        if inputs is not None:
            record["inputs"] = inputs
        print_json(record)
    else:
        console.print(f"{what}: {output} ({len(package):,} bytes, sha256 {digest})")


@package_group.command("sign")
@click.argument("package", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--pki", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--signer", "signer_name", default="release-signer", show_default=True)
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--chain", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--crl", "crls", multiple=True, type=click.Path(path_type=Path, exists=True))
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False))
@_json_option
def sign_cmd(  # click passes options as keywords
    *,
    package: Path,
    pki: Path | None,
    signer_name: str,
    key: Path | None,
    cert: Path | None,
    chain: Path | None,
    crls: tuple[Path, ...],
    passphrase_file: Path | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Sign PACKAGE's manifest (in place unless -o); ships the PKI's revocation list too."""
    passphrase = read_passphrase(passphrase_file)
    crl_data = [_read(p) for p in crls]
    if pki is not None:
        signer = load_signer(pki, signer_name, passphrase=passphrase)
        if PkiPaths(pki).crl.exists() and not crls:
            crl_data.append(_read(PkiPaths(pki).crl))
    elif key is not None and cert is not None:
        issuers = tuple(load_certificates_pem(_read(chain))) if chain else ()
        signer = SignerCredentials(
            load_key_file(key, passphrase), load_certificate_file(cert), issuers
        )
    else:
        raise UsageError("give --pki DIR, or --key and --cert (and --chain)")
    signed = sign_release(_read(package), signer, revocation_lists=crl_data)
    target = output or package
    _write_atomic(target, signed)
    _report_written(target, signed, "signed", as_json)


def _hex32(value: str, option: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{option} expects 64 hex digits, got {value!r}")
    return raw


def _trust_from_options(
    pki: Path | None,
    root_certs: Sequence[Path],
    root_hashes: Sequence[str],
    crls: Sequence[Path],
    image_key_hashes: Sequence[str],
    *,
    image_keys: Sequence[Path] = (),
) -> TrustAnchors:
    certs = list(root_certs)
    crl_paths = list(crls)
    image_hashes = [_hex32(v, "--image-key-hash") for v in image_key_hashes]
    image_pubs = [_read(p) for p in image_keys]
    if pki is not None:
        paths = PkiPaths(pki)
        certs.append(paths.root_cert)
        if paths.crl.exists():
            crl_paths.append(paths.crl)
        image_pubs.append(_read(paths.image_pub))
    der_roots: tuple[bytes, ...] = ()
    for path in certs:
        der_roots += TrustAnchors.from_root_certificate(_read(path)).root_certificates
    hashes = frozenset(_hex32(v, "--root-hash") for v in root_hashes)
    if not der_roots and not hashes:
        raise UsageError("give a trust anchor: --pki DIR, --root-cert FILE or --root-hash HEX")
    trust = TrustAnchors(root_key_hashes=hashes, root_certificates=der_roots)
    for path in crl_paths:
        trust = trust.with_revocation_list(_read(path))
    return trust.with_image_key_hashes(image_hashes).with_image_public_keys(image_pubs)


@package_group.command("verify")
@click.argument("package", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--pki", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--root-cert", "root_certs", multiple=True, type=click.Path(path_type=Path))
@click.option("--root-hash", "root_hashes", multiple=True, help="Fused root key hash (hex).")
@click.option("--crl", "crls", multiple=True, type=click.Path(path_type=Path))
@click.option("--image-key-hash", "image_key_hashes", multiple=True, help="Fused image key hash.")
@click.option(
    "--image-key",
    "image_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Image-signing public key (PEM), e.g. the PKI's image-signing.pub.",
)
@click.option("--model", help="Device facts: hardware model.")
@click.option("--hw-revision")
@click.option("--bootloader", help="Device bootloader version.")
@click.option(
    "--device-counter", type=click.IntRange(0, 0xFFFFFFFF), help="Device security counter."
)
@click.option(
    "--device-image-key-hash",
    "device_key_hashes",
    multiple=True,
    help="Device facts: an image-key hash the BMS reports fused (`bmsfw info`; repeat for each).",
)
@click.option("--channel", type=click.Choice(["wired", "ota"]), default="wired")
@click.option("--at", "at_time", type=click.DateTime(), help="Verify as of this UTC time.")
@_json_option
def verify_cmd(  # click passes options as keywords
    *,
    package: Path,
    pki: Path | None,
    root_certs: tuple[Path, ...],
    root_hashes: tuple[str, ...],
    crls: tuple[Path, ...],
    image_key_hashes: tuple[str, ...],
    image_keys: tuple[Path, ...],
    model: str | None,
    hw_revision: str | None,
    bootloader: str | None,
    device_counter: int | None,
    device_key_hashes: tuple[str, ...],
    channel: str,
    at_time: dt.datetime | None,
    as_json: bool,
) -> None:
    """Verify PACKAGE: signature, chain to the vendor root, revocation, hashes, device policy."""
    trust = _trust_from_options(
        pki, root_certs, root_hashes, crls, image_key_hashes, image_keys=image_keys
    )
    facts = None
    given = [model, hw_revision, bootloader, device_counter, *device_key_hashes]
    if any(v is not None for v in given):
        if model is None or hw_revision is None or bootloader is None or device_counter is None:
            raise UsageError(
                "device facts need all of --model, --hw-revision, --bootloader, --device-counter"
            )
        facts = DeviceFacts(
            model,
            hw_revision,
            bootloader,
            device_counter,
            channel,  # type: ignore[arg-type]
            image_key_hashes=tuple(_hex32(v, "--device-image-key-hash") for v in device_key_hashes),
        )
    now = at_time.replace(tzinfo=dt.UTC) if at_time else None
    verified = verify_release(_read(package), trust, facts, now=now)
    unchecked = sorted(n for n, i in verified.image_info.items() if i.algorithm == "unverified")
    if unchecked:  # never "OK" for an image whose signature nobody checked
        raise ImageKeyNotGivenError(
            f"the signature of image {', '.join(unchecked)} was not checked: it names its "
            "signing key by hash only and no image-signing key was given"
        )
    # verify_release refuses an image key outside trust.image_key_hashes when any are given
    keys_pinned = bool(trust.image_key_hashes)
    # ... and outside the keys the device facts say the BMS holds (E134)
    key_check = (
        "signed by a key the BMS holds (--device-image-key-hash)"
        if facts is not None and facts.image_key_hashes
        else "not checked against the BMS: give --device-image-key-hash (`bmsfw info` shows it)"
    )
    if as_json:
        print_json(
            {
                "ok": True,
                "manifest": verified.manifest.to_dict(),
                "chain": [c.to_dict() for c in verified.chain],
                "images": {
                    name: {
                        "version": str(info.version),
                        "release_version": str(version_of_image(info.version)),
                        "security_counter": info.security_counter,
                        "digest": info.digest.hex(),
                        "key_hash": info.key_hash.hex(),
                        "algorithm": info.algorithm,
                        "key_trusted": keys_pinned,
                    }
                    for name, info in verified.image_info.items()
                },
                "device_checked": facts is not None,
                "device_image_key": key_check,
            }
        )
    else:
        render_verified(verified, device_checked=facts is not None, image_keys_pinned=keys_pinned)
        console.print(line(("image key", "bold"), f": {key_check}"))


def _manifest_table(manifest: Manifest, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("product", manifest.product)
    table.add_row("version", manifest.version)
    table.add_row("security counter", str(manifest.security_counter))
    table.add_row(
        "hardware", f"{manifest.hardware.model} rev {', '.join(manifest.hardware.revisions)}"
    )
    table.add_row("min bootloader", manifest.min_bootloader_version)
    table.add_row("safety class", manifest.safety_class)
    table.add_row("created", manifest.created_at)
    table.add_row("release notes", paragraph(manifest.release_notes or "-"))
    return table


def _chain_table(chain: Sequence[CertificateSummary]) -> Table:
    table = Table(title="signer chain")
    for col in ("#", "subject", "issuer", "serial", "valid", "algorithm", "key hash"):
        table.add_column(col, overflow="fold")
    for i, cert in enumerate(chain):
        table.add_row(
            str(i),
            cert.subject.split(",")[0],  # the CN; the full names are in --json
            cert.issuer.split(",")[0],
            cert.serial_number[:16],
            f"{cert.not_before:%Y-%m-%d} .. {cert.not_after:%Y-%m-%d}",
            cert.algorithm,
            cert.key_hash[:16] + "…",
        )
    return table


def _image_version_text(version: ImageVersion) -> str:
    """``1.4.0+3900000001 (1.4.0-rc1)``: a pre-release code named as the release it denotes."""
    release = version_of_image(version)
    return f"{version} ({release})" if release.prerelease else str(version)


def render_verified(
    verified: VerifiedRelease, *, device_checked: bool, image_keys_pinned: bool = True
) -> None:
    console.print(_manifest_table(verified.manifest, "verified release"))
    console.print(_chain_table(verified.chain))
    table = Table(title="components")
    for col in ("name", "image version", "sec cnt", "size", "sha-256", "image key"):
        table.add_column(col, overflow="fold")
    for comp in verified.manifest.components:
        info = verified.image_info.get(comp.name)
        if info is None:  # a delta: the image exists once applied to its base on the BMS
            table.add_row(
                comp.name,
                f"delta from {comp.delta_base_sha256.hex()[:12]}…",
                "",
                f"{comp.image_size:,}",
                comp.image_sha256.hex()[:16] + "…",
                f"patch {comp.stored_size:,} bytes",
            )
            continue
        table.add_row(
            comp.name,
            _image_version_text(info.version),
            str(info.security_counter),
            f"{comp.image_size:,}",
            comp.image_sha256.hex()[:16] + "…",
            f"{info.algorithm} {info.key_hash.hex()[:12]}…",
        )
    console.print(table)
    scope = "and allowed on this device" if device_checked else "(no device facts given)"
    console.print(line(("OK", "bold green"), f" signature, chain and hashes verified {scope}"))
    if not image_keys_pinned and verified.image_info:
        console.print(
            line(
                ("note", "yellow"),
                ": image signatures were checked with the keys the images carry, "
                "not against the vendor's image key; add --pki DIR, --image-key FILE or "
                "--image-key-hash HEX to check that the BMS will boot them",
            )
        )


def render_inspection(inspection: ReleaseInspection) -> None:
    console.print(_manifest_table(inspection.manifest, "release (not verified)"))
    if inspection.chain:
        console.print(_chain_table(inspection.chain))
    else:
        console.print(line(("unsigned", "yellow"), ": no signer chain"))
    table = Table(title="components")
    for col in ("name", "encoding", "stored", "image", "version", "sec cnt", "TLVs", "problem"):
        table.add_column(col, overflow="fold")
    for item in inspection.components:
        comp, image = item.component, item.image
        table.add_row(
            comp.name,
            comp.encoding,
            f"{comp.stored_size:,}",
            f"{comp.image_size:,}",
            _image_version_text(image.version) if image else "-",
            str(image.security_counter) if image else "-",
            " ".join(t.name for t in image.unprotected_tlvs) if image else "-",
            item.problem or "",
        )
    console.print(table)
    console.print(
        f"signed: {'yes' if inspection.signed else 'no'}, revocation lists: "
        f"{inspection.revocation_lists}, package sha256 {inspection.package_sha256}"
    )


@package_group.command("inspect")
@click.argument("package", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_json_option
def inspect_cmd(package: Path, as_json: bool) -> None:
    """Show PACKAGE's manifest, signer chain and components (no trust decision)."""
    inspection = inspect_release(_read(package))
    if as_json:
        data: dict[str, Any] = inspection.to_dict()
        print_json(data)
    else:
        render_inspection(inspection)


@package_group.command("header")
@click.argument("package", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="Where to write the release header (binary, little-endian; docs/packages.md).",
)  # fmt: skip
@_json_option
def header_cmd(package: Path, output: Path, as_json: bool) -> None:
    """Write PACKAGE's release header: what a third-party tool stages before the image.

    UDS: routine 0x0201's option record is one channel byte then these bytes;
    Modbus: the staging registers (docs/uds.md, docs/modbus.md). The package
    must be signed; the header is not verified here (run `package verify`).
    """
    header = release_header(_read(package))
    _write_atomic(output, header)
    digest = hashlib.sha256(header).hexdigest()
    if as_json:
        record: dict[str, object] = {"output": str(output), "size": len(header)}
        record |= {"sha256": digest, "byte_order": "little-endian"}
        print_json({**record, "format_version": HEADER_FORMAT_VERSION})
    else:
        text = f"release header: {output} ({len(header):,} bytes, little-endian, sha256 {digest})"
        console.print(text)
