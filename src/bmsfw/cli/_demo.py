"""``bmsfw demo``: the whole job on one machine, with nothing but Python.

It makes a vendor PKI and a tester certificate, signs two releases, provisions
two virtual BMS (packs on one CAN bus) and starts them in their own process
(udp_multicast CAN, UDS over ISO-TP), then runs the real update pipeline over
that link: one pack takes release 1.1.0 and confirms it; the other gets a build
that fails its self-test and returns to its old firmware on its own. Both
reports are printed, and the audit log is verified.

Then the fleet operator's path (``bmsfw.cli._demo_fleet``, skipped with
``--no-fleet``): ``bmsfw fleet serve`` on SQLite with HTTPS from a demo CA, one
gateway agent with three virtual BMS, release 1.1.0 uploaded and rolled out in a
phased campaign to 100 %, and a safety-critical release refused for OTA.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Literal

import click
from cryptography.hazmat.primitives import serialization

from bmsfw.cli._field import _print_reports, _progress, _ProgressSink
from bmsfw.cli._render import console

__all__ = ["demo_command"]

DEMO_MODEL = "BMS-16S"
DEMO_REVISION = "C"
IMAGE_SIZE = 32 * 1024


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the PKI, packages, BMS state, backups and reports here (default: temporary).",
)
@click.option(
    "--time-scale",
    type=float,
    default=10.0,
    show_default=True,
    help="Run the virtual BMS's boot and flash timing this many times faster.",
)
@click.option(
    "--no-fleet",
    is_flag=True,
    help="Skip the fleet part (OTA server, gateway agent, phased campaign).",
)
def demo_command(output: Path | None, time_scale: float, no_fleet: bool) -> None:
    """Update two virtual BMS over CAN (one passes, one rolls back), then three over the air.

    The over-the-air part runs a fleet server (HTTPS, SQLite) and a gateway agent
    with three virtual BMS through a phased campaign.
    """
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        _run(output, time_scale, fleet=not no_fleet)
        console.print(f"\nfiles kept in {output}")
        return
    with tempfile.TemporaryDirectory(prefix="bmsfw-demo-") as tmp:
        _run(Path(tmp), time_scale, fleet=not no_fleet)


def _pem(cert: object) -> bytes:
    data: bytes = cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]
    return data


def _run(workdir: Path, time_scale: float, *, fleet: bool) -> None:
    from bmsfw.package import (
        ComponentSource,
        HardwareCompat,
        TrustAnchors,
        build_release,
        init_pki_dir,
        key_hash,
        load_signer,
        sign_release,
        verify_release,
    )
    from bmsfw.protocol.session import TesterCredentials
    from bmsfw.protocol.uds import issue_tester_certificate
    from bmsfw.sim import DeviceSpec, FlashSpec, make_app_payload, provision
    from bmsfw.sim.sim_can import SimCanProcess, node_state_dir
    from bmsfw.update.audit import verify_audit_log
    from bmsfw.update.connect import open_sessions, parse_links
    from bmsfw.update.pipeline import UpdateOptions, run_update
    from bmsfw.update.profile import UpdateProfile

    console.rule("1. vendor PKI, tester certificate, signed releases")
    pki_dir = workdir / "pki"
    pki = init_pki_dir(pki_dir, "ed25519")
    signer = load_signer(pki_dir)
    tester_key, tester_cert = issue_tester_certificate(
        pki.intermediate_key, pki.intermediate_certificate
    )
    chain = _pem(tester_cert) + _pem(pki.intermediate_certificate) + _pem(pki.root_certificate)
    credentials = TesterCredentials(
        chain,
        tester_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    trust = TrustAnchors.from_root_certificate(_pem(pki.root_certificate))
    packages: dict[str, bytes] = {}

    def release(
        version: str,
        counter: int,
        behaviour: str | None,
        safety_class: Literal["standard", "safety-critical"],
    ) -> bytes:
        unsigned = build_release(
            product="BMS-16S firmware",
            version=version,
            security_counter=counter,
            hardware=HardwareCompat(DEMO_MODEL, (DEMO_REVISION,)),
            min_bootloader_version="2.0.0",
            components=[
                ComponentSource(
                    "app", make_app_payload(version, size=IMAGE_SIZE, behaviour=behaviour)
                )
            ],
            image_signing_key=pki.image_signing_key,
            safety_class=safety_class,
            release_notes="demo release",
        )
        return sign_release(unsigned, signer)

    for version, counter, behaviour in (
        ("1.0.0", 1, None),
        ("1.1.0", 2, None),
        ("1.1.1-rc1", 2, "fail-selftest"),
    ):
        packages[version] = release(version, counter, behaviour, "standard")
        (workdir / f"bms-16s-{version}.bmsfw").write_bytes(packages[version])
        console.print(f"signed bms-16s-{version}.bmsfw ({len(packages[version]):,} bytes)")

    console.rule("2. two virtual BMS on one CAN bus, in their own process")
    state = workdir / "bms-state"
    initial = verify_release(packages["1.0.0"], trust).images["app"]
    for node in (1, 2):
        provision(
            node_state_dir(state, node),
            initial_image=initial,
            root_key_hash=key_hash(pki.root_key),
            image_key_hash=key_hash(pki.image_signing_key),
            spec=DeviceSpec(
                model=DEMO_MODEL,
                hw_revision=DEMO_REVISION,
                flash=FlashSpec.small(bank_size=128 * 1024, sector_size=8192),
            ),
            serial=f"DEMO000{node}",
        )
    link = f"udp_multicast:239.74.163.2,port={random.randint(20_000, 60_000)}"
    sim = SimCanProcess(link, state, (1, 2), time_scale=time_scale, log_file=workdir / "sim.log")
    sim.start()
    console.print(f"virtual BMS nodes 1 and 2 serve UDS on --can {link}")
    backups = workdir / "backups"
    options = UpdateOptions(
        backup_dir=backups,
        credentials=credentials,
        # The demo answers the profile's questions for the technician, and says so.
        confirmed=frozenset(c.id for c in UpdateProfile().confirmations),
        audit_log=backups / "audit.jsonl",
        report_dir=backups / "reports",
        operator="demo",
    )
    try:
        for node, version, story in (
            (1, "1.1.0", "a good release: preflight, backup, transfer, self-test, confirm"),
            (2, "1.1.1-rc1", "a build that fails its self-test: the BMS rolls back on its own"),
        ):
            console.rule(f"3.{node} pack {node}: {version} ({story})")
            links = parse_links(can=link, nodes=[node])
            with (
                open_sessions(links) as conn,
                _progress(console.is_terminal) as progress,
            ):
                report = run_update(
                    conn.sessions[0],
                    packages[version],
                    trust,
                    options,
                    sink=_ProgressSink(progress),
                )
            _print_reports([report], as_json=False)
    finally:
        sim.stop()

    console.rule("4. audit log")
    records = verify_audit_log(backups / "audit.jsonl")
    for record in records:
        console.print(
            f"#{record['seq']} {record['time']} {record['who']} {record['device']['serial']} "
            f"{record['package'].get('version')}: {record['result']} {record['error_code']}",
            highlight=False,
        )
    console.print(f"{len(records)} records, hash chain intact")
    console.print(
        "\nsame thing by hand: bmsfw update --can LINK --node 1 PACKAGE --trust root-ca.crt "
        "--backup-dir DIR --tester-cert tester.crt --tester-key tester.key"
    )
    if not fleet:
        return

    from bmsfw.cli._demo_fleet import FleetDemoConfig, run_fleet_demo

    console.rule("5. fleet operator: release 1.1.0 over the air, phased campaign")
    safety_version = "1.2.0"
    run_fleet_demo(
        FleetDemoConfig(
            workdir=workdir,
            trust_root_pem=_pem(pki.root_certificate),
            initial_release=packages["1.0.0"],
            target_release=packages["1.1.0"],
            target_version="1.1.0",
            # A security fix classed safety-critical: it must be installed wired.
            safety_release=release(safety_version, 3, None, "safety-critical"),
            safety_version=safety_version,
        )
    )
    console.print(
        "\nsame thing by hand: bmsfw fleet init / serve, bmsfw sim fleet (or bmsfw agent on a "
        "gateway), bmsfw fleet release-upload, bmsfw fleet campaign-create (docs/fleet.md)"
    )
