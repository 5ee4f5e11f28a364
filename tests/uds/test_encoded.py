"""Encoded transfers over UDS: the package's stored bytes on the wire, decoded by the BMS.

The virtual BMS runs in its own process on udp_multicast; the tester sends the
zstd-compressed component and then a delta patch, each announced in
RequestDownload's dataFormatIdentifier, and counts the bytes on the wire.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bmsfw.package import Component, Manifest, VendorPki, decode_header
from bmsfw.protocol import errors as err
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import open_uds_session, transfer_dfi
from bmsfw.sim.images import APP_DESCRIPTOR_OFFSET, make_app_payload
from bmsfw.sim.sim_can import SimCanProcess
from pipeline_support import cable_pulled_before_a_block, update_node

from .conftest import IMAGE_SIZE, Release, make_release, unique_link

PAYLOAD_SIZE = IMAGE_SIZE - 1024


def _component(release: Release) -> Component:
    return Manifest.from_json_bytes(decode_header(release.header).manifest).component("app")


def _patched(base_payload: bytes, version: str) -> bytes:
    """A patch release of ``base_payload``: new version string and a small fix."""
    out = bytearray(base_payload)
    field = APP_DESCRIPTOR_OFFSET + 12
    out[field : field + 32] = version.encode().ljust(32, b"\0")
    out[5000:5024] = bytes(range(24))
    return bytes(out)


def _flash_and_count(
    link: str, release: Release, pki: VendorPki, tester: Credentials, records: Path
) -> tuple[int, int]:
    """`bmsfw update` with ``release``; (bytes on the wire for the whole update, the DFI)."""
    with open_uds_session(link, 1) as session:
        session.bus.reset_stats()
        report = update_node(session, release.package, pki, tester, records=records)
        assert report.outcome == "updated", report.error
        assert report.running_version == release.version
        assert report.transfer.bytes_sent == len(release.stored)  # the stored bytes
        status = session.read_boot_status()
        assert (status.running_version, status.image_state) == (release.version, "confirmed")
        return session.bus.stats().bytes_tx, session.last_dfi


def test_zstd_and_delta_releases_send_fewer_bytes_and_confirm(
    tmp_path: Path, pki: VendorPki, tester: Credentials, state_dir: Path, release_v1: Release
) -> None:
    base_payload = make_app_payload("1.1.0", size=PAYLOAD_SIZE)
    zstd = make_release(pki, "1.1.0", 2, encoding="zstd", payload=base_payload)
    delta = make_release(
        pki, "1.1.1", 3, delta_from=zstd.image, payload=_patched(base_payload, "1.1.1")
    )
    raw_size = len(zstd.image)
    assert len(zstd.stored) < raw_size and len(delta.stored) < raw_size // 10
    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        # the whole session (identify .. confirm) moves fewer bytes than the raw image
        wire, dfi = _flash_and_count(link, zstd, pki, tester, tmp_path / "records")
        assert dfi == 0x10 == transfer_dfi(_component(zstd))
        assert wire < raw_size, (wire, raw_size)

        with open_uds_session(link, 1) as session:
            session.authenticate(tester)
            state = session.prepare(delta.header)
            # a delta is only ever sent as its stored patch: the state counts that stream
            assert (state.total_size, state.contiguous_bytes) == (len(delta.stored), 0)
        wire, dfi = _flash_and_count(link, delta, pki, tester, tmp_path / "records")
        assert dfi == 0x80
        assert wire < raw_size // 4, (wire, raw_size)

        # a delta for another base (1.0.0) is refused when staged: nothing erased
        stale = make_release(
            pki, "1.1.2", 4, delta_from=release_v1.image, payload=_patched(base_payload, "1.1.2")
        )
        with open_uds_session(link, 1) as session:
            session.authenticate(tester)
            with pytest.raises(err.DeviceHeaderRejectedError, match="BMSFW-E142"):
                session.prepare(stale.header)
            assert session.identify().app_version == "1.1.1"


def test_wrong_dfi_refused_and_interrupted_encoded_transfer_restarts_from_zero(
    tmp_path: Path, pki: VendorPki, tester: Credentials, state_dir: Path
) -> None:
    # heatshrink decodes in small steps, so half a stream has written part of the bank
    # (a zstd frame of this size is one block: nothing would be written before its end)
    hs = make_release(pki, "1.2.0", 2, encoding="heatshrink")
    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        with open_uds_session(link, 1) as session:
            session.authenticate(tester)
            state = session.prepare(hs.header)
            # a compressed release may also be sent decoded: the state counts image bytes
            assert (state.total_size, state.contiguous_bytes) == (len(hs.image), 0)
            session.erase()
            size = len(hs.stored)
            for dfi in (0x10, 0x31, 0xB0):  # zstd, encrypted, delta: not the staged release
                with pytest.raises(err.UdsRequestOutOfRangeError) as info:
                    session.request(
                        0x34, bytes([dfi, 0x44]) + struct.pack(">II", 0, size), what="dl"
                    )
                assert info.value.nrc == 0x31
            with pytest.raises(err.UdsRequestOutOfRangeError):  # encoded: no resume at 100
                session.request(0x34, b"\x30\x44" + struct.pack(">II", 100, size - 100), what="dl")

            half = size // 2

            cut = cable_pulled_before_a_block(session, half)
            records = tmp_path / "records"
            cut_off = update_node(
                session, hs.package, pki, tester, records=records, on_progress=cut
            )
            assert cut_off.outcome == "paused" and cut_off.cause.code == "BMSFW-E362"
        with open_uds_session(link, 1) as session:
            assert session.identify().app_version == "1.0.0"  # the old firmware runs
            session.authenticate(tester)
            state = session.prepare(hs.header)
            # the decoder had written part of the image (resumable only as decoded bytes)
            assert 0 < state.contiguous_bytes < len(hs.image)
            again = update_node(session, hs.package, pki, tester, records=records)
            assert again.outcome == "updated", again.error
            assert again.transfer.resumed_from == 0
            assert again.transfer.bytes_sent == len(hs.stored)
            assert session.identify().app_version == "1.2.0"


def test_lzma2_thumb_release_over_uds_announces_its_dfi_and_confirms(
    tmp_path: Path, pki: VendorPki, tester: Credentials, state_dir: Path
) -> None:
    # The codec MCUboot's own decompression uses (LZMA2 behind the ARM Thumb filter).
    release = make_release(pki, "1.1.0", 2, encoding="lzma2thumb")
    assert len(release.stored) < len(release.image)
    link = unique_link()
    with SimCanProcess(link, state_dir, (1,), time_scale=20, log_file=tmp_path / "sim.log"):
        wire, dfi = _flash_and_count(link, release, pki, tester, tmp_path / "records")
    assert dfi == 0x40 == transfer_dfi(_component(release))
    assert wire < len(release.image), (wire, len(release.image))
