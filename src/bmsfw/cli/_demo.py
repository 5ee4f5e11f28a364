"""``bmsfw demo`` (interim): vendor PKI, build, sign, verify and inspect a sample release.

It will be replaced by the full update demo (virtual BMS over CAN/RS485) once
the update pipeline exists; until then it shows the package layer end to end,
including two refusals a BMS would make.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import click

from bmsfw.cli._package import render_inspection, render_verified
from bmsfw.cli._render import console
from bmsfw.errors import BmsfwError
from bmsfw.package import (
    ComponentSource,
    DeviceFacts,
    HardwareCompat,
    TrustAnchors,
    build_release,
    init_pki_dir,
    inspect_release,
    key_hash,
    load_signer,
    release_header,
    sign_release,
    verify_header,
    verify_release,
)

__all__ = ["demo_command"]


def _sample_firmware(size: int) -> bytes:
    # Deterministic, compressible-but-not-trivial bytes standing in for a BMS application.
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(4, "little")).digest()[:16] + bytes(16)
        counter += 1
    return bytes(out[:size])


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the PKI and package here (default: a temporary directory).",
)
@click.option("--algorithm", type=click.Choice(["ed25519", "ecdsa-p256"]), default="ed25519")
def demo_command(output: Path | None, algorithm: str) -> None:
    """Create a demo vendor PKI, then build, sign, verify and inspect a sample release."""
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        _run(output, algorithm)
        console.print(f"\nfiles kept in {output}")
        return
    with tempfile.TemporaryDirectory(prefix="bmsfw-demo-") as tmp:
        _run(Path(tmp), algorithm)


def _run(workdir: Path, algorithm: str) -> None:
    pki_dir = workdir / "pki"
    console.rule("1. vendor PKI")
    pki = init_pki_dir(pki_dir, algorithm)  # type: ignore[arg-type]
    root_hash = key_hash(pki.root_key)
    image_hash = key_hash(pki.image_signing_key)
    console.print(f"PKI in {pki_dir} ({algorithm})")
    console.print(f"root key hash, fused into the BMS for manifests:  {root_hash.hex()}")
    console.print(f"image key hash, fused into the BMS for secure boot: {image_hash.hex()}")

    console.rule("2. build and sign release 1.4.0")
    hardware = HardwareCompat("BMS-48V-100A", ("B", "C"))
    unsigned = build_release(
        product="demo-bms",
        version="1.4.0",
        security_counter=5,
        hardware=hardware,
        min_bootloader_version="1.1.0",
        components=[ComponentSource.firmware("app", _sample_firmware(96 * 1024))],
        image_signing_key=pki.image_signing_key,
        release_notes="Demo release: improved balancing hysteresis.",
    )
    signed = sign_release(unsigned, load_signer(pki_dir))
    package_path = workdir / "demo-bms-1.4.0.bmsfw"
    package_path.write_bytes(signed)
    console.print(f"wrote {package_path} ({len(signed):,} bytes)")

    console.rule("3. inspect")
    render_inspection(inspect_release(signed))

    console.rule("4. verify as a BMS would (root key hash from OTP)")
    trust = TrustAnchors.from_key_hashes([root_hash]).with_image_key_hashes([image_hash])
    device = DeviceFacts("BMS-48V-100A", "C", "1.2.0", security_counter=4, channel="wired")
    render_verified(verify_release(signed, trust, device), device_checked=True)
    header = release_header(signed)
    verify_header(header, trust, device)
    console.print(f"release header alone ({len(header):,} bytes) verified the same way")

    console.rule("5. refusals")
    tampered = bytearray(signed)
    offset = signed.index(b"components/app.bin") + 200
    tampered[offset] ^= 0x01
    refusals = [
        ("one flipped byte", bytes(tampered), device),
        ("newer device (counter 6)", signed, DeviceFacts("BMS-48V-100A", "C", "1.2.0", 6)),
        ("wrong hardware rev A", signed, DeviceFacts("BMS-48V-100A", "A", "1.2.0", 4)),
    ]
    for label, data, facts in refusals:
        try:
            verify_release(data, trust, facts)
        except BmsfwError as exc:
            console.print(f"[green]refused[/] {label}: {exc.code} {type(exc).__name__}")
        else:  # pragma: no cover - would be a bug worth shouting about
            raise click.ClickException(f"{label} was NOT refused")
