"""The update pipeline over RS485 (BMS in its own process behind a pty) with encoded releases."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bmsfw.package import (
    Manifest,
    VendorPki,
    decode_header,
    release_header,
    verify_release,
)
from bmsfw.protocol import session as bms_session
from bmsfw.protocol.modbus import open_modbus_bus, open_modbus_session
from bmsfw.sim.images import APP_DESCRIPTOR_OFFSET, make_app_payload
from bmsfw.sim.lab import signed_package, trust_anchors
from bmsfw.sim.sim_rs485 import SimRs485Process
from bmsfw.update.events import Event, StepFinished, TransferProgress
from bmsfw.update.pipeline import UpdateOptions, run_update
from bmsfw.update.profile import DEFAULT_CONFIRMATIONS, PreflightLimits, UpdateProfile
from pipeline_support import update_string

from .conftest import IMAGE_SIZE, SPEC

PROFILE = UpdateProfile(preflight=PreflightLimits(supply_window_s=0.2, link_round_trips=2))


def _payload(version: str, base_version: str | None = None) -> bytes:
    if base_version is None:
        return make_app_payload(version, size=IMAGE_SIZE - 1024)
    # a patch release: the base's firmware with a new version string and a small fix
    out = bytearray(make_app_payload(base_version, size=IMAGE_SIZE - 1024))
    field = APP_DESCRIPTOR_OFFSET + 12
    out[field : field + 32] = version.encode().ljust(32, b"\0")
    out[5000:5024] = bytes(range(24))
    return bytes(out)


def _release(  # noqa: PLR0917 - a test helper
    pki: VendorPki,
    version: str,
    counter: int,
    payload: bytes,
    encoding: str = "raw",
    delta_from: bytes | None = None,
) -> bytes:
    return signed_package(
        pki,
        version,
        counter,
        spec=SPEC,
        payload=payload,
        encoding=encoding,
        delta_from=delta_from,
        product="demo-bms",
        min_bootloader_version="1.0.0",
    )


def _stored_size(package: bytes) -> int:
    manifest = Manifest.from_json_bytes(decode_header(release_header(package)).manifest)
    return manifest.component("app").stored_size


class _WireMeter:
    """Bytes the master sent writing the payload (the bus's own counter), after prepare/erase."""

    def __init__(self, bus: object) -> None:
        self.bus = bus
        self.started: int | None = None
        self.sent = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, TransferProgress) and self.started is None:
            self.started = self.bus.bytes_tx  # type: ignore[attr-defined]
        elif isinstance(event, StepFinished) and event.step == "transfer":
            assert self.started is not None
            self.sent = self.bus.bytes_tx - self.started  # type: ignore[attr-defined]


def test_pipeline_sends_compressed_then_delta_over_rs485(
    string_of_one: SimRs485Process,
    pki: VendorPki,
    tester: bms_session.TesterCredentials,
    tmp_path: Path,
) -> None:
    options = UpdateOptions(
        backup_dir=tmp_path / "backups",
        credentials=tester,
        confirmed=frozenset(c.id for c in DEFAULT_CONFIRMATIONS),
    )
    trust = trust_anchors(pki)
    compressed = _release(pki, "1.1.0", 2, _payload("1.1.0"), encoding="zstd")
    image = verify_release(compressed, trust).image("app")
    stored = _stored_size(compressed)
    assert stored < len(image)
    with open_modbus_session(string_of_one.port, 1, timeout_s=0.3) as session:
        meter = _WireMeter(session.bus)
        report = run_update(session, compressed, trust, options, profile=PROFILE, sink=meter)
        assert report.outcome == "updated", report.error
        assert report.running_version == "1.1.0"
        assert report.transfer.encoding == "zstd"
        assert report.transfer.total == report.transfer.bytes_sent == stored
        # the compressed stream crossed the wire, frame overhead included, not the image
        assert stored < meter.sent < len(image)
        assert session.read_image_digest() == hashlib.sha256(image).digest()

        # a patch release: the BMS runs the delta's base, so the delta goes over
        full = _release(pki, "1.1.1", 3, _payload("1.1.1", "1.1.0"), encoding="zstd")
        delta = _release(pki, "1.1.1", 3, _payload("1.1.1", "1.1.0"), delta_from=image)
        patch = _stored_size(delta)
        meter = _WireMeter(session.bus)
        report = run_update(session, full, trust, options, profile=PROFILE, sink=meter, delta=delta)
        assert report.outcome == "updated", report.error
        assert report.running_version == "1.1.1"
        assert report.package.payload == "delta"
        assert report.package.payload_reason.startswith(f"delta {patch} B against base ")
        assert report.transfer.bytes_sent == patch
        assert patch * 10 < len(image)
        assert patch < meter.sent < 2 * patch + 100  # a frame or two, not the image
        assert session.identify().app_version == "1.1.1"
        assert session.read_boot_status().image_state == "confirmed"


