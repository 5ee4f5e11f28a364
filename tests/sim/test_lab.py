"""bmsfw.sim.lab: the bench helpers make things a real BMS and tester accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsfw.link import parse_can_link
from bmsfw.package import TrustAnchors, VendorPki, verify_release
from bmsfw.sim import SimClock, VirtualBms
from bmsfw.sim.lab import (
    lab_pki,
    provision_nodes,
    signed_release,
    unique_multicast_link,
    write_tester_files,
)
from bmsfw.sim.sim_can import node_state_dir

from .conftest import small_spec


@pytest.fixture(scope="module")
def pki() -> VendorPki:
    return lab_pki()


def test_unique_multicast_links_never_repeat_and_keep_their_options() -> None:
    links = [unique_multicast_link("@500k/2M,throttle") for _ in range(300)]
    specs = [parse_can_link(link) for link in links]
    assert len({(s.channel, s.port) for s in specs}) == len(links)
    assert all(s.throttle and s.interface == "udp_multicast" for s in specs)
    assert all(link.startswith("udp_multicast:239.77.") for link in links)


def test_provisioned_nodes_boot_the_release_and_accept_the_next(
    tmp_path: Path, pki: VendorPki
) -> None:
    spec = small_spec()
    v1 = signed_release(pki, "1.0.0", 1, spec=spec)
    v2 = signed_release(pki, "1.1.0", 2, spec=spec, encoding="zstd")
    assert v2.manifest.component("app").encoding == "zstd"
    assert len(v2.stored) == v2.manifest.component("app").stored_size < len(v2.image)
    state = provision_nodes(tmp_path / "sim", pki, v1.image, (3, 4), spec=spec)
    for node in (3, 4):
        bms = VirtualBms(node_state_dir(state, node), clock=SimClock())
        bms.wait_boot()
        assert bms.boot_status().running_version == "1.0.0"
        assert bms.identity().serial == f"BMS{node:07d}"
        bms.begin_update(v2.header)  # the fused key hashes accept the vendor's next release
        bms.close()


def test_delta_release_has_no_host_image_but_a_stored_patch(pki: VendorPki) -> None:
    spec = small_spec()
    base = signed_release(pki, "1.0.0", 1, spec=spec)
    delta = signed_release(pki, "1.0.1", 1, spec=spec, delta_from=base.image)
    assert delta.image == b"" and delta.manifest.component("app").is_delta
    assert 0 < len(delta.stored) < len(base.image)


def test_tester_files_chain_to_the_vendor_root(tmp_path: Path, pki: VendorPki) -> None:
    files = write_tester_files(pki, tmp_path / "kit")
    chain = files.tester_cert.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 3  # leaf, intermediate, root
    assert b"PRIVATE KEY" in files.tester_key.read_bytes()
    trust = TrustAnchors.from_root_certificate(files.trust.read_bytes())
    package = signed_release(pki, "1.0.0", 1, spec=small_spec()).package
    assert verify_release(package, trust).manifest.version == "1.0.0"
