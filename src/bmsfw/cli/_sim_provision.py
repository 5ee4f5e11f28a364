"""``bmsfw sim provision``: factory-fresh virtual BMS for a vendor PKI and a release.

The bench workflow of a firmware engineer: ``bmsfw keys init``, ``bmsfw package
build/sign``, then ``bmsfw sim provision`` creates NODES devices whose OTP holds
that PKI's root-key hash (manifests) and image-key hash (secure boot), running
the release's app image, ready for ``bmsfw sim can`` / ``bmsfw sim rs485``.
"""

from __future__ import annotations

from pathlib import Path

import click
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bmsfw.cli._render import console, print_json
from bmsfw.errors import UsageError


@click.command("provision")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Devices are created in STATE_DIR/node1, node2, ... (must not exist yet).",
)
@click.option("-n", "--nodes", type=click.IntRange(1, 247), default=1, show_default=True)
@click.option(
    "--pki",
    "pki_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Vendor PKI directory from `bmsfw keys init` (its root and image-signing keys are fused).",
)
@click.option(
    "--package",
    "package_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signed release whose app image the devices run from the factory.",
)
@click.option("--serial-prefix", default="SIM", show_default=True)
@click.option("--soc", "soc_pct", type=float, default=50.0, show_default=True)
@click.option(
    "--small-flash/--full-flash",
    default=True,
    show_default=True,
    help="Small sectors (fast simulated erase) or the STM32F4-like default layout.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def provision_command(
    *,
    state_dir: Path,
    nodes: int,
    pki_dir: Path,
    package_path: Path,
    serial_prefix: str,
    soc_pct: float,
    small_flash: bool,
    as_json: bool,
) -> None:
    """Create NODES factory-fresh virtual BMS that trust PKI and run PACKAGE."""
    from bmsfw.package import (
        PkiPaths,
        TrustAnchors,
        key_hash,
        load_certificate_file,
        load_key_file,
        verify_release,
    )
    from bmsfw.sim import DeviceSpec, FlashSpec, provision
    from bmsfw.sim.sim_can import node_state_dir

    paths = PkiPaths(pki_dir)
    root_cert = load_certificate_file(paths.root_cert)
    image_pub = paths.root / "image-signing.pub"
    image_key_hash = (
        key_hash(image_pub.read_bytes())
        if image_pub.exists()
        else key_hash(load_key_file(paths.image_key))
    )
    root_key_hash = key_hash(
        root_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    release = verify_release(
        package_path.read_bytes(), TrustAnchors.from_key_hashes([root_key_hash])
    )
    manifest = release.manifest
    if "app" not in release.images:
        raise UsageError(f"{package_path} has no plain 'app' image to run from the factory")
    spec = DeviceSpec(
        model=manifest.hardware.model,
        hw_revision=manifest.hardware.revisions[0],
        flash=(
            FlashSpec.small(bank_size=256 * 1024, sector_size=8192)
            if small_flash
            else FlashSpec.stm32f4_like()
        ),
    )
    created = []
    for node in range(1, nodes + 1):
        directory = node_state_dir(state_dir, node)
        serial = f"{serial_prefix}{node:04d}"
        provision(
            directory,
            initial_image=release.images["app"],
            root_key_hash=root_key_hash,
            image_key_hash=image_key_hash,
            image_public_key=image_pub.read_bytes() if image_pub.exists() else None,
            spec=spec,
            serial=serial,
            soc_pct=soc_pct,
        )
        created.append({"node": node, "serial": serial, "state_dir": str(directory)})
    summary = {
        "model": manifest.hardware.model,
        "hw_revision": manifest.hardware.revisions[0],
        "version": str(manifest.version),
        "root_key_hash": root_key_hash.hex(),
        "image_key_hash": image_key_hash.hex(),
        "nodes": created,
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"provisioned {nodes} virtual BMS ({summary['model']} rev {summary['hw_revision']}, "
        f"firmware {summary['version']}) in {state_dir}"
    )
    console.print(f"  OTP root-key hash  {summary['root_key_hash']}")
    console.print(f"  OTP image-key hash {summary['image_key_hash']}")
    console.print(
        f"next: bmsfw sim can --state-dir {state_dir} --nodes {nodes}   "
        f"(or bmsfw sim rs485 --state-dir {state_dir} --nodes {nodes})"
    )