def test_broadcast_refuses_a_delta_before_touching_a_node(
    string_of_one: SimRs485Process,
    pki: VendorPki,
    release_v1: object,
    tester: bms_session.TesterCredentials,
    tmp_path: Path,
) -> None:
    """One broadcast carries one decoded image: a delta release is refused by the
    procedure `bmsfw update --broadcast` runs, before anything is written."""
    image = release_v1.image  # type: ignore[attr-defined]
    delta = _release(pki, "1.0.1", 1, _payload("1.0.1", "1.0.0"), delta_from=image)
    with open_modbus_bus(string_of_one.port) as bus:
        string = update_string(bus, [1], delta, pki, tester, records=tmp_path)
        (report,) = string.reports
        assert report.outcome == "refused", report.error
        assert report.error.code == "BMSFW-E534"
        assert "only the BMS can decode it" in report.error.message
        assert not any(s.step == "transfer" for s in report.steps)
        assert string.transfer["mode"] == "none"
        assert bus.session(1).transfer_state().total_size == 0


def test_cli_update_with_delta_over_rs485(
    string_of_one: SimRs485Process,
    pki: VendorPki,
    release_v1: object,
    tester: bms_session.TesterCredentials,
    tmp_path: Path,
) -> None:
    """`bmsfw update FULL --delta DELTA` picks the delta for a BMS that runs its base."""
    import json
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    base = release_v1.image  # type: ignore[attr-defined]
    files = {
        "full.bmsfw": _release(pki, "1.0.1", 1, _payload("1.0.1", "1.0.0"), encoding="zstd"),
        "delta.bmsfw": _release(pki, "1.0.1", 1, _payload("1.0.1", "1.0.0"), delta_from=base),
        "root.crt": pki.root_certificate.public_bytes(serialization.Encoding.PEM),
        "tester.crt": tester.certificate_chain_pem,
        "tester.key": tester.private_key_pem,
        "profile.toml": b"[preflight]\nsupply_window_s = 0.2\nlink_round_trips = 2\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    bmsfw = str(Path(sys.executable).with_name("bmsfw"))
    args = [
        "update", "--serial", string_of_one.port, "--unit", "1",
        str(tmp_path / "full.bmsfw"), "--delta", str(tmp_path / "delta.bmsfw"),
        "--trust", str(tmp_path / "root.crt"), "--profile", str(tmp_path / "profile.toml"),
        "--backup-dir", str(tmp_path / "backups"),
        "--tester-cert", str(tmp_path / "tester.crt"), "--tester-key", str(tmp_path / "tester.key"),
        "--confirm", "flammables-removed", "--confirm", "stable-power", "--json",
    ]  # fmt: skip
    result = subprocess.run([bmsfw, *args], capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    patch = _stored_size(files["delta.bmsfw"])
    assert report["outcome"] == "updated"
    assert report["running_version"] == "1.0.1"
    assert report["package"]["payload"] == "delta"
    digest = hashlib.sha256(base).hexdigest()
    assert report["package"]["payload_reason"] == (
        f"delta {patch} B against base {digest[:16]}…: device runs that base"
    )
    assert report["transfer"]["bytes_sent"] == patch
